"""`rollmesh eval`: score a model on an environment end to end.

    rollmesh eval --env guess-number --model tiny -n 100 -r 4 --out rollmesh-runs/gn

Drives the RolloutEngine over `n` tasks x `r` rollouts with a progress bar, appends each finished
group to the results directory (results.py) as it arrives, then writes summary.json and the
reports (summary.py, report.py) and prints a table.

The model is a host:port of an inference server, a model name served in the registry, or a local
model (a directory, a .gguf file, "tiny", "smollm2"; a name the registry does not serve is started
here as a private inference server and stopped at the end). The environment is a name found in the
registry, or given servers (--env-address). Several environments (a mixture: `envs`, as in a run
file's [[rollout.envs]]) share the `n` tasks in proportion to their weights (orchestrator/mixture.py),
each with its own split, rubric, sampling and group size where given; the summary and reports
then also break down per environment.

Resume: rerunning with the same --out keeps the run id, so every rollout gets the trajectory id it
had; finished ones are skipped, errored ones run again. Options left out on a resume come from the
stored run; ones that would change the evaluation (environment, split, group size, sampling,
rubric) must match it.

Exit codes: 0 at least one rollout finished; 1 none did (every rollout errored, or the run failed);
2 the evaluation could not start (bad input, unknown environment or model, unreachable servers or
bus); 130 interrupted (partial results are kept; rerun to resume).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field
from rich.console import Console
from rich.table import Table

from .. import __version__
from ..config import Section
from ..durable import write_atomic
from ..errors import FailedPreconditionError, InvalidArgumentError, RollmeshError
from ..orchestrator import mixture
from ..orchestrator.config import EnvEntry
from ..proto.v1 import trajectory_pb2 as traj_pb
from ..telemetry import get_logger
from . import report as report_mod
from .api_model import is_api_model, serve_command
from .api_model import parse as parse_api_model
from .export import results_root
from .results import HISTOGRAM_SVG, REPORT_HTML, REPORT_MD, SUMMARY, ResultsDir
from .summary import DEFAULT_PASS_THRESHOLD, summarize

log = get_logger(__name__)

EXIT_OK = 0
EXIT_NOTHING_FINISHED = 1
EXIT_CANNOT_START = 2
EXIT_INTERRUPTED = 130

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
HOST_PORT_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]+):\d{1,5}$")
LOCAL_ALIASES = ("tiny", "smollm2")
# Settings that define the evaluation: a resume may not change them.
IDENTITY = ("env", "envs", "split", "rollouts_per_task", "rubric", "sampling")


# What to do about a start error, by its reason.
HINTS = {
    "UNKNOWN_ENVIRONMENT": "; start it with `rollmesh up` or `rollmesh env serve NAME --nats URL`, "
    "or pass --env-address HOST:PORT",
    "UNKNOWN_MODEL": "; serve it with `rollmesh up` or `rollmesh inference serve --model PATH --nats URL`, "
    "or pass a host:port or a local path as --model",
}


class MixtureFile(Section):
    """`rollmesh eval --mixture FILE`: the environments of an evaluation over several."""

    envs: list[EnvEntry] = Field(min_length=1)
    """The environments, as a run file's [[rollout.envs]] entries."""


class CannotStart(Exception):
    """The evaluation did not start: nothing ran (exit 2)."""


@dataclass
class EvalOptions:
    env: str | None = None
    envs: list[dict[str, Any]] | None = None  # a mixture: [[rollout.envs]] entries (name, weight, ...)
    model: str | None = None
    num_tasks: int | None = None  # 0 = all
    rollouts_per_task: int | None = None
    split: str | None = None
    out: str | None = None
    run_id: str | None = None
    nats_url: str | None = None
    env_addresses: list[str] = field(default_factory=list)
    rubric: str | None = None
    rubric_address: str | None = None
    concurrency: int | None = None  # episodes in flight (a resume keeps the run's)
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    seed: int | None = None
    backend: str = "auto"  # of a local model's inference server
    api_key_env: str | None = None  # of an openai:MODEL@URL model: the variable holding its key
    publish: bool = True
    retry_errors: bool = True
    pass_threshold: float = DEFAULT_PASS_THRESHOLD
    step_timeout_s: float = 120.0
    episode_timeout_s: float = 1800.0
    startup_timeout_s: float = 300.0
    progress: bool = True
    argv: list[str] = field(default_factory=lambda: list(sys.argv))


