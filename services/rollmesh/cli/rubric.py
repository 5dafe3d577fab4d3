"""`rollmesh rubric ...` commands and `rollmesh bench rubric`. Heavy imports stay inside the commands."""

from __future__ import annotations

from typing import Annotated

import typer

from .security_options import (
    InsecureOpt,
    TlsCaOpt,
    TlsCertOpt,
    TlsKeyOpt,
    TokensFileOpt,
    configure_client,
    configure_security,
)

rubric_app = typer.Typer(
    rich_markup_mode=None,
    help="The rubric service: reward functions, LLM judges, live scoring of production traces.",
    no_args_is_help=True,
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
    from ..rubric.config import RubricServiceConfig

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
    tls_cert: TlsCertOpt = None,
    tls_key: TlsKeyOpt = None,
    tls_ca: TlsCaOpt = None,
    tokens_file: TokensFileOpt = None,
    insecure: InsecureOpt = False,
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
    for host, what in ((cfg.server.host, "rubrics"), (cfg.dashboard.host, "the dashboard")):
        if what == "rubrics" or cfg.dashboard.enabled:
            configure_security(
                tls_cert,
                tls_key,
                tls_ca,
                tokens_file,
                table=cfg.tls.settings(),
                identity="rubric",
                serve=(host, what),
                insecure=insecure,
            )

    from ..monitor.service import serve as serve_service

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
    console.print("live scoring: " + ("; ".join(routes) if routes else "off (no \\[monitor] apps or default)"))


NatsOpt = Annotated[str, typer.Option("--nats", envvar="ROLLMESH_NATS_URL", help="NATS URL.")]


@rubric_app.command("publish")
def publish(
    app: Annotated[str, typer.Option(help="The app: traces go to rollmesh.monitor.<app>.")],
    message: Annotated[
        list[str] | None, typer.Option("--message", "-m", help="role:content, in order (repeatable).")
    ] = None,
    messages_file: Annotated[
        str | None, typer.Option("--messages-file", help="A JSON file with a list of chat messages.")
    ] = None,
    answer: Annotated[str, typer.Option(help="Reference answer, when known.")] = "",
    label: Annotated[list[str] | None, typer.Option("--label", help="key=value (repeatable).")] = None,
    trace_id: Annotated[str | None, typer.Option(help="Default: a fresh id.")] = None,
    nats: NatsOpt = "nats://127.0.0.1:4222",
) -> None:
    """Publish one production trace for live scoring (prints its trace id)."""
    import json
    from pathlib import Path

    from ..errors import RollmeshError
    from ..monitor.publish import publish_trace
    from ..telemetry import setup_tracing

    configure_client("publisher")
    setup_tracing("rollmesh-publisher")  # the score comes back in the trace this publish starts
    chat: list[dict[str, str]] = []
    if messages_file:
        try:
            chat = json.loads(Path(messages_file).read_text())
        except (OSError, ValueError) as e:
            _fail(f"cannot read messages from {messages_file}: {e}")
        if not isinstance(chat, list) or not all(isinstance(m, dict) for m in chat):
            _fail(f"{messages_file} must hold a JSON list of messages like {{'role': 'user', 'content': '...'}}")
    for item in message or []:
        role, sep, content = item.partition(":")
        if not sep or not role.strip():
            _fail(f"--message {item!r} must look like role:content (e.g. 'assistant:Hello!')")
        chat.append({"role": role.strip(), "content": content.strip()})
    if not chat:
        _fail("give the conversation: --message role:content (repeatable) or --messages-file")
    labels = {}
    for item in label or []:
        key, sep, value = item.partition("=")
        if not sep:
            _fail(f"--label {item!r} must look like key=value")
        labels[key] = value
    try:
        typer.echo(publish_trace(nats, app, chat, answer=answer, labels=labels, trace_id=trace_id))
    except RollmeshError as e:
        _fail(str(e))


@rubric_app.command("scores")
def scores(
    app: Annotated[str, typer.Option(help="An app, or '*' for all.")] = "*",
    count: Annotated[int | None, typer.Option("-n", help="Stop after this many scores.")] = None,
    from_start: Annotated[bool, typer.Option("--all", help="From what SCORES retains, not only new ones.")] = False,
    timeout: Annotated[float | None, typer.Option(help="Give up after this many seconds without a score.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    nats: NatsOpt = "nats://127.0.0.1:4222",
) -> None:
    """Print live scores (rollmesh.scores.<app>) as the rubric service publishes them."""
    import asyncio
    import json

    from google.protobuf.json_format import MessageToDict

    from ..errors import RollmeshError
    from ..monitor.publish import ScoreReader

    configure_client("reader")

    async def tail() -> int:
        seen = 0
        async with ScoreReader(nats, app, deliver="all" if from_start else "new") as reader:
            while count is None or seen < count:
                try:
                    score = await reader.next(timeout)
                except TimeoutError:
                    return 1
                seen += 1
                if as_json:
                    typer.echo(json.dumps(MessageToDict(score, preserving_proto_field_name=True)))
                else:
                    values = " ".join(f"{k}={v:.3g}" for k, v in sorted(score.rewards.items()))
                    errors = f"  errors: {', '.join(sorted(score.errors))}" if score.errors else ""
                    typer.echo(f"{score.app}\t{score.trace_id}\treward {score.reward:.4g}\t{values}{errors}")
        return 0

    try:
        code = asyncio.run(tail())
    except RollmeshError as e:
        _fail(str(e))
    except KeyboardInterrupt:
        code = 0
    raise typer.Exit(code)


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
        from ..apps.bench.rubric import main as bench_main

        bench_main(as_json=as_json, traces=traces, in_process=in_process)
