"""UpdateWeights takes no more bytes than the declared tensors need: a header whose total_bytes
cannot be the safetensors payload of its tensors is refused before any chunk is buffered, a stream
longer than its total_bytes at the first extra chunk, and the served weights stay as they were.
A real server on loopback with the tiny model."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from rollmesh.inference.server import InferenceServer
from rollmesh.inference.weights import encode
from rollmesh.proto.v1 import inference_pb2 as inf_pb
from rollmesh.proto.v1 import inference_pb2_grpc as inf_grpc
from rollmesh.proto.v1 import messages_pb2 as msg_pb
from rollmesh.rpc import create_channel
from rollmesh.rpc_errors import error_info

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

NAME = "lm_head.weight"  # 512 x 128 float32: 256 KiB
MIB = 1024 * 1024
GREEDY = inf_pb.GenerateRequest(
    tokens=inf_pb.TokenInput(prompt_ids=[1, 5, 9, 33]), sampling=msg_pb.SamplingParams(temperature=0.0, max_tokens=8)
)


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
async def served(tiny_model_dir: Path) -> AsyncIterator[tuple[Any, Any]]:
    from rollmesh.inference.backends.hf import HFBackend

    backend = await HFBackend.create(str(tiny_model_dir), dtype="float32", name="tiny")
    server = InferenceServer(backend)
    await server.start()
    channel = create_channel(server.address)
    yield backend, inf_grpc.InferenceServiceStub(channel), server.address
    await channel.close()
    await server.stop(0)


class Flood:
    """A header, then up to `limit` bytes of chunks (one shared buffer: the client holds ~nothing);
    `sent` counts the chunks the server pulled before it answered."""

    def __init__(self, header: inf_pb.WeightsHeader, limit: int, first: bytes = b"") -> None:
        self.header, self.limit, self.first, self.sent = header, limit, first, 0

    def __iter__(self) -> Iterator[inf_pb.UpdateWeightsRequest]:
        yield inf_pb.UpdateWeightsRequest(header=self.header)
        if self.first:
            yield inf_pb.UpdateWeightsRequest(chunk=self.first)
        chunk = inf_pb.UpdateWeightsRequest(chunk=b"\0" * MIB)
        for _ in range(self.limit // MIB):
            self.sent += 1
            yield chunk


async def _refused(address: str, requests: Any, code: grpc.StatusCode, reason: str) -> grpc.RpcError:
    """Sends `requests` on a blocking channel, whose final status is always the server's. (An
    asyncio client whose write is in flight when the server answers can report its own failed
    write, INTERNAL "Internal error from Core", instead.)"""

    def call() -> grpc.RpcError:
        with grpc.insecure_channel(address) as channel:
            with pytest.raises(grpc.RpcError) as err:
                inf_grpc.InferenceServiceStub(channel).UpdateWeights(iter(requests), timeout=60)
            return err.value

    err = await asyncio.to_thread(call)
    assert err.code() == code, err.details()
    assert error_info(err).reason == reason, error_info(err)
    return err


async def _served(backend: Any, stub: Any) -> tuple[int, list[int]]:
    out = await stub.Generate(GREEDY, timeout=30)
    return backend.policy_version, list(out.samples[0].completion_ids)


def _weights(backend: Any) -> torch.Tensor:
    return dict(backend.hf_model.named_parameters())[NAME].detach().clone()


async def test_a_gigabyte_declared_for_a_small_tensor_is_refused_at_the_header(served) -> None:
    backend, stub, address = served
    before, weights = await _served(backend, stub), _weights(backend)
    rss = _rss_bytes()
    header, _ = encode({NAME: weights * 2})
    header.total_bytes = 1024 * MIB  # what the stream then carries: 4096 times the tensor
    header.sha256 = hashlib.sha256(b"whatever").hexdigest()
    flood = Flood(header, 1024 * MIB)
    err = await _refused(address, flood, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD")
    assert dict(error_info(err).metadata) == {"field": "header.total_bytes"}
    assert "total_bytes=1073741824" in err.details()
    # refused on the header: what reached the server is what flow control let through meanwhile
    assert flood.sent * MIB < 128 * MIB, flood.sent
    assert _rss_bytes() - rss < 128 * MIB
    assert await _served(backend, stub) == before
    assert torch.equal(_weights(backend), weights)


async def test_a_stream_longer_than_its_total_bytes_stops_at_the_first_extra_byte(served) -> None:
    backend, stub, address = served
    before, weights = await _served(backend, stub), _weights(backend)
    header, payload = encode({NAME: weights * 2})
    rss = _rss_bytes()
    flood = Flood(header, 1024 * MIB, first=payload)  # the whole payload, then a gigabyte more
    await _refused(address, flood, grpc.StatusCode.INVALID_ARGUMENT, "CHECKPOINT_INVALID")
    assert flood.sent * MIB < 128 * MIB, flood.sent
    assert _rss_bytes() - rss < 128 * MIB
    assert await _served(backend, stub) == before
    assert torch.equal(_weights(backend), weights)


async def test_headers_that_no_payload_of_their_tensors_can_match(served) -> None:
    backend, stub, address = served
    before = await _served(backend, stub)
    weights = _weights(backend)
    header, _ = encode({NAME: weights * 2})
    short = inf_pb.WeightsHeader()
    short.CopyFrom(header)
    short.total_bytes = weights.numel() * 4 - 1  # less than the tensor's data alone
    err = await _refused(
        address, [inf_pb.UpdateWeightsRequest(header=short)], grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD"
    )
    assert dict(error_info(err).metadata) == {"field": "header.total_bytes"}
    twice = inf_pb.WeightsHeader()
    twice.CopyFrom(header)
    twice.tensors.append(header.tensors[0])  # the same tensor twice doubles what total_bytes may be
    err = await _refused(
        address, [inf_pb.UpdateWeightsRequest(header=twice)], grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD"
    )
    assert dict(error_info(err).metadata) == {"field": "header.tensors"}
    assert await _served(backend, stub) == before


async def test_a_well_formed_update_still_applies(served) -> None:
    backend, stub, _ = served
    version, ids = await _served(backend, stub)
    weights = _weights(backend)
    for tensors in ({NAME: weights * 2}, {NAME: weights}):  # changed, then restored
        header, payload = encode(tensors)
        chunks = [payload[i : i + 4096] for i in range(0, len(payload), 4096)]
        requests = [inf_pb.UpdateWeightsRequest(header=header), *(inf_pb.UpdateWeightsRequest(chunk=c) for c in chunks)]
        reply = await stub.UpdateWeights(iter(requests), timeout=60)
        assert reply.tensors_updated == 1
    assert backend.policy_version == version + 2
    assert torch.equal(_weights(backend), weights)
    assert (await _served(backend, stub))[1] == ids
