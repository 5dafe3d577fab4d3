"""The `rollmesh` command line. Imports are lazy so that `rollmesh --help` stays fast."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Annotated

import typer

app = typer.Typer(
    rich_markup_mode=None,
    help="rollmesh: environments, inference, rubrics and training over gRPC + NATS.",
    no_args_is_help=True,
)
env_app = typer.Typer(rich_markup_mode=None, help="Serve and inspect environments.", no_args_is_help=True)
bench_app = typer.Typer(
    rich_markup_mode=None,
    help="Benchmarks: each prints a ratio against a reference run side by side.",
    no_args_is_help=True,
)
inference_app = typer.Typer(
    rich_markup_mode=None, help="Serve models: token-exact generation and weight updates.", no_args_is_help=True
)
model_app = typer.Typer(
    rich_markup_mode=None, help="Local models: build the tiny test model, import GGUF files.", no_args_is_help=True
)
app.add_typer(env_app, name="env")
app.add_typer(inference_app, name="inference")
app.add_typer(model_app, name="model")
app.add_typer(bench_app, name="bench")

NatsOpt = Annotated[
    str | None,
    typer.Option("--nats", envvar="ROLLMESH_NATS_URL", help="NATS URL of the registry (e.g. nats://127.0.0.1:4222)."),
]


from .security_options import (  # noqa: E402
    InsecureOpt,
    TlsCaOpt,
    TlsCertOpt,
    TlsKeyOpt,
    TokensFileOpt,
    configure_client,
    configure_security,
)


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


@env_app.command("serve")
def env_serve(
    targets: Annotated[
        list[str],
        typer.Argument(
            help="Modules (rollmesh.examples.arithmetic), entry point names (arithmetic) or .py files; "
            "a module whose load_environment() returns a verifiers environment is hosted as is."
        ),
    ],
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port; 0 picks a free one.")] = 50051,
    arg: Annotated[
        list[str] | None, typer.Option("--arg", help="k=v passed to load_environment (JSON values parsed).")
    ] = None,
    nats: NatsOpt = None,
    advertise_host: Annotated[
        str | None, typer.Option(help="Host other machines reach this server at (registry).")
    ] = None,
    max_episodes: Annotated[int, typer.Option(help="Concurrent episodes before RESOURCE_EXHAUSTED.")] = 1024,
    idle_timeout: Annotated[
        float, typer.Option(help="Seconds an episode may wait for the client's next message.")
    ] = 300.0,
    max_message_mb: Annotated[float, typer.Option(help="Largest gRPC message, MiB.")] = 16.0,
    grace: Annotated[float, typer.Option(help="Seconds in-flight episodes get to finish on SIGTERM.")] = 10.0,
    tls_cert: TlsCertOpt = None,
    tls_key: TlsKeyOpt = None,
    tls_ca: TlsCaOpt = None,
    tokens_file: TokensFileOpt = None,
    insecure: InsecureOpt = False,
) -> None:
    """Host one or more environments on a gRPC port."""
    from ..env.loader import load_environments, parse_args
    from ..env.server import EnvironmentServer, EpisodeLimits
    from ..errors import RollmeshError
    from ..integrations import verifiers
    from ..rpc import RpcLimits
    from ..telemetry import setup_logging, setup_tracing

    setup_logging("rollmesh-env")
    setup_tracing("rollmesh-env")
    configure_security(
        tls_cert, tls_key, tls_ca, tokens_file, identity="env", serve=(host, "environments"), insecure=insecure
    )
    try:
        kwargs = parse_args(arg or [])
        envs = [e for t in targets for e in load_environments(t, kwargs, adapters=[verifiers.adapt])]
    except (RollmeshError, ValueError, TypeError) as e:
        _fail(str(e))

    async def main() -> None:
        server = EnvironmentServer(
            envs,
            host=host,
            port=port,
            limits=EpisodeLimits(max_concurrent_episodes=max_episodes, idle_timeout_s=idle_timeout),
            rpc_limits=RpcLimits(max_message_bytes=int(max_message_mb * 1024 * 1024)),
            nats_url=nats,
            advertise_host=advertise_host,
        )
        await server.start()
        typer.echo(f"rollmesh env server on {server.address}: {', '.join(e.name for e in envs)}", err=True)
        await server.serve_until_signal(grace)

    try:
        asyncio.run(main())
    except RuntimeError as e:  # e.g. the port is taken
        _fail(str(e))


@env_app.command("list")
def env_list() -> None:
    """Environments installed through the `rollmesh.environments` entry point group."""
    from rich.console import Console
    from rich.table import Table

    from ..env.loader import available

    table = Table("name", "module")
    for name, module in sorted(available().items()):
        table.add_row(name, module)
    Console().print(table)


@inference_app.command("serve")
def inference_serve(
    model: Annotated[
        str | None,
        typer.Option(
            help="A Hugging Face directory, a .gguf file, or 'smollm2'; with --backend openai, the endpoint's "
            "model name (default: the first it lists)."
        ),
    ] = None,
    backend: Annotated[
        str,
        typer.Option(
            help="vllm | hf | auto (vllm with a GPU, else hf) | scripted (instant scripted replies, for "
            "benchmarks; --model wiki-search|guess-number|arithmetic|echo|FILE.json) | openai (an "
            "OpenAI-compatible endpoint at --base-url: text only, no token ids or weight updates)."
        ),
    ] = "auto",
    base_url: Annotated[
        str | None, typer.Option(help="openai backend: the API root, e.g. http://host:8000/v1.")
    ] = None,
    api_key_env: Annotated[
        str | None,
        typer.Option(
            help="openai backend: the environment variable holding the API key (default: OPENAI_API_KEY when "
            "set). The key is never taken from the command line."
        ),
    ] = None,
    max_rps: Annotated[
        float, typer.Option(help="openai backend: requests per second to the endpoint (0 = no limit).")
    ] = 0.0,
    max_concurrency: Annotated[int, typer.Option(help="openai backend: requests in flight to the endpoint.")] = 64,
    max_retries: Annotated[
        int, typer.Option(help="openai backend: retries of a call after HTTP 408/409/429/5xx or a connection error.")
    ] = 4,
    request_timeout: Annotated[
        float, typer.Option(help="openai backend: seconds one call may take, retries included.")
    ] = 600.0,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="gRPC port; 0 picks a free one.")] = 50061,
    openai_port: Annotated[int | None, typer.Option(help="Also serve the OpenAI-compatible HTTP API here.")] = None,
    name: Annotated[str | None, typer.Option(help="Model name reported to clients (default: the path's name).")] = None,
    dtype: Annotated[
        str, typer.Option(help="auto | float32 | bfloat16 | float16 (auto, hf: float32 on a CPU, else the model's).")
    ] = "auto",
    max_model_len: Annotated[int | None, typer.Option(help="Context length (vllm; default: the model's).")] = None,
    max_batch_size: Annotated[int, typer.Option(help="Sequences per forward pass (hf).")] = 32,
    max_weights_mb: Annotated[float, typer.Option(help="Largest UpdateWeights payload, MiB.")] = 65536.0,
    weights_root: Annotated[
        list[str] | None,
        typer.Option(
            help="A directory LoadWeights may read checkpoints from (repeatable; symlinks are resolved). "
            "Default: only the served model's own directory. A trainer pushing by path needs its "
            "checkpoint directory here."
        ),
    ] = None,
    nats: NatsOpt = None,
    advertise_host: Annotated[str | None, typer.Option(help="Host other machines reach this server at.")] = None,
    grace: Annotated[float, typer.Option(help="Seconds in-flight requests get on SIGTERM.")] = 30.0,
    tls_cert: TlsCertOpt = None,
    tls_key: TlsKeyOpt = None,
    tls_ca: TlsCaOpt = None,
    tokens_file: TokensFileOpt = None,
    insecure: InsecureOpt = False,
) -> None:
    """Serve a model over gRPC (InferenceService), optionally with an OpenAI-compatible API."""
    from ..errors import RollmeshError
    from ..inference.backends import create_backend, create_openai_backend
    from ..inference.server import InferenceServer
    from ..telemetry import setup_logging, setup_tracing

    setup_logging("rollmesh-inference")
    setup_tracing("rollmesh-inference")
    configure_security(
        tls_cert, tls_key, tls_ca, tokens_file, identity="inference", serve=(host, "a model"), insecure=insecure
    )

    if backend == "openai":
        if not base_url:
            _fail("--backend openai needs --base-url (the endpoint's API root, e.g. http://host:8000/v1)")
        if openai_port is not None:
            _fail("--openai-port serves a token-level model; with --backend openai call the endpoint itself")
    elif not model:
        _fail("--model is required (a Hugging Face directory, a .gguf file, or 'smollm2')")

    async def main() -> None:
        try:
            if backend == "openai":
                engine = await create_openai_backend(
                    base_url or "",
                    model,
                    api_key_env=api_key_env,
                    max_rps=max_rps,
                    max_concurrency=max_concurrency,
                    max_retries=max_retries,
                    timeout_s=request_timeout,
                    context_length=max_model_len or 0,
                )
            else:
                engine = await create_backend(
                    backend, model or "", dtype=dtype, max_model_len=max_model_len, max_batch_size=max_batch_size,
                    name=name,
                )  # fmt: skip
        except RollmeshError as e:
            _fail(str(e))
        server = InferenceServer(
            engine,
            host=host,
            port=port,
            openai_port=openai_port,
            nats_url=nats,
            advertise_host=advertise_host,
            max_weights_bytes=int(max_weights_mb * 1024 * 1024),
            weights_roots=weights_root or None,
        )
        await server.start()
        extra = f", OpenAI API on {server.openai_url}/v1" if server.openai_url else ""
        if backend == "openai":
            extra = f", calling {base_url}"
        typer.echo(f"rollmesh inference server on {server.address}: {engine.model} ({engine.name}){extra}", err=True)
        await server.serve_until_signal(grace)

    asyncio.run(main())


@model_app.command("tiny")
def model_tiny(
    out: Annotated[str, typer.Option(help="Directory to write the model and tokenizer to.")],
    seed: Annotated[int, typer.Option(help="Weights seed.")] = 0,
) -> None:
    """Write a small deterministic Llama-style model and tokenizer (head size 64, chat template)."""
    from ..inference.tiny import build_tiny_model

    path = build_tiny_model(out, seed=seed)
    typer.echo(f"tiny model written to {path}")


@model_app.command("import")
def model_import(
    gguf: Annotated[str, typer.Argument(help="A .gguf file, or 'smollm2'.")],
    out: Annotated[str, typer.Option(help="Directory for the Hugging Face model.")],
    dtype: Annotated[str, typer.Option(help="bfloat16 | float32 | float16.")] = "bfloat16",
) -> None:
    """Convert a GGUF file into a Hugging Face directory (that vLLM loads too)."""
    from ..errors import RollmeshError
    from ..inference.models import import_gguf

    try:
        path = import_gguf(gguf, out, dtype=dtype)
    except RollmeshError as e:
        _fail(str(e))
    typer.echo(f"imported {gguf} to {path}")


@app.command()
def conformance(
    address: Annotated[str, typer.Argument(help="host:port of an environment server, in any language.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds per check.")] = 30.0,
    max_wait: Annotated[
        float, typer.Option(help="Longest wait a check may make (the idle-timeout check); longer ones are skipped.")
    ] = 15.0,
    drain_pid: Annotated[
        int | None, typer.Option(help="The server's process id: the last check sends it SIGTERM (stops it).")
    ] = None,
    inference: Annotated[
        str | None, typer.Option(help="An inference server for RunEpisode, when an environment offers it.")
    ] = None,
    tls_cert: TlsCertOpt = None,
    tls_key: TlsKeyOpt = None,
    tls_ca: TlsCaOpt = None,
) -> None:
    """Check that an environment server follows docs/protocol.md (exit 0 = no rule failed). With
    --tls-ca it connects over TLS and expects a certificate issued for env.rollmesh; give the
    certificate of an identity with the orchestrator role (or operator) when the server wants one."""
    from ..apps.conformance import Options, run_cli

    configure_client("orchestrator", tls_cert, tls_key, tls_ca)
    options = Options(timeout_s=timeout, max_wait_s=max_wait, drain_pid=drain_pid, inference=inference)
    raise typer.Exit(run_cli(address, as_json=as_json, options=options))


@app.command()
def health(
    address: Annotated[str, typer.Argument(help="host:port of a rollmesh gRPC server.")],
    kind: Annotated[
        str | None, typer.Option(help="env | inference | rubric: the name its certificate carries.")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for SERVING.")] = 5.0,
    tls_cert: TlsCertOpt = None,
    tls_key: TlsKeyOpt = None,
    tls_ca: TlsCaOpt = None,
) -> None:
    """Exit 0 when the server answers grpc.health.v1 SERVING (over TLS with the TLS settings): a
    readiness probe for servers with mutual TLS, which Kubernetes' built-in gRPC probe cannot reach."""
    from ..rpc import wait_for_ready

    configure_security(tls_cert, tls_key, tls_ca, identity="orchestrator")
    try:
        asyncio.run(wait_for_ready(address, timeout, kind=kind))
    except TimeoutError as e:
        _fail(str(e), code=1)


