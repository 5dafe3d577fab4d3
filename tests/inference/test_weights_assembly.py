"""The weights assembler, without a server: a payload split into chunks anywhere comes out as the
same tensors, views of one buffer (no copy), which the next update reuses only once no tensor
views it; a short or long stream, a wrong sha256, a payload
whose tensors differ from its header (dtype, shape, offsets) are refused with a clear error. The
client's payload is a safetensors file that safetensors itself reads, and the chunk frames the
server takes as views are exactly protobuf's encoding."""

from __future__ import annotations

import hashlib
import itertools
import json
import random

import pytest
from rollmesh.errors import DataLossError, InvalidArgumentError
from rollmesh.inference.backend import ParamSpec
from rollmesh.inference.weights import (
    ReceiveBuffer,
    WeightsAssembler,
    WeightsPayload,
    chunk_frames,
    encode,
    encode_payload,
    parse_request,
)
from rollmesh.proto.v1 import inference_pb2 as inf_pb

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

LIMIT = 1 << 30


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {  # mixed widths, odd sizes: offsets that a naive layout would misalign
        "a.weight": torch.randn(7, 5, generator=g),
        "b.bias": torch.randn(3, generator=g).to(torch.bfloat16),
        "c.weight": torch.randn(2, 3, generator=g).to(torch.float16),
        "d.steps": torch.arange(5, dtype=torch.int64),
        "e.scalar": torch.tensor(2.5, dtype=torch.float64),
        "f.empty": torch.empty(0, 4),
    }


def _specs(tensors: dict[str, torch.Tensor]) -> dict[str, ParamSpec]:
    return {k: ParamSpec(tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in tensors.items()}


def _assemble(header: inf_pb.WeightsHeader, payload: bytes, cuts: list[int], specs: dict[str, ParamSpec]):
    asm = WeightsAssembler(header, specs, LIMIT)
    bounds = [0, *sorted(cuts), len(payload)]
    for a, b in itertools.pairwise(bounds):
        asm.add(memoryview(payload)[a:b])
    return asm.finish()


def test_chunks_split_anywhere_give_the_same_tensors_as_views_of_one_buffer() -> None:
    tensors = _tensors()
    header, payload = encode(tensors)
    assert safetensors_torch.load(payload).keys() == tensors.keys()  # a safetensors file
    rng = random.Random(0)
    cut_sets = [[], list(range(1, len(payload))), [3], [8, 9, 10]]  # one chunk, bytes, inside the length
    cut_sets += [rng.sample(range(1, len(payload)), k) for k in (2, 7, 31)]
    for cuts in cut_sets:
        got = _assemble(header, payload, cuts, _specs(tensors))
        assert got.keys() == tensors.keys()
        for k, v in tensors.items():
            assert got[k].dtype == v.dtype and got[k].shape == v.shape and torch.equal(got[k], v), k
    # zero copy: the tensors lie in one buffer, where the payload's offsets put them
    meta = json.loads(payload[8 : 8 + int.from_bytes(payload[:8], "little")])
    nonempty = [k for k in tensors if tensors[k].numel()]
    base = got[nonempty[0]].data_ptr() - meta[nonempty[0]]["data_offsets"][0]
    assert all(got[k].data_ptr() - base == meta[k]["data_offsets"][0] for k in nonempty)


def test_a_short_or_long_stream_and_a_wrong_sha256_are_refused() -> None:
    tensors = _tensors()
    header, payload = encode(tensors)
    specs = _specs(tensors)
    asm = WeightsAssembler(header, specs, LIMIT)
    asm.add(payload[:-1])
    with pytest.raises(DataLossError, match="partial weights stream: got") as e:
        asm.finish()
    assert e.value.reason == "CHECKSUM_MISMATCH"

    asm = WeightsAssembler(header, specs, LIMIT)
    asm.add(payload)
    with pytest.raises(InvalidArgumentError, match="longer than the header's total_bytes") as e:
        asm.add(b"\0")
    assert e.value.reason == "CHECKPOINT_INVALID"

    wrong = inf_pb.WeightsHeader()
    wrong.CopyFrom(header)
    wrong.sha256 = hashlib.sha256(payload + b"x").hexdigest()
    with pytest.raises(DataLossError, match="checksum mismatch") as e:
        _assemble(wrong, payload, [100], specs)
    assert e.value.reason == "CHECKSUM_MISMATCH"


def _forged(tensors: dict[str, torch.Tensor], edit) -> tuple[inf_pb.WeightsHeader, bytes]:
    """A payload whose safetensors header `edit` changed, under a header (and sha256) that vouch
    for it: what a buggy or hostile sender can produce."""
    payload = encode_payload(tensors)
    meta = json.loads(bytes(payload.parts[0][8:]))
    edit(meta)
    text = json.dumps(meta).encode()
    text += b" " * (-len(text) % 8)
    raw = b"".join([len(text).to_bytes(8, "little"), text, *payload.parts[1:]])
    header = inf_pb.WeightsHeader()
    header.CopyFrom(payload.header)
    header.total_bytes, header.sha256 = len(raw), hashlib.sha256(raw).hexdigest()
    return header, raw


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m["a.weight"].update(dtype="F16"), r"tensor a.weight: payload has \[7, 5\] float16, header says"),
        (lambda m: m["a.weight"].update(shape=[5, 7]), r"tensor a.weight: payload has \[5, 7\] float32"),
        (lambda m: m.pop("d.steps"), "payload tensors .* differ from the header's"),
        (lambda m: m["a.weight"]["data_offsets"].__setitem__(1, 1), r"data_offsets \[\d+, 1\] do not fit"),
        (lambda m: m["a.weight"].update(shape="x"), "malformed entry"),
    ],
)
def test_a_payload_that_differs_from_its_header_is_refused(edit, message) -> None:
    tensors = _tensors()
    header, raw = _forged(tensors, edit)
    with pytest.raises(InvalidArgumentError, match=message) as e:
        _assemble(header, raw, [17], _specs(tensors))
    assert e.value.reason == "CHECKPOINT_INVALID"


