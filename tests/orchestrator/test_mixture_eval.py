"""`rollmesh eval` over two environments at once (a mixture), on real gRPC servers in this process: one
environment server hosting arithmetic and guess-number, a scripted inference server (a binary-search
guesser: 50, 25, 75). The weights decide each environment's share of the tasks, each environment's own
settings apply to its rollouts, and the summary and reports break down per environment."""

from __future__ import annotations

import json
import statistics
from collections import Counter
from pathlib import Path

from rich.console import Console
from rollmesh.apps.eval import EXIT_CANNOT_START, EXIT_OK, EvalOptions, run_eval
from rollmesh.apps.results import REPORT_HTML, REPORT_MD, SUMMARY, ResultsDir
from rollmesh.proto.v1 import trajectory_pb2 as traj_pb

from .local_servers import env, env_server, scripted_inference

MIXTURE = [
    {"name": "arithmetic", "weight": 3.0},
    {"name": "guess-number", "weight": 1.0, "rollouts_per_task": 2, "sampling": {"max_tokens": 16}},
]


async def test_a_weighted_mixture_splits_the_tasks_and_reports_per_environment(tmp_path: Path) -> None:
    quiet = Console(quiet=True)
    async with (
        env_server(env("arithmetic"), env("guess-number", max_turns=3)) as envs,
        scripted_inference(["50", "25", "75"]) as model,
    ):
        opts = dict(
            envs=MIXTURE, model=model.address, env_addresses=[envs.address], num_tasks=20, rollouts_per_task=1,
            publish=False, progress=False, out=str(tmp_path / "mix"), seed=5,
        )  # fmt: skip
        outcome = await run_eval(EvalOptions(**opts), quiet)
        assert outcome.exit_code == EXIT_OK, outcome.message
        results = ResultsDir(tmp_path / "mix")
        trajectories = results.trajectories()
        by_env = Counter(t.task.env for t in trajectories)
        # 20 tasks at 3:1 -> 15 arithmetic tasks x 1 rollout, 5 guess-number tasks x 2 rollouts
        assert by_env == {"arithmetic": 15, "guess-number": 10}
        assert len({t.task.task_id for t in trajectories if t.task.env == "guess-number"}) == 5
        assert all(t.stop_reason != traj_pb.STOP_REASON_ERROR for t in trajectories)
        # each environment's own settings and scoring: a group stays within one environment
        for t in trajectories:
            assert t.provenance.env_name == t.task.env
            assert t.provenance.sampling.max_tokens == (16 if t.task.env == "guess-number" else 256)
            assert set(t.rewards) == (
                {"solved", "efficiency"} if t.task.env == "guess-number" else {"correct", "format"}
            )
            assert t.group_id.startswith(f"mix/{t.task.env}/test/")
        summary = json.loads((results.path / SUMMARY).read_text())
        assert summary["counts"]["expected"] == summary["counts"]["trajectories"] == 25
        assert summary["run"]["env"] == "arithmetic+guess-number"
        for name, n in by_env.items():
            mine = [t.reward for t in trajectories if t.task.env == name]
            e = summary["by_env"][name]
            assert (e["trajectories"], e["errored"]) == (n, 0)
            assert e["reward_mean"] == statistics.fmean(mine)
        # the guesser finds some secrets within 3 turns and no arithmetic answer: the means differ
        assert summary["by_env"]["guess-number"]["reward_mean"] != summary["by_env"]["arithmetic"]["reward_mean"]
        assert set(summary["by_env"]["guess-number"]["pass_at_k"]) == {"1", "2"}
        report = (results.path / REPORT_MD).read_text()
        assert "## Environments" in report and "| guess-number | 10 | 5 | 0 |" in report
        assert "<td>arithmetic</td><td>15</td>" in (results.path / REPORT_HTML).read_text()

        # a rerun resumes: every planned rollout is there, nothing runs again
        again = await run_eval(
            EvalOptions(out=str(tmp_path / "mix"), env_addresses=[envs.address], publish=False, progress=False), quiet
        )
        assert (again.exit_code, again.new_trajectories) == (EXIT_OK, 0), again.message
        # ... and may not change the mixture
        changed = await run_eval(EvalOptions(**{**opts, "envs": MIXTURE[:1]}), quiet)
        assert changed.exit_code == EXIT_CANNOT_START and "envs" in changed.message

        # an environment no server hosts stops the run before any rollout, naming what is hosted
        bad = [*MIXTURE, {"name": "nope", "weight": 1.0}]
        outcome = await run_eval(EvalOptions(**{**opts, "envs": bad, "out": str(tmp_path / "bad")}), quiet)
        assert outcome.exit_code == EXIT_CANNOT_START
        assert "'nope'" in outcome.message and "arithmetic" in outcome.message
        assert not (tmp_path / "bad").exists()
        both = await run_eval(EvalOptions(**{**opts, "env": "arithmetic", "out": str(tmp_path / "both")}), quiet)
        assert both.exit_code == EXIT_CANNOT_START and "not both" in both.message
