"""Transport security and authorization, shared by every server, client and the bus: TLS settings
(tls), identities (identity), the roles and who may call what (roles), the per-call check
(authorize), a development CA (pki) and nats-server authorization (nats_auth)."""
