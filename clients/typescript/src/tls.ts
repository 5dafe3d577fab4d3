// Transport security settings, the same in every rollmesh process: a certificate and key (who this
// process is) and a CA (whom it trusts; on a server it also turns on mutual TLS). From options, or
// the environment: ROLLMESH_TLS_CERT, ROLLMESH_TLS_KEY, ROLLMESH_TLS_CA (spec 14). Servers reread
// their certificate files when they change.
import { readFileSync, statSync } from "node:fs";
import { lookup } from "node:dns/promises";
import { isIP } from "node:net";
import { createSecureContext } from "node:tls";
import { type ChannelCredentials, credentials, ServerCredentials } from "@grpc/grpc-js";

export const ENV_TLS_CERT = "ROLLMESH_TLS_CERT";
export const ENV_TLS_KEY = "ROLLMESH_TLS_KEY";
export const ENV_TLS_CA = "ROLLMESH_TLS_CA";

/** A server certificate for service kind K names K.rollmesh: clients check that name, not the address. */
export const SERVER_NAME_SUFFIX = ".rollmesh";

/** The kinds of server a client checks the certificate of ("env" -> "env.rollmesh"). */
export type ServerKind = "env" | "inference" | "rubric";

/**
 * TLS settings. Each value is a file path, or the PEM itself (a Buffer, or a string that starts
 * with "-----BEGIN").
 */
export interface TlsOptions {
  /** This process's certificate: turns TLS on. */
  cert?: string | Buffer;
  /** The certificate's private key. */
  key?: string | Buffer;
  /** The CA that signs peers. On a server it turns on mutual TLS: callers need a certificate it signed. */
  ca?: string | Buffer;
}

/** The name a client checks a server's certificate for: "env.rollmesh", "inference.rollmesh", ... */
export function serverName(kind: ServerKind | string): string {
  return `${kind}${SERVER_NAME_SUFFIX}`;
}

/** The settings in the environment (ROLLMESH_TLS_CERT, ROLLMESH_TLS_KEY, ROLLMESH_TLS_CA); unset ones are left out. */
export function tlsFromEnv(env: NodeJS.ProcessEnv = process.env): TlsOptions {
  const out: TlsOptions = {};
  if (env[ENV_TLS_CERT]) out.cert = env[ENV_TLS_CERT];
  if (env[ENV_TLS_KEY]) out.key = env[ENV_TLS_KEY];
  if (env[ENV_TLS_CA]) out.ca = env[ENV_TLS_CA];
  return out;
}

/** Whether connections made with these settings use TLS at all (a certificate or a CA is given). */
export function tlsEnabled(tls: TlsOptions | undefined): boolean {
  return Boolean(tls?.cert || tls?.ca);
}

/** Whether a server with these settings knows who calls it (mutual TLS: a CA is given). */
export function tlsAuthenticates(tls: TlsOptions | undefined): boolean {
  return Boolean(tls?.ca);
}

/** The PEM bytes of a setting (a path, or the PEM itself); an Error that names the file otherwise. */
export function readPem(value: string | Buffer, what: string): Buffer {
  if (Buffer.isBuffer(value)) return value;
  if (value.trimStart().startsWith("-----BEGIN")) return Buffer.from(value);
  try {
    return readFileSync(value);
  } catch (e) {
    const reason = (e as NodeJS.ErrnoException).code ?? (e as Error).message;
    throw new Error(`cannot read the ${what} ${value}: ${reason}`);
  }
}

interface Pems {
  cert?: Buffer;
  key?: Buffer;
  ca?: Buffer;
}

/** Checks the settings and reads the files: both certificate and key or neither; a server with a CA needs a certificate. */
export function loadTls(tls: TlsOptions, opts: { server: boolean }): Pems {
  if (Boolean(tls.cert) !== Boolean(tls.key)) {
    throw new Error("give both the TLS certificate and its key (--tls-cert and --tls-key), or neither");
  }
  if (opts.server && tls.ca && !tls.cert) {
    throw new Error("a server that checks its callers needs its own certificate: give --tls-cert and --tls-key");
  }
  return {
    cert: tls.cert ? readPem(tls.cert, "certificate") : undefined,
    key: tls.key ? readPem(tls.key, "private key") : undefined,
    ca: tls.ca ? readPem(tls.ca, "CA bundle") : undefined,
  };
}

/** How often a server checks whether its certificate files changed (ms). */
export const RELOAD_CHECK_MS = 1000;

type ContextWatcher = Parameters<ServerCredentials["_addWatcher"]>[0];

/**
 * Server credentials that reread the certificate, key and CA files when they change (checked every
 * RELOAD_CHECK_MS while the server listens), so rotating a certificate is replacing its files. A
 * change that does not load (a half-written file, a key that does not match) keeps the current
 * certificate and is logged.
 */
class ReloadingServerCredentials extends ServerCredentials {
  private timer: NodeJS.Timeout | undefined;
  private stamp: string;

  constructor(
    private readonly tls: TlsOptions,
    private readonly log: (line: string) => void,
  ) {
    const stamp = fileStamp(tls);
    const options = contextOptions(tls);
    super({ requestCert: Boolean(tls.ca), rejectUnauthorized: Boolean(tls.ca) }, options);
    this.stamp = stamp;
  }