DEFAULTS: dict[str, Any] = {
    "num_tasks": 100,
    "concurrency": 32,
    "rollouts_per_task": 4,
    "split": "test",
    "rubric": "",
    "sampling": {"temperature": 1.0, "top_p": 1.0, "max_tokens": 256, "seed": None},
}


@dataclass
class EvalOutcome:
    exit_code: int
    out: Path | None = None
    summary: dict[str, Any] | None = None
    message: str = ""
    new_trajectories: int = 0


def _token(text: str) -> str:
    """`text` as a NATS subject token (run ids name subjects)."""
    return re.sub(r"[^A-Za-z0-9_\-=]", "-", text) or "run"


def environments(
    flags: Sequence[str], mixture_file: str | None = None
) -> tuple[str | None, list[dict[str, Any]] | None]:
    """(env, envs) from `--env NAME[:WEIGHT]` flags and a `--mixture` TOML file of [[envs]] entries
    (the keys of a run file's [[rollout.envs]]): one plain --env is the simple form; several, or a
    weight, or the file, a mixture. InvalidArgumentError for a bad flag or file."""
    from ..config import load_config

    if mixture_file and flags:
        raise InvalidArgumentError("give the environments as --env flags or in a --mixture file, not both")
    if mixture_file:
        entries = load_config(MixtureFile, mixture_file).envs
    elif len(flags) == 1 and ":" not in flags[0]:
        return flags[0], None
    elif not flags:
        return None, None
    else:
        entries = []
        for flag in flags:
            name, _, weight = flag.partition(":")
            try:
                entries.append(EnvEntry(name=name, weight=float(weight) if weight else 1.0))
            except ValueError as e:
                raise InvalidArgumentError(
                    f"--env {flag[:100]!r}: expected NAME or NAME:WEIGHT with a weight > 0", reason="BAD_CONFIG"
                ) from e
    return None, [e.model_dump(exclude_none=True) for e in entries]


def env_label(settings: dict[str, Any]) -> str:
    """The environment, or a mixture's environments joined by "+"."""
    return settings.get("env") or "+".join(str(e.get("name", "?")) for e in settings.get("envs") or [])


def default_run_id(env: str) -> str:
    return f"eval-{_token(env)}-{time.strftime('%Y%m%d-%H%M%S')}"


def model_kind(spec: str) -> str:
    """ "address" (host:port), "local" (a path), "alias" (tiny, smollm2: the registry first, else
    local), "api" (openai:MODEL@URL, see api_model.py) or "name" (a registry model name)."""
    if is_api_model(spec):
        return "api"
    path = Path(spec).expanduser()
    if path.exists() or spec.lower().endswith(".gguf"):
        return "local"
    if HOST_PORT_RE.match(spec):
        return "address"
    if spec.lower() in LOCAL_ALIASES:
        return "alias"
    return "name"


