"""Which credentials a Mesh uses: a mesh started here makes (or keeps) its own directory; a client
of a mesh running elsewhere (external NATS, nothing to start) with an identity in ROLLMESH_TLS_*
uses that one, and makes no CA nobody there would trust."""

from __future__ import annotations

from pathlib import Path

from rollmesh.apps.launcher import EnvServerConfig, Mesh, MeshConfig, NatsConfig
from rollmesh.security import tls

from .conftest import member, using


def test_a_client_of_a_mesh_elsewhere_uses_its_own_identity(certs: Path, tmp_path: Path) -> None:
    config = MeshConfig(dir=str(tmp_path / "m"), nats=NatsConfig(url="nats://10.0.0.1:4222,nats://10.0.0.2:4222"))
    mesh = Mesh(config)
    assert mesh.starts_nothing()
    with using(member(certs, "orchestrator")):
        mesh._secure()
        assert tls.current().cert == str(certs / "orchestrator.pem")
        trainer = mesh.identity("trainer")
        assert trainer is not None and trainer.cert == str(certs / "trainer.pem")
    assert not (tmp_path / "m" / "pki").exists() and mesh.certs is None


def test_a_mesh_that_starts_servers_here_has_its_own_credentials(certs: Path, tmp_path: Path) -> None:
    config = MeshConfig(
        dir=str(tmp_path / "m"), nats=NatsConfig(url="nats://10.0.0.1:4222"), envs=[EnvServerConfig(target="digits")]
    )
    mesh = Mesh(config)
    assert not mesh.starts_nothing()
    with using(member(certs, "orchestrator")):
        mesh._secure()
        try:
            assert mesh.certs == tmp_path / "m" / "pki" and (mesh.certs / "ca.pem").exists()
            assert tls.current().cert == str(mesh.certs / "orchestrator.pem")
        finally:
            tls.configure(mesh._previous_tls)  # what stop() does
