"""`rollmesh conformance ADDRESS`: the rules of docs/protocol.md checked against any environment
server, one check per rule, each citing the section that states it.

    report = await run_conformance("127.0.0.1:50051")
    assert report.passed, report.checks
"""

from .checks import CHECKS, Check
from .probe import Options, example_arguments
from .report import CheckResult, ConformanceReport, Status, print_report
from .runner import run_cli, run_conformance

__all__ = [
    "CHECKS",
    "Check",
    "CheckResult",
    "ConformanceReport",
    "Options",
    "Status",
    "example_arguments",
    "print_report",
    "run_cli",
    "run_conformance",
]
