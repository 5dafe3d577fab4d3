"""A model behind an OpenAI-compatible API, as `rollmesh eval --model openai:MODEL@URL` names it:
parsed here, and served for the run by a private `rollmesh inference serve --backend openai`."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InvalidArgumentError, quoted

PREFIX = "openai:"


@dataclass(frozen=True)
class ApiModel:
    model: str  # "" = the first model the endpoint lists
    base_url: str


def is_api_model(spec: str) -> bool:
    return spec.startswith(PREFIX)


def parse(spec: str) -> ApiModel:
    """`openai:MODEL@URL` (or `openai:URL`, for the endpoint's first model). The model name may
    itself hold `@`: the URL starts at the last `@` before `http`."""
    rest = spec[len(PREFIX) :]
    at = rest.rfind("@http")
    model, url = (rest[:at], rest[at + 1 :]) if at >= 0 else ("", rest)
    if not url.startswith(("http://", "https://")):
        raise InvalidArgumentError(
            f"--model {quoted(spec)}: write openai:MODEL@URL, e.g. openai:gpt-4o-mini@https://api.openai.com/v1"
        )
    return ApiModel(model=model, base_url=url)


def serve_command(api: ApiModel, *, api_key_env: str | None, host: str, grace_s: float) -> list[str]:
    """The inference server's command line; the key travels in the environment, never in argv."""
    from .launcher import rollmesh_command

    argv = rollmesh_command(
        "inference", "serve", "--backend", "openai", "--base-url", api.base_url,
        "--host", host, "--port", "0", "--grace", f"{grace_s:g}",
    )  # fmt: skip
    if api.model:
        argv += ["--model", api.model]
    if api_key_env:
        argv += ["--api-key-env", api_key_env]
    return argv
