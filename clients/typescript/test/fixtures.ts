// Small environments for the server tests.
import { defineEnvironment, type MessageInit, type Tool } from "../src/index.js";
import { wordleEnvironment } from "../examples/wordle/env.js";

export const wordle = () => wordleEnvironment(["crane", "slate", "ghost", "pious", "brick", "plumb"]);

const add: Tool = {
  name: "add",
  description: "Adds two numbers.",
  parameters: {
    type: "object",
    properties: { a: { type: "number" }, b: { type: "number" } },
    required: ["a", "b"],
  },
  fn: ({ a, b }) => Number(a) + Number(b),
};

/** A tool environment: `add` as a tool, the final answer scored against the task's answer. */
export const calculator = () =>
  defineEnvironment({
    name: "calculator",
    maxTurns: 4,
    tasks: Array.from({ length: 130 }, (_, i) => ({
      taskId: `c${i}`,
      question: `What is ${i} + 1?`,
      answer: String(i + 1),
    })),
    tools: [add],
    rewardWeights: { correct: 1 },
    score: ({ task, messages }) => ({ correct: messages.at(-1)?.content.trim() === task.answer ? 1 : 0 }),
  });

/** An environment whose code fails on "boom" and that has no Score. */
export const fragile = () =>
  defineEnvironment({
    name: "fragile",
    maxTurns: 3,
    tasks: [{ taskId: "f0", prompt: [{ role: "user", content: "say something" }] }],
    onAction: (message) => {
      if (message.content === "boom") throw new Error("kaboom");
      return { messages: [{ role: "user", content: `you said ${message.content}` }] };
    },
  });

const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Echoes actions. "big N" answers with N characters (over a small message limit), "sleep N"
 * answers after N ms; Score sleeps as long as the last "sleep N" says and fails on "score fails".
 */
export const echo = () =>
  defineEnvironment({
    name: "echo",
    maxTurns: 3,
    tasks: { train: [{ taskId: "e0", question: "say something" }], test: [{ taskId: "t0", question: "test" }] },
    onAction: async (message) => {
      const [word, n] = message.content.split(" ");
      if (word === "sleep") await pause(Number(n));
      const content = word === "big" ? "x".repeat(Number(n)) : `echo: ${message.content}`;
      return { messages: [{ role: "user", content }] };
    },
    score: async ({ messages }) => {
      if (messages.some((m) => m.content === "score fails")) throw new Error("score broke");
      const sleep = [...messages].reverse().find((m) => m.content.startsWith("sleep "));
      if (sleep) await pause(Number(sleep.content.split(" ")[1]));
      return { said: messages.filter((m) => m.role === "assistant").length };
    },
  });

/**
 * A runEpisode harness with a tool: it asks the model, runs the model's `add` calls, asks again,
 * and lets the transcript and score make the trajectory. Options: `fail` (throws that text),
 * `loop` (keeps calling the model past maxTurns).
 */
export const harness = () =>
  defineEnvironment({
    name: "harness",
    maxTurns: 3,
    tasks: [{ taskId: "a0", question: "What is 2 + 3?", answer: "5" }],
    tools: [add],
    rewardWeights: { correct: 1 },
    runEpisode: async (task, agent, ctx) => {
      if (ctx.options.fail) throw new Error(String(ctx.options.fail));
      const messages: MessageInit[] = [...task.prompt];
      const reply = await agent.chat(messages, [add]);
      messages.push(reply);
      for (const call of reply.toolCalls) {
        const args = JSON.parse(call.argumentsJson) as Record<string, unknown>;
        messages.push({ role: "tool", toolCallId: call.id, name: call.name, content: String(await add.fn(args)) });
      }
      await agent.chat(messages, [add]);
      while (ctx.options.loop) await agent.chat(messages);
      const { OPENAI_BASE_URL, OPENAI_MODEL } = agent.openaiEnv(); // what an agent program would get
      return { state: { endpoint: OPENAI_BASE_URL, model: OPENAI_MODEL } };
    },
    score: ({ task, messages }) => ({ correct: messages.at(-1)?.content.trim() === task.answer ? 1 : 0 }),
  });
