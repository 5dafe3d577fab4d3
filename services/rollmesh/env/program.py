"""Running an agent program (a script, a CLI agent) as one episode's harness: a child process with
a timeout, bounded output, and no survivor when the episode is cancelled or times out.

The program gets the episode's model endpoint in its environment (OPENAI_BASE_URL, OPENAI_API_KEY,
OPENAI_MODEL, see AgentContext.openai_env) and, optionally, input on stdin. What it prints is kept
up to `max_output_bytes` per stream (the rest is dropped and counted), so a chatty or hostile
program cannot exhaust the server's memory."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..errors import InternalError, clip

DEFAULT_TIMEOUT_S = 600.0
DEFAULT_MAX_OUTPUT_BYTES = 1024 * 1024
STDERR_TAIL_CHARS = 1000  # what an error quotes of the program's stderr (under errors.MAX_MESSAGE_CHARS)
KILL_GRACE_S = 2.0  # SIGTERM, then SIGKILL after this long
EXIT_POLL_S = 0.02


@dataclass(frozen=True)
class ProgramResult:
    returncode: int
    stdout: str
    stderr: str
    truncated_bytes: int = 0  # output dropped over max_output_bytes (both streams)

    def stderr_tail(self, limit: int = STDERR_TAIL_CHARS) -> str:
        return self.stderr[-limit:].strip()


class ProgramFailed(InternalError):
    """The agent program exited with a failure, or did not finish in time."""

    reason = "ENVIRONMENT_FAILED"

    def __init__(self, message: str, result: ProgramResult | None = None) -> None:
        super().__init__(message)
        self.result = result


class _Capture:
    """What a program printed on one stream: the first `limit` bytes, and how many were dropped."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.kept = bytearray()
        self.dropped = 0

    async def read(self, stream: asyncio.StreamReader | None) -> None:
        """Reads to the end, draining (and counting) what is over the limit so the child never blocks."""
        if stream is None:
            return
        while chunk := await stream.read(65536):
            room = self.limit - len(self.kept)
            self.kept += chunk[:room]
            self.dropped += max(0, len(chunk) - room)

    def text(self) -> str:
        return self.kept.decode(errors="replace")


async def _exited(proc: asyncio.subprocess.Process) -> int:
    """The program's exit status, as soon as it exits: asyncio's wait() also waits for its pipes
    to close, which a process it left running holds open."""
    while proc.returncode is None:  # noqa: ASYNC110 (set by the child watcher; there is no event)
        await asyncio.sleep(EXIT_POLL_S)
    return proc.returncode


async def _stop(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM to the program's process group (a shell's children too), then SIGKILL. After the
    program itself has exited, what it left running in its group is killed outright."""
    if proc.returncode is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # the group outlives its leader only through strays
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            await asyncio.wait_for(proc.wait(), KILL_GRACE_S)
            return
        except TimeoutError:
            continue


async def run_program(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
    cwd: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
    check: bool = True,
) -> ProgramResult:
    """Runs `argv` (no shell) with `env` added to this process's environment. With `check`, a
    non-zero exit raises ProgramFailed quoting the tail of stderr; a timeout raises ProgramFailed
    too (the agent did not finish, not a lost connection). Cancellation kills the program."""
    if not argv:
        raise ValueError("run_program needs a program to run")
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        start_new_session=True,  # its own process group: _stop reaches what it starts
    )
    out, err = _Capture(max_output_bytes), _Capture(max_output_bytes)
    readers = asyncio.gather(out.read(proc.stdout), err.read(proc.stderr))
    try:
        async with asyncio.timeout(timeout_s):
            if input is not None and proc.stdin is not None:
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    proc.stdin.write(input.encode())
                    await proc.stdin.drain()
                proc.stdin.close()
            returncode = await _exited(proc)
            await _stop(proc)  # what it left in its group goes too: it would hold the pipes open
        # A stray that left the group may keep a pipe open: what was printed so far is kept.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(readers), KILL_GRACE_S)
    except TimeoutError:
        await _stop(proc)
        raise ProgramFailed(
            f"the agent program {clip(argv[0], 200)} did not finish within {timeout_s:g} s and was stopped"
        ) from None
    finally:
        await asyncio.shield(_stop(proc))  # cancelled or failed: nothing outlives the episode
        readers.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await readers
    result = ProgramResult(returncode, out.text(), err.text(), truncated_bytes=out.dropped + err.dropped)
    if check and returncode != 0:
        tail = result.stderr_tail()
        raise ProgramFailed(
            f"the agent program {clip(argv[0], 200)} exited with status {returncode}"
            + (f"; stderr ends with:\n{tail}" if tail else " (no stderr)"),
            result,
        )
    return result


__all__ = ["ProgramFailed", "ProgramResult", "run_program"]
