"""Streamed weights: a header, then safetensors bytes in chunks. Everything is checked (size,
sha256, names, dtypes, shapes) before a single tensor reaches the model, so a bad stream leaves
the served weights unchanged.

Both sides avoid copies, which is what bounds the speed of a push: the client hashes and chunks
views of the tensors' own memory (no safetensors file is built), and the server writes each chunk
once into a buffer of the declared size and hands the backend tensors that are views of it."""

from __future__ import annotations

import hashlib
import json
import mmap
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import DataLossError, InvalidArgumentError, ResourceExhaustedError
from ..proto.v1 import inference_pb2 as inf_pb
from .backend import ParamSpec

if TYPE_CHECKING:
    import torch

DTYPES = {
    inf_pb.TENSOR_DTYPE_F32: "float32",
    inf_pb.TENSOR_DTYPE_F16: "float16",
    inf_pb.TENSOR_DTYPE_BF16: "bfloat16",
    inf_pb.TENSOR_DTYPE_F64: "float64",
    inf_pb.TENSOR_DTYPE_I64: "int64",
    inf_pb.TENSOR_DTYPE_I32: "int32",
}
DTYPE_ENUM = {v: k for k, v in DTYPES.items()}
ITEM_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "int64": 8, "int32": 4}
# the dtype names of the safetensors format
SAFETENSORS_DTYPES = {
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "float64": "F64",
    "int64": "I64",
    "int32": "I32",
}
FROM_SAFETENSORS = {v: k for k, v in SAFETENSORS_DTYPES.items()}
# A safetensors payload is an 8-byte length, a JSON header (per tensor: its name and
# {"dtype":..,"shape":[..],"data_offsets":[a,b]}; an optional __metadata__ map; padding), then the
# data. The header's size is bounded generously from the manifest, so that total_bytes can be
# checked against what the declared tensors need before any byte is buffered.
HEADER_BYTES_PER_TENSOR = 128
HEADER_BYTES_PER_DIM = 24
HEADER_SLACK_BYTES = 1024 * 1024


def _listing(names: list[str], limit: int = 5) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _invalid_payload(message: str) -> InvalidArgumentError:
    return InvalidArgumentError(message, reason="CHECKPOINT_INVALID")


class ReceiveBuffer:
    """One spare buffer kept between updates. A trainer pushes the same size every step, and fresh
    memory costs a page fault per 4 KiB when first written (a quarter of a second or more per
    400 MB on the machines measured); a kept one costs its size in RAM. Given back only when no
    tensor still views it."""

    def __init__(self) -> None:
        self._spare: mmap.mmap | None = None

    def take(self, size: int) -> mmap.mmap:
        spare, self._spare = self._spare, None
        if spare is not None and len(spare) == size:
            return spare
        return mmap.mmap(-1, size)  # anonymous: not zero-filled up front, pages come on first write

    def give_back(self, buf: mmap.mmap) -> None:
        self._spare = buf


