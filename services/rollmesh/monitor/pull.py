"""A continuous pull on a durable JetStream consumer: keeps pull requests outstanding for as many
messages as the caller has room for and hands each message over as it arrives.

nats-py's `fetch()` returns a batch only once it is full or its time-out expires, so at low traffic
a trace would wait for the time-out before being scored; here a message is handed over as soon as
the server delivers it, and at high traffic the server streams a whole batch per request. Several
processes pulling from the same durable share its messages (each goes to one of them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

log = logging.getLogger(__name__)

STATUS = "Status"
PENDING_MESSAGES = "Nats-Pending-Messages"


class PullConsumer:
    """`on_message(msg)` is called for every delivered message (synchronously: start work, return);
    `room()` says how many more messages the caller can take now. Call `wake()` when room frees up.
    Messages that arrive once stopping has begun go to `on_late` (e.g. to hand them back)."""

    def __init__(
        self,
        nc: NATS,
        stream: str,
        consumer: str,
        *,
        on_message: Callable[[Msg], None],
        room: Callable[[], int],
        on_late: Callable[[Msg], None] | None = None,
        batch: int = 256,
        expires_s: float = 5.0,
    ) -> None:
        self.nc = nc
        self.next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self.on_message = on_message
        self.room = room
        self.batch = batch
        self.expires_s = expires_s
        # Messages requested and not yet delivered or expired.
        self.outstanding = 0
        self._sub: Subscription | None = None
        self._inbox = ""
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_heard = time.monotonic()
        self._stopped = False
        self._pause_until = 0.0
        self._reconnects = nc.stats["reconnects"]
        self.on_late = on_late

    async def start(self) -> None:
        self._inbox = self.nc.new_inbox()
        self._sub = await self.nc.subscribe(self._inbox, cb=self._on_msg)
        self._task = asyncio.create_task(self._pull_loop(), name=f"pull {self.next_subject}")

    def wake(self) -> None:
        self._wake.set()

    async def _on_msg(self, msg: Msg) -> None:
        self._last_heard = time.monotonic()
        status = msg.headers.get(STATUS) if msg.headers else None
        if status is None and msg.reply:
            self.outstanding = max(0, self.outstanding - 1)
            if self._stopped and self.on_late is not None:
                self.on_late(msg)
            else:
                self.on_message(msg)
            return
        if status in ("404", "408", "409"):
            # The request ended (expired, or the consumer refused it): what it did not deliver is
            # no longer outstanding.
            assert msg.headers is not None
            pending = msg.headers.get(PENDING_MESSAGES)
            if pending is not None and pending.isdigit():
                self.outstanding = max(0, self.outstanding - int(pending))
            else:
                self.outstanding = 0
            if status == "409":
                # e.g. the consumer was deleted, or too many waiting requests: do not spin.
                log.warning("pull request refused by %s: %s", self.next_subject, msg.headers.get("Description", ""))
                self._pause_until = time.monotonic() + 1.0
            self._wake.set()

    async def _pull_loop(self) -> None:
        while not self._stopped:
            if (pause := self._pause_until - time.monotonic()) > 0:
                await asyncio.sleep(pause)
            room = self.room() - self.outstanding
            # Ask for a batch when half a batch (or everything the caller can take) is free.
            if room > 0 and (room >= min(self.batch, self.room()) // 2 or self.outstanding == 0):
                n = min(self.batch, room)
                request = {"batch": n, "expires": int(self.expires_s * 1e9)}
                try:
                    await self.nc.publish(self.next_subject, json.dumps(request).encode(), reply=self._inbox)
                    self.outstanding += n
                except Exception as e:  # disconnected: nats-py reconnects; try again shortly
                    log.warning("pull request on %s failed: %r", self.next_subject, e)
                    await asyncio.sleep(0.5)
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.expires_s)
            # Requests do not survive a reconnect to a restarted server: ask again.
            if (reconnects := self.nc.stats["reconnects"]) != self._reconnects:
                self._reconnects = reconnects
                self.outstanding = 0
            # A lost expiry notice must not stall the pull forever either.
            if self.outstanding and time.monotonic() - self._last_heard > 2 * self.expires_s:
                log.info("no news from %s for %.0f s: requesting again", self.next_subject, 2 * self.expires_s)
                self.outstanding = 0
                self._last_heard = time.monotonic()

    async def stop(self) -> None:
        """No more pull requests, and no more interest in the inbox, so that the server drops the
        requests still waiting (their messages go to other replicas); what had already arrived goes
        to `on_late`."""
        self._stopped = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._sub is not None:
            sub, self._sub = self._sub, None
            try:
                await sub.drain()
            except Exception as e:  # the connection is gone: the server forgets the requests anyway
                log.debug("could not drain %s: %r", self._inbox, e)