def test_overlapping_offsets_and_a_header_that_is_not_json_are_refused() -> None:
    tensors = {"x": torch.ones(4), "y": torch.zeros(4)}

    def overlap(meta: dict) -> None:  # y reads x's bytes, and the last 16 bytes are nobody's
        meta["y"]["data_offsets"] = meta["x"]["data_offsets"]

    header, raw = _forged(tensors, overlap)
    with pytest.raises(InvalidArgumentError, match="gap or overlap"):
        _assemble(header, raw, [], _specs(tensors))

    payload = encode_payload(tensors)
    raw = bytearray(payload.tobytes())
    raw[8] = ord("[")  # the JSON header broken
    header = inf_pb.WeightsHeader()
    header.CopyFrom(payload.header)
    header.sha256 = hashlib.sha256(raw).hexdigest()
    with pytest.raises(InvalidArgumentError, match="its header is not JSON"):
        _assemble(header, bytes(raw), [], _specs(tensors))


def test_a_header_that_disagrees_with_the_served_model_is_refused_before_any_byte() -> None:
    tensors = _tensors()
    header, _ = encode(tensors)
    served = _specs(tensors) | {"a.weight": ParamSpec((5, 7), "float32")}
    with pytest.raises(InvalidArgumentError, match=r"tensor a.weight: shape \[7, 5\] != served \[5, 7\]") as e:
        WeightsAssembler(header, served, LIMIT)
    assert e.value.reason == "CHECKPOINT_MISMATCH"


def test_chunk_frames_are_protobuf_messages_and_the_server_takes_them_as_views() -> None:
    payload = WeightsPayload(inf_pb.WeightsHeader(), [memoryview(b"abc"), memoryview(bytes(300)), memoryview(b"z")])
    frames = list(chunk_frames(payload, 200))
    chunks = [inf_pb.UpdateWeightsRequest.FromString(f).chunk for f in frames]
    assert [len(c) for c in chunks] == [200, 104] and b"".join(chunks) == payload.tobytes()
    assert [bytes(parse_request(f)) for f in frames] == chunks  # views, 2-byte length included
    header = inf_pb.UpdateWeightsRequest(header=inf_pb.WeightsHeader(total_bytes=5)).SerializeToString()
    assert parse_request(header).header.total_bytes == 5
    # a chunk followed by another field is not a bare chunk: protobuf parses it (last one wins)
    mixed = frames[1] + inf_pb.UpdateWeightsRequest(header=inf_pb.WeightsHeader(total_bytes=5)).SerializeToString()
    assert parse_request(mixed).WhichOneof("kind") == "header"


def test_the_receive_buffer_is_reused_only_when_no_tensor_views_it() -> None:
    tensors = _tensors()
    header, payload = encode(tensors)
    buffers = ReceiveBuffer()

    def assembled() -> tuple[WeightsAssembler, dict[str, torch.Tensor]]:
        asm = WeightsAssembler(header, _specs(tensors), LIMIT, buffers)
        asm.add(payload)
        return asm, asm.finish()

    asm, got = assembled()
    where = got["a.weight"].data_ptr()
    del got
    asm.discard()  # applied: the buffer goes back
    asm, got = assembled()
    assert got["a.weight"].data_ptr() == where and torch.equal(got["a.weight"], tensors["a.weight"])
    asm.discard()  # `got` still views it: not given back, and the tensors stay intact
    _, got2 = assembled()
    assert got2["a.weight"].data_ptr() != where
    assert all(torch.equal(got[k], tensors[k]) for k in tensors)
