"""`rollmesh train` on chain-arithmetic, whose agent is an external program (RunEpisode): a short
run as a user starts it, then an audit of every trained trajectory against the model itself, from
the JetStream store and metrics.jsonl. Each turn's prompt ids are the inference server's Tokenize of
the conversation before that call, its completion ids decode to the answer the agent got, and its
logprobs are the tiny model's (one step: all sampled by the initial weights), from a forward pass."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
from rollmesh.apps.launcher import ensure_tiny_model
from rollmesh.natsd import EmbeddedNats
from rollmesh.proto.v1 import inference_pb2 as inf_pb
from rollmesh.proto.v1 import inference_pb2_grpc as inf_grpc
from rollmesh.proto.v1 import trajectory_pb2 as traj_pb
from rollmesh.rpc import create_channel

pytest.importorskip("deepspeed")
torch = pytest.importorskip("torch")

CONFIG = """
run_id = "agents"
steps = 1
max_ahead_steps = 1
seed = 0

[mesh.nats]
port = 0

[mesh.inference]
model = "tiny"
backend = "hf"

[[mesh.envs]]
target = "chain-arithmetic"
args = { n_steps = 2, num_train = 16, num_test = 4 }

[rollout]
env = "chain-arithmetic"
split = "train"
rollouts_per_task = 4
max_concurrency = 8
max_off_policy_steps = 1
sampling = { temperature = 1.0, max_tokens = 6 }

[trainer]
lr = 5e-4

[trainer.batch]
rollouts_per_step = 8

[trainer.checkpoint]
every_n_steps = 100
"""


async def _stream(store: Path) -> dict[str, traj_pb.Trajectory]:
    import nats

    out: dict[str, traj_pb.Trajectory] = {}
    async with EmbeddedNats(store_dir=store) as server:
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        info = await js.stream_info("ROLLOUTS")
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            t = traj_pb.Trajectory.FromString((await js.get_msg("ROLLOUTS", seq)).data)
            out[t.trajectory_id] = t
        await nc.close()
    return out


async def _audit(model_dir: Path, calls: list[tuple]) -> int:
    """Checks each (trajectory, turn, conversation before the answer, answer) against an inference
    server on the run's model: its Tokenize, its tokenizer, and its weights' logprobs."""
    from rollmesh.inference.backends.hf import HFBackend
    from rollmesh.inference.server import InferenceServer

    backend = await HFBackend.create(str(model_dir), dtype="float32", name="tiny")
    server = InferenceServer(backend)
    await server.start()
    try:
        async with create_channel(server.address) as channel:
            stub = inf_grpc.InferenceServiceStub(channel)
            for t, turn, messages, answer in calls:
                request = inf_pb.TokenizeRequest()
                request.chat.messages.extend(messages)
                request.chat.add_generation_prompt = True
                prompt = list((await stub.Tokenize(request, timeout=30)).token_ids)
                assert list(turn.prompt_ids) == prompt, t.trajectory_id
                assert backend.tokenizer.decode(turn.completion_ids, skip_special_tokens=True) == answer
                assert turn.policy_version == 0  # one step: sampled by the weights at hand
                ids = torch.tensor([[*turn.prompt_ids, *turn.completion_ids]])
                with torch.no_grad():
                    logits = backend.hf_model(ids).logits[0, len(turn.prompt_ids) - 1 : -1].float()
                wanted = torch.tensor(list(turn.completion_ids))[:, None]
                expected = torch.log_softmax(logits, -1).gather(1, wanted)[:, 0]
                got = torch.tensor(list(turn.completion_logprobs))
                assert torch.allclose(got, expected, atol=2e-3), (t.trajectory_id, got, expected)
        return len(calls)
    finally:
        await server.stop(0)


def test_trained_agent_program_trajectories_are_token_exact(tmp_path: Path) -> None:
    (tmp_path / "run.toml").write_text(CONFIG)
    proc = subprocess.run(
        [sys.executable, "-m", "rollmesh.cli", "train", "run.toml", "--set", "dir=run"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1]
    trained = [tid for r in records for tid in r["trajectory_ids"]]
    stream = asyncio.run(_stream(run / "mesh" / "nats"))
    assert len(trained) == 8 and set(trained) <= set(stream)
    tiny_model_dir = ensure_tiny_model()  # the model the run served (built once, cached)

    # Each turn is one model call of the agent: the conversation up to its answer, and the answer.
    calls = []
    for tid in trained:
        t = stream[tid]
        assert t.stop_reason != traj_pb.STOP_REASON_ERROR and t.metrics["model_calls"] == len(t.turns) >= 1
        answers = [i for i, m in enumerate(t.messages) if m.role == "assistant"]
        assert len(answers) == len(t.turns), tid
        calls += [
            (t, turn, list(t.messages[:at]), t.messages[at].content) for turn, at in zip(t.turns, answers, strict=True)
        ]
    assert any(len(t.turns) > 1 for t in stream.values()), "no agent got past its first call"
    assert asyncio.run(_audit(tiny_model_dir, calls)) >= 8
