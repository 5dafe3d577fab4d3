// The environment server: EnvironmentService + health + reflection on one grpc-js server,
// optional registration in the NATS registry, and a graceful shutdown. With TLS settings it serves
// TLS; with a CA, mutual TLS and the role check on every call (authorize.ts).
import { Server } from "@grpc/grpc-js";
import type { NatsConnection } from "nats";
import { type AuditLog, authorizationInterceptor } from "./authorize.js";
import { connectBus } from "./bus.js";
import { withLenientDecoding } from "./decoding.js";
import { ServiceKind } from "./gen/rollmesh/v1/bus.js";
import { EnvironmentServiceService } from "./gen/rollmesh/v1/environment.js";
import { Health, HEALTH_SERVICE } from "./health.js";
import { addReflection } from "./reflection.js";
import { Registration } from "./registry.js";
import { type AnyEnvironment, EnvironmentServiceImpl, PROTOCOL_VERSION } from "./service.js";
import { loadTls, serverCredentials, tlsAuthenticates, tlsFromEnv, type TlsOptions } from "./tls.js";

export const SERVICE_NAME = "rollmesh.v1.EnvironmentService";

export interface ServeOptions {
  /** Default 127.0.0.1; port 0 (the default) binds a free port. */
  host?: string;
  port?: number;
  maxConcurrentEpisodes?: number;
  /** An episode with no client message for this long ends with DEADLINE_EXCEEDED (default 300; 0 = never). */
  idleTimeoutS?: number;
  /** Largest message either way, in bytes (default 16 MiB; the CLI's --max-message-mb). */
  maxMessageBytes?: number;
  /** The longest one RunEpisode may take, in seconds (default 1800; 0 = only the caller's deadline). */
  runTimeoutS?: number;
  /** The longest one model call of a RunEpisode (agent.chat) may take, in seconds (default 300; 0 = no limit). */
  modelTimeoutS?: number;
  /** Register in the NATS KV registry at this URL. */
  natsUrl?: string;
  /** Host other machines reach this server at (default: host). */
  advertiseHost?: string;
  registryTtlS?: number;
  /**
   * TLS: the server's certificate and key; with a CA, callers need a certificate it signed and a
   * role that may call the method. Default: ROLLMESH_TLS_CERT, ROLLMESH_TLS_KEY, ROLLMESH_TLS_CA
   * (none set: plaintext, no role check). The NATS registry connection uses the same certificate.
   */
  tls?: TlsOptions;
  /** Where refused calls are logged, one line each (default: stderr). */
  audit?: AuditLog;
}

export class EnvironmentServer {
  private nc: NatsConnection | undefined;
  private registrations: Registration[] = [];
  private stopping: Promise<void> | undefined;

  private constructor(
    readonly service: EnvironmentServiceImpl,
    private readonly server: Server,
    private readonly health: Health,
    readonly host: string,
    readonly port: number,
  ) {}