@app.command("ls")
def ls(nats: NatsOpt = "nats://127.0.0.1:4222") -> None:
    """List the live servers in the registry."""
    from ..errors import RollmeshError
    from ..registry import print_services

    configure_client("orchestrator")
    try:
        asyncio.run(print_services(nats or "nats://127.0.0.1:4222"))
    except (OSError, RollmeshError) as e:
        _fail(f"cannot reach NATS at {nats}: {e}")


@app.command("nats")
def nats_cmd(
    port: Annotated[
        int, typer.Option(help="Client port (with --cluster N: the first node's, and 0 = free ports for all).")
    ] = 4222,
    store: Annotated[
        str | None,
        typer.Option(help="JetStream storage directory (default: a temporary one); with --cluster N, one per node."),
    ] = None,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    tls_dir: Annotated[
        str | None,
        typer.Option(
            help="A `rollmesh certs init` directory: TLS, client certificates required, per-role users; "
            "cluster routes use TLS with its nats certificate."
        ),
    ] = None,
    cluster: Annotated[
        int,
        typer.Option(
            help="Run a local JetStream cluster of this many nodes (ports counted up from --port, --cluster-port, "
            "and 8222 for monitoring) and print their comma-separated URLs."
        ),
    ] = 0,
    cluster_name: Annotated[
        str | None,
        typer.Option(help="Be one node of this JetStream cluster (the same name on every node); see --routes."),
    ] = None,
    server_name: Annotated[
        str | None,
        typer.Option(help="This node's name in the cluster, unique and kept across restarts. [this machine's name]"),
    ] = None,
    cluster_port: Annotated[int, typer.Option(help="Port the node listens on for routes from the others.")] = 6222,
    routes: Annotated[
        list[str] | None,
        typer.Option(
            "--routes",
            help="nats-route://HOST:PORT of the other nodes (comma-separated or repeated); with --tls-dir, "
            "its nats certificate must name each HOST (`rollmesh certs init --host`).",
        ),
    ] = None,
    insecure: InsecureOpt = False,
) -> None:
    """Run the embedded NATS server (JetStream on) in the foreground: one server, one node of a
    cluster spread over machines (--cluster-name, --routes), or a local cluster (--cluster N)."""
    import socket

    from ..errors import RollmeshError
    from ..natsd import ClusterOptions, run_cluster_foreground, run_foreground
    from ..security.tls import is_loopback

    route_list = [r.strip() for item in routes or [] for r in item.split(",") if r.strip()]
    if cluster and (route_list or server_name):
        _fail("--cluster N starts every node here; --routes and --server-name are for one node of a cluster")
    if cluster == 1 or cluster < 0:
        _fail("--cluster takes the number of nodes, at least 2 (3 or 5 to survive losing 1 or 2)")
    if (route_list or server_name) and not cluster_name:
        _fail("name the cluster with --cluster-name (the same on every node)")
    if cluster and not is_loopback(host):
        # Its nodes' health checks need nats-server's HTTP monitoring, which has no authentication.
        _fail(
            "--cluster N runs every node on this machine, for tests and demos, with HTTP monitoring open: bind "
            "loopback; across machines run one node on each with --cluster-name and --routes"
        )
    if not tls_dir and not is_loopback(host):
        if not insecure:
            _fail(f"refusing to serve NATS on {host} without --tls-dir (anyone could publish rollouts); or --insecure")
        what = "NATS and its cluster routes" if cluster or cluster_name else "NATS"
        typer.secho(f"warning: {what} on {host} without TLS or users (--insecure)", fg=typer.colors.YELLOW, err=True)
    try:
        if cluster:
            code = run_cluster_foreground(
                cluster,
                host=host,
                port=port,
                cluster_port=0 if port == 0 else cluster_port,
                monitor_port=0 if port == 0 else 8222,
                name=cluster_name or "rollmesh",
                store_dir=store,
                auth_dir=tls_dir,
            )
        else:
            options = ClusterOptions(cluster_name, cluster_port, tuple(route_list)) if cluster_name else None
            name = server_name or (socket.gethostname() if cluster_name else "")
            code = run_foreground(
                host=host, port=port, store_dir=store, auth_dir=tls_dir, server_name=name, cluster=options
            )
    except (RollmeshError, RuntimeError, TimeoutError, ValueError) as e:
        _fail(str(e), code=1)
    raise typer.Exit(code)


