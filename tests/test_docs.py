"""The README and docs/ stay true: the configuration reference matches the code, every relative link
resolves, every `rollmesh` command and flag they show exists, and the README's tour runs as
written (its `rollmesh train` is the quickstart of tests/apps/test_train.py)."""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer.main
from rollmesh.cli import app

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def test_configuration_reference_is_generated_from_the_code() -> None:
    done = subprocess.run(
        [sys.executable, "scripts/gen_config_docs.py", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def _anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    headings = re.findall(r"^#+ (.+)$", text, re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve(page: Path) -> None:
    broken = []
    for target in LINK.findall(FENCE.sub("", page.read_text())):
        if re.match(r"^[a-z]+:", target):
            continue  # http(s), mailto
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(target)
    assert not broken, f"{page.name}: broken links {broken}"


def _commands(page: Path) -> Iterator[list[str]]:
    """Every `rollmesh ...` line of the shell blocks of a page, as argv after `rollmesh`."""
    for lang, body in FENCE.findall(page.read_text()):
        if lang not in ("bash", "sh", "shell", ""):
            continue
        for line in body.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip().rstrip("&").strip()
            match = re.match(r"^(?:\S*/)?rollmesh\s+(.*)$", line)
            if match:
                yield shlex.split(match.group(1))


def _resolve(argv: list[str]) -> tuple[Any, list[str]]:
    command: Any = typer.main.get_command(app)  # a click command (typer ships its own click)
    rest = list(argv)
    while hasattr(command, "commands") and rest and not rest[0].startswith("-"):
        sub = command.commands.get(rest[0])
        assert sub is not None, f"`rollmesh {' '.join(argv)}`: no command {rest[0]!r}"
        command, rest = sub, rest[1:]
    return command, rest


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_documented_commands_and_flags_exist(page: Path) -> None:
    for argv in _commands(page):
        command, rest = _resolve(argv)
        flags = {name for param in command.params for name in (*param.opts, *param.secondary_opts)}
        for word in rest:
            flag = word.split("=", 1)[0]
            if flag.startswith("--") or re.fullmatch(r"-[a-zA-Z]", flag):
                assert flag in flags, f"{page.name}: `rollmesh {' '.join(argv)}`: {command.name} has no {flag}"


# ---- the README's tour, run as written ----------------------------------------------------------


def _tour() -> tuple[list[str], str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## A five-minute tour", 1)[1].split("\n## ", 1)[0]
    lines, module = [], ""
    for lang, body in FENCE.findall(section):
        if lang == "python":
            module = body
        elif lang == "bash":
            lines += [ln for ln in (raw.split(" #", 1)[0].strip() for raw in body.splitlines()) if ln]
    return [ln for ln in lines if not ln.startswith("#")], module


def _wait_port(port: int, proc: subprocess.Popen, within_s: float = 60) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the server exited with {proc.returncode}"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"nothing listens on {port} after {within_s} s")


def test_the_readme_tour_runs_as_written(tmp_path: Path) -> None:
    lines, module = _tour()
    assert module.startswith("# my_env.py"), "the tour's environment module is named in its first line"
    (tmp_path / "my_env.py").write_text(module)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("ROLLMESH_NATS_URL", None)
    background: list[subprocess.Popen] = []
    ran = []
    try:
        for line in lines:
            argv = shlex.split(line.rstrip("&").strip())
            argv[0] = str(BIN / "rollmesh")
            words = argv[1:]
            if words == ["train"]:
                continue  # the quickstart: tests/apps/test_train.py runs it and checks the reward rises
            if words[:1] == ["up"]:
                log = (tmp_path / "up.log").open("w+")
                up = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
                background.append(up)
                deadline = time.monotonic() + 300
                while "ready." not in (tmp_path / "up.log").read_text():
                    assert up.poll() is None and time.monotonic() < deadline, (tmp_path / "up.log").read_text()
                    time.sleep(0.5)
                # `rollmesh up` takes 4222 when free, else prints the URL to use; the tour's next
                # commands find the registry either way.
                url = re.search(r"NATS (nats://[\d.:]+)", (tmp_path / "up.log").read_text())
                assert url, (tmp_path / "up.log").read_text()
                env["ROLLMESH_NATS_URL"] = url.group(1)
            elif line.endswith("&"):
                log = (tmp_path / f"bg{len(background)}.log").open("w")
                proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
                background.append(proc)
                _wait_port(int(argv[argv.index("--port") + 1]), proc)
            else:
                done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
                assert done.returncode == 0, (
                    f"`{line}` exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
                )
            ran.append(words[0])
    finally:
        for proc in reversed(background):
            proc.send_signal(signal.SIGINT if proc.args[1:2] == ["up"] else signal.SIGTERM)
        for proc in background:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
    assert {"env", "up", "ls", "eval", "export", "conformance"} <= set(ran), ran
    sft = tmp_path / "gn.sft.jsonl"
    assert sft.is_file()
    assert (tmp_path / "rollmesh-runs" / "gn" / "summary.json").is_file()
