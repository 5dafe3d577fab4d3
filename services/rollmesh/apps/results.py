"""The results directory of an evaluation:

    run.json              run metadata: run id, environment, model, the rollout config, one entry
                          per session (each start or resume), task ids
    trajectories.jsonl    one Trajectory per line (protobuf JSON, token ids kept), appended and
                          fsynced one group at a time, so killing the process loses nothing finished
    summary.json          written by `rollmesh eval` after each session, over every trajectory
    report.md, report.html, reward_histogram.svg

Resume: a rerun with the same directory reuses its run id, so the engine gives every rollout the
same trajectory id and skips those already in the file. Errored trajectories are moved out of
the way (to errors.retried.jsonl) and run again.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from ..durable import write_atomic
from ..errors import DataLossError, FailedPreconditionError
from ..proto.v1 import trajectory_pb2 as traj_pb

META = "run.json"
TRAJECTORIES = "trajectories.jsonl"
RETRIED_ERRORS = "errors.retried.jsonl"
SUMMARY = "summary.json"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
HISTOGRAM_SVG = "reward_histogram.svg"


def trajectory_to_json(t: traj_pb.Trajectory) -> dict[str, Any]:
    """The protobuf JSON mapping with proto field names; token id lists and logprobs are kept."""
    return json_format.MessageToDict(t, preserving_proto_field_name=True)


def trajectory_from_json(d: dict[str, Any]) -> traj_pb.Trajectory:
    return json_format.ParseDict(d, traj_pb.Trajectory(), ignore_unknown_fields=True)


def read_trajectories(path: Path) -> Iterator[traj_pb.Trajectory]:
    """Every trajectory of a trajectories.jsonl file. A last line without its newline (the process
    was killed mid-write) is ignored; a corrupt line elsewhere is a DataLossError."""
    if not path.exists():
        return
    with path.open("rb") as f:
        lines = f.read().split(b"\n")
    # After split, a complete file ends with b"" (text ended with "\n"); anything else is torn.
    for number, line in enumerate(lines[:-1], 1):
        if not line.strip():
            continue
        try:
            yield trajectory_from_json(json.loads(line))
        except (ValueError, json_format.ParseError) as e:
            raise DataLossError(f"{path}:{number}: not a trajectory ({e}); remove or fix that line") from e


class ResultsDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.trajectories_path = self.path / TRAJECTORIES
        self.meta_path = self.path / META
        self._ids: set[str] | None = None

    def exists(self) -> bool:
        return self.meta_path.is_file()

    # ---- metadata ----------------------------------------------------------------------------

    def read_meta(self) -> dict[str, Any]:
        try:
            return json.loads(self.meta_path.read_text())
        except FileNotFoundError:
            return {}
        except json.JSONDecodeError as e:
            raise DataLossError(f"{self.meta_path} is not valid JSON ({e})") from e

    def write_meta(self, meta: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_atomic(self.meta_path, json.dumps(meta, indent=2, sort_keys=True) + "\n")

    def check_resumable(self, wanted: dict[str, Any], keys: Iterable[str]) -> None:
        """A resume must run the same evaluation: the same environment, split, model, group size."""
        meta = self.read_meta()
        different = [f"{k}: {meta.get(k)!r} there, {wanted.get(k)!r} now" for k in keys if meta.get(k) != wanted.get(k)]
        if different:
            raise FailedPreconditionError(
                f"{self.path} holds a different evaluation ({'; '.join(different)}); "
                "pass another --out to start a new one",
                reason="RESULTS_MISMATCH",
            )

    # ---- trajectories -------------------------------------------------------------------------

    def trajectories(self) -> list[traj_pb.Trajectory]:
        return list(read_trajectories(self.trajectories_path))

    def repair(self) -> int:
        """Cuts a torn last line (from a kill mid-write) so that appends start on a fresh line.
        Returns the number of bytes dropped."""
        p = self.trajectories_path
        if not p.exists():
            return 0
        data = p.read_bytes()
        keep = data.rfind(b"\n") + 1
        if keep == len(data):
            return 0
        with p.open("r+b") as f:
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
        return len(data) - keep

    def set_aside_errors(self) -> int:
        """Moves errored trajectories to errors.retried.jsonl so they run again; returns how many."""
        trajs = self.trajectories()
        errored = [t for t in trajs if t.stop_reason == traj_pb.STOP_REASON_ERROR]
        if not errored:
            return 0
        with (self.path / RETRIED_ERRORS).open("a") as f:
            for t in errored:
                f.write(json.dumps(trajectory_to_json(t)) + "\n")
            f.flush()
            os.fsync(f.fileno())
        kept = "".join(
            json.dumps(trajectory_to_json(t)) + "\n" for t in trajs if t.stop_reason != traj_pb.STOP_REASON_ERROR
        )
        write_atomic(self.trajectories_path, kept)
        self._ids = None
        return len(errored)

    def finished_ids(self) -> set[str]:
        if self._ids is None:
            self._ids = {t.trajectory_id for t in read_trajectories(self.trajectories_path)}
        return set(self._ids)

    def append(self, group: Iterable[traj_pb.Trajectory]) -> int:
        """Appends the trajectories not yet stored and fsyncs; returns how many were written."""
        if self._ids is None:
            self.finished_ids()
        ids = self._ids
        assert ids is not None
        fresh = [t for t in group if t.trajectory_id not in ids]
        if not fresh:
            return 0
        self.path.mkdir(parents=True, exist_ok=True)
        # One write of whole lines: a kill can tear only the last line, which repair() drops.
        data = "".join(json.dumps(trajectory_to_json(t), separators=(",", ":")) + "\n" for t in fresh)
        with self.trajectories_path.open("a") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        ids.update(t.trajectory_id for t in fresh)
        return len(fresh)

    # ---- sessions ------------------------------------------------------------------------------

    def begin_session(self, meta: dict[str, Any], argv: list[str]) -> None:
        sessions = meta.setdefault("sessions", [])
        sessions.append({"started_at": time.time(), "argv": argv, "status": "running"})
        self.write_meta(meta)

    def end_session(self, meta: dict[str, Any], status: str, **extra: Any) -> None:
        if meta.get("sessions"):
            meta["sessions"][-1].update(ended_at=time.time(), status=status, **extra)
        self.write_meta(meta)


__all__ = ["ResultsDir", "read_trajectories", "trajectory_from_json", "trajectory_to_json"]
