// Every error status of the server helper carries google.rpc.Status details with an ErrorInfo
// (domain rollmesh.dev, reason an ErrorReason name): each rule of spec 2-7, one by one.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { status } from "@grpc/grpc-js";
import type { EpisodeRequest } from "../src/gen/rollmesh/v1/environment.js";
import { Message } from "../src/gen/rollmesh/v1/messages.js";
import { defineEnvironment, EnvClient, errorInfo, RollmeshError, serve, type EnvironmentServer } from "../src/index.js";
import { echo, fragile, wordle } from "./fixtures.js";
import { failure, rawEpisode, rawUnary, rejection, sleep, statusOf } from "./helpers.js";

describe("error statuses", () => {
  let server: EnvironmentServer;
  let c: EnvClient;

  before(async () => {
    server = await serve([wordle(), fragile(), echo()], { idleTimeoutS: 0.4, maxMessageBytes: 4096 });
    c = new EnvClient(server.address, { timeoutS: 10 });
  });
  after(async () => {
    c.close();
    await server.stop(0);
  });

  const start = (env: string, opts: Parameters<EnvClient["episode"]>[1] = {}) => failure(c.episode(env, opts));

  test("start: NO_ENVIRONMENT and UNKNOWN_ENVIRONMENT list the environments", async () => {
    const none = await rejection(c.episode("", { taskId: "w0001" }));
    assert.deepEqual(
      [none.codeName, none.reason, none.metadata],
      ["INVALID_ARGUMENT", "NO_ENVIRONMENT", { environments: "echo,fragile,wordle" }],
    );
    const unknown = await rejection(c.episode("nope", { taskId: "w0001" }));
    assert.deepEqual(
      [unknown.code, unknown.reason, unknown.metadata],
      [status.NOT_FOUND, "UNKNOWN_ENVIRONMENT", { environments: "echo,fragile,wordle" }],
    );
    assert.match(unknown.details, /no environment "nope" on this server/);
  });

  test("start: UNKNOWN_SPLIT, UNKNOWN_TASK, NO_TASK, INVALID_TASK", async () => {
    const split = await rejection(c.episode("wordle", { taskId: "w0001", split: "nope" }));
    assert.deepEqual(
      [split.codeName, split.reason, split.metadata],
      ["NOT_FOUND", "UNKNOWN_SPLIT", { splits: "train,test" }],
    );
    assert.deepEqual(await start("wordle", { taskId: "nope" }), ["NOT_FOUND", "UNKNOWN_TASK"]);
    assert.deepEqual(await start("wordle", { taskId: "w0001", split: "test" }), ["NOT_FOUND", "UNKNOWN_TASK"]);
    assert.deepEqual(await start("wordle"), ["INVALID_ARGUMENT", "NO_TASK"]);
    assert.deepEqual(await start("wordle", { taskId: "w0001", task: { answer: "crane" } }), [
      "INVALID_ARGUMENT",
      "INVALID_TASK",
    ]);
  });

  test("a long client-supplied name is quoted up to 120 characters", async () => {
    const e = await rejection(c.episode("wordle", { taskId: "x".repeat(3000) }));
    assert.equal(e.reason, "UNKNOWN_TASK");
    assert.ok(e.details.length < 400, e.details);
    assert.match(e.details, /\(3000 chars\)/);
  });

  test("stream: NOT_STARTED, ALREADY_STARTED, EMPTY_ACTION, EPISODE_DONE", async () => {
    assert.deepEqual(await outcome(c, action("hi")), [status.INVALID_ARGUMENT, "NOT_STARTED"]);
    assert.deepEqual(await outcome(c, startOf("wordle", "w0001"), startOf("wordle", "w0001")), [
      status.INVALID_ARGUMENT,
      "ALREADY_STARTED",
    ]);
    assert.deepEqual(await outcome(c, startOf("wordle", "w0001"), action(undefined)), [
      status.INVALID_ARGUMENT,
      "EMPTY_ACTION",
    ]);
    const ep = await c.episode("wordle", { taskId: "w0001" });
    await ep.act("slate");
    assert.deepEqual(await failure(ep.act("slate")), ["FAILED_PRECONDITION", "EPISODE_DONE"]);
  });

  test("an action that is not an assistant message: INVALID_FIELD naming the field", async () => {
    const user = Message.fromPartial({ role: "user", content: "hi" });
    assert.deepEqual(await outcome(c, startOf("echo", "e0"), action(user)), [
      status.INVALID_ARGUMENT,
      "INVALID_FIELD",
      { field: "action.message.role" },
    ]);
  });

  test("IDLE_TIMEOUT before start, between actions and after done", async () => {
    const quiet = await rawEpisodeSilent(server.address);
    assert.deepEqual(quiet, [status.DEADLINE_EXCEEDED, "IDLE_TIMEOUT", { idle_timeout_s: "0.4" }]);
    const between = await c.episode("echo", { taskId: "e0" });
    await sleep(600);
    const e = await rejection(between.act("late"));
    assert.deepEqual(
      [e.codeName, e.reason, e.metadata],
      ["DEADLINE_EXCEEDED", "IDLE_TIMEOUT", { idle_timeout_s: "0.4" }],
    );
    const done = await c.episode("wordle", { taskId: "w0001" });
    await done.act("slate");
    await sleep(600);
    assert.deepEqual(await failure(done.close()), ["DEADLINE_EXCEEDED", "IDLE_TIMEOUT"]);
  });

  test("ENVIRONMENT_FAILED when the environment's code throws", async () => {
    const ep = await c.episode("fragile", { taskId: "f0" });
    const e = await rejection(ep.act("boom"));
    assert.deepEqual([e.codeName, e.reason], ["INTERNAL", "ENVIRONMENT_FAILED"]);
    assert.match(e.details, /environment "fragile" raised Error: kaboom/);
    assert.equal((await c.describe()).activeEpisodes, 0);
  });

  test("MESSAGE_TOO_LARGE when the server's own reply is over the limit", async () => {
    const ep = await c.episode("echo", { taskId: "e0" });
    const e = await rejection(ep.act("big 5000"));
    assert.deepEqual(
      [e.codeName, e.reason, e.metadata],
      ["RESOURCE_EXHAUSTED", "MESSAGE_TOO_LARGE", { limit_bytes: "4096" }],
    );
  });

  test("MESSAGE_TOO_LARGE when a ListTasks batch is over the limit", async () => {
    const big = defineEnvironment({
      name: "big",
      tasks: Array.from({ length: 3 }, (_, i) => ({ taskId: `b${i}`, question: "x".repeat(2000) })),
    });
    const small = await serve([big], { maxMessageBytes: 4096 });
    const s = new EnvClient(small.address);
    try {
      assert.equal((await s.tasksPage("big", { pageSize: 1 })).tasks.length, 1);
      const e = await rejection(s.tasksPage("big"));
      assert.deepEqual(
        [e.codeName, e.reason, e.metadata],
        ["RESOURCE_EXHAUSTED", "MESSAGE_TOO_LARGE", { limit_bytes: "4096" }],
      );
    } finally {
      s.close();
      await small.stop(0);
    }
  });

  test("an oversized request is refused by the transport (no details)", async () => {
    const ep = await c.episode("echo", { taskId: "e0" });
    const e = await rejection(ep.act("x".repeat(8000)));
    assert.deepEqual([e.codeName, e.reason], ["RESOURCE_EXHAUSTED", ""]);
  });

  test("MALFORMED_REQUEST for bytes that are not the request message, on every method", async () => {
    // garbage, and a field whose length runs past the end (the generated decoders alone accept it)
    for (const junk of [Buffer.from([0xff, 0xff, 0xff, 0xff]), Buffer.from([0x0a, 0x7f, 0x00])]) {
      for (const method of ["Describe", "Score", "RunEpisode"]) {
        const got = statusOf(await rawUnary(server.address, `/rollmesh.v1.EnvironmentService/${method}`, junk));
        assert.deepEqual(got, [status.INVALID_ARGUMENT, "MALFORMED_REQUEST", "rollmesh.dev"], method);
      }
      assert.deepEqual(statusOf(await rawEpisode(server.address, junk)), [
        status.INVALID_ARGUMENT,
        "MALFORMED_REQUEST",
        "rollmesh.dev",
      ]);
      await rawList(server.address, junk);
    }
    assert.equal((await c.describe()).environments.length, 3, "the server keeps serving");
  });

  test("ListTasks: INVALID_PAGE_SIZE, INVALID_PAGE_TOKEN (only the same env and split's tokens), NO_ENVIRONMENT, UNKNOWN_SPLIT", async () => {
    assert.deepEqual(await failure(c.tasksPage("wordle", { pageSize: -1 })), ["INVALID_ARGUMENT", "INVALID_PAGE_SIZE"]);
    const token = (await c.tasksPage("wordle", { pageSize: 2 })).nextPageToken;
    assert.deepEqual(await failure(c.tasksPage("wordle", { pageToken: token })), ["OK", ""]);
    for (const bad of ["2", "abc", token + "x", Buffer.from('["wordle","train",99]').toString("base64url")]) {
      assert.deepEqual(
        await failure(c.tasksPage("wordle", { pageToken: bad })),
        ["INVALID_ARGUMENT", "INVALID_PAGE_TOKEN"],
        bad,
      );
    }
    assert.deepEqual(await failure(c.tasksPage("wordle", { split: "test", pageToken: token })), [
      "INVALID_ARGUMENT",
      "INVALID_PAGE_TOKEN",
    ]);
    assert.deepEqual(await failure(c.tasksPage("echo", { pageToken: token })), [
      "INVALID_ARGUMENT",
      "INVALID_PAGE_TOKEN",
    ]);
    assert.deepEqual(await failure(c.tasksPage("")), ["INVALID_ARGUMENT", "NO_ENVIRONMENT"]);
    assert.deepEqual(await failure(c.tasksPage("wordle", { split: "nope" })), ["NOT_FOUND", "UNKNOWN_SPLIT"]);
  });

  test("Score: NOT_SUPPORTED, NO_TASK, UNKNOWN_TASK, ENVIRONMENT_FAILED", async () => {
    assert.deepEqual(await failure(c.score("fragile", { task: { taskId: "f0" }, messages: [] })), [
      "UNIMPLEMENTED",
      "NOT_SUPPORTED",
    ]);
    assert.deepEqual(await failure(c.score("wordle", { task: {}, messages: [] })), ["INVALID_ARGUMENT", "NO_TASK"]);
    assert.deepEqual(await failure(c.score("wordle", { task: { taskId: "nope" }, messages: [] })), [
      "NOT_FOUND",
      "UNKNOWN_TASK",
    ]);
    const broke = await rejection(
      c.score("echo", { task: { taskId: "e0" }, messages: [{ role: "assistant", content: "score fails" }] }),
    );
    assert.deepEqual([broke.codeName, broke.reason], ["INTERNAL", "ENVIRONMENT_FAILED"]);
    assert.match(broke.details, /environment "echo" failed in score\(\): Error: score broke/);
    assert.deepEqual(await failure(c.score("nope", { task: { taskId: "w0001" }, messages: [] })), [
      "NOT_FOUND",
      "UNKNOWN_ENVIRONMENT",
    ]);
  });

  test("DRAINING: new episodes are refused once the server drains", async () => {
    const draining = await serve([wordle()]);
    const d = new EnvClient(draining.address);
    try {
      draining.service.draining = true;
      assert.deepEqual(await failure(d.episode("wordle", { taskId: "w0001" })), ["UNAVAILABLE", "DRAINING"]);
    } finally {
      d.close();
      await draining.stop(0);
    }
  });
});

