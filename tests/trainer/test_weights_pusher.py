"""The trainer's WeightsPusher against a real hf server on loopback (tiny model): with
`same_host = "auto"` the weights go through shared memory, one buffer kept across pushes and
freed at close; with "never" they are streamed. Either way the server serves exactly them."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from rollmesh.inference import same_host
from rollmesh.inference.server import InferenceServer
from rollmesh.trainer.config import PushConfig
from rollmesh.trainer.weights_push import WeightsPusher

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

NAME = "lm_head.weight"


def _weights_memfds() -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{fd}").startswith(f"/memfd:{same_host.MEMFD_NAME}")
        except OSError:
            pass
    return n


@pytest.fixture(scope="module")
async def served(tiny_model_dir: Path) -> AsyncIterator[tuple[Any, str]]:
    from rollmesh.inference.backends.hf import HFBackend

    backend = await HFBackend.create(str(tiny_model_dir), dtype="float32", name="tiny")
    server = InferenceServer(backend)
    await server.start()
    yield backend, server.address
    await server.stop(0)


@pytest.mark.skipif(not same_host.supported(), reason="needs memfd_create and /proc (Linux)")
async def test_a_server_on_loopback_gets_the_weights_through_one_kept_shared_buffer(served) -> None:
    backend, address = served
    param = dict(backend.hf_model.named_parameters())[NAME]
    original = param.detach().clone()
    pusher = WeightsPusher(PushConfig(discover=False, addresses=[address]), "run")
    await pusher.start()
    try:
        for scale, version in ((2.0, backend.policy_version + 1), (1.0, backend.policy_version + 2)):
            report = await pusher.push({NAME: original * scale}, version)
            assert report.ok == [address] and report.same_host == [address] and report.failed == {}
            assert backend.policy_version == version and torch.equal(param, original * scale)
            assert _weights_memfds() == 1  # the trainer's buffer, reused
    finally:
        await pusher.close()
    assert _weights_memfds() == 0


async def test_never_streams(served) -> None:
    backend, address = served
    param = dict(backend.hf_model.named_parameters())[NAME]
    original = param.detach().clone()
    pusher = WeightsPusher(PushConfig(discover=False, addresses=[address], same_host="never"), "run")
    await pusher.start()
    try:
        report = await pusher.push({NAME: original.flip(0)}, backend.policy_version + 1)
        assert report.ok == [address] and report.same_host == [] and torch.equal(param, original.flip(0))
        assert _weights_memfds() == 0
        await pusher.push({NAME: original}, backend.policy_version + 1)
    finally:
        await pusher.close()
    assert torch.equal(param, original)
