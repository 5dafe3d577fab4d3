"""`rollmesh export`: trajectories -> SFT / distillation data, one row per rollout (or per model
call), in chat format with the exact tokens kept.

Where the trajectories come from (`--run RUN`, first match wins):
1. RUN is a results directory (it holds trajectories.jsonl), e.g. `--run rollmesh-runs/eval-x`;
2. <results root>/RUN is one (the root is ./rollmesh-runs, or $ROLLMESH_RESULTS_DIR): the
   directory `rollmesh eval` writes by default;
3. the JetStream ROLLOUTS stream, subject rollmesh.rollouts.<RUN>.* (what training and evals
   published), read from its first message with an ephemeral ordered consumer.

A row (per rollout):
    id, run_id, group_id, env, task_id, split, answer
    messages     the whole conversation, OpenAI chat format (role, content, tool_calls, ...)
    prompt       the messages before the first assistant message
    completion   the rest (the assistant's turns and what the environment answered)
    reward, rewards (per function), advantage, stop_reason, model, policy_version, env_version
    prompt_ids        token ids of the first model call's prompt
    completion_ids    every token after it: the model's completions and, between them, the
                      tokens the environment's replies added to the context
    completion_mask   1 where the model generated the token (and the trajectory trained on it),
                      0 for tokens from the environment
    completion_logprobs  the inference server's logprobs of the generated tokens (0 elsewhere)
    num_turns
With per_turn, one row per model call: messages up to that call's assistant message, and that
call's own prompt_ids / completion_ids / mask / logprobs (field `turn` = its index).

Errored rollouts are never exported (they are failures, not samples); `min_reward` drops rollouts
scoring below it.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..convert import STOP_REASON_NAMES, message_from_pb
from ..errors import InvalidArgumentError, NotFoundError, UnavailableError
from ..proto.v1 import trajectory_pb2 as traj_pb
from ..telemetry import get_logger
from .results import TRAJECTORIES, read_trajectories

log = get_logger(__name__)

DEFAULT_RESULTS_ROOT = "rollmesh-runs"
FORMATS = ("jsonl", "parquet")


def results_root() -> Path:
    return Path(os.environ.get("ROLLMESH_RESULTS_DIR") or DEFAULT_RESULTS_ROOT)


# ---- rows ------------------------------------------------------------------------------------


def chat_message(pb: Any) -> dict[str, Any]:
    """A Message as an OpenAI-style chat dict, with every key present (None when unset), so that
    all rows share one schema."""
    m = message_from_pb(pb)
    return {
        "role": m["role"],
        "content": m.get("content") or "",
        "tool_calls": m.get("tool_calls"),
        "tool_call_id": m.get("tool_call_id"),
        "name": m.get("name"),
        "reasoning_content": m.get("reasoning_content"),
    }


def merge_turns(turns: Sequence[traj_pb.Turn]) -> tuple[list[int], list[int], list[int], list[float]] | None:
    """(prompt_ids, completion_ids, completion_mask, completion_logprobs) of the whole episode as
    one sequence, when each call's prompt extends the previous prompt + completion (what the
    orchestrator guarantees); None otherwise."""
    if not turns:
        return None
    seq: list[int] = list(turns[0].prompt_ids)
    prompt_len = len(seq)
    mask: list[int] = []
    logprobs: list[float] = []
    for turn in turns:
        prompt = list(turn.prompt_ids)
        if prompt[: len(seq)] != seq:
            return None
        bridge = prompt[len(seq) :]
        seq += bridge
        mask += [0] * len(bridge)
        logprobs += [0.0] * len(bridge)
        completion = list(turn.completion_ids)
        seq += completion
        turn_mask = list(turn.completion_mask) or [1] * len(completion)
        turn_lps = list(turn.completion_logprobs) or [0.0] * len(completion)
        if len(turn_mask) != len(completion) or len(turn_lps) != len(completion):
            return None
        mask += turn_mask
        logprobs += turn_lps
    return seq[:prompt_len], seq[prompt_len:], mask, logprobs


def _base_row(t: traj_pb.Trajectory) -> dict[str, Any]:
    return {
        "id": t.trajectory_id,
        "run_id": t.run_id,
        "group_id": t.group_id,
        "env": t.task.env or t.provenance.env_name,
        "task_id": t.task.task_id,
        "split": t.task.split,
        "answer": t.task.answer,
        "reward": t.reward,
        "rewards": dict(t.rewards),
        "advantage": t.advantage,
        "stop_reason": STOP_REASON_NAMES.get(t.stop_reason, "") or "unspecified",
        "model": t.provenance.model,
        "policy_version": t.provenance.policy_version,
        "env_version": t.provenance.env_version,
    }


def _split_prompt(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    first = next((i for i, m in enumerate(messages) if m["role"] == "assistant"), len(messages))
    return messages[:first], messages[first:]


def trajectory_rows(t: traj_pb.Trajectory, *, per_turn: bool = False) -> Iterator[dict[str, Any]]:
    messages = [chat_message(m) for m in t.messages]
    if not per_turn:
        prompt, completion = _split_prompt(messages)
        merged = merge_turns(t.turns)
        if merged is None and t.turns:
            log.warning("trajectory %s: model calls are not one token sequence; tokens left empty", t.trajectory_id)
        p_ids, c_ids, mask, lps = merged or ([], [], [], [])
        yield {
            **_base_row(t),
            "messages": messages,
            "prompt": prompt,
            "completion": completion,
            "prompt_ids": p_ids,
            "completion_ids": c_ids,
            "completion_mask": mask,
            "completion_logprobs": lps,
            "num_turns": len(t.turns),
        }
        return
    assistant_at = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    for k, turn in enumerate(t.turns):
        if k < len(assistant_at):  # the k-th model call wrote the k-th assistant message
            a = assistant_at[k]
            upto, prompt, completion = messages[: a + 1], messages[:a], [messages[a]]
        else:
            upto = messages
            prompt, completion = _split_prompt(messages)
        n = len(turn.completion_ids)
        yield {
            **_base_row(t),
            "turn": k,
            "messages": upto,
            "prompt": prompt,
            "completion": completion,
            "prompt_ids": list(turn.prompt_ids),
            "completion_ids": list(turn.completion_ids),
            "completion_mask": list(turn.completion_mask) or [1] * n,
            "completion_logprobs": list(turn.completion_logprobs) or [0.0] * n,
            "num_turns": len(t.turns),
        }


@dataclass
class ExportCounts:
    read: int = 0
    errored: int = 0
    below_min_reward: int = 0
    duplicates: int = 0
    exported: int = 0  # trajectories
    rows: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def select(
    trajectories: Iterable[traj_pb.Trajectory], *, min_reward: float | None, counts: ExportCounts
) -> Iterator[traj_pb.Trajectory]:
    """Drops errored rollouts, those below `min_reward` and repeated ids (a bus can hold a
    trajectory twice when it was republished after the dedup window)."""
    seen: set[str] = set()
    for t in trajectories:
        counts.read += 1
        if t.trajectory_id in seen:
            counts.duplicates += 1
            continue
        seen.add(t.trajectory_id)
        if t.stop_reason == traj_pb.STOP_REASON_ERROR:
            counts.errored += 1
            continue
        if min_reward is not None and t.reward < min_reward:
            counts.below_min_reward += 1
            continue
        counts.exported += 1
        yield t


# ---- writers ---------------------------------------------------------------------------------


def _jsonl_row(row: dict[str, Any]) -> dict[str, Any]:
    def clean(m: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in m.items() if v is not None}

    out = dict(row)
    for key in ("messages", "prompt", "completion"):
        out[key] = [clean(m) for m in row[key]]
    return out


def write_jsonl(rows: Iterable[dict[str, Any]], path: Path) -> int:
    n = 0
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as f:
        for row in rows:
            f.write(json.dumps(_jsonl_row(row), ensure_ascii=False) + "\n")
            n += 1
    os.replace(tmp, path)
    return n


def parquet_schema(per_turn: bool) -> Any:
    import pyarrow as pa

    tool_call = pa.struct(
        [
            ("id", pa.string()),
            ("type", pa.string()),
            ("function", pa.struct([("name", pa.string()), ("arguments", pa.string())])),
        ]
    )
    message = pa.struct(
        [
            ("role", pa.string()),
            ("content", pa.string()),
            ("tool_calls", pa.list_(tool_call)),
            ("tool_call_id", pa.string()),
            ("name", pa.string()),
            ("reasoning_content", pa.string()),
        ]
    )
    fields = [
        ("id", pa.string()),
        ("run_id", pa.string()),
        ("group_id", pa.string()),
        ("env", pa.string()),
        ("task_id", pa.string()),
        ("split", pa.string()),
        ("answer", pa.string()),
        ("reward", pa.float64()),
        ("rewards", pa.map_(pa.string(), pa.float64())),
        ("advantage", pa.float64()),
        ("stop_reason", pa.string()),
        ("model", pa.string()),
        ("policy_version", pa.int64()),
        ("env_version", pa.string()),
    ]
    if per_turn:
        fields.append(("turn", pa.int32()))
    fields += [
        ("messages", pa.list_(message)),
        ("prompt", pa.list_(message)),
        ("completion", pa.list_(message)),
        ("prompt_ids", pa.list_(pa.int32())),
        ("completion_ids", pa.list_(pa.int32())),
        ("completion_mask", pa.list_(pa.int8())),
        ("completion_logprobs", pa.list_(pa.float32())),
        ("num_turns", pa.int32()),
    ]
    return pa.schema(fields)


def write_parquet(rows: Iterable[dict[str, Any]], path: Path, *, per_turn: bool = False, batch: int = 1024) -> int:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise InvalidArgumentError(
            "parquet export needs pyarrow: `pip install 'rollmesh[export]'` (or pyarrow), or use --format jsonl"
        ) from e
    schema = parquet_schema(per_turn)
    tmp = path.with_name(f".{path.name}.tmp")
    n = 0
    with pq.ParquetWriter(tmp, schema) as writer:
        chunk: list[dict[str, Any]] = []
        for row in rows:
            row = {**row, "rewards": list(row["rewards"].items())}
            chunk.append(row)
            if len(chunk) >= batch:
                writer.write_table(pa.Table.from_pylist(chunk, schema=schema))
                n += len(chunk)
                chunk = []
        if chunk or n == 0:
            writer.write_table(pa.Table.from_pylist(chunk, schema=schema))
            n += len(chunk)
    os.replace(tmp, path)
    return n


# ---- sources ---------------------------------------------------------------------------------


def find_results_dir(run: str) -> Path | None:
    for candidate in (Path(run), results_root() / run):
        if (candidate / TRAJECTORIES).is_file():
            return candidate
    return None


async def read_bus(nats_url: str, run_id: str, *, idle_timeout_s: float = 5.0) -> list[traj_pb.Trajectory]:
    """Every trajectory of `run_id` in the ROLLOUTS stream, oldest first. Messages that are not
    Trajectory protobufs are skipped with a warning."""
    import nats.js.errors
    from nats.js.api import DeliverPolicy

    from .. import bus

    subject = bus.rollouts_subject(run_id)
    nc = await bus.connect(nats_url, name=f"rollmesh-export-{run_id}", connect_timeout_s=2.0)
    try:
        js = nc.jetstream()
        try:
            info = await js.stream_info(bus.ROLLOUTS.name, subjects_filter=subject)
        except nats.js.errors.NotFoundError as e:
            raise NotFoundError(
                f"no ROLLOUTS stream on the bus at {nats_url}: nothing was published there yet",
                reason="UNKNOWN_RUN",
            ) from e
        total = sum((info.state.subjects or {}).values())
        if total == 0:
            raise NotFoundError(
                f"run {run_id!r}: no results directory ({results_root() / run_id} or {run_id}) and no "
                f"trajectories on {subject} at {nats_url}",
                reason="UNKNOWN_RUN",
            )
        sub = await js.subscribe(subject, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
        out: list[traj_pb.Trajectory] = []
        try:
            seen = 0
            while seen < total:
                try:
                    msg = await sub.next_msg(timeout=idle_timeout_s)
                except TimeoutError as e:
                    raise UnavailableError(
                        f"reading {subject}: got {seen} of {total} messages, then nothing for {idle_timeout_s:g}s",
                        reason="BUS_STALLED",
                    ) from e
                seen += 1
                try:
                    out.append(traj_pb.Trajectory.FromString(msg.data))
                except Exception:
                    log.warning("skipping a message on %s that is not a Trajectory", msg.subject)
                if msg.metadata.num_pending == 0:
                    break
        finally:
            await sub.unsubscribe()
        return out
    finally:
        await nc.close()


def load_run(run: str, *, nats_url: str | None) -> tuple[str, list[traj_pb.Trajectory]]:
    """(where from, trajectories) of `run`: a results directory, else the bus."""
    directory = find_results_dir(run)
    if directory is not None:
        return str(directory), list(read_trajectories(directory / TRAJECTORIES))
    if not nats_url:
        raise NotFoundError(f"run {run!r}: no results directory ({run} or {results_root() / run}) and no NATS URL")
    from .. import bus

    bus.token("run id", run)  # a RUN that is neither a directory nor a run id gets a clear message
    try:
        return f"{nats_url} {bus.rollouts_subject(run)}", asyncio.run(read_bus(nats_url, run))
    except UnavailableError as e:
        raise UnavailableError(
            f"run {run!r}: no results directory ({run} or {results_root() / run}), and {e}", reason=e.reason
        ) from e


def export(
    trajectories: Iterable[traj_pb.Trajectory],
    out: Path,
    *,
    fmt: str = "jsonl",
    min_reward: float | None = None,
    per_turn: bool = False,
) -> ExportCounts:
    if fmt not in FORMATS:
        raise InvalidArgumentError(f"format {fmt!r}: choose one of {', '.join(FORMATS)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    counts = ExportCounts()
    rows = (
        row
        for t in select(trajectories, min_reward=min_reward, counts=counts)
        for row in trajectory_rows(t, per_turn=per_turn)
    )
    if fmt == "jsonl":
        counts.rows = write_jsonl(rows, out)
    else:
        counts.rows = write_parquet(rows, out, per_turn=per_turn)
    return counts


__all__ = [
    "ExportCounts",
    "export",
    "find_results_dir",
    "load_run",
    "merge_turns",
    "read_bus",
    "results_root",
    "trajectory_rows",
    "write_jsonl",
    "write_parquet",
]
