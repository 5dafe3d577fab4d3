// The server helper over a real loopback gRPC server, driven by the generated client.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { credentials, makeGenericClientConstructor, status, type Client, type ServiceError } from "@grpc/grpc-js";
import { service as healthService } from "grpc-health-check";
import type { EnvironmentServiceClient, ListTasksResponse } from "../src/gen/rollmesh/v1/environment.js";
import { EnvironmentKind } from "../src/gen/rollmesh/v1/environment.js";
import { Message } from "../src/gen/rollmesh/v1/messages.js";
import { StopReason } from "../src/gen/rollmesh/v1/trajectory.js";
import { serve, type EnvironmentServer } from "../src/index.js";
import { calculator, fragile, wordle } from "./fixtures.js";
import { client, codeOf, collect, describeServer, EpisodeStream, runEpisode, score } from "./helpers.js";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe("one server with three environments", () => {
  let server: EnvironmentServer;
  let c: EnvironmentServiceClient;
  const active = async () => (await describeServer(c)).activeEpisodes;
  const list = (env: string, pageSize = 0, pageToken = "", split = "") =>
    collect<ListTasksResponse>(c.listTasks({ env, split, pageSize, pageToken }));

  before(async () => {
    server = await serve([wordle(), calculator(), fragile()], { maxConcurrentEpisodes: 50, idleTimeoutS: 5 });
    c = client(server.address);
  });
  after(async () => {
    c.close();
    await server.stop(0);
  });

  test("Describe: server, environments, limits, load", async () => {
    const d = await describeServer(c);
    assert.equal(d.server?.protocolVersion, "v1");
    assert.equal(d.server?.language, "typescript");
    assert.deepEqual(
      d.environments.map((e) => e.name),
      ["wordle", "calculator", "fragile"],
    );
    const [w, calc, frag] = d.environments;
    assert.equal(w?.kind, EnvironmentKind.ENVIRONMENT_KIND_MULTI_TURN);
    assert.equal(w?.maxTurns, 6);
    assert.deepEqual(w?.splits, { train: 5, test: 1 });
    assert.equal(w?.hasScore, true);
    assert.equal(calc?.kind, EnvironmentKind.ENVIRONMENT_KIND_TOOL);
    assert.equal(calc?.tools[0]?.name, "add");
    assert.equal(frag?.hasScore, false);
    assert.match(w?.digest ?? "", /^[0-9a-f]{64}$/);
    assert.deepEqual(d.limits, {
      maxConcurrentEpisodes: 50,
      maxMessageBytes: 16 * 1024 * 1024,
      episodeIdleTimeoutS: 5,
    });
    assert.equal(d.activeEpisodes, 0);
  });

  test("ListTasks: batches of 64, pages by decimal offset, errors", async () => {
    const all = await list("calculator");
    assert.deepEqual(
      all.map((r) => r.tasks.length),
      [64, 64, 2],
    );
    assert.ok(all.every((r) => r.total === 130 && r.nextPageToken === ""));
    assert.ok(all.every((r) => r.tasks.every((t) => t.env === "calculator")));
    const page = await list("calculator", 2, "10");
    assert.deepEqual(
      page.flatMap((r) => r.tasks.map((t) => t.taskId)),
      ["c10", "c11"],
    );
    assert.equal(page.at(-1)?.nextPageToken, "12");
    const last = await list("calculator", 5, "128");
    assert.deepEqual([last.flatMap((r) => r.tasks).length, last.at(-1)?.nextPageToken], [2, ""]);
    const empty = await list("calculator", 5, "130");
    assert.deepEqual(empty, [{ tasks: [], nextPageToken: "", total: 130 }]);
    assert.equal((await list("wordle", 0, "", "test"))[0]?.tasks[0]?.answer, "crane");
    assert.equal(await codeOf(list("calculator", 2, "abc")), status.INVALID_ARGUMENT);
    assert.equal(await codeOf(list("calculator", 2, "131")), status.INVALID_ARGUMENT);
    assert.equal(await codeOf(list("calculator", -1)), status.INVALID_ARGUMENT);
    assert.equal(await codeOf(list("calculator", 0, "", "nope")), status.NOT_FOUND);
    assert.equal(await codeOf(list("nope")), status.NOT_FOUND);
    assert.equal(await codeOf(list("")), status.INVALID_ARGUMENT);
  });

  test("Episode: a won game of Wordle, then FAILED_PRECONDITION, and OK on half-close", async () => {
    const ep = new EpisodeStream(c);
    const started = await ep.start("wordle", "w0001");
    assert.equal(started.kind?.$case, "started");
    if (started.kind?.$case !== "started") return;
    assert.equal(started.kind.value.maxTurns, 6);
    assert.match(started.kind.value.messages[0]?.content ?? "", /Wordle/);
    assert.equal(await active(), 1);
    const first = await ep.act("I guess GHOST");
    assert.equal(first.done, false);
    assert.equal(first.turn, 1);
    assert.match(first.messages[0]?.content ?? "", /^GHOST: ---YY\. 5 guess/);
    const won = await ep.act("slate");
    assert.deepEqual(
      [won.done, won.stopReason, won.hasReward, won.reward],
      [true, StopReason.STOP_REASON_DONE, true, 1],
    );
    assert.deepEqual(won.rewards, { solved: 1 });
    assert.equal(won.metrics.turns, 2);
    assert.equal(won.state?.solved, true);
    const again = new Promise((resolve) => resolve(ep.act("crane")));
    assert.equal(await codeOf(again), status.FAILED_PRECONDITION);
    assert.equal(await active(), 0);
  });

  test("Episode: six wrong guesses end at max_turns with reward 0", async () => {
    const ep = new EpisodeStream(c);
    await ep.start("wordle", "w0001");
    let step;
    for (const guess of ["crane", "ghost", "pious", "brick", "plumb", "12"]) step = await ep.act(guess);
    assert.deepEqual(
      [step?.done, step?.stopReason, step?.reward, step?.turn],
      [true, StopReason.STOP_REASON_MAX_TURNS, 0, 6],
    );
    assert.ok((step?.metrics.partial ?? 0) > 0);
    assert.equal(await ep.close(), status.OK);
  });

  test("Episode: tool calls run the tool; the final answer is scored", async () => {
    const ep = new EpisodeStream(c);
    await ep.start("calculator", "c4");
    const call = { id: "call_1", name: "add", argumentsJson: JSON.stringify({ a: 4, b: 1 }) };
    ep.call.write({
      kind: { $case: "action", value: { message: Message.fromPartial({ role: "assistant", toolCalls: [call] }) } },
    });
    const r = await ep.next();
    assert.equal(r.kind?.$case, "step");
    if (r.kind?.$case !== "step") return;
    assert.deepEqual(
      r.kind.value.messages.map((m) => [m.role, m.toolCallId, m.name, m.content]),
      [["tool", "call_1", "add", "5"]],
    );
    const done = await ep.act("5");
    assert.deepEqual([done.done, done.reward, done.rewards], [true, 1, { correct: 1 }]);
    assert.equal(await ep.close(), status.OK);
  });

  test("Episode errors: statuses, and the server keeps serving", async () => {
    const first = new EpisodeStream(c);
    assert.equal(await codeOf(first.act("hi")), status.INVALID_ARGUMENT);
    assert.equal(await codeOf(new EpisodeStream(c).start("nope", "x")), status.NOT_FOUND);
    assert.equal(await codeOf(new EpisodeStream(c).start("wordle", "nope")), status.NOT_FOUND);
    const empty = new EpisodeStream(c);
    await empty.start("fragile", "f0");
    assert.equal(await codeOf(empty.act("")), status.INVALID_ARGUMENT);
    const boom = new EpisodeStream(c);
    await boom.start("fragile", "f0");
    assert.equal((await boom.act("hello")).messages[0]?.content, "you said hello");
    const err = (await boom.act("boom").catch((e: unknown) => e)) as ServiceError;
    assert.equal(err.code, status.INTERNAL);
    assert.match(err.details, /environment "fragile" raised Error: kaboom/);
    assert.equal(await active(), 0);
  });

  test("Score and RunEpisode", async () => {
    const task = (await list("wordle", 1))[0]?.tasks[0];
    const messages = [Message.fromPartial({ role: "assistant", content: task?.answer ?? "" })];
    const hit = await score(c, { env: "wordle", task, messages, state: undefined });
    assert.deepEqual([hit.rewards, hit.reward], [{ solved: 1 }, 1]);
    const byId = { ...task!, prompt: [], answer: "" };
    const miss = await score(c, { env: "wordle", task: byId, messages: [], state: undefined });
    assert.equal(miss.reward, 0);
    assert.equal(await codeOf(score(c, { env: "fragile", task, messages, state: undefined })), status.UNIMPLEMENTED);
    const run = runEpisode(c, { start: undefined, inferenceAddress: "", model: "", sampling: undefined });
    assert.equal(await codeOf(run), status.UNIMPLEMENTED);
  });
});

