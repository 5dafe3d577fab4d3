"""Weights through shared memory on the same host (inference/same_host.py), against a real hf
server on loopback with the tiny model: applied like a stream; no shared-memory file left open
after a push or a failed one, and none in /dev/shm ever; a sender killed mid-push leaves nothing
the server can still read; and LoadWeights of a /proc/<pid>/fd path reads a sender's weights
memfd (sealed against shrinking) only, never a file of the server's."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from rollmesh.errors import InvalidArgumentError, PermissionDeniedError, ResourceExhaustedError
from rollmesh.inference import same_host
from rollmesh.inference.client import InferenceClient
from rollmesh.inference.server import InferenceServer
from rollmesh.inference.weights import encode

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytestmark = pytest.mark.skipif(not same_host.supported(), reason="needs memfd_create and /proc (Linux)")

NAME = "lm_head.weight"
PROMPT = [1, 5, 9, 33]


def _open_weights_memfds() -> list[str]:
    """This process's open descriptors that are weights memfds (sender's and server's alike)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith(f"/memfd:{same_host.MEMFD_NAME}"):
                found.append(fd)
        except OSError:
            pass
    return found


def _dev_shm() -> set[str]:
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


def _start_sender(payload: bytes) -> tuple[subprocess.Popen[bytes], str]:
    """A sender that is not this process: a plain Python writes `payload` into a weights memfd,
    prints its handle and waits to be killed."""
    sender = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, signal, sys\n"
            f"fd = os.memfd_create({same_host.MEMFD_NAME!r}, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)\n"
            "os.write(fd, sys.stdin.buffer.read())\n"
            "fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)\n"
            "print(f'/proc/{os.getpid()}/fd/{fd}', flush=True)\n"
            "sys.stdout.close(); signal.pause()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    sender.stdin.write(payload)
    sender.stdin.close()
    return sender, sender.stdout.readline().decode().strip()


def _shm_file() -> Path | None:
    """A file in /dev/shm named like the memfd (a file with a path, not a weights handle)."""
    if not os.path.isdir("/dev/shm"):
        return None
    path = Path("/dev/shm") / f"{same_host.MEMFD_NAME}-{os.getpid()}"
    path.write_bytes(b"x")
    return path


@pytest.fixture(scope="module")
async def served(tiny_model_dir: Path) -> AsyncIterator[tuple[Any, InferenceClient]]:
    from rollmesh.inference.backends.hf import HFBackend

    backend = await HFBackend.create(str(tiny_model_dir), dtype="float32", name="tiny")
    server = InferenceServer(backend, max_weights_bytes=4 * 1024 * 1024)
    await server.start()
    async with InferenceClient.open(server.address) as client:
        yield backend, client
    await server.stop(0)


async def _greedy(client: InferenceClient) -> list[int]:
    out = await client.generate(prompt_ids=PROMPT, max_tokens=8, temperature=0.0)
    return list(out.samples[0].completion_ids)


async def test_weights_through_shared_memory_apply_and_leave_nothing_open(served) -> None:
    backend, client = served
    params = dict(backend.hf_model.named_parameters())
    original = {n: params[n].detach().clone() for n in (NAME, "model.norm.weight")}
    before, version = await _greedy(client), backend.policy_version
    shm_before = _dev_shm()

    changed = {NAME: original[NAME].flip(0), "model.norm.weight": original["model.norm.weight"] * 3}
    resp = await client.update_weights_same_host(changed)
    assert (resp.tensors_updated, resp.policy_version) == (2, version + 1)
    assert torch.equal(params[NAME], changed[NAME]) and await _greedy(client) != before
    assert _open_weights_memfds() == []

    with same_host.SharedWeights() as shared:  # a kept buffer, rewritten: what the trainer does
        await client.update_weights_same_host({NAME: original[NAME] * 2}, shared=shared)
        await client.update_weights_same_host(original, shared=shared)
        assert len(_open_weights_memfds()) == 1
    assert _open_weights_memfds() == []
    assert await _greedy(client) == before and backend.policy_version == version + 3

    # refused by the backend (a shape the model does not have): nothing applied, nothing open
    with pytest.raises(InvalidArgumentError, match="shape"):
        await client.update_weights_same_host({NAME: torch.zeros(3, 3)})
    with pytest.raises(ResourceExhaustedError):  # past the server's --max-weights-mb
        await client.update_weights_same_host({NAME: torch.zeros(2048, 1024)})
    assert _open_weights_memfds() == [] and backend.policy_version == version + 3
    assert _dev_shm() - shm_before == set()


async def test_a_killed_sender_leaves_nothing_the_server_can_read(served) -> None:
    backend, client = served
    _, payload = encode({NAME: dict(backend.hf_model.named_parameters())[NAME].detach().clone()})
    sender, path = _start_sender(payload)
    try:
        version = backend.policy_version
        assert (await client.load_weights(path)).policy_version == version + 1
    finally:
        sender.kill()
        sender.wait()
    with pytest.raises(PermissionDeniedError) as e:
        await client.load_weights(path)
    assert e.value.reason == "PATH_NOT_ALLOWED"


async def test_a_proc_fd_path_reads_a_weights_memfd_only(served, tmp_path) -> None:
    _, client = served
    secret = tmp_path / "secret.safetensors"  # a file of the server's host, outside its weights roots
    secret.write_bytes(b"x")
    config = os.open(secret, os.O_RDONLY)
    other = os.memfd_create("not-weights")
    unsealed = os.memfd_create(same_host.MEMFD_NAME)  # the right name, but could shrink under a reader
    os.write(unsealed, b"x" * 64)
    shm_file = _shm_file()
    shm_fd = os.open(shm_file, os.O_RDONLY) if shm_file else config
    os.mkfifo(tmp_path / "fifo")  # opening it for reading would wait for a writer
    fifo = os.open(tmp_path / "fifo", os.O_RDONLY | os.O_NONBLOCK)
    try:
        for path in (
            f"/proc/self/fd/{config}",
            f"/proc/{os.getpid()}/fd/{config}",
            f"/proc/{os.getpid()}/fd/{other}",
            f"/proc/{os.getpid()}/fd/{unsealed}",
            f"/proc/{os.getpid()}/fd/{shm_fd}",
            f"/proc/{os.getpid()}/fd/99999",
            f"/proc/{os.getpid()}/fd/{fifo}",
            "/proc/1/fd/0",
            "/proc/self/environ",
            f"/proc/{os.getpid()}/fd/{config}/../../environ",
        ):
            with pytest.raises(PermissionDeniedError) as e:
                await client.load_weights(path)
            assert e.value.reason == "PATH_NOT_ALLOWED", path
    finally:
        os.close(config)
        os.close(other)
        os.close(unsealed)
        os.close(fifo)
        if shm_file:
            os.close(shm_fd)
            shm_file.unlink()
