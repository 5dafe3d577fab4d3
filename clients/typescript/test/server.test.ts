// The server helper over a real loopback gRPC server, driven by this package's EnvClient.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { credentials, makeGenericClientConstructor, type Client, type ServiceError } from "@grpc/grpc-js";
import { service as healthService } from "grpc-health-check";
import { EnvClient, serve, type EnvironmentServer, VERSION } from "../src/index.js";
import { calculator, echo, fragile, wordle } from "./fixtures.js";
import { failure, sleep } from "./helpers.js";

describe("one server with four environments", () => {
  let server: EnvironmentServer;
  let c: EnvClient;
  const active = async () => (await c.describe()).activeEpisodes;

  before(async () => {
    server = await serve([wordle(), calculator(), fragile(), echo()], { maxConcurrentEpisodes: 50, idleTimeoutS: 5 });
    c = new EnvClient(server.address, { timeoutS: 10 });
  });
  after(async () => {
    c.close();
    await server.stop(0);
  });

  test("Describe: server, environments (default split, has_score, has_run_episode), limits, load", async () => {
    const d = await c.describe();
    assert.deepEqual(
      [d.server.protocolVersion, d.server.language, d.server.sdkVersion],
      ["v1", "typescript", `rollmesh-typescript ${VERSION}`],
    );
    assert.match(d.server.instanceId, /^[0-9a-f]{12}$/);
    assert.deepEqual(
      d.environments.map((e) => e.name),
      ["wordle", "calculator", "fragile", "echo"],
    );
    const [w, calc, frag] = d.environments;
    assert.deepEqual(
      [w?.kind, w?.maxTurns, w?.splits, w?.defaultSplit, w?.hasScore, w?.hasRunEpisode, w?.rewardNames],
      ["multi_turn", 6, { train: 5, test: 1 }, "train", true, false, ["solved"]],
    );
    assert.deepEqual(w?.defaultSampling, { maxTokens: 16 });
    assert.equal(calc?.kind, "tool");
    assert.equal(calc?.tools[0]?.name, "add");
    assert.deepEqual(JSON.parse(calc?.tools[0]?.parametersJsonSchema ?? "{}").required, ["a", "b"]);
    assert.equal(frag?.hasScore, false);
    assert.match(w?.digest ?? "", /^[0-9a-f]{64}$/);
    assert.deepEqual(d.limits, {
      maxConcurrentEpisodes: 50,
      maxMessageBytes: 16 * 1024 * 1024,
      episodeIdleTimeoutS: 5,
    });
    assert.equal(d.activeEpisodes, 0);
  });

  test("ListTasks: batches of 64, total on every message, opaque page tokens", async () => {
    const stub = c.stub;
    const messages = await new Promise<{ tasks: unknown[]; nextPageToken: string; total: number }[]>((ok, ko) => {
      const got: { tasks: unknown[]; nextPageToken: string; total: number }[] = [];
      const call = stub.listTasks({ env: "calculator", split: "", pageSize: 0, pageToken: "" });
      call.on("data", (r) => got.push(r));
      call.on("error", ko);
      call.on("end", () => ok(got));
    });
    assert.deepEqual(
      messages.map((r) => [r.tasks.length, r.total, r.nextPageToken]),
      [
        [64, 130, ""],
        [64, 130, ""],
        [2, 130, ""],
      ],
    );
    const first = await c.tasksPage("calculator", { pageSize: 10 });
    assert.deepEqual([first.tasks.length, first.total, first.tasks[0]?.taskId], [10, 130, "c0"]);
    assert.notEqual(first.nextPageToken, "");
    assert.doesNotMatch(first.nextPageToken, /^\d+$/, "the token is opaque, not the offset");
    const second = await c.tasksPage("calculator", { pageSize: 10, pageToken: first.nextPageToken });
    assert.deepEqual(
      second.tasks.map((t) => t.taskId),
      Array.from({ length: 10 }, (_, i) => `c${i + 10}`),
    );
    const rest = await c.tasksPage("calculator", { pageToken: second.nextPageToken });
    assert.deepEqual([rest.tasks.length, rest.nextPageToken, rest.total], [110, "", 130]);
    const exact = await c.tasksPage("calculator", { pageSize: 130 });
    assert.deepEqual([exact.tasks.length, exact.nextPageToken], [130, ""], "no token when nothing remains");
    // a page at the end: one message, no tasks, the total
    const tail = await c.tasksPage("calculator", { pageSize: 128 });
    const last = await c.tasksPage("calculator", { pageSize: 2, pageToken: tail.nextPageToken });
    assert.deepEqual([last.tasks.length, last.nextPageToken], [2, ""]);
    assert.ok(last.tasks.every((t) => t.env === "calculator" && t.split === "train"));
    assert.equal((await c.tasksPage("wordle", { split: "test" })).tasks[0]?.answer, "crane");
  });

  test("ListTasks: an empty page is one message with the total", async () => {
    const whole = await c.tasksPage("echo", { pageSize: 1 });
    assert.equal(whole.nextPageToken, "");
    const messages = await new Promise<{ tasks: unknown[]; nextPageToken: string; total: number }[]>((ok, ko) => {
      const got: { tasks: unknown[]; nextPageToken: string; total: number }[] = [];
      const token = Buffer.from(JSON.stringify(["echo", "train", 1])).toString("base64url");
      const call = c.stub.listTasks({ env: "echo", split: "", pageSize: 5, pageToken: token });
      call.on("data", (r) => got.push(r));
      call.on("error", ko);
      call.on("end", () => ok(got));
    });
    assert.deepEqual(messages, [{ tasks: [], nextPageToken: "", total: 1 }]);
  });

  test("listTasks iterates every task across pages; limit stops early", async () => {
    const ids: string[] = [];
    for await (const task of c.listTasks("calculator", { pageSize: 7 })) ids.push(task.taskId);
    assert.deepEqual(
      ids,
      Array.from({ length: 130 }, (_, i) => `c${i}`),
    );
    const some: string[] = [];
    for await (const task of c.listTasks("calculator", { pageSize: 4, limit: 9 })) some.push(task.taskId);
    assert.equal(some.length, 9);
    const test_ = [];
    for await (const task of c.listTasks("wordle", { split: "test" })) test_.push(task);
    assert.deepEqual(
      test_.map((t) => [t.taskId, t.split, t.answer]),
      [["w0000", "test", "crane"]],
    );
  });

  test("Episode: a won game of Wordle, EPISODE_DONE after done, OK on half-close", async () => {
    const ep = await c.episode("wordle", { taskId: "w0001" });
    assert.equal(ep.maxTurns, 6);
    assert.equal(ep.task.answer, "slate");
    assert.match(ep.prompt[0]?.content ?? "", /Wordle/);
    assert.equal(await active(), 1);
    const first = await ep.act("I guess GHOST");
    assert.deepEqual([first.done, first.turn, first.reward, first.stopReason], [false, 1, undefined, undefined]);
    assert.match(first.messages[0]?.content ?? "", /^GHOST: ---YY\. 5 guess/);
    const won = await ep.act("slate");
    assert.deepEqual([won.done, won.stopReason, won.reward, won.rewards], [true, "done", 1, { solved: 1 }]);
    assert.equal(won.metrics.turns, 2);
    assert.equal(won.state?.solved, true);
    assert.equal(ep.messages.length, ep.prompt.length + 4);
    assert.deepEqual(await failure(ep.act("crane")), ["FAILED_PRECONDITION", "EPISODE_DONE"]);
    assert.equal(await active(), 0);
  });

  test("Episode: after done, a half-close ends the stream with OK", async () => {
    const ep = await c.episode("wordle", { taskId: "w0001" });
    await ep.act("slate");
    assert.equal(ep.done, true);
    await ep.close();
  });

  test("Episode: six wrong guesses end at max_turns with reward 0", async () => {
    const ep = await c.episode("wordle", { taskId: "w0001" });
    for (const guess of ["crane", "ghost", "pious", "brick", "plumb", "12"]) await ep.act(guess);
    const step = ep.last;
    assert.deepEqual([step?.done, step?.stopReason, step?.reward, step?.turn], [true, "max_turns", 0, 6]);
    assert.ok((step?.metrics.partial ?? 0) > 0);
    await ep.close();
  });

  test("Episode: an assistant message with empty content is a valid action", async () => {
    const ep = await c.episode("wordle", { taskId: "w0001" });
    const step = await ep.act("");
    assert.deepEqual([step.done, step.turn], [false, 1]);
    assert.match(step.messages[0]?.content ?? "", /Please reply with one 5-letter word/);
    const echoed = await c.episode("echo", { taskId: "e0" });
    assert.equal((await echoed.act({ content: "" })).messages[0]?.content, "echo: ");
    await Promise.all([ep.close(), echoed.close()]);
  });

  test("Episode: tool calls run the tool; the final answer is scored", async () => {
    const ep = await c.episode("calculator", { taskId: "c4" });
    assert.equal(ep.tools[0]?.name, "add");
    const call = { id: "call_1", name: "add", argumentsJson: JSON.stringify({ a: 4, b: 1 }) };
    const tool = await ep.act({ toolCalls: [call] });
    assert.deepEqual(
      tool.messages.map((m) => [m.role, m.toolCallId, m.name, m.content]),
      [["tool", "call_1", "add", "5"]],
    );
    const done = await ep.act("5");
    assert.deepEqual([done.done, done.reward, done.rewards], [true, 1, { correct: 1 }]);
    await ep.close();
  });

  test("Episode: the client's episode id is echoed; an inline task takes precedence over task_id", async () => {
    const ep = await c.episode("wordle", {
      episodeId: "my-episode",
      taskId: "no-such-task",
      split: "no-such-split",
      task: { taskId: "inline", prompt: [{ role: "user", content: "Guess my word." }], answer: "ghost" },
    });
    assert.deepEqual(
      [ep.episodeId, ep.task.taskId, ep.task.split, ep.prompt[0]?.content],
      ["my-episode", "inline", "train", "Guess my word."],
    );
    assert.equal((await ep.act("ghost")).reward, 1);
    await ep.close();
  });

  test("Score, and RunEpisode is not supported", async () => {
    const [task] = (await c.tasksPage("wordle", { pageSize: 1 })).tasks;
    assert.ok(task);
    const hit = await c.score("wordle", { task, messages: [{ role: "assistant", content: task.answer }] });
    assert.deepEqual([hit.rewards, hit.reward], [{ solved: 1 }, 1]);
    const byId = { taskId: task.taskId, split: task.split };
    assert.equal((await c.score("wordle", { task: byId, messages: [] })).reward, 0);
    assert.deepEqual(await failure(c.score("fragile", { task, messages: [] })), ["UNIMPLEMENTED", "NOT_SUPPORTED"]);
    const run = c.runEpisode("wordle", {
      taskId: task.taskId,
      openaiBaseUrl: "http://127.0.0.1:1/v1",
      sessionKey: "k",
    });
    assert.deepEqual(await failure(run), ["UNIMPLEMENTED", "NOT_SUPPORTED"]);
  });
});

