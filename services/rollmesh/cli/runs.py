"""`rollmesh` commands of the orchestrator: eval, export, up, and `rollmesh bench rollouts`.
Heavy imports stay inside the commands."""

from __future__ import annotations

from typing import Annotated

import typer

NatsOpt = Annotated[
    str | None,
    typer.Option(
        "--nats", envvar="ROLLMESH_NATS_URL", help="NATS URL (registry and bus); default nats://127.0.0.1:4222."
    ),
]


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def eval_command(
    env: Annotated[
        list[str] | None,
        typer.Option(
            help="Environment name (found in the registry); repeat it, as NAME:WEIGHT, to evaluate a mixture."
        ),
    ] = None,
    mixture: Annotated[
        str | None, typer.Option(help="TOML file of [[envs]] entries: a mixture with per-environment settings.")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="host:port of an inference server, a model name in the registry, a local path, 'tiny', or "
            "openai:MODEL@URL (an OpenAI-compatible API, served for the run; text only)."
        ),
    ] = None,
    api_key_env: Annotated[
        str | None,
        typer.Option(help="With --model openai:MODEL@URL: the environment variable holding the API key."),
    ] = None,
    num_tasks: Annotated[
        int | None, typer.Option("-n", "--num-tasks", help="Tasks to evaluate (0 = all). [100]")
    ] = None,
    rollouts: Annotated[int | None, typer.Option("-r", "--rollouts", help="Rollouts per task. [4]")] = None,
    split: Annotated[str | None, typer.Option(help="Task split. [test]")] = None,
    out: Annotated[
        str | None,
        typer.Option(help="Results directory; an existing one is resumed. [rollmesh-runs/<run id>]"),
    ] = None,
    run_id: Annotated[str | None, typer.Option(help="Run id (bus subject token). [eval-<env>-<time>]")] = None,
    nats: NatsOpt = None,
    env_address: Annotated[
        list[str] | None, typer.Option("--env-address", help="host:port of an environment server (repeatable).")
    ] = None,
    rubric: Annotated[str | None, typer.Option(help="Score with this rubric of the rubric service.")] = None,
    rubric_address: Annotated[str | None, typer.Option(help="host:port of the rubric service.")] = None,
    concurrency: Annotated[int | None, typer.Option(help="Episodes in flight. [32]")] = None,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature. [1.0]")] = None,
    top_p: Annotated[float | None, typer.Option(help="Nucleus sampling. [1.0]")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Tokens per model call. [256]")] = None,
    seed: Annotated[int | None, typer.Option(help="Base sampling seed (per-rollout seeds derive from it).")] = None,
    backend: Annotated[str, typer.Option(help="Backend of a local model's server: auto | hf | vllm.")] = "auto",
    publish: Annotated[bool, typer.Option(help="Also publish trajectories to JetStream (ROLLOUTS).")] = True,
    retry_errors: Annotated[bool, typer.Option(help="On resume, run errored rollouts again.")] = True,
    pass_threshold: Annotated[float, typer.Option(help="A rollout passes when its reward is at least this.")] = 1.0,
    step_timeout: Annotated[float, typer.Option(help="Seconds per environment exchange.")] = 120.0,
    episode_timeout: Annotated[float, typer.Option(help="Seconds per episode.")] = 1800.0,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
) -> None:
    """Evaluate a model on an environment: trajectories, summary (mean reward, pass@k, errors) and a report.

    Exit codes: 0 rollouts finished; 1 none finished; 2 could not start (bad input, unknown
    environment or model, unreachable servers or bus); 130 interrupted (rerun with --out to resume).
    """
    from ..apps.eval import EvalOptions, environments, main
    from ..errors import InvalidArgumentError
    from ..telemetry import setup_tracing
    from .security_options import configure_client

    configure_client("orchestrator")
    setup_tracing("rollmesh-orchestrator")
    try:
        single, envs = environments(env or [], mixture)
    except InvalidArgumentError as e:
        _fail(str(e))
    opts = EvalOptions(
        env=single,
        envs=envs,
        model=model,
        num_tasks=num_tasks,
        rollouts_per_task=rollouts,
        split=split,
        out=out,
        run_id=run_id,
        nats_url=nats,
        env_addresses=env_address or [],
        rubric=rubric,
        rubric_address=rubric_address,
        concurrency=concurrency,
        temperature=temperature,
        top_p=top_p,
        max_tokens=max_tokens,
        seed=seed,
        backend=backend,
        api_key_env=api_key_env,
        publish=publish,
        retry_errors=retry_errors,
        pass_threshold=pass_threshold,
        step_timeout_s=step_timeout,
        episode_timeout_s=episode_timeout,
        progress=progress,
    )
    raise typer.Exit(main(opts, as_json=as_json))