@bench_app.command("env-step")
def bench_env_step(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    episodes: Annotated[int, typer.Option(help="Concurrent episodes for the throughput run.")] = 64,
    seconds: Annotated[float, typer.Option(help="Seconds per measurement.")] = 3.0,
    mtls: Annotated[bool, typer.Option(help="Also measure a server with mutual TLS and role checks.")] = True,
) -> None:
    """Environment steps in-process versus through the gRPC server on loopback, plaintext and mTLS."""
    from ..apps.bench.env_step import main as bench_main

    bench_main(as_json=as_json, concurrency=episodes, seconds=seconds, mtls=mtls)


@bench_app.command("inference")
def bench_inference(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    model: Annotated[
        str | None, typer.Option(help="Model directory (default: the tiny model, built on the fly).")
    ] = None,
    requests: Annotated[int, typer.Option(help="Requests per measurement.")] = 64,
    concurrency: Annotated[int, typer.Option(help="Concurrent requests.")] = 16,
    max_tokens: Annotated[int, typer.Option(help="Tokens generated per request.")] = 64,
) -> None:
    """Generated tokens/s: rollmesh+vllm vs vLLM's OpenAI server; hf dynamic batching vs sequential."""
    from ..apps.bench.inference import main as bench_main

    bench_main(as_json=as_json, model=model, requests=requests, concurrency=concurrency, max_tokens=max_tokens)