describe("limits", () => {
  test("concurrent episodes beyond the limit get RESOURCE_EXHAUSTED; a cancel frees the slot", async () => {
    const server = await serve([wordle()], { maxConcurrentEpisodes: 1 });
    const c = client(server.address);
    try {
      const one = new EpisodeStream(c);
      await one.start("wordle", "w0001");
      assert.equal(await codeOf(new EpisodeStream(c).start("wordle", "w0001")), status.RESOURCE_EXHAUSTED);
      one.call.cancel();
      for (let i = 0; i < 50 && (await describeServer(c)).activeEpisodes; i++) await sleep(20);
      assert.equal((await new EpisodeStream(c).start("wordle", "w0001")).kind?.$case, "started");
    } finally {
      c.close();
      await server.stop(0);
    }
  });

  test("a quiet client gets DEADLINE_EXCEEDED after the idle timeout", async () => {
    const server = await serve([wordle()], { idleTimeoutS: 0.2 });
    const c = client(server.address);
    try {
      const ep = new EpisodeStream(c);
      await ep.start("wordle", "w0001");
      const t0 = Date.now();
      assert.equal(await codeOf(ep.next()), status.DEADLINE_EXCEEDED);
      assert.ok(Date.now() - t0 >= 150);
      assert.equal((await describeServer(c)).activeEpisodes, 0);
    } finally {
      c.close();
      await server.stop(0);
    }
  });

  test("an oversized action gets RESOURCE_EXHAUSTED", async () => {
    const server = await serve([wordle()], { maxMessageBytes: 1024 });
    const c = client(server.address);
    try {
      const ep = new EpisodeStream(c);
      await ep.start("wordle", "w0001");
      assert.equal(await codeOf(ep.act("x".repeat(2000))), status.RESOURCE_EXHAUSTED);
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
    const c = client(server.address);
    try {
      const check = (service: string) =>
        new Promise((resolve, reject) =>
          h.Check({ service }, (e: ServiceError | null, r: { status: string }) => (e ? reject(e) : resolve(r.status))),
        );
      assert.equal(await check(""), "SERVING");
      assert.equal(await check("rollmesh.v1.EnvironmentService"), "SERVING");
      assert.equal(await codeOf(check("nope")), status.NOT_FOUND);
      const watch = h.Watch({ service: "" }) as NodeJS.ReadableStream;
      const seen: string[] = [];
      watch.on("data", (r: { status: string }) => seen.push(r.status));
      watch.on("error", () => undefined);
      const ep = new EpisodeStream(c);
      await ep.start("wordle", "w0001");
      const t0 = Date.now();
      await server.stop(0.3);
      assert.ok(Date.now() - t0 >= 250, "the open episode held the shutdown for the grace period");
      assert.deepEqual(seen, ["SERVING", "NOT_SERVING"]);
      assert.notEqual(await codeOf(ep.act("crane")), "ok");
    } finally {
      h.close();
      c.close();
    }
  });
});