def _settings(opts: EvalOptions, stored: dict[str, Any] | None) -> dict[str, Any]:
    """The run's settings: given options, else the stored run's (on a resume), else defaults.
    A given option that would change a stored identity setting is an error."""
    base = json.loads(json.dumps(stored if stored else DEFAULTS))
    base.setdefault("sampling", dict(DEFAULTS["sampling"]))
    given: dict[str, Any] = {
        k: v
        for k, v in {
            "env": opts.env,
            "envs": opts.envs,
            "split": opts.split,
            "rollouts_per_task": opts.rollouts_per_task,
            "rubric": opts.rubric,
            "num_tasks": opts.num_tasks,
            "model": opts.model,
            "concurrency": opts.concurrency,
        }.items()
        if v is not None
    }
    sampling = {
        k: v
        for k, v in {
            "temperature": opts.temperature,
            "top_p": opts.top_p,
            "max_tokens": opts.max_tokens,
            "seed": opts.seed,
        }.items()
        if v is not None
    }
    if stored:
        changed = [
            f"{k} ({stored.get(k)!r} -> {v!r})" for k, v in given.items() if k in IDENTITY and stored.get(k) != v
        ]
        changed += [
            f"sampling.{k} ({stored['sampling'].get(k)!r} -> {v!r})"
            for k, v in sampling.items()
            if stored.get("sampling", {}).get(k) != v
        ]
        if changed:
            raise CannotStart(
                f"the results directory holds a different evaluation: {', '.join(changed)}; "
                "leave those options out to resume it, or pass another --out"
            )
    base.update(given)
    base["sampling"].update(sampling)
    if opts.env and opts.envs:
        raise CannotStart("give one environment (--env NAME) or a mixture (several --env, or --mixture), not both")
    for key in ("env", "model"):
        if not base.get(key) and not (key == "env" and base.get("envs")):
            raise CannotStart(f"--{key} is required (or --out of an evaluation to resume)")
    return base


def _rollout_config(s: dict[str, Any], opts: EvalOptions, run_id: str) -> Any:
    """The engine's RolloutConfig (its model name is set once the model is resolved)."""
    from pydantic import ValidationError

    from ..orchestrator.config import RolloutConfig, SamplingConfig

    sp = s["sampling"]
    try:
        return RolloutConfig(
            run_id=run_id,
            env=s.get("env") or "",
            envs=s.get("envs") or [],
            split=s["split"],
            rollouts_per_task=s["rollouts_per_task"],
            sampling=SamplingConfig(
                temperature=sp["temperature"], top_p=sp["top_p"], max_tokens=sp["max_tokens"], seed=sp["seed"]
            ),
            max_concurrency=s.get("concurrency") or DEFAULTS["concurrency"],
            step_timeout_s=opts.step_timeout_s,
            episode_timeout_s=opts.episode_timeout_s,
            rubric=s["rubric"],
            publish=opts.publish,
        )
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors())
        raise CannotStart(f"invalid options: {problems}") from e


