"""Streamed weights: a header, then safetensors bytes in chunks. Everything is checked (size,
sha256, names, dtypes, shapes) before a single tensor reaches the model, so a bad stream leaves
the served weights unchanged."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import TYPE_CHECKING

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
# A safetensors payload is an 8-byte length, a JSON header (per tensor: its name and
# {"dtype":..,"shape":[..],"data_offsets":[a,b]}; an optional __metadata__ map; padding), then the
# data. The header's size is bounded generously from the manifest, so that total_bytes can be
# checked against what the declared tensors need before any byte is buffered.
HEADER_BYTES_PER_TENSOR = 128
HEADER_BYTES_PER_DIM = 24
HEADER_SLACK_BYTES = 1024 * 1024


def _listing(names: list[str], limit: int = 5) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


class WeightsAssembler:
    def __init__(self, header: inf_pb.WeightsHeader, params: Mapping[str, ParamSpec], max_bytes: int) -> None:
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
        self._buf = bytearray()
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
            numel = 1
            for d in shape:
                numel *= d
            data += numel * ITEM_BYTES[DTYPES[t.dtype]]
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

    def add(self, chunk: bytes) -> None:
        if len(self._buf) + len(chunk) > self.header.total_bytes:
            self.discard()
            raise InvalidArgumentError(
                f"weights stream longer than the header's total_bytes ({self.header.total_bytes})",
                reason="CHECKPOINT_INVALID",
            )
        self._buf += chunk
        self._sha.update(chunk)

    def discard(self) -> None:
        """Drops what was buffered (a refused stream must not hold its bytes until collected)."""
        self._buf = bytearray()

    def finish(self) -> dict[str, torch.Tensor]:
        from safetensors.torch import load

        if len(self._buf) != self.header.total_bytes:
            raise DataLossError(
                f"partial weights stream: got {len(self._buf)} of {self.header.total_bytes} bytes; nothing applied",
                reason="CHECKSUM_MISMATCH",  # fewer bytes than the header vouches for: they cannot match it
            )
        if self._sha.hexdigest() != self.header.sha256.lower():
            raise DataLossError("weights checksum mismatch (sha256); nothing applied", reason="CHECKSUM_MISMATCH")
        try:
            tensors = load(bytes(self._buf))
        except Exception as e:  # safetensors raises its own error types
            raise InvalidArgumentError(f"payload is not a safetensors file: {e}", reason="CHECKPOINT_INVALID") from None
        self.discard()  # the tensors hold their own copy: free the payload before they are applied
        declared = {t.name: t for t in self.header.tensors}
        if set(tensors) != set(declared):
            raise InvalidArgumentError(
                f"payload tensors {_listing(sorted(tensors))} differ from the header's {_listing(sorted(declared))}",
                reason="CHECKPOINT_INVALID",
            )
        for name, tensor in tensors.items():
            want = declared[name]
            dtype = str(tensor.dtype).removeprefix("torch.")
            if tuple(tensor.shape) != tuple(want.shape) or dtype != DTYPES[want.dtype]:
                raise InvalidArgumentError(
                    f"tensor {name}: payload has {list(tensor.shape)} {tensor.dtype}, header says "
                    f"{list(want.shape)} {DTYPES[want.dtype]}",
                    reason="CHECKPOINT_INVALID",
                )
        return tensors


def encode(tensors: Mapping[str, torch.Tensor], policy_version: int = 0) -> tuple[inf_pb.WeightsHeader, bytes]:
    """Client side: the header and the safetensors payload for `tensors`."""
    from safetensors.torch import save

    payload = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()})
    header = inf_pb.WeightsHeader(
        policy_version=policy_version,
        tensors=[
            inf_pb.TensorInfo(name=k, dtype=DTYPE_ENUM[str(v.dtype).removeprefix("torch.")], shape=list(v.shape))
            for k, v in tensors.items()
        ],
        total_bytes=len(payload),
        sha256=hashlib.sha256(payload).hexdigest(),
    )
    return header, payload
