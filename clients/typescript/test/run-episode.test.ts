// RunEpisode (spec 7) over a real loopback gRPC server, the harness's model calls going to a real
// local HTTP endpoint in the OpenAI chat-completions format that records them.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { EnvClient, type EnvironmentServer, type RunEpisodeOptions, serve } from "../src/index.js";
import { higherLowerEnvironment } from "../examples/higher-lower/env.js";
import { harness, wordle } from "./fixtures.js";
import { failure, rejection, sleep } from "./helpers.js";
import { bisect, type Endpoint, startEndpoint } from "./openai-endpoint.js";

const KEY = "sk-episode-7f3a";

/** Polls `check` every 20 ms for up to 5 s. */
async function until(check: () => boolean | Promise<boolean>, what: string): Promise<void> {
  for (let i = 0; i < 250; i++) {
    if (await check()) return;
    await sleep(20);
  }
  assert.fail(`timed out waiting for ${what}`);
}

describe("RunEpisode", () => {
  let server: EnvironmentServer;
  let c: EnvClient;
  let model: Endpoint;
  const run = (env: string, opts: Partial<RunEpisodeOptions> = {}) =>
    c.runEpisode(env, { openaiBaseUrl: model.url, sessionKey: KEY, ...opts });

  before(async () => {
    server = await serve([higherLowerEnvironment(), harness(), wordle()]);
    c = new EnvClient(server.address, { timeoutS: 10 });
    model = await startEndpoint(bisect);
  });
  after(async () => {
    c.close();
    await model.close();
    await server.stop(0);
  });

  test("Describe: has_run_episode where the environment defines runEpisode", async () => {
    const d = await c.describe();
    assert.deepEqual(
      d.environments.map((e) => [e.name, e.hasRunEpisode]),
      [
        ["higher-lower", true],
        ["harness", true],
        ["wordle", false],
      ],
    );
  });

  test("higher-lower: the harness finds the number in several model calls, each with the session key", async () => {
    model.script = bisect;
    model.calls.length = 0;
    const r = await run("higher-lower", { taskId: "h004", model: "policy", episodeId: "ep-1" });
    // the secret of h004 is 60: binary search guesses 50, 75, 62, 56, 59, 60
    const guesses = model.calls.map((_, i) => r.messages.filter((m) => m.role === "assistant")[i]?.content);
    assert.deepEqual(guesses, ["50", "75", "62", "56", "59", "60"]);
    assert.deepEqual([r.episodeId, r.task.taskId, r.task.env, r.stopReason], ["ep-1", "h004", "higher-lower", "done"]);
    assert.deepEqual([r.reward, r.rewards, r.metrics], [1, { solved: 1 }, { turns: 6, guesses: 6 }]);
    assert.deepEqual(r.state, { guesses: [50, 75, 62, 56, 59, 60], solved: true });
    assert.equal(r.messages.at(-1)?.content, "Correct! The number was 60.");
    model.calls.forEach((call, i) => {
      assert.equal(call.path, "/v1/chat/completions");
      assert.equal(call.headers.authorization, `Bearer ${KEY}`);
      assert.equal(call.body.model, "policy");
      assert.equal(call.body.tools, undefined);
      // every call carries the conversation so far: the prompt, then a guess and its feedback per call
      assert.deepEqual(
        call.body.messages.map((m) => [m.role, m.content]),
        r.messages.slice(0, 1 + 2 * i).map((m) => [m.role, m.content]),
      );
    });
  });

  test("a model that never finds the number: max_turns after maxTurns calls, reward 0", async () => {
    model.script = () => ({ message: { content: "I guess 1" } });
    model.calls.length = 0;
    const r = await run("higher-lower", { taskId: "h005" });
    assert.equal(model.calls.length, 7);
    assert.deepEqual([r.stopReason, r.reward, r.rewards, r.metrics.turns], ["max_turns", 0, { solved: 0 }, 7]);
    assert.match(r.messages.at(-1)?.content ?? "", /^Higher\. Out of guesses; the number was 97\.$/);
  });

  test("tools go out in the OpenAI format, tool calls come back; score gives the rewards of the transcript", async () => {
    const toolCall = { id: "call_1", type: "function", function: { name: "add", arguments: '{"a":2,"b":3}' } };
    model.script = (call) =>
      call.body.messages.length === 1
        ? { message: { content: null, tool_calls: [toolCall] } }
        : { message: { content: " 5" } };
    model.calls.length = 0;
    const r = await run("harness", { taskId: "a0" });
    assert.deepEqual(model.calls[0]?.body.tools, [
      {
        type: "function",
        function: {
          name: "add",
          description: "Adds two numbers.",
          parameters: {
            type: "object",
            properties: { a: { type: "number" }, b: { type: "number" } },
            required: ["a", "b"],
          },
        },
      },
    ]);
    assert.equal(model.calls[0]?.body.model, undefined, "no model name: the endpoint's served model");
    assert.deepEqual(model.calls[1]?.body.messages.slice(1), [
      { role: "assistant", content: "", tool_calls: [toolCall] },
      { role: "tool", content: "5", tool_call_id: "call_1", name: "add" },
    ]);
    assert.deepEqual(
      r.messages.map((m) => [m.role, m.content, m.toolCalls.map((t) => [t.id, t.name, t.argumentsJson])]),
      [
        ["user", "What is 2 + 3?", []],
        ["assistant", "", [["call_1", "add", '{"a":2,"b":3}']]],
        ["tool", "5", []],
        ["assistant", " 5", []],
      ],
    );
    assert.deepEqual([r.stopReason, r.rewards, r.reward, r.metrics], ["done", { correct: 1 }, 1, { turns: 2 }]);
    assert.deepEqual(r.state, { endpoint: model.url, model: "" });
  });

  test("a harness that calls the model past maxTurns ends with max_turns", async () => {
    model.script = () => ({ message: { content: "again" } });
    model.calls.length = 0;
    const r = await run("harness", { taskId: "a0", options: { loop: true } });
    assert.equal(model.calls.length, 3);
    // the conversation is the last call's messages (the prompt and the first reply) and its reply
    assert.deepEqual(
      r.messages.map((m) => [m.role, m.content]),
      [
        ["user", "What is 2 + 3?"],
        ["assistant", "again"],
        ["assistant", "again"],
      ],
    );
    assert.deepEqual([r.stopReason, r.reward, r.messages.at(-1)?.content], ["max_turns", 0, "again"]);
  });

  test("bad requests are refused before any model call", async () => {
    model.calls.length = 0;
    const refused = async (p: Promise<unknown>) => {
      const e = await rejection(p);
      return [e.codeName, e.reason, e.metadata.field ?? ""];
    };
    assert.deepEqual(await refused(run("higher-lower", { taskId: "h005", openaiBaseUrl: "" })), [
      "INVALID_ARGUMENT",
      "MISSING_FIELD",
      "openai_base_url",
    ]);
    for (const url of ["ftp://127.0.0.1/v1", "not a url"]) {
      assert.deepEqual(await refused(run("higher-lower", { taskId: "h005", openaiBaseUrl: url })), [
        "INVALID_ARGUMENT",
        "INVALID_FIELD",
        "openai_base_url",
      ]);
    }
    assert.deepEqual(await refused(run("higher-lower", { taskId: "h005", sessionKey: "" })), [
      "INVALID_ARGUMENT",
      "MISSING_FIELD",
      "session_key",
    ]);
    assert.deepEqual(await failure(run("wordle", { taskId: "w0001" })), ["UNIMPLEMENTED", "NOT_SUPPORTED"]);
    assert.deepEqual(await failure(run("nope", { taskId: "h005" })), ["NOT_FOUND", "UNKNOWN_ENVIRONMENT"]);
    assert.deepEqual(await failure(run("higher-lower", { taskId: "nope" })), ["NOT_FOUND", "UNKNOWN_TASK"]);
    assert.deepEqual(await failure(run("higher-lower")), ["INVALID_ARGUMENT", "NO_TASK"]);
    assert.equal(model.calls.length, 0);
  });

  test("model endpoint failures: unreachable, 5xx, 4xx, not a completion, a redirect", async () => {
    const gone = await startEndpoint(bisect);
    await gone.close();
    const down = await rejection(run("higher-lower", { taskId: "h005", openaiBaseUrl: gone.url }));
    assert.deepEqual([down.codeName, down.reason], ["UNAVAILABLE", "INFERENCE_UNREACHABLE"]);
    assert.match(down.details, /chat\/completions" is unreachable: ECONNREFUSED/);

    model.script = () => ({ status: 503, body: JSON.stringify({ error: { message: "engine stopped" } }) });
    const busy = await rejection(run("higher-lower", { taskId: "h005" }));
    assert.deepEqual(
      [busy.codeName, busy.reason, busy.metadata],
      ["UNAVAILABLE", "INFERENCE_UNREACHABLE", { http_status: "503" }],
    );
    assert.match(busy.details, /answered HTTP 503: "engine stopped"/);

    model.script = () => ({
      status: 401,
      body: JSON.stringify({ error: { message: "bad key " + "x".repeat(50_000) } }),
    });
    const refused = await rejection(run("higher-lower", { taskId: "h005" }));
    assert.deepEqual([refused.codeName, refused.reason], ["INTERNAL", "ENVIRONMENT_FAILED"]);
    assert.match(refused.details, /answered HTTP 401: "bad key x+"\.\.\. \(50008 chars\)/);
    assert.ok(refused.details.length < 600, "the endpoint's error text is quoted, cut");
    assert.ok(!refused.details.includes(KEY), "the session key is never in a message");

    model.script = () => ({ status: 200, body: "<html>proxy</html>" });
    const junk = await rejection(run("higher-lower", { taskId: "h005" }));
    assert.deepEqual([junk.codeName, junk.reason], ["UNAVAILABLE", "INFERENCE_UNREACHABLE"]);
    assert.match(junk.details, /no chat completion .*"<html>proxy<\/html>"/);

    const elsewhere = await startEndpoint(bisect);
    try {
      model.script = () => ({ status: 307, body: "", headers: { location: `${elsewhere.url}/chat/completions` } });
      const moved = await rejection(run("higher-lower", { taskId: "h005" }));
      assert.deepEqual([moved.codeName, moved.reason], ["UNAVAILABLE", "INFERENCE_UNREACHABLE"]);
      assert.equal(elsewhere.calls.length, 0, "the session key is not sent to where a redirect points");
    } finally {
      await elsewhere.close();
    }
  });

  test("a failing harness: INTERNAL ENVIRONMENT_FAILED with a bounded message", async () => {
    const e = await rejection(run("harness", { taskId: "a0", options: { fail: "broken " + "y".repeat(3000) } }));
    assert.deepEqual([e.codeName, e.reason], ["INTERNAL", "ENVIRONMENT_FAILED"]);
    assert.match(e.details, /^environment "harness" failed in runEpisode\(\): Error: broken y+\.\.\. \(\d+ chars\)$/);
    assert.ok(e.details.length < 2100, `${e.details.length} chars`);
  });
});

describe("RunEpisode limits", () => {
  let server: EnvironmentServer;
  let c: EnvClient;
  let model: Endpoint;
  const active = async () => (await c.describe()).activeEpisodes;

  before(async () => {
    // no model call timeout: only the caller ends a model call that does not answer
    server = await serve([higherLowerEnvironment()], {
      maxConcurrentEpisodes: 1,
      modelTimeoutS: 0,
      maxMessageBytes: 64 * 1024,
    });
    c = new EnvClient(server.address, { timeoutS: 10 });
    model = await startEndpoint(() => "hang");
  });
  after(async () => {
    c.close();
    await model.close();
    await server.stop(0);
  });

  const opts = (extra: Partial<RunEpisodeOptions> = {}): RunEpisodeOptions => ({
    taskId: "h005",
    openaiBaseUrl: model.url,
    sessionKey: KEY,
    ...extra,
  });

  test("one episode over the limit gets EPISODE_LIMIT; a cancel aborts the model call and frees the slot", async () => {
    model.calls.length = 0;
    const abort = new AbortController();
    const first = c.runEpisode("higher-lower", opts({ signal: abort.signal }));
    await until(() => model.calls.length === 1, "the first model call");
    assert.equal(await active(), 1);
    assert.deepEqual(await failure(c.runEpisode("higher-lower", opts())), ["RESOURCE_EXHAUSTED", "EPISODE_LIMIT"]);
    abort.abort();
    assert.deepEqual(await failure(first), ["CANCELLED", ""]);
    await until(() => model.calls[0]?.aborted === true, "the model call to be aborted");
    await until(async () => (await active()) === 0, "the slot to be freed");
  });

  test("the caller's deadline ends the episode and its model call", async () => {
    model.calls.length = 0;
    assert.deepEqual(await failure(c.runEpisode("higher-lower", opts({ timeoutS: 0.5 }))), ["DEADLINE_EXCEEDED", ""]);
    await until(() => model.calls[0]?.aborted === true, "the model call to be aborted");
    await until(async () => (await active()) === 0, "the slot to be freed");
  });

  test("a model call unanswered for the model timeout: DEADLINE_EXCEEDED TIMEOUT, the call is dropped", async () => {
    const quick = await serve([higherLowerEnvironment()], { modelTimeoutS: 0.5 });
    const q = new EnvClient(quick.address);
    try {
      model.calls.length = 0;
      const begin = Date.now();
      const e = await rejection(q.runEpisode("higher-lower", opts()));
      assert.deepEqual([e.codeName, e.reason, e.metadata], ["DEADLINE_EXCEEDED", "TIMEOUT", { timeout_s: "0.5" }]);
      assert.ok(Date.now() - begin < 5000);
      await until(() => model.calls[0]?.aborted === true, "the model call to be closed");
      assert.equal((await q.describe()).activeEpisodes, 0);
    } finally {
      q.close();
      await quick.stop(0);
    }
  });

  test("an episode over the run timeout: DEADLINE_EXCEEDED TIMEOUT, the model call is dropped", async () => {
    const quick = await serve([higherLowerEnvironment()], { modelTimeoutS: 0, runTimeoutS: 0.5 });
    const q = new EnvClient(quick.address);
    try {
      model.calls.length = 0;
      const e = await rejection(q.runEpisode("higher-lower", opts()));
      assert.deepEqual([e.codeName, e.reason, e.metadata], ["DEADLINE_EXCEEDED", "TIMEOUT", { timeout_s: "0.5" }]);
      assert.match(e.details, /did not finish the episode within 0\.5 s/);
      await until(() => model.calls[0]?.aborted === true, "the model call to be closed");
      assert.equal((await q.describe()).activeEpisodes, 0);
    } finally {
      q.close();
      await quick.stop(0);
    }
  });

  test("a reply over the message limit: RESOURCE_EXHAUSTED MESSAGE_TOO_LARGE", async () => {
    model.script = () => ({ message: { content: "9".repeat(100 * 1024) } });
    const e = await rejection(c.runEpisode("higher-lower", opts()));
    assert.deepEqual(
      [e.codeName, e.reason, e.metadata],
      ["RESOURCE_EXHAUSTED", "MESSAGE_TOO_LARGE", { limit_bytes: "65536" }],
    );
  });
});