class _Run:
    """One eval session: its resources live in `stack`, closed in reverse order."""

    def __init__(self, opts: EvalOptions, console: Console, stack: contextlib.AsyncExitStack) -> None:
        self.opts = opts
        self.console = console
        self.stack = stack
        self.nats_url = opts.nats_url or DEFAULT_NATS_URL
        self._nc: Any = None

    async def connect_bus(self, why: str) -> Any:
        """The NATS connection (made once); CannotStart when the bus is down."""
        from .. import bus

        if self._nc is None:
            # nats-py reports each failed connect attempt; the one error below says it all.
            with _quiet("rollmesh.bus"):
                try:
                    self._nc = await bus.connect(self.nats_url, name="rollmesh-eval", connect_timeout_s=2.0)
                except RollmeshError as e:
                    raise CannotStart(f"{e}; it is needed {why}") from e
            self.stack.push_async_callback(self._nc.close)
        return self._nc

    async def model(self, spec: str, out: Path) -> tuple[list[str], str]:
        """(inference addresses, model name for the engine)."""
        kind = model_kind(spec)
        if kind == "address":
            return [spec], ""
        if kind == "name":
            return [], spec
        if kind == "api":
            return [await self._start_api(spec, out)], ""
        if kind == "alias" and self._nc is not None and await self._registry_serves(spec):
            return [], spec
        return [await self._start_local(spec, out)], ""

    async def _registry_serves(self, model: str) -> bool:
        from ..inference.server import registry_name
        from ..proto.v1 import bus_pb2
        from ..registry import Registry

        registry = await Registry.from_client(self._nc)
        return bool(await registry.list(bus_pb2.SERVICE_KIND_INFERENCE, registry_name(model)))

    async def _start_local(self, spec: str, out: Path) -> str:
        from .launcher import InferenceConfig, ServiceProcess, inference_command

        argv = await asyncio.to_thread(
            inference_command, InferenceConfig(model=spec, backend=self.opts.backend), host="127.0.0.1",
            nats_url=None, grace_s=2.0,
        )  # fmt: skip
        server = ServiceProcess(
            "inference server", "inference", argv, out / "logs" / "inference.log", tls=_local_server_tls()
        )
        self.console.print(f"starting an inference server for {spec} (log: {server.log_path})")
        server.start()
        self.stack.push_async_callback(server.stop, 2.0)
        return await server.wait_ready(self.opts.startup_timeout_s)

    async def _start_api(self, spec: str, out: Path) -> str:
        """A private inference server in front of the OpenAI-compatible endpoint (api_model.py)."""
        from .launcher import ServiceProcess

        api = parse_api_model(spec)
        argv = serve_command(api, api_key_env=self.opts.api_key_env, host="127.0.0.1", grace_s=2.0)
        server = ServiceProcess(
            "inference server", "inference", argv, out / "logs" / "inference.log", tls=_local_server_tls()
        )
        self.console.print(f"starting an inference server for {api.base_url} (log: {server.log_path})")
        server.start()
        self.stack.push_async_callback(server.stop, 2.0)
        return await server.wait_ready(self.opts.startup_timeout_s)

    async def publisher(self) -> Any:
        from .. import bus

        nc = await self.connect_bus("to publish the trajectories (--no-publish evaluates without the bus)")
        js = nc.jetstream()
        await bus.ensure_streams(js, (bus.ROLLOUTS,))
        publisher = bus.Publisher(nc, js)
        self.stack.push_async_callback(publisher.flush)
        return publisher


def _local_server_tls() -> Any:
    """A local model server's TLS settings: none when this process uses none; with TLS, the
    inference certificate next to this process's CA (a `rollmesh certs init` directory)."""
    from ..security import pki
    from ..security.tls import current

    client = current()
    if not client.enabled:
        return None
    server = pki.sibling(client, "inference")
    if server is None:
        raise FailedPreconditionError(
            f"TLS is on and {client.ca} has no inference.pem next to it to serve a local model with: start the model "
            "with `rollmesh inference serve --tls-cert ... --tls-key ... --tls-ca ...` and pass its address as --model",
            reason="MISSING_FIELD",
        )
    return server


@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    import logging

    target = logging.getLogger(logger)
    level = target.level
    target.setLevel(logging.ERROR)
    try:
        yield
    finally:
        target.setLevel(level)


def _prepare(opts: EvalOptions) -> tuple[ResultsDir, dict[str, Any], dict[str, Any], bool, bool]:
    """(results dir, its metadata, the settings, resuming?, the directory is new?)."""
    if opts.out:
        out = Path(opts.out)
    elif opts.run_id:
        out = results_root() / opts.run_id
    else:
        out = results_root() / default_run_id(env_label({"env": opts.env, "envs": opts.envs}) or "run")
    results = ResultsDir(out)
    resuming = results.exists()
    meta = results.read_meta() if resuming else {}
    if resuming and opts.run_id and opts.run_id != meta.get("run_id"):
        raise CannotStart(f"{out} holds run {meta.get('run_id')!r}, not {opts.run_id!r}; pass another --out")
    if not resuming and out.exists() and any(out.iterdir()):
        raise CannotStart(f"{out} exists and is not a rollmesh results directory (no run.json); pass another --out")
    settings = _settings(opts, meta.get("settings") if resuming else None)
    if not resuming:
        meta = {
            "run_id": opts.run_id or (_token(out.name) if opts.out else default_run_id(env_label(settings))),
            "created_at": time.time(),
            "rollmesh_version": __version__,
        }
    meta["settings"] = settings
    return results, meta, settings, resuming, not out.exists()