describe("limits", () => {
  test("concurrent episodes beyond the limit get EPISODE_LIMIT; a cancel frees the slot", async () => {
    const server = await serve([wordle()], { maxConcurrentEpisodes: 1 });
    const c = new EnvClient(server.address);
    try {
      const one = await c.episode("wordle", { taskId: "w0001" });
      assert.deepEqual(await failure(c.episode("wordle", { taskId: "w0001" })), [
        "RESOURCE_EXHAUSTED",
        "EPISODE_LIMIT",
      ]);
      one.cancel();
      for (let i = 0; i < 50 && (await c.describe()).activeEpisodes; i++) await sleep(20);
      await (await c.episode("wordle", { taskId: "w0001" })).close();
    } finally {
      c.close();
      await server.stop(0);
    }
  });

  test("--max-message-mb and --idle-timeout 0 on the command line", async () => {
    const { parseServeArgs } = await import("../src/index.js");
    const opts = parseServeArgs(["--max-message-mb", "0.5", "--idle-timeout", "0", "--port", "0"]);
    assert.deepEqual([opts.maxMessageBytes, opts.idleTimeoutS], [512 * 1024, 0]);
    assert.throws(() => parseServeArgs(["--max-message-bytes", "10"]), /max-message-bytes/);
    assert.throws(() => parseServeArgs(["--max-message-mb", "x"]), /--max-message-mb must be a number/);
  });

  test("idle timeout 0: an episode waits for its client as long as it takes", async () => {
    const server = await serve([wordle()], { idleTimeoutS: 0 });
    const c = new EnvClient(server.address);
    try {
      assert.equal((await c.describe()).limits.episodeIdleTimeoutS, 0);
      const ep = await c.episode("wordle", { taskId: "w0001" });
      await sleep(300);
      assert.equal((await ep.act("slate")).done, true);
      await ep.close();
    } finally {
      c.close();
      await server.stop(0);
    }
  });
});

