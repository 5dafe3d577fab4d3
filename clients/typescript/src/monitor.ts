// Production traces onto the bus (spec 11): rollmesh.v1.MonitorTrace on "rollmesh.monitor.<app>",
// a JetStream publish into the MONITOR stream whose ack is awaited, deduplicated by trace id.
import { randomUUID } from "node:crypto";
import type { NatsConnection, NatsError } from "nats";
import { type DeepPartial, MonitorTrace } from "./gen/rollmesh/v1/bus.js";
import { MONITOR_STREAM, monitorSubject, requireStream } from "./streams.js";

/** A trace as callers write it: messages as {role, content}; empty ids and times are filled in. */
export type TraceInit = DeepPartial<MonitorTrace>;

export interface PublishOptions {
  /** Create the MONITOR stream when no stream stores the subject (default: fail with how to create it). */
  createStream?: boolean;
  /** How long to wait for JetStream's ack (default 10 s). */
  timeoutMs?: number;
}

export interface PublishResult {
  subject: string;
  traceId: string;
  /** The stream that stored the trace (normally MONITOR) and its sequence number there. */
  stream: string;
  seq: number;
  /** True when the stream already held this trace id (within its duplicate window): not stored again. */
  duplicate: boolean;
}

// Streams known to capture a subject, per connection: later publishes skip the lookup.
const known = new WeakMap<NatsConnection, Set<string>>();

/**
 * Publishes one trace and awaits JetStream's ack. Empty trace_id (a UUID) and created_at (now) are
 * filled in, app is set. Never a plain core publish: when no stream stores the subject it creates
 * MONITOR (`createStream: true`) or throws an Error that says how to create it.
 */
export async function publishMonitorTrace(
  nc: NatsConnection,
  app: string,
  trace: TraceInit,
  opts: PublishOptions = {},
): Promise<PublishResult> {
  const subject = monitorSubject(app);
  const full = MonitorTrace.fromPartial({ ...trace, app });
  full.traceId ||= randomUUID().replaceAll("-", "");
  full.createdAt ??= new Date();
  const data = MonitorTrace.encode(full).finish();
  const seen = known.get(nc) ?? new Set<string>();
  known.set(nc, seen);
  for (let attempt = 0; ; attempt++) {
    if (!seen.has(subject)) {
      await requireStream(nc, subject, MONITOR_STREAM, opts.createStream ?? false);
      seen.add(subject);
    }
    try {
      const ack = await nc
        .jetstream()
        .publish(subject, data, { msgID: full.traceId, timeout: opts.timeoutMs ?? 10_000 });
      return { subject, traceId: full.traceId, stream: ack.stream, seq: ack.seq, duplicate: ack.duplicate };
    } catch (e) {
      // "no responders": the stream went away since the lookup; look again (once)
      if ((e as NatsError).code !== "503" || attempt > 0) throw e;
      seen.delete(subject);
    }
  }
}