async def run_eval(opts: EvalOptions, console: Console | None = None) -> EvalOutcome:
    """Runs one eval session; never raises for bad input or failures (see the exit codes)."""
    console = console or Console(stderr=True)
    try:
        results, meta, settings, resuming, new_dir = _prepare(opts)
    except (CannotStart, RollmeshError) as e:
        return EvalOutcome(EXIT_CANNOT_START, message=str(e))
    from .. import bus

    try:
        bus.token("run id", meta["run_id"])
        config = _rollout_config(settings, opts, meta["run_id"])
    except InvalidArgumentError as e:
        return EvalOutcome(EXIT_CANNOT_START, message=f"{e} (set --run-id)")
    except CannotStart as e:
        return EvalOutcome(EXIT_CANNOT_START, message=str(e))
    if resuming:
        dropped = results.repair()
        if dropped:
            console.print(f"[yellow]dropped a torn last line ({dropped} bytes) of {results.trajectories_path}[/]")
        if opts.retry_errors and (n := results.set_aside_errors()):
            console.print(f"{n} errored rollouts will run again")
        console.print(f"resuming run [cyan]{meta['run_id']}[/] in {results.path}")
    # Written before anything starts, so that a kill at any point leaves a resumable directory.
    results.write_meta(meta)

    outcome = EvalOutcome(EXIT_OK, out=results.path)
    status = "finished"
    started = False
    try:
        async with contextlib.AsyncExitStack() as stack:
            try:
                run = _Run(opts, console, stack)
                # The bus first: when it is down, say so before starting anything.
                kind = model_kind(settings["model"])
                needs_registry = [
                    why
                    for why, needed in (
                        ("to find the environment by name (or pass --env-address)", not opts.env_addresses),
                        ("to find the model by name (or pass its host:port)", kind == "name"),
                        ("to find the rubric service (or pass --rubric-address)", bool(settings["rubric"])
                         and not opts.rubric_address),
                    )
                    if needed
                ]  # fmt: skip
                if needs_registry:
                    await run.connect_bus(needs_registry[0])
                publisher = await run.publisher() if opts.publish else None
                addresses, model_name = await run.model(settings["model"], results.path)
                needs_nats = bool(needs_registry) or not addresses
                config.model = model_name
                from ..orchestrator.engine import RolloutEngine

                engine = await stack.enter_async_context(
                    RolloutEngine(
                        config,
                        nats_url=run.nats_url if needs_nats else None,
                        env_addresses=opts.env_addresses,
                        inference_addresses=addresses,
                        rubric_address=opts.rubric_address,
                        publisher=publisher,
                    )
                )
                served = sorted({r.model for r in engine.inference_pool.active})
                if resuming and meta.get("model_served") and meta["model_served"] != served:
                    raise FailedPreconditionError(
                        f"{results.path} was evaluated with model {meta['model_served']}, the servers now serve "
                        f"{served}; pass another --out for a new evaluation",
                        reason="RESULTS_MISMATCH",
                    )
                meta["model_served"] = served
                # an API model's endpoint, for the report (never its key)
                meta["endpoints"] = sorted({r.endpoint for r in engine.inference_pool.active if r.endpoint})
                meta["config"] = config.model_dump()
                by_env = await engine.tasks_by_env(settings["num_tasks"])
                for name, found in by_env.items():
                    if not found:
                        split = engine.lane(name).config.split
                        raise InvalidArgumentError(f"environment {name!r} has no tasks in split {split!r}")
                tasks = mixture.draw(by_env, engine.weights, settings["num_tasks"])
            except (RollmeshError, LookupError, OSError, TimeoutError) as e:
                raise CannotStart(str(e) + HINTS.get(getattr(e, "reason", ""), "")) from e
            meta["task_ids"] = sorted({*meta.get("task_ids", []), *(_task_key(t, config) for t in tasks)})
            results.begin_session(meta, opts.argv)
            started = True
            outcome.new_trajectories = await _drive(engine, tasks, results, settings, meta, opts, console)
    except CannotStart as e:
        outcome.exit_code, outcome.message, status = EXIT_CANNOT_START, str(e), "failed to start"
    except asyncio.CancelledError:
        outcome.exit_code, status = EXIT_INTERRUPTED, "interrupted"
        outcome.message = (
            f"interrupted; partial results kept in {results.path}; rerun with --out {results.path} to resume"
        )
    except (RollmeshError, LookupError, OSError, TimeoutError) as e:
        outcome.exit_code, status = EXIT_NOTHING_FINISHED, "failed"
        outcome.message = f"the evaluation stopped: {e}; partial results kept in {results.path}"

    if not started and not resuming:
        # Nothing ran: leave no half-made results directory behind (log tails are in the message).
        import shutil

        if new_dir:
            shutil.rmtree(results.path, ignore_errors=True)
        else:
            for p in results.path.iterdir():
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        outcome.out = None
        return outcome
    summary = write_summary(results, meta, opts.pass_threshold)
    outcome.summary = summary
    if started:
        results.end_session(meta, status, new_trajectories=outcome.new_trajectories)
    if outcome.exit_code == EXIT_OK and not summary["counts"]["finished"]:
        outcome.exit_code = EXIT_NOTHING_FINISHED
        top = summary["errors"]["examples"][:1]
        why = f" (e.g. {top[0]['source']}: {top[0]['message']})" if top else ""
        outcome.message = f"no rollout finished: {summary['counts']['errored']} errored{why}"
    return outcome


