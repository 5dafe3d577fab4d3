"""`rollmesh eval --model openai:MODEL@URL`: an API model evaluated end to end, and kept out of
training. The API is rollmesh's own OpenAI facade on the tiny model (hf backend); eval starts its
own `rollmesh inference serve --backend openai` in front of it, the environment is the built-in
arithmetic on a real environment server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from rollmesh.apps.eval import EvalOptions, run_eval
from rollmesh.apps.results import ResultsDir
from rollmesh.env.loader import load_environments
from rollmesh.env.server import EnvironmentServer
from rollmesh.security.tls import TlsConfig

pytest.importorskip("torch")

SECRET = "sk-eval-secret-never-written"


@pytest.fixture(scope="module")
async def api(tiny_model_dir: Path) -> AsyncIterator[tuple[str, str]]:
    """(base URL, model name) of the OpenAI facade on the tiny model."""
    from rollmesh.inference.backends.hf import HFBackend
    from rollmesh.inference.core import InferenceCore
    from rollmesh.inference.openai_api import start_http

    backend = await HFBackend.create(str(tiny_model_dir), dtype="float32")
    core = InferenceCore(backend)
    site = await start_http(core, "127.0.0.1", 0, tls=TlsConfig())
    yield f"{site.url}/v1", backend.model
    await site.stop()
    await core.aclose()
    await backend.close()


@pytest.fixture(scope="module")
async def arithmetic() -> AsyncIterator[str]:
    async with EnvironmentServer(load_environments("rollmesh.examples.arithmetic")) as server:
        yield server.address


async def test_eval_of_an_api_model_reports_model_and_endpoint_and_is_never_trained(
    api: tuple[str, str], arithmetic: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rollmesh.trainer.batching import InvalidTrajectory, trajectory_samples

    url, model = api
    monkeypatch.setenv("EVAL_API_KEY", SECRET)
    out = tmp_path / "run"
    opts = EvalOptions(
        env="arithmetic",
        model=f"openai:{model}@{url}",
        api_key_env="EVAL_API_KEY",
        env_addresses=[arithmetic],
        num_tasks=2,
        rollouts_per_task=2,
        max_tokens=8,
        temperature=0.0,
        out=str(out),
        publish=False,
        progress=False,
        startup_timeout_s=60,
    )
    outcome = await run_eval(opts)
    assert outcome.exit_code == 0, outcome.message
    run = outcome.summary["run"]
    assert run["model"] == model and run["endpoint"] == url
    report = (out / "report.md").read_text()
    assert model in report and url in report
    trajectories = ResultsDir(out).trajectories()
    assert len(trajectories) == 4
    for t in trajectories:
        assert not t.HasField("error"), t.error
        p = t.provenance
        assert p.text_only and p.endpoint == url and p.model == model
        assert t.turns and all(not turn.prompt_ids and not turn.completion_ids for turn in t.turns)
        assert len([m for m in t.messages if m.role == "assistant" and m.content]) == len(t.turns)
        with pytest.raises(InvalidTrajectory) as e:  # the trainer dead-letters it with this reason
            trajectory_samples(t)
        assert e.value.reason == "TEXT_ONLY"
    written = [p for p in out.rglob("*") if p.is_file()]
    assert written and not any(SECRET.encode() in p.read_bytes() for p in written)  # logs included


async def test_train_refuses_an_inference_server_without_token_ids(
    api: tuple[str, str], nats_url: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """`rollmesh train` on a running mesh whose registry holds an openai-backend server: refused with
    a clear message before any rollout."""
    from rich.console import Console
    from rollmesh.apps.train import load_train_config, train
    from rollmesh.inference.backends.openai import OpenAIBackend
    from rollmesh.inference.server import InferenceServer

    url, model = api
    config = tmp_path / "run.toml"
    config.write_text(
        f'run_id = "api-train"\ndir = "{tmp_path / "run"}"\nexternal_trainer = true\n'
        f'[mesh.nats]\nurl = "{nats_url}"\n[mesh.security]\nenabled = false\n'
        f'[rollout]\nenv = "arithmetic"\nmodel = "{model}"\n[trainer]\nmodel = "{tiny_model_dir}"\n'
    )
    console = Console(record=True, width=400)
    async with (
        EnvironmentServer(load_environments("rollmesh.examples.arithmetic"), nats_url=nats_url),
        InferenceServer(OpenAIBackend(url, model), nats_url=nats_url) as server,
    ):
        rc = await train(load_train_config(config), console)
    text = console.export_text()
    assert rc == 2, text
    assert "rollmesh train needs inference servers with token ids and weight updates" in text
    assert f"{server.address} ({model}: no token ids or weight updates)" in text
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