@bench_app.command("verifiers")
def bench_verifiers(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    rollouts: Annotated[int, typer.Option(help="Rollouts per repeat and side.")] = 256,
    concurrency: Annotated[int, typer.Option(help="Rollouts in flight.")] = 64,
    repeats: Annotated[int, typer.Option(help="Timed repeats per side (the median is reported).")] = 3,
    verifiers_python: Annotated[
        str | None,
        typer.Option(help="Interpreter with verifiers 0.3.1 and rollmesh (default: the repository's .venv-verifiers)."),
    ] = None,
) -> None:
    """Rollouts/s of a multi-turn verifiers environment hosted by rollmesh vs verifiers' own ZMQ env server."""
    from ..apps.bench.verifiers import MissingInterpreter
    from ..apps.bench.verifiers import main as bench_main

    if min(rollouts, concurrency, repeats) < 1:
        _fail("--rollouts, --concurrency and --repeats must be at least 1")
    try:
        bench_main(as_json, python=verifiers_python, rollouts=rollouts, concurrency=concurrency, repeats=repeats)
    except MissingInterpreter as e:
        _fail(str(e))


@bench_app.command("weights")
def bench_weights(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    backend: Annotated[list[str] | None, typer.Option("--backend", help="hf and/or vllm (default: both).")] = None,
    model: Annotated[list[str] | None, typer.Option("--model", help="tiny and/or 100m (default: both).")] = None,
) -> None:
    """Seconds and MB/s to push full weights into a serving engine, vs loading them from disk."""
    from ..apps.bench.weights import main as bench_main

    bench_main(as_json=as_json, backends=backend or ["hf", "vllm"], models=model or ["tiny", "100m"])