async def _drive(
    engine: Any,
    tasks: Sequence[Any],
    results: ResultsDir,
    settings: dict[str, Any],
    meta: dict[str, Any],
    opts: EvalOptions,
    console: Console,
) -> int:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from ..orchestrator.engine import trajectory_id

    run_id = meta["run_id"]
    planned = {
        trajectory_id(run_id, engine.group_id_for(t, 0), i) for t in tasks for i in range(engine.rollouts_per_task(t))
    }
    finished = results.finished_ids()
    done = len(planned & finished)
    rewards: list[float] = []
    errors = 0
    new = 0
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("reward {task.fields[reward]}  errors {task.fields[errors]}"),
    )
    with Progress(*columns, console=console, disable=not opts.progress) as progress:
        bar = progress.add_task(env_label(settings), total=len(planned), completed=done, reward="–", errors=0)
        async for group in engine.run(tasks, skip=finished):
            new += results.append(group)
            for t in group:
                if t.stop_reason == traj_pb.STOP_REASON_ERROR:
                    errors += 1
                else:
                    rewards.append(t.reward)
            mean = f"{sum(rewards) / len(rewards):.3f}" if rewards else "–"
            progress.update(bar, advance=len(group), reward=mean, errors=errors)
    return new


def write_summary(results: ResultsDir, meta: dict[str, Any], pass_threshold: float) -> dict[str, Any]:
    """summary.json and the reports, over every trajectory in the directory."""
    trajectories = results.trajectories()
    settings = meta.get("settings", {})
    expected = _expected(settings, meta.get("task_ids", [])) or None
    run_info = {
        "run_id": meta.get("run_id", ""),
        "env": env_label(settings),
        "model": ", ".join(meta.get("model_served", [])) or settings.get("model", ""),
        **({"endpoint": ", ".join(meta["endpoints"])} if meta.get("endpoints") else {}),
        "split": settings.get("split", ""),
        "rollouts_per_task": settings.get("rollouts_per_task"),
        "temperature": settings.get("sampling", {}).get("temperature"),
        "max_tokens": settings.get("sampling", {}).get("max_tokens"),
        "rubric": settings.get("rubric") or "(environment)",
        "sessions": len(meta.get("sessions", [])),
        # Wall time of every session, the one ending now included.
        "wall_s": round(sum((x.get("ended_at") or time.time()) - x["started_at"] for x in meta.get("sessions", [])), 3),
        "rollmesh_version": meta.get("rollmesh_version", __version__),
    }
    summary = summarize(trajectories, pass_threshold=pass_threshold, expected=expected, run=run_info)
    write_atomic(results.path / SUMMARY, json.dumps(summary, indent=2) + "\n")
    hist = summary["histogram"]
    write_atomic(results.path / HISTOGRAM_SVG, report_mod.histogram_svg(hist["edges"], hist["counts"]) + "\n")
    write_atomic(results.path / REPORT_MD, report_mod.render_markdown(summary, HISTOGRAM_SVG))
    write_atomic(results.path / REPORT_HTML, report_mod.render_html(summary))
    return summary


