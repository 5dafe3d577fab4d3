"""`rollmesh rubric ...` commands and `rollmesh bench rubric`. Heavy imports stay inside the commands."""

from __future__ import annotations

from typing import Annotated

import typer

rubric_app = typer.Typer(
    help="The rubric service: reward functions, LLM judges, live scoring of production traces.", no_args_is_help=True
)

ConfigOpt = Annotated[str, typer.Option("--config", "-c", help="The service's TOML file ([[rubric]], [monitor], ...).")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="Override a config value: section.key=value (repeatable).")
]


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _load(config: str, overrides: list[str]):  # -> RubricServiceConfig
    from ..config import load_config
    from ..errors import RollmeshError
    from .config import RubricServiceConfig

    try:
        return load_config(RubricServiceConfig, config, overrides)
    except RollmeshError as e:
        _fail(str(e))


@rubric_app.command("serve")
def serve(
    config: ConfigOpt,
    nats: Annotated[
        str | None,
        typer.Option(
            "--nats", envvar="ROLLMESH_NATS_URL", help="NATS URL: registry, and live scoring of rollmesh.monitor.*"
        ),
    ] = None,
    host: Annotated[str | None, typer.Option(help="gRPC interface (default: [server] host).")] = None,
    port: Annotated[int | None, typer.Option(help="gRPC port; 0 picks a free one (default: [server] port).")] = None,
    dashboard_port: Annotated[
        int | None, typer.Option(help="Dashboard/metrics HTTP port; 0 picks a free one (default: [dashboard] port).")
    ] = None,
    no_dashboard: Annotated[bool, typer.Option("--no-dashboard", help="Serve no dashboard or /metrics.")] = False,
    set_: SetOpt = None,
) -> None:
    """Serve rubrics over gRPC; with --nats, also score production traces live and serve the dashboard."""
    import asyncio

    from ..errors import RollmeshError
    from ..telemetry import setup_logging, setup_tracing

    overrides = list(set_ or [])
    if host is not None:
        overrides.append(f"server.host={host}")
    if port is not None:
        overrides.append(f"server.port={port}")
    if dashboard_port is not None:
        overrides.append(f"dashboard.port={dashboard_port}")
    if no_dashboard:
        overrides.append("dashboard.enabled=false")
    cfg = _load(config, overrides)
    setup_logging("rollmesh-rubric")
    setup_tracing("rollmesh-rubric")

    from .service import serve as serve_service

    def announce(line: str) -> None:
        typer.echo(line, err=True)

    try:
        asyncio.run(serve_service(cfg, nats, announce=announce))
    except RollmeshError as e:
        _fail(str(e))
    except RuntimeError as e:  # a port is taken
        _fail(str(e))


@rubric_app.command("ls")
def ls(config: ConfigOpt, set_: SetOpt = None) -> None:
    """The rubrics of a config file (functions, weights) and its app -> rubric routes."""
    from rich.console import Console
    from rich.table import Table

    cfg = _load(config, list(set_ or []))
    table = Table("rubric", "function", "uses", "weight", "params")
    for r in cfg.rubric:
        for i, f in enumerate(r.functions):
            table.add_row(r.name if i == 0 else "", f.name, f.function, f"{f.weight:g}", str(f.params or ""))
    console = Console()
    console.print(table)
    routes = [f"{app} -> {rubric}" for app, rubric in sorted(cfg.monitor.apps.items())]
    if cfg.monitor.default:
        routes.append(f"(any other app) -> {cfg.monitor.default}")
    console.print("live scoring: " + ("; ".join(routes) if routes else "off (no [monitor] apps or default)"))


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Adds this subsystem's commands to the top-level app and its benchmark to `rollmesh bench`."""
    app.add_typer(rubric_app, name="rubric")

    @bench_app.command("rubric")
    def bench_rubric(
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
        traces: Annotated[int, typer.Option(help="Traces published and scored.")] = 20000,
        in_process: Annotated[
            bool, typer.Option("--in-process", help="Run the rubric service in this process (default: a subprocess).")
        ] = False,
    ) -> None:
        """Live scoring over NATS end to end (traces/s, latency) vs the same rubric called in-process."""
        from ..bench.rubric import main as bench_main

        bench_main(as_json=as_json, traces=traces, in_process=in_process)
