"""Multi-host fixtures: a Network of namespaces per test module, skipped only where the kernel
refuses namespaces."""

from __future__ import annotations

import os

import pytest

from . import netns


@pytest.fixture(scope="session")
def namespaces_available() -> None:
    reason = netns.available()
    if reason is not None:
        pytest.skip(reason)


# The longest runs (training across hosts, with and without faults) belong to `make test-multihost`,
# which sets this; `make test` keeps the harness and the eval across hosts.
full_only = pytest.mark.skipif(
    not os.environ.get("ROLLMESH_MULTIHOST_FULL"), reason="training across hosts: run by `make test-multihost`"
)
