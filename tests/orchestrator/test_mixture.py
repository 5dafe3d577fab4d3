"""Runs over several environments, transport-free: the [[rollout.envs]] configuration (its checks and
each environment's effective settings) and the weighted interleaving of tasks (orchestrator/mixture.py)."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
from pydantic import ValidationError
from rollmesh.apps.eval import _expected, environments
from rollmesh.apps.reward_curve import reward_summary
from rollmesh.config import load_config
from rollmesh.errors import InvalidArgumentError
from rollmesh.orchestrator.config import RolloutConfig
from rollmesh.orchestrator.mixture import cycle, draw, interleave


def _config(**kw) -> RolloutConfig:
    return RolloutConfig.model_validate({"run_id": "r", **kw})


def test_each_environment_gets_the_runs_settings_unless_it_sets_its_own(tmp_path) -> None:
    path = tmp_path / "run.toml"
    path.write_text(
        """
run_id = "mix"
split = "train"
rollouts_per_task = 4
rubric = "answer"
env_options = { level = 1 }
sampling = { temperature = 0.9, max_tokens = 32, seed = 7 }

[[envs]]
name = "arithmetic"
weight = 3

[[envs]]
name = "guess-number"
split = "test"
rubric = ""
rollouts_per_task = 2
env_options = { level = 2 }
sampling = { temperature = 0.5 }
"""
    )
    cfg = load_config(RolloutConfig, path)
    assert cfg.is_mixture and cfg.env_names == ["arithmetic", "guess-number"]
    a, g = cfg.shares()
    assert (a.name, a.weight, g.name, g.weight) == ("arithmetic", 3.0, "guess-number", 1.0)
    assert (a.config.env, a.config.split, a.config.rubric, a.config.rollouts_per_task) == (
        "arithmetic",
        "train",
        "answer",
        4,
    )
    assert a.config.env_options == {"level": 1} and a.config.sampling == cfg.sampling
    assert (g.config.env, g.config.split, g.config.rubric, g.config.rollouts_per_task) == (
        "guess-number",
        "test",
        "",
        2,
    )
    assert g.config.env_options == {"level": 2}
    # overrides replace only what they set; the run's seed stays the run's
    assert (g.config.sampling.temperature, g.config.sampling.max_tokens, g.config.sampling.seed) == (0.5, 32, 7)
    assert not g.config.is_mixture and g.config.shares()[0].config is g.config
    single = _config(env="arithmetic")
    assert [(s.name, s.weight) for s in single.shares()] == [("arithmetic", 1.0)] and single.shares()[
        0
    ].config is single


@pytest.mark.parametrize(
    ("data", "says"),
    [
        ({"env": "arithmetic", "envs": [{"name": "digits"}]}, "not both"),
        ({}, "name an environment"),
        ({"envs": [{"name": "a"}, {"name": "b"}, {"name": "a"}]}, "'a' is listed twice"),
        ({"envs": [{"name": "a", "weight": 0}]}, "greater than 0"),
        ({"envs": [{"name": "a", "weight": float("inf")}]}, "finite"),
        ({"envs": [{"name": ""}]}, "at least 1 character"),
        ({"envs": [{"name": "a", "rollouts_per_task": 0}]}, "greater than or equal to 1"),
        ({"envs": [{"name": "a", "sampling": {"temprature": 1}}]}, "temprature"),
        ({"envs": [{"name": "a", "sampling": {"top_p": 0}}]}, "top_p"),
        ({"envs": [{"name": "a", "wieght": 2}]}, "wieght"),
    ],
)
def test_a_bad_mixture_is_a_clear_config_error(data, says) -> None:
    with pytest.raises(ValidationError, match=says):
        _config(**data)


def test_interleave_keeps_every_prefix_within_one_of_the_weights_share() -> None:
    weights = {"a": 5.0, "b": 2.0, "c": 0.5}
    total = sum(weights.values())
    seen: Counter[str] = Counter()
    for n, name in enumerate(itertools.islice(interleave(weights), 3000), 1):
        seen[name] += 1
        assert all(abs(seen[k] - n * w / total) <= 1.0 for k, w in weights.items()), (n, seen)
    assert list(itertools.islice(interleave({"x": 1, "y": 1}), 4)) == ["x", "y", "x", "y"]
    with pytest.raises(ValueError, match="positive"):
        next(interleave({"x": 1, "y": 0}))


def test_draw_takes_tasks_in_order_and_shares_what_is_left_when_one_runs_out() -> None:
    tasks = {"a": [f"a{i}" for i in range(10)], "b": ["b0", "b1"], "empty": []}
    weights = {"a": 1.0, "b": 1.0, "empty": 5.0}
    assert draw(tasks, weights, 4) == ["a0", "b0", "a1", "b1"]
    assert draw(tasks, weights, 7) == ["a0", "b0", "a1", "b1", "a2", "a3", "a4"]
    assert sorted(draw(tasks, weights, 0)) == sorted(tasks["a"] + tasks["b"])  # 0 = all
    assert len(draw(tasks, weights, 100)) == 12
    picked = Counter(t[0] for t in draw({"a": ["a"] * 100, "b": ["b"] * 100}, {"a": 3, "b": 1}, 40))
    assert picked == {"a": 30, "b": 10}


def test_cycle_reshuffles_each_environment_per_pass_under_the_seed() -> None:
    tasks = {"a": list("ABCD"), "b": list("xy")}
    run = list(itertools.islice(cycle(tasks, {"a": 2, "b": 1}, seed=3), 24))
    assert run == list(itertools.islice(cycle(tasks, {"a": 2, "b": 1}, seed=3), 24))  # deterministic
    assert run != list(itertools.islice(cycle(tasks, {"a": 2, "b": 1}, seed=4), 24))
    a = [(t, p) for t, p in run if t in "ABCD"]
    assert len(a) == 16  # two thirds of the draws
    for p in range(4):  # every pass holds each task once
        assert sorted(t for t, q in a if q == p) == list("ABCD")
    assert len({tuple(t for t, q in a if q == p) for p in range(4)}) > 1  # and a new order
    b = [(t, p) for t, p in run if t in "xy"]
    assert [p for _, p in b] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert list(cycle({"a": []}, {"a": 1}, seed=0)) == []


def test_eval_flags_and_files_name_the_environments(tmp_path) -> None:
    assert environments(["arithmetic"]) == ("arithmetic", None)
    assert environments([]) == (None, None)
    _, envs = environments(["arithmetic:3", "guess-number"])
    assert [(e["name"], e["weight"]) for e in envs] == [("arithmetic", 3.0), ("guess-number", 1.0)]
    with pytest.raises(InvalidArgumentError, match="NAME:WEIGHT"):
        environments(["arithmetic:lots"])
    path = tmp_path / "mix.toml"
    path.write_text('[[envs]]\nname = "a"\nrollouts_per_task = 2\n[[envs]]\nname = "b"\nweight = 2\n')
    _, envs = environments([], str(path))
    assert envs[0]["rollouts_per_task"] == 2 and envs[1]["weight"] == 2.0
    with pytest.raises(InvalidArgumentError, match="not both"):
        environments(["a"], str(path))
    path.write_text('[[envs]]\nname = "a"\nweigth = 2\n')
    with pytest.raises(InvalidArgumentError, match="weigth"):
        environments([], str(path))
    # the rollouts a run asks for follow each environment's group size
    settings = {"rollouts_per_task": 4, "envs": [{"name": "a", "rollouts_per_task": 2}, {"name": "b"}]}
    assert _expected(settings, ["a/1", "a/2", "b/1"]) == 2 + 2 + 4
    assert _expected({"rollouts_per_task": 3, "env": "a"}, ["1", "2"]) == 6


def test_the_train_summary_follows_each_environment() -> None:
    records = [
        {"step": s, "reward_mean": 0.5, "reward_mean_by_env": {"a": 0.1 * s, "b": 1.0 - 0.1 * s}} for s in range(1, 11)
    ]
    summary = reward_summary(records)
    assert summary["by_env"]["a"]["reward_first"] == pytest.approx(0.15)
    assert summary["by_env"]["b"]["reward_last"] == pytest.approx(0.05)
    assert "by_env" not in reward_summary([{"step": 1, "reward_mean": 0.5, "reward_mean_by_env": {"a": 0.5}}])


def test_a_run_file_serves_and_checks_every_environment_of_its_mixture(tmp_path) -> None:
    from rollmesh.apps.train import load_train_config, trainer_config

    path = tmp_path / "run.toml"
    path.write_text('[[rollout.envs]]\nname = "digits"\n[[rollout.envs]]\nname = "arithmetic"\nrollouts_per_task = 2\n')
    cfg = load_train_config(path)
    assert [e.targets for e in cfg.mesh.envs] == [["digits", "arithmetic"]]  # one server hosts both
    # the trainer cannot check whole groups of differing sizes: it checks what holds for part of one
    assert trainer_config(cfg, nats_url="nats://x", model_path="m")["batch"]["group_size"] == 0
    cfg = load_train_config(path, ["rollout.rollouts_per_task=2"])
    assert trainer_config(cfg, nats_url="nats://x", model_path="m")["batch"]["group_size"] == 2
    path.write_text('[rollout]\nenv = "digits"\n[[rollout.envs]]\nname = "arithmetic"\n')
    with pytest.raises(InvalidArgumentError, match="not both"):
        load_train_config(path)
