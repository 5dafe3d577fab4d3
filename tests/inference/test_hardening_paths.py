"""LoadWeights reads only under the server's weights roots (`--weights-root`; by default the served
model's own directory), with symlinks resolved. A path outside and a path that does not exist get
the same answer, PERMISSION_DENIED / PATH_NOT_ALLOWED, so the server is no oracle for its file
system. Real servers on loopback (in process, and `rollmesh inference serve` as a subprocess)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from rollmesh.errors import InvalidArgumentError, quoted
from rollmesh.inference.server import InferenceServer
from rollmesh.proto.v1 import inference_pb2 as inf_pb
from rollmesh.proto.v1 import inference_pb2_grpc as inf_grpc
from rollmesh.rpc import create_channel
from rollmesh.rpc_errors import error_info

pytest.importorskip("torch")
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def root(tiny_model_dir_seed1: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A weights root with a checkpoint, a symlink inside it, and two symlinks that lead out."""
    base = tmp_path_factory.mktemp("weights")
    root = base / "root"
    (root / "ckpt").mkdir(parents=True)
    for name in ("model.safetensors", "config.json"):
        shutil.copy(tiny_model_dir_seed1 / name, root / "ckpt" / name)
    (root / "alias").symlink_to(root / "ckpt")  # stays inside: allowed
    (root / "escape").symlink_to(tiny_model_dir_seed1)  # a directory outside
    (root / "mixed").mkdir()  # a directory inside whose weights file is a link outside
    (root / "mixed" / "model.safetensors").symlink_to(tiny_model_dir_seed1 / "model.safetensors")
    (base / "sibling").mkdir()  # next to the root, not in it
    shutil.copy(tiny_model_dir_seed1 / "model.safetensors", base / "sibling" / "model.safetensors")
    return root


@pytest.fixture(scope="module")
async def served(tiny_model_dir: Path, root: Path) -> AsyncIterator[tuple[Any, Any]]:
    from rollmesh.inference.backends.hf import HFBackend

    backend = await HFBackend.create(str(tiny_model_dir), dtype="float32", name="tiny")
    server = InferenceServer(backend, weights_roots=[root])
    await server.start()
    channel = create_channel(server.address)
    yield backend, inf_grpc.InferenceServiceStub(channel)
    await channel.close()
    await server.stop(0)


