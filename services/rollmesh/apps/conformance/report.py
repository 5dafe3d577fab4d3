"""Conformance results: one entry per rule, each citing the section of docs/protocol.md it tests."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

SPEC = "docs/protocol.md"


class Status(enum.StrEnum):
    PASS = "PASS"
    FAIL = "FAIL"
    SKIP = "SKIP"


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: Status
    detail: str
    duration_s: float
    # The rule in one sentence, and the spec section that states it ("3.2").
    rule: str = ""
    spec: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": str(self.status),
            "rule": self.rule,
            "spec": f"{SPEC} {self.spec}" if self.spec else SPEC,
            "detail": self.detail,
            "duration_s": round(self.duration_s, 4),
        }


@dataclass
class ConformanceReport:
    address: str
    checks: list[CheckResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.status is not Status.FAIL for c in self.checks)

    def result(self, name: str) -> CheckResult:
        return next(c for c in self.checks if c.name == name)

    def counts(self) -> dict[Status, int]:
        return {s: sum(c.status is s for c in self.checks) for s in Status}

    def to_dict(self) -> dict[str, Any]:
        counts = self.counts()
        return {
            "address": self.address,
            "passed": self.passed,
            "spec": SPEC,
            "counts": {str(s).lower(): n for s, n in counts.items()},
            "checks": [c.to_dict() for c in self.checks],
        }


STYLES = {Status.PASS: "bold green", Status.FAIL: "bold red", Status.SKIP: "yellow"}


def print_report(report: ConformanceReport) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"rollmesh conformance: {report.address}", title_justify="left")
    table.add_column("check", no_wrap=True)
    table.add_column("spec", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("duration", justify="right", no_wrap=True)
    table.add_column("detail", overflow="fold")
    for c in report.checks:
        table.add_row(c.name, c.spec, f"[{STYLES[c.status]}]{c.status}[/]", f"{c.duration_s * 1000:.0f} ms", c.detail)
    console = Console()
    console.print(table)
    verdict = "[bold green]conformant[/]" if report.passed else "[bold red]NOT conformant[/]"
    passed, failed, skipped = report.counts().values()
    console.print(f"{verdict}: {passed} passed, {failed} failed, {skipped} skipped (rules: {SPEC})")
