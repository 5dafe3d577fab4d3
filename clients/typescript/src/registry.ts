// Registration in the NATS KV registry (bucket "rollmesh-registry", key "<kind>.<name>.<instance>",
// value a rollmesh.v1.ServiceRecord), kept alive by a heartbeat and expired by the bucket's TTL.
import type { KV, NatsConnection } from "nats";
import { ServiceKind, ServiceRecord } from "./gen/rollmesh/v1/bus.js";

export const REGISTRY_BUCKET = "rollmesh-registry";

export interface RegistryOptions {
  /** TTL when this call creates the bucket; an existing bucket keeps its own (default 15 s). */
  ttlS?: number;
  bucket?: string;
}

export class Registration {
  private timer: NodeJS.Timeout | undefined;

  private constructor(
    private readonly kv: KV,
    readonly key: string,
    readonly record: ServiceRecord,
  ) {}

  /** Puts `record` now and every TTL/3 until close(). */
  static async register(nc: NatsConnection, record: ServiceRecord, opts: RegistryOptions = {}): Promise<Registration> {
    const ttlMs = (opts.ttlS ?? 15) * 1000;
    const kv = await nc.jetstream().views.kv(opts.bucket ?? REGISTRY_BUCKET, { ttl: ttlMs, history: 1 });
    const bucketTtlMs = (await kv.status()).ttl || ttlMs; // the first creator picked the TTL
    const key = ["environment", record.name, record.instanceId].join(".");
    if (record.kind !== ServiceKind.SERVICE_KIND_ENVIRONMENT) throw new Error("only environment records here");
    const registration = new Registration(kv, key, { ...record, startedAt: record.startedAt ?? new Date() });
    await registration.put();
    registration.timer = setInterval(() => {
      registration.put().catch((e: unknown) => console.error(`registry heartbeat failed for ${key}:`, e));
    }, bucketTtlMs / 3);
    registration.timer.unref();
    return registration;
  }

  private async put(): Promise<void> {
    this.record.heartbeatAt = new Date();
    await this.kv.put(this.key, ServiceRecord.encode(this.record).finish());
  }

  /** Stops the heartbeat and deletes the record (the TTL expires it if NATS is gone). */
  async close(): Promise<void> {
    clearInterval(this.timer);
    await this.kv
      .delete(this.key)
      .catch((e: unknown) => console.error(`registry deregister failed for ${this.key}:`, e));
  }
}