  static async start(envs: AnyEnvironment[], opts: ServeOptions = {}): Promise<EnvironmentServer> {
    const tls = opts.tls ?? tlsFromEnv();
    loadTls(tls, { server: true }); // a missing file or key fails here, before anything is bound
    const maxMessageBytes = opts.maxMessageBytes ?? 16 * 1024 * 1024;
    const service = new EnvironmentServiceImpl(envs, {
      maxConcurrentEpisodes: opts.maxConcurrentEpisodes ?? 1024,
      idleTimeoutS: opts.idleTimeoutS ?? 300,
      maxMessageBytes,
      runTimeoutS: opts.runTimeoutS ?? 1800,
      modelTimeoutS: opts.modelTimeoutS ?? 300,
    });
    const server = new Server({
      "grpc.max_receive_message_length": maxMessageBytes,
      "grpc.max_send_message_length": maxMessageBytes,
      "grpc.keepalive_time_ms": 30_000,
      "grpc.keepalive_timeout_ms": 10_000,
      "grpc.keepalive_permit_without_calls": 1,
      // the transport's stream cap sits above the episode limit, so that every episode the server
      // has room for (and the one over it, which gets EPISODE_LIMIT) fits on one connection
      "grpc.max_concurrent_streams": Math.max(16384, 2 * (opts.maxConcurrentEpisodes ?? 1024)),
      // mutual TLS: every call is checked against the roles of the caller's certificate
      interceptors: tlsAuthenticates(tls) ? [authorizationInterceptor(opts.audit)] : [],
    });
    server.addService(withLenientDecoding(EnvironmentServiceService), service.handlers());
    const health = new Health();
    health.addToServer(server);
    addReflection(server, [SERVICE_NAME, HEALTH_SERVICE]);
    const host = opts.host ?? "127.0.0.1";
    const port = await new Promise<number>((resolve, reject) => {
      const where = host.includes(":") ? `[${host}]:${opts.port ?? 0}` : `${host}:${opts.port ?? 0}`;
      server.bindAsync(where, serverCredentials(tls), (err, bound) => (err ? reject(err) : resolve(bound)));
    });
    for (const name of ["", SERVICE_NAME]) health.set(name, "SERVING");
    const self = new EnvironmentServer(service, server, health, host, port);
    if (opts.natsUrl) {
      try {
        await self.register(opts.natsUrl, opts.advertiseHost ?? host, tls, opts.registryTtlS);
      } catch (e) {
        await self.stop(0);
        throw e;
      }
    }
    return self;
  }

  get address(): string {
    return `${this.host}:${this.port}`;
  }

  private async register(natsUrl: string, advertiseHost: string, tls: TlsOptions, ttlS?: number): Promise<void> {
    this.nc = await connectBus(natsUrl, { name: "rollmesh-env-typescript", tls });
    for (const env of this.service.envs.values()) {
      const record = {
        kind: ServiceKind.SERVICE_KIND_ENVIRONMENT,
        name: env.name,
        version: env.spec.version ?? "0.1.0",
        address: `${advertiseHost}:${this.port}`,
        capacity: this.service.limits.maxConcurrentEpisodes,
        instanceId: this.service.instanceId, // one record per environment, the same instance id
        protocolVersion: PROTOCOL_VERSION,
        labels: { language: "typescript" },
      };
      this.registrations.push(await Registration.register(this.nc, record, { ttlS }));
    }
  }

  /** NOT_SERVING and deregistration first, then no new calls; in-flight calls get graceS, then are cancelled. */
  stop(graceS = 10): Promise<void> {
    this.stopping ??= this.shutdown(graceS);
    return this.stopping;
  }

  private async shutdown(graceS: number): Promise<void> {
    this.service.draining = true;
    for (const name of ["", SERVICE_NAME]) this.health.set(name, "NOT_SERVING");
    this.health.closeWatches();
    await Promise.all(this.registrations.map((r) => r.close()));
    await this.nc?.close();
    await new Promise<void>((resolve) => {
      const force = setTimeout(() => {
        this.server.forceShutdown();
        resolve();
      }, graceS * 1000);
      this.server.tryShutdown(() => {
        clearTimeout(force);
        resolve();
      });
    });
  }

  /** Serves until SIGTERM or SIGINT, then stops gracefully. */
  async serveUntilSignal(graceS = 10): Promise<void> {
    const signal = await new Promise<NodeJS.Signals>((resolve) => {
      process.once("SIGTERM", resolve);
      process.once("SIGINT", resolve);
    });
    console.error(`${signal}: shutting down, ${this.service.active} episode(s) in flight, grace ${graceS} s`);
    await this.stop(graceS);
  }
}

/** Starts a server for `envs` (see ServeOptions). */
export function serve(envs: AnyEnvironment[], opts: ServeOptions = {}): Promise<EnvironmentServer> {
  return EnvironmentServer.start(envs, opts);
}
