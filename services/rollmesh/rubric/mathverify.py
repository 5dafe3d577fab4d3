"""Mathematical equivalence with `math-verify`, in worker subprocesses.

math-verify bounds its own work with signal.alarm, which only works in a process's main thread,
and sympy can hang on adversarial input. So checks run in small worker processes
(`python -m rollmesh.rubric.mathverify`, one JSON line per check on stdin/stdout), in their main
thread where math-verify's own time-outs work; the caller also bounds each check and kills a
worker that overruns (a fresh one starts on demand). Plain subprocesses rather than
multiprocessing: nothing of the parent (its __main__ script, gRPC threads) is re-run or forked."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from dataclasses import dataclass

log = logging.getLogger(__name__)

START_TIMEOUT_S = 120.0  # a fresh worker imports sympy: seconds on a loaded machine


@dataclass(frozen=True)
class MathCheck:
    equivalent: bool
    gold_parsed: bool
    answer_parsed: bool
    # math-verify gave up on a time-out (it then reports "not equivalent"): the result is unknown
    timed_out: bool = False


class _TimeoutWatch(logging.Handler):
    """math-verify reports its own time-outs only as log warnings ("Timeout during ...")."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen = False

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("Timeout during"):
            self.seen = True


def check(gold: str, answer: str, timeout_s: int) -> MathCheck:
    """In-process check (the worker's body); math-verify's alarm-based time-outs need the main thread."""
    from math_verify import parse, verify

    watch = _TimeoutWatch()
    mv_log = logging.getLogger("math_verify")
    mv_log.addHandler(watch)
    try:
        # Gold answers are usually written bare ("1/2", "\frac{1}{2}"): try them in math mode too.
        g = parse(gold, parsing_timeout=timeout_s) or parse(
            f"${gold}$", parsing_timeout=timeout_s, fallback_mode="no_fallback"
        )
        a = parse(answer, parsing_timeout=timeout_s)
        if not g or not a:
            return MathCheck(False, bool(g), bool(a), watch.seen)
        equivalent = bool(verify(g, a, timeout_seconds=timeout_s))
        return MathCheck(equivalent, True, True, watch.seen and not equivalent)
    finally:
        mv_log.removeHandler(watch)


class _Worker:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls) -> _Worker:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "rollmesh.rubric.mathverify",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=1 << 20,
        )
        worker = cls(proc)
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT_S)
        except BaseException:
            worker.kill()
            raise
        if line.strip() != b"ready":
            worker.kill()
            raise RuntimeError(f"math-verify worker failed to start (exit code {proc.returncode})")
        return worker

    async def check(self, gold: str, answer: str, timeout_s: float) -> MathCheck:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        request = {"gold": gold, "answer": answer, "timeout": max(1, int(timeout_s))}
        self.proc.stdin.write(json.dumps(request).encode() + b"\n")
        await self.proc.stdin.drain()
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout_s + 1.0)
        if not line:
            raise RuntimeError(f"math-verify worker exited (code {self.proc.returncode})")
        reply = json.loads(line)
        if "error" in reply:
            raise ValueError(f"math-verify failed: {reply['error']}")
        return MathCheck(reply["equivalent"], reply["gold_parsed"], reply["answer_parsed"], reply["timed_out"])

    def kill(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()


class MathVerifier:
    """A small pool of math-verify workers, started on first use."""

    def __init__(self, workers: int = 2) -> None:
        self.workers = workers
        self._idle: list[_Worker] = []
        self._busy: set[_Worker] = set()
        self._slots: asyncio.Semaphore | None = None

    async def check(self, gold: str, answer: str, *, timeout_s: float) -> MathCheck:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.workers)
        async with self._slots:
            worker = self._idle.pop() if self._idle else await _Worker.start()
            self._busy.add(worker)
            reusable = False
            try:
                result = await worker.check(gold, answer, timeout_s)
                reusable = True
                return result
            except TimeoutError:
                raise TimeoutError(f"math-verify took longer than {timeout_s:g} s") from None
            except ValueError:
                reusable = True  # the worker answered with an error: still in step
                raise
            finally:
                self._busy.discard(worker)
                if reusable:
                    self._idle.append(worker)
                else:  # overran, cancelled mid-request or died: its pipe is out of step
                    worker.kill()

    async def close(self) -> None:
        workers = [*self._idle, *self._busy]
        self._idle.clear()
        self._busy.clear()
        for worker in workers:
            worker.kill()
            await worker.proc.wait()


def _serve() -> None:
    # math-verify warns on every unparseable answer: keep its records for _TimeoutWatch, off stderr
    mv_log = logging.getLogger("math_verify")
    mv_log.propagate = False
    mv_log.addHandler(logging.NullHandler())
    import math_verify  # noqa: F401  (before "ready": the first timed check must not pay the import)

    print("ready", flush=True)
    for line in sys.stdin:
        try:
            req = json.loads(line)
            c = check(req["gold"], req["answer"], int(req["timeout"]))
            reply = {
                "equivalent": c.equivalent,
                "gold_parsed": c.gold_parsed,
                "answer_parsed": c.answer_parsed,
                "timed_out": c.timed_out,
            }
        except Exception as e:  # math-verify's own time-out included
            reply = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    _serve()
