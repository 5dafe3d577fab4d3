"""The client end of one Episode stream: `start`, then `act` once per turn, then `finish` (after
done) or `end` (to cancel). The one implementation of the stream's rules that every caller shares
(EnvClient, the rollout engine, conformance):

- a stream the server already ended (idle timeout, shutdown, an error) is read, not written, so
  the caller gets the server's status instead of a local "RPC already finished";
- each exchange is bounded by `step_timeout_s`; on expiry the stream is cancelled (the server
  frees the episode) and DeadlineExceededError STEP_TIMEOUT is raised;
- gRPC errors arrive as domain errors (rpc_errors.error_from_rpc), end of stream without an answer
  as UnavailableError STREAM_CLOSED, an answer of the wrong kind as DataLossError BAD_RESPONSE."""

from __future__ import annotations

import asyncio

import grpc

from ..errors import DataLossError, DeadlineExceededError, UnavailableError
from ..proto.v1 import environment_pb2 as env_pb
from ..proto.v1 import environment_pb2_grpc as env_grpc
from ..proto.v1 import messages_pb2 as msg_pb
from ..rpc import end_call
from ..rpc_errors import error_from_rpc


class EpisodeStream:
    def __init__(
        self, stub: env_grpc.EnvironmentServiceStub, *, timeout_s: float | None, step_timeout_s: float
    ) -> None:
        self.call: grpc.aio.StreamStreamCall = stub.Episode(timeout=timeout_s)
        self.step_timeout_s = step_timeout_s
        self.episode_id = ""

    @property
    def _who(self) -> str:
        return f"episode {self.episode_id or '(starting)'}"

    async def start(self, start: env_pb.StartEpisode) -> env_pb.EpisodeStarted:
        response = await self.exchange(env_pb.EpisodeRequest(start=start), "started")
        self.episode_id = response.started.episode_id
        return response.started

    async def act(self, message: msg_pb.Message) -> env_pb.Step:
        response = await self.exchange(env_pb.EpisodeRequest(action=env_pb.Action(message=message)), "step")
        return response.step

    async def exchange(self, request: env_pb.EpisodeRequest, expect: str) -> env_pb.EpisodeResponse:
        """Sends `request`, returns the one response, which must be of kind `expect`."""
        try:
            async with asyncio.timeout(self.step_timeout_s):
                if not self.call.done():
                    try:
                        await self.call.write(request)
                    except asyncio.InvalidStateError:
                        pass  # it ended just now: read() raises its status
                response = await self.call.read()
        except TimeoutError:
            self.end()
            raise DeadlineExceededError(
                f"{self._who}: no answer from the environment server within {self.step_timeout_s:g} s; "
                "the episode was cancelled",
                reason="STEP_TIMEOUT",
            ) from None
        except grpc.aio.AioRpcError as e:
            raise error_from_rpc(e) from e
        if response is grpc.aio.EOF:
            raise UnavailableError(
                f"{self._who}: the environment server closed the episode stream without `{expect}`",
                reason="STREAM_CLOSED",
            )
        kind = response.WhichOneof("kind")
        if kind != expect:
            self.end()
            raise DataLossError(
                f"{self._who}: expected `{expect}` from the server, got `{kind}`", reason="BAD_RESPONSE"
            )
        return response

    async def finish(self, *, wait: bool = False) -> None:
        """Half-close after done: the server ends the stream with OK and frees the episode. With
        `wait`, returns once it has (one more wake-up per episode, so the engine does not wait)."""
        try:
            await self.call.done_writing()
            if wait:
                await self.call.code()
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            self.end()

    def end(self) -> None:
        """Cancels the stream (a no-op once it has ended); the server cleans the episode up."""
        end_call(self.call)