@app.command()
def demo() -> None:
    """The embedded quickstart: local NATS, the built-in environments, conformance and episodes."""
    from ..apps.demo import run

    raise typer.Exit(run())


@app.command()
def train(
    config: Annotated[
        str | None,
        typer.Argument(
            help="Run TOML (e.g. deploy/train.smollm2-arithmetic.toml); default: the built-in quickstart, "
            "services/rollmesh/configs/train-quickstart.toml."
        ),
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a key: steps=50, trainer.lr=1e-5 (JSON values parsed).")
    ] = None,
) -> None:
    """RL end to end: the embedded mesh, the orchestrator and the DeepSpeed trainer, with live progress,
    metrics.jsonl and a reward-curve PNG in the run directory."""
    from rich.console import Console

    from ..apps.train import QUICKSTART, load_train_config
    from ..apps.train import train as run_train
    from ..errors import RollmeshError
    from ..telemetry import setup_logging, setup_tracing

    setup_logging("rollmesh-train")
    setup_tracing("rollmesh-orchestrator")  # a rollout's trace runs on through the bus to the trainer
    try:
        cfg = load_train_config(config or QUICKSTART, set_ or [])
    except RollmeshError as e:
        _fail(str(e))
    raise typer.Exit(asyncio.run(run_train(cfg, Console())))