class WeightsAssembler:
    def __init__(
        self,
        header: inf_pb.WeightsHeader,
        params: Mapping[str, ParamSpec],
        max_bytes: int,
        buffers: ReceiveBuffer | None = None,
    ) -> None:
        if header.total_bytes <= 0:
            raise InvalidArgumentError(
                "weights header needs total_bytes > 0", reason="INVALID_FIELD", metadata={"field": "header.total_bytes"}
            )
        if header.total_bytes > max_bytes:
            raise ResourceExhaustedError(
                f"weights payload of {header.total_bytes} bytes exceeds this server's limit of {max_bytes}; "
                "send a subset of tensors per update or raise --max-weights-mb",
                reason="WEIGHTS_TOO_LARGE",
                metadata={"limit_bytes": str(max_bytes)},
            )
        if len(header.sha256) != 64:
            raise InvalidArgumentError(
                "weights header needs the hex sha256 of the payload",
                reason="INVALID_FIELD",
                metadata={"field": "header.sha256"},
            )
        if not header.tensors:
            raise InvalidArgumentError(
                "weights header lists no tensors", reason="MISSING_FIELD", metadata={"field": "header.tensors"}
            )
        self.header = header
        self.params = params
        self._check_manifest()
        self._check_total_bytes()
        # The whole payload, written once, chunk by chunk, where it belongs; the tensors handed
        # to the backend are views of it.
        self._buffers = buffers
        self._mem: mmap.mmap | None = buffers.take(header.total_bytes) if buffers else mmap.mmap(-1, header.total_bytes)
        self._view = memoryview(self._mem)
        self._received = 0
        self._sha = hashlib.sha256()

    def _check_manifest(self) -> None:
        unknown = [t.name for t in self.header.tensors if t.name not in self.params]
        if unknown:
            raise InvalidArgumentError(
                f"unknown tensor names (not weights of the served model): {_listing(unknown)}",
                reason="CHECKPOINT_MISMATCH",
            )
        for i, t in enumerate(self.header.tensors):
            spec = self.params[t.name]
            if tuple(t.shape) != spec.shape:
                raise InvalidArgumentError(
                    f"tensor {t.name}: shape {list(t.shape)} != served {list(spec.shape)}", reason="CHECKPOINT_MISMATCH"
                )
            if t.dtype not in DTYPES:
                raise InvalidArgumentError(
                    f"tensor {t.name}: unspecified or unknown dtype",
                    reason="INVALID_FIELD",
                    metadata={"field": f"header.tensors[{i}].dtype"},
                )
        names = [t.name for t in self.header.tensors]
        if len(set(names)) != len(names):
            twice = sorted({n for n in names if names.count(n) > 1})
            raise InvalidArgumentError(
                f"tensors listed twice in the header: {_listing(twice)}",
                reason="INVALID_FIELD",
                metadata={"field": "header.tensors"},
            )

    def payload_bounds(self) -> tuple[int, int]:
        """The fewest and the most bytes a safetensors payload of the declared tensors can have."""
        data = framing = 0
        for t in self.header.tensors:
            shape = self.params[t.name].shape
            data += _numel(shape) * ITEM_BYTES[DTYPES[t.dtype]]
            # a name is JSON-escaped in the header: at most 6 bytes per byte (\uXXXX), and quotes
            framing += 6 * len(t.name.encode()) + 2 + HEADER_BYTES_PER_TENSOR + HEADER_BYTES_PER_DIM * len(shape)
        return 8 + data, 8 + data + framing + HEADER_SLACK_BYTES

    def _check_total_bytes(self) -> None:
        total = self.header.total_bytes
        least, most = self.payload_bounds()
        if not least <= total <= most:
            raise InvalidArgumentError(
                f"weights header declares total_bytes={total}, but a safetensors payload of its "
                f"{len(self.header.tensors)} tensors has between {least} and {most} bytes",
                reason="INVALID_FIELD",
                metadata={"field": "header.total_bytes"},
            )

    def add(self, chunk: bytes | memoryview) -> None:
        n = len(chunk)
        if self._received + n > self.header.total_bytes:
            self.discard()
            raise InvalidArgumentError(
                f"weights stream longer than the header's total_bytes ({self.header.total_bytes})",
                reason="CHECKPOINT_INVALID",
            )
        self._view[self._received : self._received + n] = chunk
        self._sha.update(chunk)
        self._received += n

    def discard(self) -> None:
        """Done with the buffer (applied, or refused: a refused stream must not hold its bytes
        until collected). It goes back for the next update unless tensors still view it; those
        keep it alive for as long as they live."""
        mem, self._mem = self._mem, None
        self._view.release()
        self._view = memoryview(b"")
        # Each tensor of finish() holds a reference to the buffer (torch.frombuffer keeps its
        # object): only `mem` and this call's argument mean that none is left to see it reused.
        if mem is not None and self._buffers is not None and sys.getrefcount(mem) == 2:
            self._buffers.give_back(mem)

    def finish(self) -> dict[str, torch.Tensor]:
        """The declared tensors, as views of the received payload (no copy)."""
        if self._received != self.header.total_bytes:
            raise DataLossError(
                f"partial weights stream: got {self._received} of {self.header.total_bytes} bytes; nothing applied",
                reason="CHECKSUM_MISMATCH",  # fewer bytes than the header vouches for: they cannot match it
            )
        if self._sha.hexdigest() != self.header.sha256.lower():
            raise DataLossError("weights checksum mismatch (sha256); nothing applied", reason="CHECKSUM_MISMATCH")
        return tensors_of(self._mem, {t.name: (DTYPES[t.dtype], tuple(t.shape)) for t in self.header.tensors})