async def _refused(stub: Any, path: str) -> str:
    """The refusal's message with the (quoted) path taken out: what is left must not depend on it."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.LoadWeights(inf_pb.LoadWeightsRequest(path=path), timeout=30)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, (path, err.value.details())
    info = error_info(err.value)
    assert info is not None and info.reason == "PATH_NOT_ALLOWED" and dict(info.metadata) == {}
    details = err.value.details()
    assert quoted(path) in details and len(details) < 600
    return details.replace(quoted(path), "<path>")


async def test_checkpoints_under_a_root_load(served, root: Path) -> None:
    backend, stub = served
    for path in (root / "ckpt", root / "ckpt" / "model.safetensors", root / "alias", root / "ckpt" / ".." / "ckpt"):
        version = backend.policy_version
        reply = await stub.LoadWeights(inf_pb.LoadWeightsRequest(path=str(path)), timeout=60)
        assert reply.policy_version == version + 1 and reply.tensors_updated > 0


async def test_paths_outside_and_missing_paths_get_one_answer(served, root: Path, tiny_model_dir_seed1) -> None:
    backend, stub = served
    version = backend.policy_version
    outside = {
        "an existing directory elsewhere": str(tiny_model_dir_seed1),
        "an existing file elsewhere": "/etc/passwd",
        "a sibling of the root": str(root.parent / "sibling" / "model.safetensors"),
        "the root's parent": str(root.parent),
        "out by ..": str(root / ".." / "sibling"),
        "out by a symlink": str(root / "escape"),
        "a file of a symlinked directory": str(root / "escape" / "model.safetensors"),
        "a directory whose weights link out": str(root / "mixed"),
        "relative": "../../../../../../etc",
        "a NUL byte": str(root / "ckpt") + "\0x",
        "a megabyte": "/" + "p" * 1_000_000,
    }
    missing = {
        "missing inside the root": str(root / "nope"),
        "missing under a checkpoint": str(root / "ckpt" / "nope.safetensors"),
        "missing elsewhere": "/no/such/checkpoint",
    }
    answers = {what: await _refused(stub, path) for what, path in {**outside, **missing}.items()}
    assert len(set(answers.values())) == 1, answers
    assert backend.policy_version == version  # nothing was loaded


async def test_without_roots_only_the_served_model_loads(tiny_model_dir: Path, root: Path) -> None:
    from rollmesh.inference.backends.hf import HFBackend

    backend = await HFBackend.create(str(tiny_model_dir), dtype="float32", name="tiny")
    server = InferenceServer(backend)
    await server.start()
    channel = create_channel(server.address)
    try:
        stub = inf_grpc.InferenceServiceStub(channel)
        assert server.core.weights_roots == (await asyncio.to_thread(os.path.realpath, tiny_model_dir),)
        reply = await stub.LoadWeights(inf_pb.LoadWeightsRequest(path=str(tiny_model_dir)), timeout=60)
        assert reply.policy_version == 1
        await _refused(stub, str(root / "ckpt"))
    finally:
        await channel.close()
        await server.stop(0)


def test_a_shard_index_cannot_name_files_outside_its_directory(tmp_path: Path) -> None:
    from rollmesh.inference.backends.vllm import safetensors_files

    (tmp_path / "model.safetensors.index.json").write_text(
        '{"weight_map": {"a": "model-1.safetensors", "b": "../../etc/other.safetensors"}}'
    )
    with pytest.raises(InvalidArgumentError) as e:
        safetensors_files(tmp_path)
    assert e.value.reason == "CHECKPOINT_INVALID"
    (tmp_path / "model.safetensors.index.json").write_text('{"weight_map": {"a": "/abs/x.safetensors"}}')
    with pytest.raises(InvalidArgumentError):
        safetensors_files(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text('{"weight_map": {"a": "m-1.safetensors"}}')
    assert safetensors_files(tmp_path) == [tmp_path / "m-1.safetensors"]


# ---- the command line ----------------------------------------------------------------------------

ADDRESS = re.compile(r"rollmesh inference server on (\S+):")


@pytest.fixture(scope="module")
def cli_server(tiny_model_dir: Path, root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`rollmesh inference serve --weights-root ROOT --weights-root OTHER` in a process of its own."""
    other = tmp_path_factory.mktemp("other-root")
    log = tmp_path_factory.mktemp("cli") / "server.log"
    argv = [sys.executable, "-m", "rollmesh.cli", "inference", "serve", "--model", str(tiny_model_dir),
            "--backend", "hf", "--dtype", "float32", "--port", "0", "--grace", "1",
            "--weights-root", str(root), "--weights-root", str(other)]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "ROLLMESH_TRACING": "0"})
    try:
        deadline = time.monotonic() + 180
        while not (m := ADDRESS.search(log.read_text(errors="replace"))):
            assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)
        yield m.group(1)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def test_the_weights_root_flag(cli_server: str, root: Path, tiny_model_dir: Path) -> None:
    channel = create_channel(cli_server)
    try:
        stub = inf_grpc.InferenceServiceStub(channel)
        reply = await stub.LoadWeights(inf_pb.LoadWeightsRequest(path=str(root / "ckpt")), timeout=60)
        assert reply.policy_version == 1
        # given roots replace the default: the served model's directory is not among them
        shape = await _refused(stub, str(tiny_model_dir))
        assert shape == await _refused(stub, str(root / "nope"))
    finally:
        await channel.close()