/** An Episode stream that sends nothing: how the server ends it. */
const rawEpisodeSilent = (address: string) => {
  const c = new EnvClient(address);
  return outcome(c).finally(() => c.close());
};

const startOf = (env: string, taskId: string): EpisodeRequest => ({
  kind: {
    $case: "start",
    value: { env, taskId, split: "", task: undefined, seed: 0, episodeId: "", options: undefined },
  },
});

const action = (message: Message | string | undefined): EpisodeRequest => ({
  kind: {
    $case: "action",
    value: {
      message: typeof message === "string" ? Message.fromPartial({ role: "assistant", content: message }) : message,
    },
  },
});

/** Writes `requests` on a new Episode stream; [code, reason, metadata?] of the status it ends with. */
function outcome(c: EnvClient, ...requests: EpisodeRequest[]): Promise<unknown[]> {
  const call = c.stub.episode({ deadline: Date.now() + 10_000 });
  return new Promise((ok) => {
    call.on("data", () => undefined);
    call.on("error", (e) => {
      const info = errorInfo(e);
      const md = info && Object.keys(info.metadata).length ? [info.metadata] : [];
      ok([(e as RollmeshError).code, info?.reason ?? "", ...md]);
    });
    call.on("end", () => ok(["OK"]));
    for (const r of requests) call.write(r);
  });
}

