"""Every error a rollmesh server can send names its cause (docs/protocol.md, "2. Errors"): in the
modules whose errors reach gRPC clients, each construction of a rollmesh.errors class carries
`reason=` with the name of a rollmesh.v1.ErrorReason value (or its class's own reason is one), the
class's status code is the one that value's comment in errors.proto gives, and no servicer aborts
with a bare `context.abort(code, text)`, which sends no ErrorInfo.

Static (AST) so that rarely taken error paths are checked too; one case per module."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from rollmesh import errors
from rollmesh.proto.v1 import errors_pb2
from rollmesh.rpc_errors import status_for

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "services" / "rollmesh"
PROTO = ROOT / "protos" / "rollmesh" / "v1" / "errors.proto"

REASONS = frozenset(errors_pb2.ErrorReason.keys()) - {"ERROR_REASON_UNSPECIFIED"}

# Not scanned: client-side code (its errors are raised in the caller's process) and code that runs
# only at start-up or from the command line (environment loading, model resolution, backend choice,
# test models).
CLIENT_OR_STARTUP = {
    "env/client.py",
    "env/stream.py",
    "env/loader.py",
    "inference/client.py",
    "inference/models.py",
    "inference/tiny.py",
    "inference/backends/__init__.py",
    "rubric/client.py",
}
SCANNED = sorted(
    str(p.relative_to(PKG))
    for pattern in ("env/*.py", "inference/**/*.py", "rubric/*.py", "hosting.py", "rpc.py", "convert.py")
    for p in PKG.glob(pattern)
    if str(p.relative_to(PKG)) not in CLIENT_OR_STARTUP
)

# Functions in scanned modules whose errors never reach a reply: they run when a server is built
# (a bad command line or config fails the start, not a call). module -> qualified names.
STARTUP_FUNCTIONS = {
    "inference/backends/scripted.py": {"load_script", "ScriptedBackend.from_spec", "ScriptedBackend.__init__"},
    "inference/backends/vllm.py": {"VLLMBackend.create"},
}
# Aborts that are not rollmesh errors: grpc.health.v1 answers NOT_FOUND for an unknown service name
# as that standard protocol says. module -> qualified names.
RAW_ABORTS = {"rpc.py": {"_HealthServicer.Check"}}


def _documented_codes() -> dict[str, str]:
    """ErrorReason value -> the status code its comment in errors.proto starts with."""
    codes: dict[str, str] = {}
    comment: list[str] = []
    for line in PROTO.read_text().splitlines():
        text = line.strip()
        if text.startswith("//"):
            comment.append(text[2:].strip())
            continue
        value = re.match(r"([A-Z][A-Z0-9_]*)\s*=\s*\d+\s*;", text)
        if value and comment:
            code = re.match(r"([A-Z_]+):", comment[0])
            if code:
                codes[value.group(1)] = code.group(1)
        comment = []
    return codes


CODES = _documented_codes()


@dataclass
class _Scan(ast.NodeVisitor):
    module: str
    classes: dict[str, type[errors.RollmeshError]] = field(default_factory=dict)  # local name -> class
    aliases: set[str] = field(default_factory=set)  # names bound to the rollmesh.errors module
    local_defaults: dict[str, str] = field(default_factory=dict)  # local subclass -> its class-level reason
    scope: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        source = node.module or ""
        is_errors = source == "rollmesh.errors" or (node.level and source == "errors")
        for a in node.names:
            if is_errors:
                cls = getattr(errors, a.name, None)
                if isinstance(cls, type) and issubclass(cls, errors.RollmeshError):
                    self.classes[a.asname or a.name] = cls
            elif (source == "rollmesh" or (node.level and not source)) and a.name == "errors":
                self.aliases.add(a.asname or a.name)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        bases = [self._error_class(b) for b in node.bases]
        base = next((b for b in bases if b is not None), None)
        if base is not None and not self.scope:
            self.classes[node.name] = base
            for stmt in node.body:
                if (
                    isinstance(stmt, ast.Assign)
                    and [getattr(t, "id", None) for t in stmt.targets] == ["reason"]
                    and isinstance(stmt.value, ast.Constant)
                ):
                    self.local_defaults[node.name] = stmt.value.value
        self._within(node)

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self._within(node)

    visit_AsyncFunctionDef = visit_FunctionDef

    def _within(self, node: ast.AST) -> None:
        self.scope.append(node.name)  # type: ignore[attr-defined]
        self.generic_visit(node)
        self.scope.pop()

    def _error_class(self, func: ast.expr) -> type[errors.RollmeshError] | None:
        if isinstance(func, ast.Name):
            return self.classes.get(func.id)
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id in self.aliases:
            cls = getattr(errors, func.attr, None)
            return cls if isinstance(cls, type) and issubclass(cls, errors.RollmeshError) else None
        return None

    def _in(self, table: dict[str, set[str]]) -> bool:
        names = table.get(self.module, set())
        return any(".".join(self.scope[:depth]) in names for depth in range(1, len(self.scope) + 1))

    def visit_Call(self, node: ast.Call) -> None:
        where = f"{self.module}:{node.lineno}"
        func = node.func
        if (
            isinstance(func, ast.Attribute)
            and func.attr == "abort"
            and isinstance(func.value, ast.Name)
            and "context" in func.value.id
            and not self._in(RAW_ABORTS)
        ):
            self.problems.append(f"{where}: {func.value.id}.abort(...) sends no ErrorInfo; use rpc_errors.abort")
        cls = self._error_class(func)
        if cls is not None and not self._in(STARTUP_FUNCTIONS):
            self._check_construction(node, cls, where)
        self.generic_visit(node)

    def _check_construction(self, node: ast.Call, cls: type[errors.RollmeshError], where: str) -> None:
        name = ast.unparse(node.func)
        given = next((k.value for k in node.keywords if k.arg == "reason"), None)
        if given is None:
            reason = self.local_defaults.get(name, cls.reason if name not in self.local_defaults else None)
            if reason not in REASONS:
                self.problems.append(f"{where}: {name}(...) without reason= (would send {reason!r})")
                return
        elif isinstance(given, ast.Constant) and isinstance(given.value, str):
            reason = given.value
            if reason not in REASONS:
                self.problems.append(f"{where}: {name}(reason={reason!r}) is not an ErrorReason value")
                return
        else:
            self.problems.append(f"{where}: {name}(reason=...) must be a string literal, got {ast.unparse(given)}")
            return
        code = status_for(cls("")).name
        if CODES.get(reason) != code:
            self.problems.append(
                f"{where}: {name} sends {code}, but errors.proto documents {reason} as {CODES.get(reason)}"
            )


def test_the_scanned_set_is_what_it_claims() -> None:
    assert {"inference/server.py", "rubric/server.py", "env/server.py", "rpc.py"} <= set(SCANNED)
    assert not CLIENT_OR_STARTUP & set(SCANNED)
    assert set(CODES) == REASONS, "every ErrorReason value's comment starts with its status code"


@pytest.mark.parametrize("module", SCANNED)
def test_errors_carry_a_reason_of_the_enum(module: str) -> None:
    tree = ast.parse((PKG / module).read_text(), filename=module)
    scan = _Scan(module)
    scan.visit(tree)
    assert not scan.problems, "\n".join(scan.problems)
    # exemptions name functions that exist, so that a rename cannot leave a stale one behind
    exempt = STARTUP_FUNCTIONS.get(module, set()) | RAW_ABORTS.get(module, set())
    assert exempt <= _qualified_names(tree), exempt - _qualified_names(tree)


def _qualified_names(tree: ast.AST) -> set[str]:
    found: set[str] = set()

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                found.add(prefix + child.name)
                walk(child, f"{prefix}{child.name}.")

    walk(tree, "")
    return found
