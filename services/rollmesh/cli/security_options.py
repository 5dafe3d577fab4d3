"""The security flags every serving and client command shares, read the same way everywhere:
flag, else environment variable (ROLLMESH_TLS_CERT, ...). They set the process's TLS settings
(security.tls.configure), which every gRPC server, channel, HTTP endpoint and NATS connection uses."""

from __future__ import annotations

from typing import Annotated

import typer

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
    serve: tuple[str, str] | None = None,
    insecure: bool = False,
) -> None:
    """Set this process's TLS settings from the flags; for a server (`serve` = (host, what)),
    refuse an exposed address without security unless `insecure`. Exits with a clear error."""
    from ..errors import RollmeshError
    from ..security.tls import TlsConfig, check_bind, configure

    config = TlsConfig.from_env().overridden(cert=tls_cert, key=tls_key, ca=tls_ca, tokens_file=tokens_file)
    try:
        config.validate(server=serve is not None)
        if serve is not None:
            check_bind(serve[0], config, insecure=insecure, what=serve[1])
    except RollmeshError as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    configure(config)


def configure_client(
    identity: str,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    tls_ca: str | None = None,
) -> None:
    """A client command's TLS settings: the flags or environment; with neither, and a local mesh
    running (`rollmesh up` writes ./rollmesh-mesh/mesh.json, or $ROLLMESH_MESH_DIR), that mesh's
    credentials as `identity`, so the quickstart needs no extra step."""
    import json
    import os
    from pathlib import Path

    from ..security import pki
    from ..security.tls import TlsConfig

    config = TlsConfig.from_env().overridden(cert=tls_cert, key=tls_key, ca=tls_ca)
    if not config.enabled:
        state = Path(os.environ.get("ROLLMESH_MESH_DIR") or "rollmesh-mesh") / "mesh.json"
        try:
            certs = json.loads(state.read_text()).get("certs")
        except (OSError, ValueError):
            certs = None
        if certs and Path(certs, f"{identity}.pem").exists():
            config = pki.member_config(certs, identity)
            typer.secho(f"using the local mesh's credentials ({certs}, as {identity})", err=True, dim=True)
    configure_security(config.cert, config.key, config.ca)
