// The trace publisher and the registry against a real nats-server (NATS_URL); skipped without one.
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, test } from "node:test";
import { connect, type NatsConnection } from "nats";
import { MonitorTrace, ServiceKind, ServiceRecord } from "../src/gen/rollmesh/v1/bus.js";
import { Message } from "../src/gen/rollmesh/v1/messages.js";
import { publishMonitorTrace, REGISTRY_BUCKET, serve } from "../src/index.js";
import { wordle } from "./fixtures.js";

const url = process.env.NATS_URL;

describe("NATS", { skip: url ? false : "NATS_URL is not set" }, () => {
  let nc: NatsConnection;
  before(async () => {
    nc = await connect({ servers: url });
  });
  after(async () => {
    await nc.close();
  });

  const trace = {
    messages: [Message.fromPartial({ role: "user", content: "hi" })],
    answer: "hello",
    labels: { env: "test" },
  };

  test("without a stream: a plain publish on rollmesh.monitor.<app>", async () => {
    const app = `ts-plain-${randomUUID().slice(0, 8)}`;
    const sub = nc.subscribe(`rollmesh.monitor.${app}`, { max: 1 });
    const result = await publishMonitorTrace(nc, app, { ...trace, info: { k: 1 } });
    assert.equal(result.jetstream, false);
    for await (const msg of sub) {
      const got = MonitorTrace.decode(msg.data);
      assert.deepEqual(
        [got.app, got.traceId, got.answer, got.info, got.labels],
        [app, result.traceId, "hello", { k: 1 }, { env: "test" }],
      );
      assert.equal(got.messages[0]?.content, "hi");
      assert.ok(got.createdAt instanceof Date);
      assert.equal(msg.headers?.get("Nats-Msg-Id"), result.traceId);
    }
  });

  test("with a stream: a JetStream publish, stored and deduplicated by trace id", async () => {
    const app = `ts-js-${randomUUID().slice(0, 8)}`;
    const name = `TS_MONITOR_${app.replaceAll("-", "_").toUpperCase()}`;
    const jsm = await nc.jetstreamManager();
    await jsm.streams.add({ name, subjects: [`rollmesh.monitor.${app}`] });
    try {
      const first = await publishMonitorTrace(nc, app, { ...trace, traceId: "t-1" });
      assert.deepEqual([first.jetstream, first.stream, first.seq], [true, name, 1]);
      const again = await publishMonitorTrace(nc, app, { ...trace, traceId: "t-1" });
      assert.equal(again.seq, 1, "the duplicate was not stored twice");
      const stored = await jsm.streams.getMessage(name, { seq: 1 });
      assert.equal(MonitorTrace.decode(stored.data).traceId, "t-1");
      assert.equal((await jsm.streams.info(name)).state.messages, 1);
    } finally {
      await jsm.streams.delete(name);
    }
  });

  test("an app name that is not a subject token is refused", async () => {
    await assert.rejects(publishMonitorTrace(nc, "a.b", trace), /invalid app/);
  });

  test("a server registers in the KV registry and deregisters on stop", async () => {
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
    } finally {
      await server.stop(0);
    }
    const gone = await kv.get(key);
    assert.ok(!gone || gone.operation !== "PUT", "the record is still there after stop");
  });
});