/** ListTasks with junk bytes: the server answers MALFORMED_REQUEST (a server-streaming method). */
async function rawList(address: string, junk: Buffer): Promise<void> {
  const { credentials, makeGenericClientConstructor, Metadata } = await import("@grpc/grpc-js");
  const identity = (b: Buffer) => b;
  const Raw = makeGenericClientConstructor(
    {
      call: {
        path: "/rollmesh.v1.EnvironmentService/ListTasks",
        requestStream: false,
        responseStream: true,
        requestSerialize: identity,
        requestDeserialize: identity,
        responseSerialize: identity,
        responseDeserialize: identity,
      },
    },
    "Raw",
  );
  const client = new Raw(address, credentials.createInsecure()) as unknown as {
    call: (req: Buffer, md: InstanceType<typeof Metadata>) => NodeJS.ReadableStream;
    close: () => void;
  };
  const got = await new Promise<unknown>((ok) => {
    const call = client.call(junk, new Metadata());
    call.on("data", () => undefined);
    call.on("error", ok);
    call.on("end", () => ok("ok"));
  });
  client.close();
  const info = errorInfo(got);
  assert.deepEqual([(got as { code?: number }).code, info?.reason], [status.INVALID_ARGUMENT, "MALFORMED_REQUEST"]);
}
