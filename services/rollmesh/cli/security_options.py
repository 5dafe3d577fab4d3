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
