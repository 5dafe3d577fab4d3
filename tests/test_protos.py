"""The contract: buf lint, buf breaking against the previous commit, and stubs not stale."""

from __future__ import annotations

import filecmp
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUF = ROOT / "tools" / "node_modules" / ".bin" / "buf"
STUBS = ROOT / "services" / "rollmesh" / "proto" / "v1"

needs_buf = pytest.mark.skipif(not BUF.exists(), reason="buf CLI not installed: run `make setup`")


def _git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)


@needs_buf
def test_buf_lint() -> None:
    result = subprocess.run([BUF, "lint"], cwd=ROOT / "protos", capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_buf
def test_buf_breaking_against_previous_commit() -> None:
    if _git("rev-parse", "--verify", "-q", "HEAD~1:protos/buf.yaml").returncode != 0:
        pytest.skip("no previous commit with protos/ (first commit or shallow clone)")
    result = subprocess.run(
        [BUF, "breaking", "protos", "--against", ".git#ref=HEAD~1,subdir=protos"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, "breaking change in protos/:\n" + result.stdout + result.stderr


@needs_buf
def test_buf_breaking_detects_a_removed_field(tmp_path: Path) -> None:
    """The check above can fail: removing a field from a copy of the contract is caught."""
    copy = tmp_path / "protos"
    shutil.copytree(ROOT / "protos", copy)
    proto = copy / "rollmesh" / "v1" / "messages.proto"
    proto.write_text(proto.read_text().replace("  string answer = 4;\n", ""))
    result = subprocess.run(
        [BUF, "breaking", str(copy), "--against", str(ROOT / "protos")], capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "answer" in result.stdout + result.stderr


def test_python_stubs_are_fresh(tmp_path: Path) -> None:
    out = tmp_path / "v1"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--out", str(out)], check=True)
    fresh = sorted(p.name for p in out.iterdir())
    checked_in = sorted(p.name for p in STUBS.iterdir() if p.is_file() and p.name != "__pycache__")
    assert fresh == checked_in, "stub files differ: run `make protos`"
    _, mismatch, errors = filecmp.cmpfiles(out, STUBS, fresh, shallow=False)
    assert not mismatch and not errors, f"stale stubs {mismatch + errors}: run `make protos`"


def test_the_reasons_the_spec_names_are_values_of_error_reason() -> None:
    """docs/protocol.md's reason table and the ErrorReason enum name the same things."""
    from rollmesh.proto.v1 import errors_pb2

    spec = (ROOT / "docs" / "protocol.md").read_text()
    table = spec.split("### 2.2 Reasons")[1].split("### 2.3")[0]
    named = set(re.findall(r"^\| `([A-Z_]+)`(?:, `([A-Z_]+)`)?", table, re.MULTILINE))
    reasons = {name for pair in named for name in pair if name}
    assert len(reasons) > 15
    assert reasons <= set(errors_pb2.ErrorReason.keys())