def _numel(shape: tuple[int, ...] | list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _payload_header(buf: bytes | bytearray | memoryview | mmap.mmap) -> tuple[dict[str, Any], int]:
    """The JSON header of a safetensors payload (without __metadata__) and where its data starts."""
    if len(buf) < 8:
        raise _invalid_payload("payload is not a safetensors file: shorter than its 8-byte header length")
    n = int.from_bytes(buf[:8], "little")
    if n > len(buf) - 8:
        raise _invalid_payload(f"payload is not a safetensors file: its header length {n} runs past the payload")
    try:
        meta = json.loads(bytes(buf[8 : 8 + n]))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise _invalid_payload("payload is not a safetensors file: its header is not JSON") from None
    if not isinstance(meta, dict):
        raise _invalid_payload("payload is not a safetensors file: its header is not a JSON object")
    meta.pop("__metadata__", None)
    return meta, 8 + n


def tensors_of(
    buf: bytearray | memoryview | mmap.mmap, declared: Mapping[str, tuple[str, tuple[int, ...]]]
) -> dict[str, torch.Tensor]:
    """Tensors of the safetensors payload `buf`, views of its memory, after checking that it holds
    exactly the `declared` tensors (name -> (dtype, shape)), each where its offsets say, with no
    gap or overlap. A misaligned tensor (from a foreign writer) is copied out."""
    import torch

    meta, start = _payload_header(buf)
    if set(meta) != set(declared):
        raise _invalid_payload(
            f"payload tensors {_listing(sorted(meta))} differ from the header's {_listing(sorted(declared))}"
        )
    spans: list[tuple[int, int, str]] = []
    for name, info in meta.items():
        dtype, shape = declared[name]
        try:
            got_dtype = FROM_SAFETENSORS.get(info["dtype"], str(info["dtype"]))
            got_shape = tuple(int(d) for d in info["shape"])
            a, b = (int(x) for x in info["data_offsets"])
        except (TypeError, KeyError, ValueError):
            raise _invalid_payload(f"tensor {name}: malformed entry in the payload's header") from None
        if got_shape != tuple(shape) or got_dtype != dtype:
            raise _invalid_payload(
                f"tensor {name}: payload has {list(got_shape)} {got_dtype}, header says {list(shape)} {dtype}"
            )
        if b - a != _numel(shape) * ITEM_BYTES[dtype]:
            raise _invalid_payload(f"tensor {name}: data_offsets [{a}, {b}] do not fit {list(shape)} {dtype}")
        spans.append((a, b, name))
    spans.sort()
    end = 0
    for a, b, name in spans:
        if a != end:
            raise _invalid_payload(f"tensor {name}: data_offsets leave a gap or overlap at byte {end}")
        end = b
    if start + end != len(buf):
        raise _invalid_payload(f"payload data is {len(buf) - start} bytes, its tensors take {end}")
    tensors: dict[str, torch.Tensor] = {}
    for a, b, name in spans:
        dtype, shape = declared[name]
        torch_dtype = getattr(torch, dtype)
        if a == b:
            tensors[name] = torch.empty(shape, dtype=torch_dtype)
        elif (start + a) % ITEM_BYTES[dtype]:
            tensors[name] = torch.frombuffer(bytearray(buf[start + a : start + b]), dtype=torch_dtype).view(shape)
        else:
            count = (b - a) // ITEM_BYTES[dtype]
            tensors[name] = torch.frombuffer(buf, dtype=torch_dtype, count=count, offset=start + a).view(shape)
    return tensors


@dataclass
class WeightsPayload:
    """A safetensors payload as the list of buffers it is made of: its header, then each tensor's
    own memory, in order. Nothing is copied until a chunk is sent."""

    header: inf_pb.WeightsHeader
    parts: list[memoryview]

    def chunks(self, size: int) -> Iterator[list[memoryview]]:
        """The payload in pieces of `size` bytes (the last one shorter), each a list of views."""
        pieces: list[memoryview] = []
        room = size
        for part in self.parts:
            while len(part):
                piece, part = part[:room], part[room:]
                pieces.append(piece)
                room -= len(piece)
                if room == 0:
                    yield pieces
                    pieces, room = [], size
        if pieces:
            yield pieces

    def tobytes(self) -> bytes:
        return b"".join(self.parts)


def _bytes_of(t: torch.Tensor) -> memoryview:
    import torch

    return memoryview(t.reshape(-1).view(torch.uint8).numpy())


def encode_payload(
    tensors: Mapping[str, torch.Tensor], policy_version: int = 0, *, hashed: bool = True
) -> WeightsPayload:
    """Client side: the header and the safetensors payload for `tensors`, as views of their memory.
    Blocking (it hashes every byte, unless not `hashed`): call it off the event loop."""
    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    # widest dtypes first, as safetensors does, so every tensor starts aligned to its element size
    order = sorted(flat, key=lambda k: (-flat[k].element_size(), k))
    meta: dict[str, Any] = {}
    offset = 0
    for k in order:
        t = flat[k]
        size = t.numel() * t.element_size()
        dtype = str(t.dtype).removeprefix("torch.")
        if dtype not in SAFETENSORS_DTYPES:
            raise InvalidArgumentError(f"tensor {k}: dtype {dtype} cannot be sent as weights", reason="INVALID_FIELD")
        meta[k] = {"dtype": SAFETENSORS_DTYPES[dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(meta, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # data starts 8-byte aligned
    parts = [memoryview(len(text).to_bytes(8, "little") + text), *(_bytes_of(flat[k]) for k in order)]
    sha = hashlib.sha256()
    for p in parts if hashed else ():
        sha.update(p)
    header = inf_pb.WeightsHeader(
        policy_version=policy_version,
        tensors=[
            inf_pb.TensorInfo(name=k, dtype=DTYPE_ENUM[str(v.dtype).removeprefix("torch.")], shape=list(v.shape))
            for k, v in flat.items()
        ],
        total_bytes=sum(len(p) for p in parts),
        sha256=sha.hexdigest() if hashed else "",
    )
    return WeightsPayload(header, parts)


def encode(tensors: Mapping[str, torch.Tensor], policy_version: int = 0) -> tuple[inf_pb.WeightsHeader, bytes]:
    """The header and the payload as one bytes object (for callers that slice it themselves)."""
    payload = encode_payload(tensors, policy_version)
    return payload.header, payload.tobytes()


# ---- the wire: chunk messages serialized without protobuf's copies -------------------------------

UPDATE_WEIGHTS_METHOD = "/rollmesh.v1.InferenceService/UpdateWeights"
_CHUNK_TAG = b"\x12"  # UpdateWeightsRequest.chunk: field 2, length-delimited


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def chunk_frames(payload: WeightsPayload, size: int) -> Iterator[bytes]:
    """Each chunk of `payload` as a serialized UpdateWeightsRequest{chunk}: one copy of its bytes,
    where building the message and serializing it would take two."""
    for pieces in payload.chunks(size):
        n = sum(len(p) for p in pieces)
        yield b"".join([_CHUNK_TAG, _varint(n), *pieces])


def serialize_request(request: inf_pb.UpdateWeightsRequest | bytes) -> bytes:
    return request if isinstance(request, bytes) else request.SerializeToString()


def parse_request(raw: bytes) -> inf_pb.UpdateWeightsRequest | memoryview:
    """Server side: a request that is exactly one chunk field becomes a view of the received bytes
    (no copy); anything else is parsed by protobuf as usual."""
    if raw[:1] == _CHUNK_TAG:
        n = shift = 0
        pos = 1
        while pos < len(raw) and pos < 11:
            b = raw[pos]
            n |= (b & 0x7F) << shift
            pos += 1
            if not b & 0x80:
                if pos + n == len(raw):
                    return memoryview(raw)[pos:]
                break
            shift += 7
    return inf_pb.UpdateWeightsRequest.FromString(raw)
