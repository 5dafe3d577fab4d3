"""Weights handed over in shared memory, for a trainer on the same host as the inference server.

The sender writes the safetensors payload into an anonymous shared-memory file (`memfd_create`,
Linux) and asks the server to LoadWeights `/proc/<its pid>/fd/<fd>`. The file has no name in any
directory, so nothing can leak: the kernel frees it when the last descriptor closes, after the
push, after a failure, or when the sender dies mid-push.

The server accepts such a path only if what it opens is one of these files (a memfd named
MEMFD_NAME, sealed against shrinking) and no larger than its weights limit: not a way to read
the server's files. Opening another process's descriptor needs the kernel's ptrace read access
to it (the same user, or root), so a server in another container or running as another user
refuses, and the sender falls back to streaming. The server reads the file through its own
descriptor, so the sender's descriptor cannot be swapped for another file between the check and
the read.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import stat
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from ..errors import PermissionDeniedError, ResourceExhaustedError, quoted
from .weights import encode_payload

if TYPE_CHECKING:
    import torch

MEMFD_NAME = "rollmesh-weights"
_HANDLE = re.compile(r"/proc/(\d{1,10})/fd/(\d{1,10})")


def supported() -> bool:
    return hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd")


def is_handle(path: str) -> bool:
    """Whether `path` names a descriptor of a process (/proc/<pid>/fd/<fd>), the form of a
    same-host weights handle."""
    return _HANDLE.fullmatch(path) is not None


def _is_weights_memfd(fd: int) -> bool:
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return False
    # a memfd links to "/memfd:<name> (deleted)"; a file, even one under /dev/shm, to its path
    return target == f"/memfd:{MEMFD_NAME} (deleted)"


class SharedWeights:
    """Sender side: a shared-memory file that holds the last tensors written, until `close()`.
    `path` is its handle, the path to give LoadWeights. Writing again reuses its pages, which
    costs half as much as fresh ones: a trainer keeps one for its pushes."""

    def __init__(self) -> None:
        self._fd = -1
        self.size = 0
        self.path = ""

    def _create(self, size: int) -> None:
        self.close()
        self._fd = os.memfd_create(MEMFD_NAME, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        os.ftruncate(self._fd, size)  # one allocation, not one per write
        # never shorter than now: a reader's mapping can then not fault (SIGBUS) past the end
        fcntl.fcntl(self._fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
        self.size = size
        self.path = f"/proc/{os.getpid()}/fd/{self._fd}"

    def write(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Replaces the content with `tensors` as a safetensors file. Blocking (copies every byte once)."""
        payload = encode_payload(tensors, hashed=False)
        if self._fd < 0 or payload.header.total_bytes != self.size:
            self._create(payload.header.total_bytes)
        offset = 0
        for part in payload.parts:
            while len(part):
                n = os.pwrite(self._fd, part, offset)
                part, offset = part[n:], offset + n

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> SharedWeights:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _sealed_against_shrinking(fd: int) -> bool:
    """A sender could otherwise cut its file short while the server reads it (SIGBUS)."""
    try:
        return bool(fcntl.fcntl(fd, fcntl.F_GET_SEALS) & fcntl.F_SEAL_SHRINK)
    except OSError:
        return False


@contextlib.contextmanager
def open_handle(path: str, max_bytes: int) -> Iterator[str]:
    """Server side: the file behind a handle, opened and checked, as a path of this process's own
    descriptor (readable by the backend and, for vLLM, by its worker processes). One refusal for
    every reason, so that a caller learns nothing about the server's processes and files."""
    refused = PermissionDeniedError(
        f"{quoted(path)} is not a same-host weights handle this server can read: LoadWeights of a "
        "/proc/<pid>/fd/<fd> path reads only a sender's shared-memory weights (same host, same user)",
        reason="PATH_NOT_ALLOWED",
    )
    if not is_handle(path):
        raise refused
    try:
        # O_NONBLOCK: a FIFO must not hold the server until someone writes to it
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        raise refused from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or not _is_weights_memfd(fd) or not _sealed_against_shrinking(fd):
            raise refused
        if st.st_size > max_bytes:
            raise ResourceExhaustedError(
                f"weights of {st.st_size} bytes exceed this server's limit of {max_bytes}",
                reason="WEIGHTS_TOO_LARGE",
                metadata={"limit_bytes": str(max_bytes)},
            )
        yield f"/proc/{os.getpid()}/fd/{fd}"
    finally:
        os.close(fd)
