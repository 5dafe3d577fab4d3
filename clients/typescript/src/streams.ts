// The JetStream streams of the bus that this package writes to or reads from (spec 11), and how
// to find the one that captures a subject: created on request with exactly the spec's config,
// otherwise a clear error (a core publish that no stream stores would be lost).
import {
  DiscardPolicy,
  ErrorCode,
  type JetStreamManager,
  type NatsConnection,
  type NatsError,
  nanos,
  RetentionPolicy,
  StorageType,
  type StreamConfig,
} from "nats";

const DAY_MS = 24 * 3600 * 1000;

function limitsStream(name: string, subject: string, duplicateWindowMs: number): Partial<StreamConfig> {
  return {
    name,
    subjects: [subject],
    storage: StorageType.File,
    retention: RetentionPolicy.Limits,
    discard: DiscardPolicy.Old,
    max_age: nanos(7 * DAY_MS),
    duplicate_window: nanos(duplicateWindowMs),
  };
}

export const MONITOR_STREAM = limitsStream("MONITOR", "rollmesh.monitor.>", 10 * 60 * 1000);
export const SCORES_STREAM = limitsStream("SCORES", "rollmesh.scores.>", 2 * 60 * 1000);

const APP_TOKEN = /^[A-Za-z0-9_\-=]+$/;

/** `app` as a subject token, or an Error that says what is allowed. */
export function appToken(app: string): string {
  if (!APP_TOKEN.test(app)) {
    throw new Error(
      `invalid app "${app}" for a NATS subject: use letters, digits, '-', '_' or '=' (no '.', spaces or wildcards)`,
    );
  }
  return app;
}

export const monitorSubject = (app: string): string => `rollmesh.monitor.${appToken(app)}`;
export const scoresSubject = (app: string): string => `rollmesh.scores.${appToken(app)}`;

/** The JetStream manager, or a clear error when the server has JetStream off. */
export async function jetStreamManager(nc: NatsConnection): Promise<JetStreamManager> {
  try {
    return await nc.jetstreamManager();
  } catch (e) {
    if ((e as NatsError).code === ErrorCode.JetStreamNotEnabled || (e as NatsError).code === ErrorCode.NoResponders) {
      throw new Error(
        `JetStream is not enabled on the NATS server ${nc.getServer()}: run nats-server with -js (or \`rollmesh nats\`)`,
      );
    }
    throw e;
  }
}

/** The name of the stream that captures `subject`, if any. */
export async function streamCapturing(jsm: JetStreamManager, subject: string): Promise<string | undefined> {
  try {
    return await jsm.streams.find(subject);
  } catch (e) {
    if ((e as Error).message === "no stream matches subject") return undefined;
    throw e;
  }
}

/**
 * The stream that stores `subject`. When none does: `create` adds `spec` (idempotent when another
 * process adds the same config at the same moment); otherwise an Error names the stream and the
 * ways to create it.
 */
export async function requireStream(
  nc: NatsConnection,
  subject: string,
  spec: Partial<StreamConfig>,
  create: boolean,
): Promise<string> {
  const jsm = await jetStreamManager(nc);
  const found = await streamCapturing(jsm, subject);
  if (found) return found;
  if (!create) {
    const days = Number(spec.max_age) / 1e9 / 86400;
    const window = Number(spec.duplicate_window) / 1e9;
    throw new Error(
      `no JetStream stream stores "${subject}" on ${nc.getServer()}, so nothing would be kept: create the ` +
        `${spec.name} stream (subjects ${JSON.stringify(spec.subjects)}, file storage, limits retention, discard ` +
        `old, max age ${days} days, duplicate window ${window} s) -- pass { createStream: true }, start the rubric ` +
        `service with --nats, or run \`nats stream add ${spec.name} --subjects '${spec.subjects?.[0]}' --storage file ` +
        `--retention limits --discard old --max-age ${days}d --dupe-window ${window}s --defaults\``,
    );
  }
  try {
    return (await jsm.streams.add(spec)).config.name;
  } catch (e) {
    const now = await streamCapturing(jsm, subject); // created concurrently, perhaps with other settings
    if (now) return now;
    throw new Error(`cannot create the ${spec.name} stream on ${nc.getServer()}: ${(e as Error).message}`);
  }
}
