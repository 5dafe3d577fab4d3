// A connection to the bus (NATS) with this process's TLS settings: with a certificate, nats-server
// maps it to the user of its identity, whose permissions are its roles' (spec 14).
import { connect, type ConnectionOptions, type NatsConnection } from "nats";
import { natsTlsOptions, tlsFromEnv, type TlsOptions } from "./tls.js";

export interface BusOptions {
  /** TLS settings (default: ROLLMESH_TLS_CERT, ROLLMESH_TLS_KEY, ROLLMESH_TLS_CA; none: plaintext). */
  tls?: TlsOptions;
  /** The connection's name on the server. */
  name?: string;
  /** Other options of nats.js's connect() (they take precedence). */
  connection?: Partial<ConnectionOptions>;
}

/**
 * Connects to NATS at `servers` (one URL, several comma-separated, or a list). With TLS settings
 * it connects over TLS, checks the server's certificate against the CA and presents this
 * process's certificate.
 */
export function connectBus(servers: string | string[], opts: BusOptions = {}): Promise<NatsConnection> {
  const list = (Array.isArray(servers) ? servers : servers.split(",")).map((s) => s.trim()).filter((s) => s.length > 0);
  const tls = natsTlsOptions(opts.tls ?? tlsFromEnv());
  return connect({
    servers: list,
    name: opts.name ?? "rollmesh-typescript",
    ...(tls ? { tls } : {}),
    ...opts.connection,
  });
}
