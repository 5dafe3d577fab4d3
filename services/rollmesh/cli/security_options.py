"""The security flags every serving and client command shares, read the same way everywhere:
flag, else environment variable (ROLLMESH_TLS_CERT, ...). They set the process's TLS settings
(security.tls.configure), which every gRPC server, channel, HTTP endpoint and NATS connection uses."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from ..security.tls import TlsConfig

TlsCertOpt = Annotated[
    str | None,
    typer.Option("--tls-cert", envvar="ROLLMESH_TLS_CERT", help="This process's certificate (PEM); turns TLS on."),
]
TlsKeyOpt = Annotated[
    str | None, typer.Option("--tls-key", envvar="ROLLMESH_TLS_KEY", help="The certificate's private key (PEM file).")
]
TlsCaOpt = Annotated[
    str | None,
    typer.Option(
        "--tls-ca",
        envvar="ROLLMESH_TLS_CA",
        help="CA bundle that signs peers. On a server it turns on mutual TLS: callers need a certificate.",
    ),
]
TokensFileOpt = Annotated[
    str | None,
    typer.Option(
        "--tokens-file", envvar="ROLLMESH_TOKENS_FILE", help="Bearer tokens (sha256 hashes) a server accepts, TOML."
    ),
]
InsecureOpt = Annotated[
    bool,
    typer.Option(
        "--insecure", help="Allow serving a non-loopback address without TLS and caller authentication (warns)."
    ),
]


def configure_security(
    tls_cert: str | None,
    tls_key: str | None,
    tls_ca: str | None,
    tokens_file: str | None = None,
    *,
    table: dict[str, str] | None = None,
    identity: str | None = None,
    serve: tuple[str, str] | None = None,
    insecure: bool = False,
) -> None:
    """Set this process's TLS settings from the flags, else `table` ([tls] of a TOML file), else the
    environment, else (with `identity`)
    the credentials of a local mesh that is running (see local_mesh_credentials). For a server
    (`serve` = (host, what)), refuse an exposed address without security unless `insecure`. Exits
    with a clear error."""
    from ..errors import RollmeshError
    from ..security.tls import TlsConfig, check_bind, configure

    config = (
        TlsConfig.from_env()
        .overridden(**(table or {}))  # a [tls] table of the command's TOML file
        .overridden(cert=tls_cert, key=tls_key, ca=tls_ca, tokens_file=tokens_file)
    )
    if not config.enabled and identity and (local := local_mesh_credentials(identity)) is not None:
        config = local
    try:
        config.validate(server=serve is not None)
        if serve is not None:
            check_bind(serve[0], config, insecure=insecure, what=serve[1])
    except RollmeshError as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    configure(config)


@functools.cache  # one lookup (and one line saying so) per process
def local_mesh_credentials(identity: str) -> TlsConfig | None:
    """While a local mesh runs (`rollmesh up` writes ./rollmesh-mesh/mesh.json, or
    $ROLLMESH_MESH_DIR/mesh.json), a command started next to it joins it as `identity` with its
    credentials: the quickstart needs no extra step and still runs with security on."""
    import json
    import os
    from pathlib import Path

    from ..security import pki

    state = Path(os.environ.get("ROLLMESH_MESH_DIR") or "rollmesh-mesh") / "mesh.json"
    try:
        certs = json.loads(state.read_text()).get("certs")
    except (OSError, ValueError, AttributeError):
        return None
    if not certs or not Path(certs, f"{identity}.pem").exists():
        return None
    typer.secho(f"using the local mesh's credentials ({certs}, as {identity})", err=True, dim=True)
    return pki.member_config(certs, identity)


def configure_client(
    identity: str,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    tls_ca: str | None = None,
) -> None:
    """A client command's TLS settings (configure_security, as `identity` of a local mesh)."""
    configure_security(tls_cert, tls_key, tls_ca, identity=identity)