  override _addWatcher(watcher: ContextWatcher): void {
    super._addWatcher(watcher);
    if (this.timer || !watchedFiles(this.tls).length) return;
    this.timer = setInterval(() => this.check(), RELOAD_CHECK_MS);
    this.timer.unref();
  }

  override _removeWatcher(watcher: ContextWatcher): void {
    super._removeWatcher(watcher);
    if (this.getWatcherCount() === 0) {
      clearInterval(this.timer);
      this.timer = undefined;
    }
  }

  _equals(other: ServerCredentials): boolean {
    return this === other;
  }

  private check(): void {
    const stamp = fileStamp(this.tls);
    if (stamp === this.stamp) return;
    try {
      const options = contextOptions(this.tls);
      createSecureContext(options); // throws on a certificate or key that does not load
      this.stamp = stamp;
      this.updateSecureContextOptions(options);
      this.log(`TLS certificate reloaded from ${watchedFiles(this.tls).join(", ")}`);
    } catch (e) {
      this.stamp = stamp; // tried once; the next change tries again
      this.log(`could not reload the TLS certificate, keeping the current one: ${(e as Error).message}`);
    }
  }
}

/** The settings that are file paths (not PEM given in place). */
function watchedFiles(tls: TlsOptions): string[] {
  return [tls.cert, tls.key, tls.ca].filter(
    (v): v is string => typeof v === "string" && !v.trimStart().startsWith("-----BEGIN"),
  );
}

function fileStamp(tls: TlsOptions): string {
  return watchedFiles(tls)
    .map((file) => {
      try {
        const st = statSync(file);
        return `${st.mtimeMs}:${st.size}:${st.ino}`;
      } catch {
        return "missing";
      }
    })
    .join("|");
}

function contextOptions(tls: TlsOptions): { cert: Buffer[]; key: Buffer[]; ca?: Buffer } {
  const pems = loadTls(tls, { server: true });
  if (!pems.cert || !pems.key) {
    throw new Error("a TLS server needs its certificate and key: give --tls-cert and --tls-key");
  }
  return { cert: [pems.cert], key: [pems.key], ...(pems.ca ? { ca: pems.ca } : {}) };
}

/**
 * TLS with this certificate; with a CA, callers must present a certificate it signed (mutual TLS).
 * Certificate files are reread when they change; `log` gets a line for each reload.
 */
export function serverCredentials(tls: TlsOptions, log: (line: string) => void = console.error): ServerCredentials {
  if (!tlsEnabled(tls)) return ServerCredentials.createInsecure();
  return new ReloadingServerCredentials(tls, log);
}

/** Channel credentials: TLS (the CA, else the system's roots) with this certificate as the client's, or insecure. */
export function channelCredentials(tls: TlsOptions): ChannelCredentials {
  if (!tlsEnabled(tls)) return credentials.createInsecure();
  const pems = loadTls(tls, { server: false });
  return credentials.createSsl(pems.ca ?? null, pems.key ?? null, pems.cert ?? null);
}

/** The `tls` option of nats.js's connect() for these settings (undefined when TLS is off). */
export function natsTlsOptions(tls: TlsOptions): { ca?: string; cert?: string; key?: string } | undefined {
  if (!tlsEnabled(tls)) return undefined;
  const pems = loadTls(tls, { server: false });
  const out: { ca?: string; cert?: string; key?: string } = {};
  if (pems.ca) out.ca = pems.ca.toString();
  if (pems.cert) out.cert = pems.cert.toString();
  if (pems.key) out.key = pems.key.toString();
  return out;
}

// ---- binding ----------------------------------------------------------------------------------------

function loopbackAddress(address: string): boolean {
  const ip = address.replace(/^\[|\]$/g, "");
  if (isIP(ip) === 4) return ip.startsWith("127.");
  if (isIP(ip) === 6) return ip === "::1" || /^::ffff:127\./i.test(ip);
  return false;
}

/** Whether `host` is this machine only: localhost, 127.0.0.0/8, ::1, or a name that resolves only to those. */
export async function isLoopback(host: string): Promise<boolean> {
  if (host === "localhost") return true;
  if (!host) return false;
  if (isIP(host.replace(/^\[|\]$/g, ""))) return loopbackAddress(host);
  try {
    const addresses = await lookup(host, { all: true });
    return addresses.length > 0 && addresses.every((a) => loopbackAddress(a.address));
  } catch {
    return false;
  }
}

/**
 * Refuses to serve `what` beyond this machine without TLS and caller authentication (a CA), unless
 * `insecure` (then it warns). Throws an Error that says what to give.
 */
export async function checkBind(
  host: string,
  tls: TlsOptions,
  opts: { insecure?: boolean; what?: string; warn?: (line: string) => void } = {},
): Promise<void> {
  if ((tlsEnabled(tls) && tlsAuthenticates(tls)) || (await isLoopback(host))) return;
  const what = opts.what ?? "environments";
  const missing = tlsEnabled(tls) ? "caller authentication (--tls-ca)" : "TLS and caller authentication";
  if (!opts.insecure) {
    throw new Error(
      `refusing to serve ${what} on ${host} without ${missing}: anyone who reaches the address could use it. ` +
        "Give --tls-cert/--tls-key/--tls-ca (`rollmesh certs init` makes them), or --insecure to accept the risk",
    );
  }
  (opts.warn ?? console.error)(
    `warning: serving ${what} on ${host} without ${missing} (--insecure): anyone who reaches it can use it`,
  );
}
