"""`rollmesh` commands of the trainer. Heavy imports stay inside the commands."""

from __future__ import annotations

from typing import Annotated

import typer

ConfigOpt = Annotated[str, typer.Option("--config", "-c", help="Trainer TOML file (deploy/trainer.example.toml).")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="Override a config key: loss.kl_coef=0.01 (JSON values parsed).")
]


def _serve(config: str, overrides: list[str], max_steps: int | None) -> None:
    import os

    from ..errors import RollmeshError
    from ..telemetry import setup_logging, setup_tracing

    setup_logging("rollmesh-trainer")
    # Its steps' spans link to the traces of the rollouts they train on (exported when
    # ROLLMESH_OTEL_EXPORTER is set).
    setup_tracing("rollmesh-trainer")
    try:
        from ..trainer.config import load_trainer_config

        cfg = load_trainer_config(config, overrides)
        from ..security.tls import TlsConfig, configure

        # [tls] of the trainer's file, over ROLLMESH_TLS_* (how the run launcher passes them).
        configure(TlsConfig.from_env().overridden(**cfg.tls.settings()))
        if max_steps is not None:
            cfg.max_steps = max_steps
        from ..trainer.loop import run_trainer

        summary = run_trainer(cfg)
    except RollmeshError as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from e
    if summary is not None and os.environ.get("RANK", "0") == "0":
        typer.echo(
            f"trainer stopped at step {summary.steps}, policy version {summary.policy_version}"
            + (f", checkpoint {summary.checkpoint}" if summary.checkpoint else ""),
            err=True,
        )


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Adds this subsystem's commands to the top-level app and its benchmark to `rollmesh bench`."""
    trainer_app = typer.Typer(
        rich_markup_mode=None,
        help="The DeepSpeed trainer: GRPO-family RL on the run's rollouts, SFT on exported trajectories.",
        no_args_is_help=True,
    )
    app.add_typer(trainer_app, name="trainer")

    @trainer_app.command("serve")
    def serve(config: ConfigOpt, set_: SetOpt = None) -> None:
        """Train on the run's rollouts until stopped (SIGTERM: finish the step, checkpoint, exit).
        Multi-GPU/multi-node: start it under `torchrun` or `deepspeed` (one process per GPU)."""
        _serve(config, set_ or [], None)

    @trainer_app.command("run")
    def run(
        config: ConfigOpt,
        set_: SetOpt = None,
        max_steps: Annotated[
            int | None, typer.Option(help="Stop after this many steps in all (resume counts).")
        ] = None,
    ) -> None:
        """Train for max_steps (config or option), checkpoint and exit; resumes like serve."""
        _serve(config, set_ or [], max_steps)

    @trainer_app.command("ds-config")
    def ds_config(config: ConfigOpt, set_: SetOpt = None) -> None:
        """Print the DeepSpeed config the trainer would use (after deepspeed.config overrides)."""
        import json

        from ..trainer.config import load_trainer_config
        from ..trainer.model import deepspeed_config

        typer.echo(json.dumps(deepspeed_config(load_trainer_config(config, set_ or [])), indent=2))

    @bench_app.command("trainer")
    def bench_trainer(
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
        model: Annotated[str, typer.Option(help="small (default) or tiny (the test model).")] = "small",
        sequences: Annotated[int, typer.Option(help="Sequences per step.")] = 8,
        seq_len: Annotated[int, typer.Option(help="Tokens per sequence (prompt + completion).")] = 256,
        steps: Annotated[int, typer.Option(help="Timed steps per trainer (after one warm-up).")] = 3,
    ) -> None:
        """Trainer tokens/s (DeepSpeed engine) vs TRL's GRPOTrainer loss step (or a plain torch loop)."""
        from ..apps.bench.trainer import main as bench_main

        bench_main(as_json=as_json, model=model, sequences=sequences, seq_len=seq_len, steps=steps)
