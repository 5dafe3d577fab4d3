"""The verifiers `Client` of one hosted episode. verifiers' own rollout loop runs unchanged and
asks this client for each model reply; the client hands the prompt to the episode and waits for
the policy's action, which arrives over the Episode stream. So the orchestrator keeps every model
call (token-exact trajectories) while verifiers keeps its semantics (`env_response`, stop
conditions, `update_tool_args`, cleanup)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from verifiers.legacy.clients.client import Client

from ...types import Message
from .messages import response_of


@dataclass
class Ask:
    """The rollout wants a model reply to `prompt` (the whole conversation so far)."""

    prompt: list[Any]


@dataclass
class Ended:
    """The rollout finished; `error` is what escaped verifiers' loop, if anything."""

    error: BaseException | None = None


class EpisodeTurns(Client):
    def __init__(self) -> None:
        super().__init__(object())  # no provider client behind it: replies come from the episode
        self._events: asyncio.Queue[Ask | Ended] = asyncio.Queue()
        self._reply: asyncio.Future[Message] | None = None
        self._task: asyncio.Task[Any] | None = None

    def run(self, rollout: Coroutine[Any, Any, Any]) -> None:
        """Starts verifiers' rollout loop; its requests and its end arrive through `next_event`."""

        async def main() -> Any:
            try:
                result = await rollout
            except asyncio.CancelledError:
                raise
            except BaseException as e:
                self._events.put_nowait(Ended(e))
                raise
            self._events.put_nowait(Ended())
            return result

        self._task = asyncio.create_task(main())
        self._task.add_done_callback(_retrieve)

    async def next_event(self) -> Ask | Ended:
        return await self._events.get()

    def reply(self, action: Message) -> None:
        """Answers the pending model call with the policy's assistant message."""
        assert self._reply is not None and not self._reply.done(), "no model call is waiting for a reply"
        self._reply.set_result(action)

    @property
    def result(self) -> Any:
        """verifiers' final rollout State (only once `Ended` has arrived without an error)."""
        assert self._task is not None and self._task.done()
        return self._task.result()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def stop(self) -> None:
        """Cancels an unfinished rollout (a dropped stream); verifiers' cleanup runs in its finally."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    # ---- the verifiers Client interface ------------------------------------------------------

    async def get_response(self, prompt: Any, model: str, sampling_args: Any, tools: Any = None, **kwargs: Any) -> Any:
        self._reply = asyncio.get_running_loop().create_future()
        self._events.put_nowait(Ask(list(prompt)))
        return response_of(await self._reply, model)

    # Only get_response is ever called; the provider hooks below have nothing to translate.
    def setup_client(self, config: Any) -> Any:
        return None

    async def to_native_tool(self, tool: Any) -> Any:
        return tool

    async def to_native_prompt(self, messages: Any) -> tuple[Any, dict[str, Any]]:
        return messages, {}

    async def get_native_response(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("replies come from the episode, not a provider")

    async def raise_from_native_response(self, response: Any) -> None:
        return None

    async def from_native_response(self, response: Any) -> Any:
        return response

    async def close(self) -> None:
        return None


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()  # reported through Ended; retrieved so asyncio does not log it again
