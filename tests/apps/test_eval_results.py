"""The eval results directory (no sockets): appends that survive a kill, torn-line repair,
resume bookkeeping, errored rollouts set aside to run again, the resume checks of `rollmesh eval`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rollmesh.apps.eval import CannotStart, EvalOptions, _prepare, model_kind
from rollmesh.apps.results import ResultsDir, trajectory_from_json, trajectory_to_json
from rollmesh.errors import DataLossError
from rollmesh.proto.v1 import trajectory_pb2 as traj_pb


def traj(tid: str, *, error: bool = False, reward: float = 0.5) -> traj_pb.Trajectory:
    t = traj_pb.Trajectory(trajectory_id=tid, run_id="r", group_id="r/env/test/t")
    t.turns.add(prompt_ids=[7, 8, 9], completion_ids=[10, 11], completion_logprobs=[-0.5, -0.25], policy_version=3)
    t.provenance.seed = 2**40
    if error:
        t.stop_reason = traj_pb.STOP_REASON_ERROR
        t.error.source, t.error.message = "environment", "replica gone"
    else:
        t.stop_reason = traj_pb.STOP_REASON_DONE
        t.reward = reward
    return t


def test_json_form_keeps_tokens_and_round_trips() -> None:
    t = traj("a")
    d = trajectory_to_json(t)
    assert d["turns"][0]["prompt_ids"] == [7, 8, 9] and d["turns"][0]["completion_logprobs"] == [-0.5, -0.25]
    assert trajectory_from_json(json.loads(json.dumps(d))) == t


def test_append_is_idempotent_and_durable(tmp_path: Path) -> None:
    results = ResultsDir(tmp_path / "run")
    assert results.append([traj("a"), traj("b")]) == 2
    assert results.append([traj("b"), traj("c")]) == 1  # b is stored already
    # A new reader (the next session) sees exactly what was written, in order.
    again = ResultsDir(tmp_path / "run")
    assert [t.trajectory_id for t in again.trajectories()] == ["a", "b", "c"]
    assert again.finished_ids() == {"a", "b", "c"}


def test_torn_last_line_is_dropped_and_repaired(tmp_path: Path) -> None:
    results = ResultsDir(tmp_path)
    results.append([traj("a"), traj("b")])
    whole = results.trajectories_path.read_bytes()
    # A kill in the middle of the next write leaves half a line.
    results.trajectories_path.write_bytes(whole + json.dumps(trajectory_to_json(traj("c"))).encode()[:40])
    assert [t.trajectory_id for t in ResultsDir(tmp_path).trajectories()] == ["a", "b"]
    fresh = ResultsDir(tmp_path)
    assert fresh.repair() == 40
    assert fresh.trajectories_path.read_bytes() == whole
    assert fresh.append([traj("c")]) == 1
    assert [t.trajectory_id for t in fresh.trajectories()] == ["a", "b", "c"]


def test_corrupt_line_in_the_middle_is_data_loss(tmp_path: Path) -> None:
    results = ResultsDir(tmp_path)
    results.append([traj("a")])
    with results.trajectories_path.open("a") as f:
        f.write("{not json\n")
    results.append([traj("b")])
    with pytest.raises(DataLossError, match=r"trajectories.jsonl:2"):
        ResultsDir(tmp_path).trajectories()


def test_errored_rollouts_are_set_aside_to_run_again(tmp_path: Path) -> None:
    results = ResultsDir(tmp_path)
    results.append([traj("a"), traj("b", error=True), traj("c"), traj("d", error=True)])
    assert results.set_aside_errors() == 2
    assert results.finished_ids() == {"a", "c"}
    assert results.append([traj("b"), traj("d")]) == 2  # the reruns
    ids = [t.trajectory_id for t in results.trajectories()]
    assert sorted(ids) == ["a", "b", "c", "d"] and len(ids) == len(set(ids))
    aside = [json.loads(line)["trajectory_id"] for line in (tmp_path / "errors.retried.jsonl").read_text().splitlines()]
    assert aside == ["b", "d"]
    assert results.set_aside_errors() == 0


def test_resume_keeps_the_run_and_refuses_a_different_evaluation(tmp_path: Path) -> None:
    out = tmp_path / "gn"
    results, meta, settings, resuming, new_dir = _prepare(
        EvalOptions(env="guess-number", model="tiny", rollouts_per_task=2, temperature=0.7, out=str(out))
    )
    assert not resuming and new_dir and meta["run_id"] == "gn"
    assert settings["num_tasks"] == 100 and settings["split"] == "test" and settings["sampling"]["temperature"] == 0.7
    results.write_meta(meta)
    # Only --out: everything else comes from the stored run.
    _, meta2, settings2, resuming2, _ = _prepare(EvalOptions(out=str(out)))
    assert resuming2 and meta2["run_id"] == "gn" and settings2 == settings
    # More tasks is an extension of the same evaluation; another group size or temperature is not.
    _, _, settings3, _, _ = _prepare(EvalOptions(out=str(out), num_tasks=200, model="127.0.0.1:5000"))
    assert settings3["num_tasks"] == 200
    with pytest.raises(CannotStart, match=r"rollouts_per_task \(2 -> 4\)"):
        _prepare(EvalOptions(out=str(out), rollouts_per_task=4))
    with pytest.raises(CannotStart, match=r"sampling.temperature \(0.7 -> 1.0\)"):
        _prepare(EvalOptions(out=str(out), temperature=1.0))
    with pytest.raises(CannotStart, match="holds run 'gn', not 'other'"):
        _prepare(EvalOptions(out=str(out), run_id="other"))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file").write_text("x")
    with pytest.raises(CannotStart, match="not a rollmesh results directory"):
        _prepare(EvalOptions(env="e", model="m", out=str(tmp_path / "junk")))
    with pytest.raises(CannotStart, match="--model is required"):
        _prepare(EvalOptions(env="e", out=str(tmp_path / "new")))


def test_model_kinds(tmp_path: Path) -> None:
    assert model_kind("127.0.0.1:50061") == "address"
    assert model_kind("inference.svc.cluster.local:50061") == "address"
    assert model_kind("[::1]:50061") == "address"
    assert model_kind("tiny") == "alias" and model_kind("smollm2") == "alias"
    assert model_kind("Qwen/Qwen3-4B") == "name"
    assert model_kind(str(tmp_path)) == "local"
    assert model_kind("weights/model.Q4.gguf") == "local"
