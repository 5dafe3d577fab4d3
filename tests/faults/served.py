"""A server subprocess for the fault tests, in any language: output to a file, ready once it
prints its address, its resident memory readable."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ROLLMESH = [sys.executable, "-m", "rollmesh.cli"]
SERVER_LINE = re.compile(r"server on (\S+:\d+)")


class Served:
    """A server subprocess whose output goes to a file; ready when it prints its address."""

    def __init__(self, argv: list[str], log: Path) -> None:
        self.log = log
        self.proc = subprocess.Popen(argv, stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + 120
        while not (m := SERVER_LINE.search(self.text())):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError(f"{argv} did not start:\n{self.text()[-3000:]}")
            time.sleep(0.05)
        self.address = m.group(1)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
