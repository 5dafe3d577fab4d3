"""The bound on a client's silence in an Episode stream, with one timer per stream.

`asyncio.timeout` around every read costs a Timeout, a timer-heap entry and its cancellation per
message, a tenth of the server's CPU per step. Here a read only notes when it started; the one
timer, armed at the first read, fires at most once per `idle_s`, re-arms itself for the read in
progress, and when that read has waited `idle_s` expires the stream's asyncio.Timeout, which
cancels the read.

    async with IdleWatch(idle_s) as idle:    # DeadlineExceededError IDLE_TIMEOUT on expiry
        idle.waiting(); msg = await context.read(); idle.heard()
"""

from __future__ import annotations

import asyncio
from types import TracebackType

from ..errors import DeadlineExceededError


class IdleWatch:
    def __init__(self, idle_s: float) -> None:
        self.idle_s = idle_s  # 0: no bound
        self._bound = asyncio.timeout(None)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._since: float | None = None  # when the read in progress started
        self._timer: asyncio.TimerHandle | None = None

    def waiting(self) -> None:
        """A read of the client's next message starts."""
        if not self.idle_s or self._loop is None:
            return
        self._since = self._loop.time()
        if self._timer is None:
            self._timer = self._loop.call_at(self._since + self.idle_s, self._check)

    def heard(self) -> None:
        """The read ended (a message, the end of the stream, or an error)."""
        self._since = None

    def _check(self) -> None:
        assert self._loop is not None
        self._timer = None
        if self._since is None:
            return  # not reading now: the next read arms the timer again
        due = self._since + self.idle_s
        if self._loop.time() >= due:
            self._bound.reschedule(self._loop.time())  # expire: cancels the waiting read
        else:
            self._timer = self._loop.call_at(due, self._check)

    async def __aenter__(self) -> IdleWatch:
        self._loop = asyncio.get_running_loop()
        await self._bound.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        try:
            return await self._bound.__aexit__(exc_type, exc, tb)
        except TimeoutError:
            if not self._bound.expired():
                raise
            raise DeadlineExceededError(
                f"no message from the client for {self.idle_s:g} s; episode closed",
                reason="IDLE_TIMEOUT",
                metadata={"idle_timeout_s": f"{self.idle_s:g}"},
            ) from None