describe("health and shutdown", () => {
  type HealthClient = Client & Record<string, (...args: unknown[]) => unknown>;
  const Health = makeGenericClientConstructor(healthService, "Health") as unknown as new (
    address: string,
    creds: ReturnType<typeof credentials.createInsecure>,
  ) => HealthClient;

  test("Check and Watch: SERVING, then NOT_SERVING on stop; in-flight episodes get the grace, then are cut", async () => {
    const server = await serve([wordle()]);
    const h = new Health(server.address, credentials.createInsecure());
    const c = new EnvClient(server.address);
    try {
      const check = (service: string) =>
        new Promise((resolve, reject) =>
          h.Check({ service }, (e: ServiceError | null, r: { status: string }) => (e ? reject(e) : resolve(r.status))),
        );
      assert.equal(await check(""), "SERVING");
      assert.equal(await check("rollmesh.v1.EnvironmentService"), "SERVING");
      await assert.rejects(check("nope"), (e: ServiceError) => e.code === 5);
      const watch = h.Watch({ service: "" }) as NodeJS.ReadableStream;
      const seen: string[] = [];
      watch.on("data", (r: { status: string }) => seen.push(r.status));
      watch.on("error", () => undefined);
      const ep = await c.episode("wordle", { taskId: "w0001" });
      const t0 = Date.now();
      await server.stop(0.3);
      assert.ok(Date.now() - t0 >= 250, "the open episode held the shutdown for the grace period");
      assert.deepEqual(seen, ["SERVING", "NOT_SERVING"]);
      assert.notDeepEqual(await failure(ep.act("crane")), ["OK", ""]);
    } finally {
      h.close();
      c.close();
    }
  });
});