def export_command(
    run: Annotated[
        str, typer.Option(help="A results directory, a run id under rollmesh-runs/, or a run id on the bus.")
    ],
    fmt: Annotated[str, typer.Option("--format", help="jsonl | parquet.")] = "jsonl",
    out: Annotated[str | None, typer.Option(help="Output file. [<run>.sft.<format>]")] = None,
    min_reward: Annotated[float | None, typer.Option(help="Keep rollouts with at least this reward.")] = None,
    per_turn: Annotated[bool, typer.Option(help="One row per model call instead of per rollout.")] = False,
    nats: NatsOpt = None,
) -> None:
    """Turn stored trajectories into SFT/distillation data: chat messages with the exact token ids and masks."""
    from pathlib import Path

    from ..apps.export import export, load_run
    from ..errors import RollmeshError

    try:
        source, trajectories = load_run(run, nats_url=nats or "nats://127.0.0.1:4222")
        name = Path(run).name or "run"
        target = Path(out) if out else Path(f"{name}.sft.{fmt}")
        counts = export(trajectories, target, fmt=fmt, min_reward=min_reward, per_turn=per_turn)
    except RollmeshError as e:
        _fail(str(e))
    dropped = ", ".join(
        f"{n} {why}"
        for n, why in (
            (counts.errored, "errored"),
            (counts.below_min_reward, f"below reward {min_reward}"),
            (counts.duplicates, "duplicate"),
        )
        if n
    )
    typer.echo(
        f"{counts.rows} rows from {counts.exported} of {counts.read} trajectories ({source}) -> {target}"
        + (f"; dropped {dropped}" if dropped else ""),
        err=True,
    )
    if counts.exported == 0:
        raise typer.Exit(1)


def up_command(
    config: Annotated[str | None, typer.Argument(help="Mesh TOML file (see deploy/mesh.example.toml).")] = None,
    env: Annotated[
        list[str] | None, typer.Option("--env", help="Environment to serve (repeatable; replaces the file's).")
    ] = None,
    model: Annotated[str | None, typer.Option(help="Model to serve: a path, 'tiny' or 'smollm2'.")] = None,
    backend: Annotated[str | None, typer.Option(help="Inference backend: auto | hf | vllm.")] = None,
    no_inference: Annotated[bool, typer.Option("--no-inference", help="Start no inference server.")] = False,
    rubric_config: Annotated[
        str | None, typer.Option(help="Rubric service TOML: also start the rubric service.")
    ] = None,
    nats_port: Annotated[int | None, typer.Option(help="Embedded NATS port (0 = any free). [4222 when free]")] = None,
    nats: Annotated[str | None, typer.Option("--nats", help="Use this NATS server instead of an embedded one.")] = None,
    directory: Annotated[
        str | None, typer.Option("--dir", help="Logs, NATS store and mesh.json. [rollmesh-mesh]")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Config override key.path=value (repeatable).")
    ] = None,
) -> None:
    """Start the local mesh (NATS, environment servers, inference, rubric) until ctrl-C."""
    from ..apps.launcher import EnvServerConfig, InferenceConfig, MeshRubricConfig, load_mesh_config, run_up
    from ..errors import RollmeshError

    try:
        cfg = load_mesh_config(config, set_ or [])
        if env:
            cfg.envs = [EnvServerConfig(target=list(env))]
        if no_inference:
            cfg.inference = None
        elif model or backend:
            base = (cfg.inference or InferenceConfig()).model_dump()
            given = {k: v for k, v in (("model", model), ("backend", backend)) if v}
            cfg.inference = InferenceConfig.model_validate({**base, **given})
        if rubric_config:
            cfg.rubric = MeshRubricConfig(config=rubric_config)
        if nats_port is not None:
            cfg.nats.port = nats_port
        if nats:
            cfg.nats.url = nats
        if directory:
            cfg.dir = directory
    except (RollmeshError, ValueError) as e:
        _fail(str(e))
    raise typer.Exit(run_up(cfg))


def bench_rollouts(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    episodes: Annotated[int, typer.Option(help="Episodes per measurement.")] = 1024,
    concurrency: Annotated[int, typer.Option(help="Episodes in flight.")] = 256,
    replicas: Annotated[
        list[int] | None, typer.Option("--replicas", help="Environment replicas to measure (repeatable). [1, 2]")
    ] = None,
    publish: Annotated[bool, typer.Option(help="Publish trajectories to JetStream.")] = True,
) -> None:
    """Episodes/s through the mesh (rollout engine, environment replicas, JetStream) vs in-process episodes."""
    from ..apps.bench.rollouts import main as bench_main

    bench_main(as_json, episodes=episodes, concurrency=concurrency, replicas=replicas or [1, 2], publish=publish)


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Adds this subsystem's commands to the top-level app and its benchmark to `rollmesh bench`."""
    app.command("eval")(eval_command)
    app.command("export")(export_command)
    app.command("up")(up_command)
    bench_app.command("rollouts")(bench_rollouts)