def _task_key(task: Any, config: Any) -> str:
    """A task's entry in run.json's task_ids: its id, prefixed by its environment in a mixture."""
    return f"{task.env}/{task.task_id}" if config.is_mixture else task.task_id


def _expected(settings: dict[str, Any], task_ids: Sequence[str]) -> int:
    """Rollouts the run asks for: each task's group size (a mixture's entry may set its own)."""
    default = settings.get("rollouts_per_task", 0)
    sizes = {e.get("name"): e.get("rollouts_per_task") or default for e in settings.get("envs") or []}
    if not sizes:
        return len(task_ids) * default
    return sum(sizes.get(key.split("/", 1)[0], default) for key in task_ids)


def summary_table(summary: dict[str, Any]) -> Table:
    run, counts, reward = summary["run"], summary["counts"], summary["reward"]

    def f(v: Any) -> str:
        return "–" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)

    table = Table(title=f"{run.get('env')} · {run.get('model')} · run {run.get('run_id')}")
    table.add_column("")
    table.add_column("value", justify="right")
    expected = f" of {counts['expected']}" if counts.get("expected") else ""
    table.add_row("rollouts", f"{counts['trajectories']}{expected} ({counts['tasks']} tasks)")
    table.add_row("mean reward", f(reward["mean"]))
    for name, value in summary["rewards"].items():
        table.add_row(f"  {name}", f(value))
    for k, v in summary["pass_at_k"].items():
        table.add_row(f"pass@{k}", f(v))
    for env, e in summary.get("by_env", {}).items():
        table.add_row(f"{env}: mean reward", f"{f(e['reward_mean'])} ({e['trajectories']} rollouts)")
    table.add_row("errors", str(counts["errored"]))
    for source, n in summary["errors"]["by_source"].items():
        table.add_row(f"  {source}", str(n))
    for reason, n in summary["errors"]["by_reason"].items():
        table.add_row(f"  {reason}", str(n))
    table.add_row("completion tokens", str(summary["tokens"]["completion"]))
    total = summary["timing_s"].get("total", {})
    if total:
        table.add_row("rollout time p50 / p90 (s)", f"{total['p50']:.2f} / {total['p90']:.2f}")
    return table


def main(opts: EvalOptions, *, as_json: bool = False) -> int:
    """The command: runs the eval with ctrl-C / SIGTERM handled, prints the table (and JSON)."""
    err = Console(stderr=True)
    out = Console()

    async def runner() -> EvalOutcome:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            return await run_eval(opts, err)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    outcome = asyncio.run(runner())
    if outcome.summary is not None:
        (err if as_json else out).print(summary_table(outcome.summary))
        if outcome.out is not None:
            err.print(f"results: {outcome.out}  (report: {outcome.out / REPORT_MD}, {outcome.out / REPORT_HTML})")
        if as_json:
            print(json.dumps(outcome.summary))
    if outcome.message:
        color = "yellow" if outcome.exit_code in (EXIT_OK, EXIT_INTERRUPTED) else "red"
        prefix = "" if outcome.exit_code in (EXIT_OK, EXIT_INTERRUPTED) else "error: "
        err.print(f"[{color}]{prefix}{outcome.message}[/]", highlight=False)
    return outcome.exit_code


__all__ = ["EvalOptions", "EvalOutcome", "main", "model_kind", "run_eval", "summary_table", "write_summary"]
