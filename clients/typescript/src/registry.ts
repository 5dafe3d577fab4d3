// Registration in the NATS KV registry (spec 11): bucket "rollmesh-registry", key
// "<kind>.<name>.<instance_id>", value a serialized rollmesh.v1.ServiceRecord, re-put every TTL/3
// and expired by the bucket's TTL; deleted on close.
import type { KV, NatsConnection } from "nats";
import { ServiceKind, serviceKindToJSON, ServiceRecord } from "./gen/rollmesh/v1/bus.js";

export const REGISTRY_BUCKET = "rollmesh-registry";
export const REGISTRY_TTL_S = 15;

export interface RegistryOptions {
  /** TTL when this call creates the bucket; an existing bucket keeps its own (default 15 s). */
  ttlS?: number;
  bucket?: string;
}

/** "environment", "inference", ...: the ServiceKind name without its prefix, in lower case. */
export function kindToken(kind: ServiceKind): string {
  if (kind === ServiceKind.SERVICE_KIND_UNSPECIFIED || kind === ServiceKind.UNRECOGNIZED) {
    throw new Error("a service record needs a kind (ServiceKind.SERVICE_KIND_ENVIRONMENT, ...)");
  }
  return serviceKindToJSON(kind)
    .replace(/^SERVICE_KIND_/, "")
    .toLowerCase();
}

/** The registry key of a record: "<kind>.<name>.<instance_id>". */
export function registryKey(record: Pick<ServiceRecord, "kind" | "name" | "instanceId">): string {
  for (const [what, value] of [
    ["name", record.name],
    ["instance id", record.instanceId],
  ] as const) {
    if (!/^[A-Za-z0-9_\-=]+$/.test(value)) {
      throw new Error(`invalid ${what} "${value}" for a registry key: use letters, digits, '-', '_' or '='`);
    }
  }
  return [kindToken(record.kind), record.name, record.instanceId].join(".");
}

export class Registration {
  private timer: NodeJS.Timeout | undefined;

  private constructor(
    private readonly kv: KV,
    readonly key: string,
    readonly record: ServiceRecord,
    /** The bucket's TTL (ms): the heartbeat re-puts the record every third of it. */
    readonly ttlMs: number,
  ) {}

  /** Puts `record` now and every TTL/3 until close(). */
  static async register(
    nc: NatsConnection,
    record: Partial<ServiceRecord> & Pick<ServiceRecord, "kind" | "name" | "instanceId">,
    opts: RegistryOptions = {},
  ): Promise<Registration> {
    const full = ServiceRecord.fromPartial({ protocolVersion: "v1", startedAt: new Date(), ...record });
    const key = registryKey(full);
    const ttlMs = (opts.ttlS ?? REGISTRY_TTL_S) * 1000;
    const kv = await openBucket(nc, opts.bucket ?? REGISTRY_BUCKET, ttlMs);
    const bucketTtlMs = (await kv.status()).ttl || ttlMs; // whoever created the bucket chose its TTL
    const registration = new Registration(kv, key, full, bucketTtlMs);
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

/** The bucket, created (history 1, max_age = ttl) when it does not exist yet. */
async function openBucket(nc: NatsConnection, bucket: string, ttlMs: number): Promise<KV> {
  const views = nc.jetstream().views;
  try {
    return await views.kv(bucket, { ttl: ttlMs, history: 1 });
  } catch (e) {
    // another process created it at the same moment, with other settings: use theirs
    return await views.kv(bucket, { bindOnly: true }).catch(() => Promise.reject(e));
  }
}
