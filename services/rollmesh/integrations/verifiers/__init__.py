"""Environments written against verifiers' classic API (0.3.x: `SingleTurnEnv`, `MultiTurnEnv`,
`ToolEnv`, `StatefulToolEnv` with a `Rubric`) served as rollmesh environments, and verifiers 0.4
(`verifiers.v1`) Taskset + Harness environments served for RunEpisode.

verifiers is imported only when a module's `load_environment()` returned one of its
environments, so the rest of rollmesh runs without it installed."""

from __future__ import annotations

from typing import Any


def is_verifiers_env(obj: Any) -> bool:
    """True for a verifiers environment, told apart by its class's module, without importing
    verifiers."""
    return any(cls.__module__.split(".")[0] == "verifiers" for cls in type(obj).__mro__)


def adapt(obj: Any, *, name: str) -> Any:
    """The rollmesh `Environment` hosting `obj` when it is a verifiers environment, else None."""
    if not is_verifiers_env(obj):
        return None
    if any(cls.__module__.startswith("verifiers.v1.") for cls in type(obj).__mro__):
        from .v1 import VerifiersV1Env

        return VerifiersV1Env(obj, name=name)
    from .adapter import VerifiersEnv

    return VerifiersEnv(obj, name=name)