def _register_subsystems() -> None:
    """Each subsystem owns its commands in its own cli module (imports there stay lazy too)."""
    from .rubric import register as rubric_commands
    from .runs import register as orchestrator_commands
    from .trainer import register as trainer_commands

    for register in (rubric_commands, orchestrator_commands, trainer_commands):
        register(app, bench_app)


_register_subsystems()


def main() -> None:
    # grpc's C core logs fork/epoll chatter to stderr by default; keep the CLI quiet.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    if not sys.stdout.isatty():  # logs and CI: rich would wrap tables at 80 columns
        os.environ.setdefault("COLUMNS", "120")
    app(prog_name="rollmesh")


if __name__ == "__main__":
    sys.exit(main())


certs_app = typer.Typer(rich_markup_mode=None, help="Certificates and credentials for the mesh.", no_args_is_help=True)
app.add_typer(certs_app, name="certs")


@certs_app.command("init")
def certs_init(
    directory: Annotated[str, typer.Argument(help="Where to write the CA, certificates, tokens and NATS config.")],
    host: Annotated[
        list[str] | None,
        typer.Option("--host", help="Another name or IP address the servers are reached at (repeatable)."),
    ] = None,
    publisher_app: Annotated[
        list[str] | None,
        typer.Option("--publisher-app", help="Limit the publisher identity to rollmesh.monitor.<app> (repeatable)."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing CA (every certificate changes).")] = False,
) -> None:
    """Create a development CA and a certificate per identity of the mesh (env, inference, rubric,
    orchestrator, trainer, publisher, reader, operator, nats), bearer tokens, and a nats-server
    authorization file. An existing directory is kept unless --force."""
    from pathlib import Path

    from ..security import pki

    existed = (Path(directory) / "ca.pem").exists()
    d = pki.init(directory, hosts=host or [], publisher_apps=publisher_app or [], force=force)
    if existed and not force:
        typer.echo(f"{d} already holds a CA; kept it (--force replaces it)")
        return
    typer.echo(f"wrote a CA and certificates to {d}:")
    for m in pki.MESH:
        typer.echo(f"  {m.name + '.pem':<18} roles: {', '.join(m.roles)}")
    typer.echo("  tokens.toml        bearer-token hashes (servers: --tokens-file); secrets in <name>.token")
    typer.echo("  nats-auth.conf     nats-server TLS + users (rollmesh nats --tls-dir DIR)")


@certs_app.command("issue")
def certs_issue(
    directory: Annotated[str, typer.Argument(help="A `rollmesh certs init` directory (its CA signs).")],
    name: Annotated[str, typer.Argument(help="The identity (certificate CN); files DIR/NAME.pem, DIR/NAME-key.pem.")],
    role: Annotated[list[str], typer.Option("--role", help="A role of the identity (repeatable).")],
    serves: Annotated[
        list[str] | None, typer.Option("--serves", help="env | inference | rubric | nats: a server of that kind.")
    ] = None,
    host: Annotated[
        list[str] | None, typer.Option("--host", help="Another name or IP of a server (repeatable).")
    ] = None,
    days: Annotated[int, typer.Option(help="Days the certificate is valid.")] = 825,
) -> None:
    """Issue (or reissue, to rotate) one identity's certificate from the directory's CA; the
    nats-server authorization is rewritten to include it."""
    from pathlib import Path

    from ..security import nats_auth, pki, roles

    unknown = set(role) - set(roles.ROLES)
    if unknown:
        _fail(f"unknown roles {sorted(unknown)}; roles: {', '.join(roles.ROLES)}")
    d = Path(directory)
    try:
        ca = pki.CertificateAuthority.load(d)
    except (OSError, ValueError) as e:
        _fail(f"{d} has no usable CA (ca.pem, ca-key.pem): {e}")
    member = pki.Member(name, tuple(role), tuple(serves or ()))
    pki.write_member(ca, d, member, hosts=host or [], days=days)
    known = {m.name: m for m in pki.MESH}
    known[name] = member
    members = [m for m in known.values() if (d / f"{m.name}.pem").exists()]
    nats_auth.write_nats_config(d, members)
    typer.echo(f"wrote {d / (name + '.pem')} and {d / (name + '-key.pem')} (roles: {', '.join(role)})")


@certs_app.command("token")
def certs_token(
    directory: Annotated[str, typer.Argument(help="The directory whose tokens.toml servers read (--tokens-file).")],
    name: Annotated[str, typer.Argument(help="Who the token is for (shown in audit lines).")],
    role: Annotated[list[str], typer.Option("--role", help="A role of the token (repeatable).")],
) -> None:
    """Make a bearer token (for HTTP clients such as Prometheus or a browser proxy, or gRPC clients
    without a certificate): prints the secret once; only its hash is stored."""
    from ..security import pki

    try:
        typer.echo(pki.add_token(directory, name, role))
    except (OSError, ValueError) as e:
        _fail(str(e))
