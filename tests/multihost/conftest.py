"""Multi-host fixtures: a Network of namespaces per test module, skipped only where the kernel
refuses namespaces."""

from __future__ import annotations

import pytest

from . import netns


@pytest.fixture(scope="session")
def namespaces_available() -> None:
    reason = netns.available()
    if reason is not None:
        pytest.skip(reason)
