// The clients' own behavior: deadlines on every call, cancellation, errors as RollmeshError, the
// package version.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { Metadata, status } from "@grpc/grpc-js";
import { statusDetails } from "../src/errors.js";
import {
  EnvClient,
  errorInfo,
  InferenceClient,
  RollmeshError,
  RubricClient,
  serve,
  type EnvironmentServer,
  VERSION,
} from "../src/index.js";
import { toRollmeshError } from "../src/client/errors.js";
import { echo, wordle } from "./fixtures.js";
import { failure, rejection } from "./helpers.js";

test("VERSION is package.json's, and 1.x speaks protocol v1", () => {
  const pkg = JSON.parse(readFileSync(path.resolve(__dirname, "../../package.json"), "utf8")) as { version: string };
  assert.equal(VERSION, pkg.version);
  assert.match(VERSION, /^1\./);
});

test("RollmeshError: code, reason and metadata from the grpc-status-details-bin trailer", () => {
  const metadata = new Metadata();
  metadata.set("grpc-status-details-bin", statusDetails(status.NOT_FOUND, "no task", "UNKNOWN_TASK", { k: "v" }));
  const raw = Object.assign(new Error("5 NOT_FOUND: no task"), {
    code: status.NOT_FOUND,
    details: "no task",
    metadata,
  });
  assert.deepEqual(errorInfo(raw), { reason: "UNKNOWN_TASK", domain: "rollmesh.dev", metadata: { k: "v" } });
  const e = toRollmeshError(raw) as RollmeshError;
  assert.ok(e instanceof RollmeshError);
  assert.deepEqual(
    [e.code, e.codeName, e.reason, e.metadata, e.details],
    [5, "NOT_FOUND", "UNKNOWN_TASK", { k: "v" }, "no task"],
  );
  assert.equal(e.message, "NOT_FOUND UNKNOWN_TASK: no task");
  assert.equal(e.cause, raw);
  assert.deepEqual(errorInfo(e)?.reason, "UNKNOWN_TASK");
});

test("RollmeshError: no details, undecodable details, another domain, a reason newer than this package", () => {
  const make = (value?: Buffer) => {
    const metadata = new Metadata();
    if (value) metadata.set("grpc-status-details-bin", value);
    return toRollmeshError({ code: status.UNAVAILABLE, details: "down", metadata }) as RollmeshError;
  };
  assert.deepEqual([make().reason, make().codeName], ["", "UNAVAILABLE"]);
  assert.equal(make(Buffer.from([0xff, 0xff, 0xff])).reason, "");
  const other = Buffer.from(statusDetails(status.UNAVAILABLE, "down", "X"));
  assert.equal(errorInfo(make(other))?.reason, "X");
  const newer = make(statusDetails(status.UNAVAILABLE, "down", "SOME_FUTURE_REASON"));
  assert.deepEqual(
    [newer.code, newer.reason],
    [status.UNAVAILABLE, "SOME_FUTURE_REASON"],
    "kept as written; the code still says what to do",
  );
  const plain = new Error("not grpc");
  assert.equal(toRollmeshError(plain), plain);
});

describe("deadlines and cancellation", () => {
  let server: EnvironmentServer;
  before(async () => {
    server = await serve([wordle(), echo()]);
  });
  after(async () => {
    await server.stop(0);
  });

  test("every unary call has a deadline: the client default, or the call's timeoutS", async () => {
    const fast = new EnvClient(server.address, { timeoutS: 0.2 });
    const slow = { task: { taskId: "e0" }, messages: [{ role: "assistant", content: "sleep 1500" }] };
    try {
      const e = await rejection(fast.score("echo", slow));
      assert.deepEqual([e.codeName, e.reason], ["DEADLINE_EXCEEDED", ""], "a client deadline carries no details");
      assert.deepEqual(await failure(fast.score("echo", slow, { timeoutS: 5 })), ["OK", ""]);
    } finally {
      fast.close();
    }
  });

  test("an AbortSignal cancels a call", async () => {
    const c = new EnvClient(server.address);
    try {
      const abort = new AbortController();
      const call = c.score(
        "echo",
        { task: { taskId: "e0" }, messages: [{ role: "assistant", content: "sleep 1500" }] },
        { signal: abort.signal },
      );
      setTimeout(() => abort.abort(), 100);
      assert.deepEqual(await failure(call), ["CANCELLED", ""]);
      const stop = new AbortController();
      const ep = await c.episode("echo", { taskId: "e0", signal: stop.signal });
      setTimeout(() => stop.abort(), 100);
      assert.deepEqual(await failure(ep.act("sleep 1500")), ["CANCELLED", ""]);
      for (let i = 0; i < 50 && (await c.describe()).activeEpisodes; i++) await new Promise((r) => setTimeout(r, 20));
      assert.equal((await c.describe()).activeEpisodes, 0);
    } finally {
      c.close();
    }
  });

  test("an episode step waits at most stepTimeoutS; the stream is cut after episodeTimeoutS", async () => {
    const c = new EnvClient(server.address, { stepTimeoutS: 0.3 });
    try {
      const ep = await c.episode("echo", { taskId: "e0" });
      const e = await rejection(ep.act("sleep 1000"));
      assert.equal(e.codeName, "DEADLINE_EXCEEDED");
      assert.match(e.message, /no step from the environment server within 0.3 s/);
      ep.cancel();
      const short = await c.episode("echo", { taskId: "e0", timeoutS: 0.5, stepTimeoutS: 5 });
      assert.deepEqual(await failure(short.act("sleep 1000")), ["DEADLINE_EXCEEDED", ""]);
    } finally {
      c.close();
    }
  });

  test("close before the final step ends the episode early (OK) and frees it", async () => {
    const c = new EnvClient(server.address);
    try {
      const ep = await c.episode("wordle", { taskId: "w0001" });
      await ep.act("crane");
      await ep.close();
      assert.deepEqual(await failure(ep.act("slate")), ["UNAVAILABLE", ""]);
      assert.equal((await c.describe()).activeEpisodes, 0);
    } finally {
      c.close();
    }
  });

  test("an unreachable server is UNAVAILABLE for every client, within the deadline", async () => {
    const address = "127.0.0.1:1";
    const t0 = Date.now();
    const results = await Promise.all([
      failure(new EnvClient(address, { timeoutS: 2 }).describe()),
      failure(new InferenceClient(address, { timeoutS: 2 }).modelInfo()),
      failure(new RubricClient(address, { timeoutS: 2 }).listRubrics()),
    ]);
    for (const [code] of results) assert.ok(code === "UNAVAILABLE" || code === "DEADLINE_EXCEEDED", code);
    assert.ok(Date.now() - t0 < 5000);
  });

  test("option checks: timeouts must be > 0; generate needs messages or promptIds", async () => {
    assert.throws(() => new EnvClient(server.address, { timeoutS: 0 }), /timeoutS must be a number > 0/);
    const llm = new InferenceClient(server.address);
    await assert.rejects(llm.generate({} as never), /generate needs messages or promptIds/);
    await assert.rejects(
      llm.generate({ messages: [{ role: "user", content: "hi" }], promptIds: [1] } as never),
      /messages or promptIds, not both/,
    );
    llm.close();
  });
});
