"""A registered address is used only when its server proves, by its certificate, that it was issued
to serve that kind: a rogue process (another CA, or a mesh identity that is no server of the kind)
that got an address into the pool is never connected to, so it never gets episodes, model calls or
weights."""

from __future__ import annotations

from pathlib import Path

import pytest
from rollmesh.env.loader import load_environments
from rollmesh.env.server import EnvironmentServer
from rollmesh.errors import UnavailableError
from rollmesh.orchestrator.routing import connect_env
from rollmesh.rpc import RpcLimits
from rollmesh.security.tls import TlsConfig

from .conftest import member, using


def _server_tls(certs: Path, cert_dir: Path, name: str) -> TlsConfig:
    return TlsConfig(
        cert=str(cert_dir / f"{name}.pem"), key=str(cert_dir / f"{name}-key.pem"), ca=str(certs / "ca.pem")
    )


@pytest.mark.parametrize(
    "impostor",
    [
        "another CA's env certificate",
        "the mesh's orchestrator certificate",  # a client identity: no env.rollmesh name
        "the mesh's inference certificate",  # a server, but of another kind
    ],
)
async def test_the_pool_refuses_a_server_without_a_certificate_for_its_kind(
    certs: Path, foreign: Path, impostor: str
) -> None:
    cert_dir, name = {
        "another CA's env certificate": (foreign, "env"),
        "the mesh's orchestrator certificate": (certs, "orchestrator"),
        "the mesh's inference certificate": (certs, "inference"),
    }[impostor]
    with using(_server_tls(certs, cert_dir, name)):
        rogue = await EnvironmentServer(load_environments("arithmetic", {})).start()
    try:
        with using(member(certs, "orchestrator")), pytest.raises(UnavailableError):
            await connect_env(rogue.address, "arithmetic", timeout_s=5, limits=RpcLimits())
    finally:
        await rogue.stop(0)


async def test_the_pool_uses_a_server_with_a_certificate_for_its_kind(certs: Path) -> None:
    with using(member(certs, "env")):
        server = await EnvironmentServer(load_environments("arithmetic", {})).start()
    try:
        with using(member(certs, "orchestrator")):
            replica = await connect_env(server.address, "arithmetic", timeout_s=5, limits=RpcLimits())
            await replica.close()
    finally:
        await server.stop(0)
