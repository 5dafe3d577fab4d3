// Traces, scores and the registry against a real nats-server with JetStream (NATS_URL); skipped
// without one. Streams are MONITOR and SCORES themselves (created with the spec's config when
// missing), so the server must not hold other streams on rollmesh.monitor.> or rollmesh.scores.>.
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, test } from "node:test";
import { connect, type NatsConnection } from "nats";
import { MonitorScore, MonitorTrace, ServiceKind, ServiceRecord } from "../src/gen/rollmesh/v1/bus.js";
import {
  EnvClient,
  kindToken,
  MONITOR_STREAM,
  publishMonitorTrace,
  readScores,
  Registration,
  REGISTRY_BUCKET,
  registryKey,
  SCORES_STREAM,
  serve,
} from "../src/index.js";
import { requireStream } from "../src/streams.js";
import { wordle } from "./fixtures.js";

const url = process.env.NATS_URL;
const app = (what: string) => `ts-${what}-${randomUUID().slice(0, 8)}`;

describe("NATS", { skip: url ? false : "NATS_URL is not set" }, () => {
  let nc: NatsConnection;
  before(async () => {
    nc = await connect({ servers: url });
  });
  after(async () => {
    await nc.close();
  });

  const trace = {
    messages: [{ role: "user", content: "hi" }],
    answer: "hello",
    labels: { env: "test" },
  };

  test("a stream the bus needs: created on request with its config, else an error that says how", async () => {
    const id = randomUUID().slice(0, 8);
    const spec = { ...MONITOR_STREAM, name: `TS_TEST_${id}`, subjects: [`ts-test.${id}.>`] };
    await assert.rejects(requireStream(nc, `ts-test.${id}.a`, spec, false), (e: Error) => {
      assert.match(e.message, new RegExp(`no JetStream stream stores "ts-test\\.${id}\\.a"`));
      assert.match(e.message, new RegExp(`create the TS_TEST_${id} stream .*createStream: true`));
      return true;
    });
    const jsm = await nc.jetstreamManager();
    try {
      assert.equal(await requireStream(nc, `ts-test.${id}.a`, spec, true), spec.name);
      assert.equal(await requireStream(nc, `ts-test.${id}.b`, spec, true), spec.name, "found, not created twice");
      const config = (await jsm.streams.info(spec.name)).config;
      assert.deepEqual(
        [config.subjects, config.storage, config.retention, config.discard, config.max_age, config.duplicate_window],
        [spec.subjects, "file", "limits", "old", 7 * 24 * 3600 * 1e9, 600 * 1e9],
      );
    } finally {
      await jsm.streams.delete(spec.name);
    }
  });

  test("publish: a JetStream publish into MONITOR, acknowledged and deduplicated by trace id", async () => {
    const name = app("js");
    const traceId = `t-${randomUUID()}`;
    const first = await publishMonitorTrace(nc, name, { ...trace, traceId, info: { k: 1 } }, { createStream: true });
    assert.deepEqual([first.stream, first.duplicate, first.subject], ["MONITOR", false, `rollmesh.monitor.${name}`]);
    const again = await publishMonitorTrace(nc, name, { ...trace, traceId });
    assert.deepEqual([again.seq, again.duplicate], [first.seq, true], "the duplicate was not stored twice");
    const jsm = await nc.jetstreamManager();
    const stored = await jsm.streams.getMessage("MONITOR", { last_by_subj: `rollmesh.monitor.${name}` });
    const got = MonitorTrace.decode(stored.data);
    assert.deepEqual(
      [got.app, got.traceId, got.answer, got.info, got.labels, got.messages[0]?.content],
      [name, traceId, "hello", { k: 1 }, { env: "test" }, "hi"],
    );
    assert.ok(got.createdAt instanceof Date && Math.abs(got.createdAt.getTime() - Date.now()) < 60_000);
    assert.equal(stored.header.get("Nats-Msg-Id"), traceId);
    const config = (await jsm.streams.info("MONITOR")).config;
    assert.deepEqual(
      [config.subjects, config.storage, config.retention, config.discard, config.max_age, config.duplicate_window],
      [["rollmesh.monitor.>"], "file", "limits", "old", 7 * 24 * 3600 * 1e9, 600 * 1e9],
    );
  });

  test("publish fills in a trace id (32 hex digits) and the creation time", async () => {
    const result = await publishMonitorTrace(nc, app("id"), trace, { createStream: true });
    assert.match(result.traceId, /^[0-9a-f]{32}$/);
    assert.equal(result.duplicate, false);
  });

  test("an app name that is not a subject token is refused", async () => {
    for (const bad of ["a.b", "a b", "*", ">", "a/b", ""]) {
      await assert.rejects(publishMonitorTrace(nc, bad, trace), /invalid app/, bad);
      await assert.rejects(readScores(nc, bad), /invalid app/, bad);
    }
  });

  test("readScores: an ordered consumer on SCORES filtered to the app, deliver new or all", async () => {
    const name = app("scores");
    const other = app("other");
    const js = nc.jetstream();
    const score = (traceId: string, reward: number, a = name) =>
      MonitorScore.encode(
        MonitorScore.fromPartial({
          traceId,
          app: a,
          rubric: "rules",
          rewards: { correct: reward },
          reward,
          scoredAt: new Date(),
        }),
      ).finish();
    const fresh = await readScores(nc, name, { createStream: true });
    try {
      assert.equal(fresh.stream, "SCORES");
      await js.publish(`rollmesh.scores.${other}`, score("x", 1, other));
      await js.publish(`rollmesh.scores.${name}`, score("s1", 1));
      await js.publish(`rollmesh.scores.${name}`, score("s2", 0));
      const got = [await fresh.next(10_000), await fresh.next(10_000)];
      assert.deepEqual(
        got.map((s) => [s.traceId, s.app, s.reward, s.rewards]),
        [
          ["s1", name, 1, { correct: 1 }],
          ["s2", name, 0, { correct: 0 }],
        ],
      );
      await assert.rejects(fresh.next(200), /no score on rollmesh\.scores\./);
      await js.publish(`rollmesh.scores.${name}`, score("s3", 1));
      assert.equal((await fresh.next(10_000)).traceId, "s3", "a timed-out wait can be resumed");
    } finally {
      await fresh.close();
    }
    const late = await readScores(nc, name); // deliver "new": nothing from before
    const all = await readScores(nc, name, { deliver: "all" });
    try {
      const seen: string[] = [];
      for await (const s of all) {
        seen.push(s.traceId);
        if (seen.length === 3) break;
      }
      assert.deepEqual(seen, ["s1", "s2", "s3"]);
      await assert.rejects(late.next(300), /no score/);
      const config = (await (await nc.jetstreamManager()).streams.info("SCORES")).config;
      assert.deepEqual(
        [config.subjects, config.storage, config.max_age, config.duplicate_window],
        [SCORES_STREAM.subjects, "file", 7 * 24 * 3600 * 1e9, 120 * 1e9],
      );
    } finally {
      await Promise.all([late.close(), all.close()]);
    }
    await assert.rejects(readScores(nc, name, { deliver: "first" as "new" }), /deliver must be "new" or "all"/);
  });

  test("registry keys: <kind>.<name>.<instance_id>, kind in lower case without its prefix", () => {
    assert.deepEqual(
      [
        ServiceKind.SERVICE_KIND_ENVIRONMENT,
        ServiceKind.SERVICE_KIND_INFERENCE,
        ServiceKind.SERVICE_KIND_ORCHESTRATOR,
      ].map(kindToken),
      ["environment", "inference", "orchestrator"],
    );
    assert.equal(
      registryKey({ kind: ServiceKind.SERVICE_KIND_RUBRIC, name: "rules", instanceId: "abc123" }),
      "rubric.rules.abc123",
    );
    assert.throws(() => kindToken(ServiceKind.SERVICE_KIND_UNSPECIFIED), /needs a kind/);
    assert.throws(
      () => registryKey({ kind: ServiceKind.SERVICE_KIND_RUBRIC, name: "a.b", instanceId: "x" }),
      /invalid name/,
    );
  });

  test("Registration puts a ServiceRecord, heartbeats it at TTL/3 and deletes it on close", async () => {
    const bucket = `ts-test-${randomUUID().slice(0, 8)}`; // a bucket of its own, with a short TTL
    const instanceId = randomUUID().replaceAll("-", "").slice(0, 12);
    const record = {
      kind: ServiceKind.SERVICE_KIND_INFERENCE,
      name: "tiny",
      instanceId,
      address: "10.0.0.1:50061",
      capacity: 8,
    };
    const reg = await Registration.register(nc, record, { bucket, ttlS: 1.5 });
    const kv = await nc.jetstream().views.kv(bucket, { bindOnly: true });
    try {
      assert.equal(reg.key, `inference.tiny.${instanceId}`);
      assert.deepEqual([reg.ttlMs, (await kv.status()).ttl], [1500, 1500]);
      const first = ServiceRecord.decode((await kv.get(reg.key))!.value);
      assert.deepEqual(
        [first.kind, first.name, first.address, first.capacity, first.instanceId, first.protocolVersion],
        [ServiceKind.SERVICE_KIND_INFERENCE, "tiny", "10.0.0.1:50061", 8, instanceId, "v1"],
      );
      assert.ok(first.startedAt instanceof Date && first.heartbeatAt instanceof Date);
      await new Promise((r) => setTimeout(r, 2500)); // past the TTL: only heartbeats keep it
      const later = ServiceRecord.decode((await kv.get(reg.key))!.value);
      assert.ok(later.heartbeatAt!.getTime() - first.heartbeatAt!.getTime() >= 1000, "no heartbeat");
      assert.deepEqual(later.startedAt, first.startedAt);
      // a second registration keeps the bucket's TTL rather than its own
      const other = await Registration.register(nc, { ...record, instanceId: "other" }, { bucket, ttlS: 60 });
      assert.equal(other.ttlMs, 1500);
      await other.close();
    } finally {
      await reg.close();
    }
    const gone = await kv.get(reg.key);
    assert.ok(!gone || gone.operation !== "PUT", "the record is still there after close");
    await kv.destroy();
  });

  test("a server registers each environment (one instance id) and deregisters on stop", async () => {
    const server = await serve([wordle()], { natsUrl: url, advertiseHost: "env.example" });
    const kv = await nc.jetstream().views.kv(REGISTRY_BUCKET);
    const key = `environment.wordle.${server.service.instanceId}`;
    try {
      const entry = await kv.get(key);
      assert.ok(entry, `no ${key} in the registry`);
      const record = ServiceRecord.decode(entry.value);
      assert.equal(record.kind, ServiceKind.SERVICE_KIND_ENVIRONMENT);
      assert.equal(record.address, `env.example:${server.port}`);
      assert.equal(record.capacity, 1024);
      assert.equal(record.protocolVersion, "v1");
      const c = new EnvClient(`127.0.0.1:${server.port}`);
      assert.equal((await c.describe()).server.instanceId, record.instanceId);
      c.close();
    } finally {
      await server.stop(0);
    }
    const gone = await kv.get(key);
    assert.ok(!gone || gone.operation !== "PUT", "the record is still there after stop");
  });
});
