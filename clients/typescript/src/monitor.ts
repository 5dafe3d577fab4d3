// Production traces onto the bus: rollmesh.v1.MonitorTrace on "rollmesh.monitor.<app>".
import { randomUUID } from "node:crypto";
import { ErrorCode, headers, type NatsConnection, type NatsError } from "nats";
import { MonitorTrace } from "./gen/rollmesh/v1/bus.js";

export interface PublishResult {
  subject: string;
  traceId: string;
  /** True when a JetStream stream (e.g. MONITOR) stored the trace and acknowledged it. */
  jetstream: boolean;
  stream?: string;
  seq?: number;
}

/**
 * Publishes one trace. When a JetStream stream captures the subject (e.g. MONITOR), the publish is a
 * JetStream publish: stored, acknowledged, deduplicated by Nats-Msg-Id = trace_id. When none does
 * (or JetStream is off), it is a plain core-NATS publish, flushed: only live subscribers see it.
 * Which applies is looked up on the server (STREAM.NAMES by subject) and remembered for 10 s.
 * Empty trace_id, app and created_at are filled in.
 */
export async function publishMonitorTrace(
  nc: NatsConnection,
  app: string,
  trace: Partial<MonitorTrace>,
): Promise<PublishResult> {
  if (!/^[A-Za-z0-9_\-=/]+$/.test(app)) {
    throw new Error(`invalid app "${app}": use letters, digits, '-', '_', '=' or '/' (it is a subject token)`);
  }
  const full = MonitorTrace.fromPartial({ ...trace, app });
  full.traceId ||= randomUUID();
  full.createdAt ??= new Date();
  const subject = `rollmesh.monitor.${app}`;
  const data = MonitorTrace.encode(full).finish();
  if (await streamFor(nc, subject)) {
    const ack = await nc.jetstream().publish(subject, data, { msgID: full.traceId });
    return { subject, traceId: full.traceId, jetstream: true, stream: ack.stream, seq: ack.seq };
  }
  const h = headers();
  h.set("Nats-Msg-Id", full.traceId);
  nc.publish(subject, data, { headers: h });
  await nc.flush();
  return { subject, traceId: full.traceId, jetstream: false };
}

const STREAM_CACHE_MS = 10_000;
const streamCache = new WeakMap<NatsConnection, Map<string, { stream: string | undefined; at: number }>>();

/** The stream that captures `subject`, if any. (A JetStream publish is a request on the subject
 * itself, so trying one and falling back would deliver the trace twice to core subscribers.) */
async function streamFor(nc: NatsConnection, subject: string): Promise<string | undefined> {
  const cache = streamCache.get(nc) ?? new Map();
  streamCache.set(nc, cache);
  const hit = cache.get(subject);
  if (hit && Date.now() - hit.at < STREAM_CACHE_MS) return hit.stream;
  let stream: string | undefined;
  try {
    stream = await (await nc.jetstreamManager()).streams.find(subject);
  } catch (e) {
    const noStream = (e as Error).message === "no stream matches subject";
    if (!noStream && (e as NatsError).code !== ErrorCode.JetStreamNotEnabled) throw e;
  }
  cache.set(subject, { stream, at: Date.now() });
  return stream;
}
