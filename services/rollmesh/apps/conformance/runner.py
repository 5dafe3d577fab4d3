"""Runs the checks in order, each under its own timeout; an exception in one is a FAIL of that
check only. The drain check, which stops the server, runs last."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable

import grpc

from .checks import CHECKS, Check, describe_error
from .probe import CheckFailed, Options, Probe, Skipped
from .report import CheckResult, ConformanceReport, Status, print_report


async def run_check(c: Check, name: str, fn: Callable[[], Awaitable[str]], timeout_s: float) -> CheckResult:
    start = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_s):
            status, detail = Status.PASS, await fn()
    except Skipped as e:
        status, detail = Status.SKIP, str(e)
    except TimeoutError:
        status, detail = Status.FAIL, f"timed out after {timeout_s:g} s"
    except CheckFailed as e:
        status, detail = Status.FAIL, str(e)
    except Exception as e:  # an error the server caused fails this check only
        status, detail = Status.FAIL, describe_error(e)
    return CheckResult(name, status, detail, time.perf_counter() - start, c.rule, c.spec)


def check_timeout(c: Check, options: Options) -> float:
    """Waiting checks get their wait on top of the per-check timeout."""
    return options.timeout_s + (2 * options.max_wait_s + 10 if c.name == "idle-timeout" else 0)


async def run_conformance(
    address: str, *, timeout_s: float = 30.0, options: Options | None = None
) -> ConformanceReport:
    """Runs every check against the environment server at `address`, in order."""
    options = options or Options(timeout_s=timeout_s)
    report = ConformanceReport(address)
    probe = Probe(address, options)
    try:
        try:
            await asyncio.wait_for(probe.channel.channel_ready(), options.timeout_s)
            probe.baseline_active = await probe.active()
        except (TimeoutError, grpc.aio.AioRpcError) as e:
            reason = f"timed out after {options.timeout_s:g} s" if isinstance(e, TimeoutError) else describe_error(e)
            detail = f"cannot reach {address}: {reason}"
            report.checks = [
                CheckResult(f"{c.name}:*" if c.per_env else c.name, Status.FAIL, detail, 0.0, c.rule, c.spec)
                for c in CHECKS
            ]
            return report
        for c in sorted(CHECKS, key=lambda c: c.last):
            limit = check_timeout(c, options)
            if not c.per_env:
                report.checks.append(await run_check(c, c.name, lambda c=c: c.fn(probe), limit))
                continue
            try:
                envs = list((await probe.info()).environments)
            except grpc.aio.AioRpcError as e:
                report.checks.append(
                    CheckResult(
                        f"{c.name}:*", Status.FAIL, f"Describe failed: {describe_error(e)}", 0.0, c.rule, c.spec
                    )
                )
                continue
            for env in envs:
                name = f"{c.name}:{env.name}"
                report.checks.append(await run_check(c, name, lambda c=c, env=env: c.fn(probe, env), limit))
        return report
    finally:
        await probe.close()


def run_cli(address: str, *, as_json: bool, options: Options) -> int:
    """Runs the checks and prints them; the exit code is 0 only when none failed."""
    report = asyncio.run(run_conformance(address, options=options))
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print_report(report)
    return 0 if report.passed else 1
