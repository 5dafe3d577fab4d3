// Plays one episode against an environment server and prints the conversation.
//   node dist/examples/play-episode.js 127.0.0.1:50051 [ENV] [TASK_ID]
// With guess-number (`rollmesh env serve guess-number`) it plays by binary search on the
// "Higher."/"Lower." feedback; elsewhere it answers the task's reference answer.
import { EnvClient, RollmeshError } from "../src/index.js";

async function main(address: string, envName?: string, taskId?: string): Promise<void> {
  const client = new EnvClient(address, { timeoutS: 10 });
  try {
    const { environments } = await client.describe();
    const env = environments.find((e) => e.name === (envName ?? environments[0]?.name));
    if (!env) throw new Error(`no environment ${envName} at ${address}; it hosts ${environments.map((e) => e.name)}`);
    // the first task of the default split unless one is named
    let id = taskId;
    for await (const task of client.listTasks(env.name, { limit: 1 })) id ??= task.taskId;
    const episode = await client.episode(env.name, { taskId: id });
    for (const m of episode.prompt) console.log(`${m.role}: ${m.content}`);

    let [low, high] = [Number(episode.task.info?.low ?? 1), Number(episode.task.info?.high ?? 100)];
    while (!episode.done) {
      const guess = Math.floor((low + high) / 2);
      const text = env.name === "guess-number" ? String(guess) : episode.task.answer || "42";
      const step = await episode.act(text);
      const reply = step.messages.map((m) => m.content).join(" ");
      console.log(`assistant: ${text}\nuser: ${reply}`);
      if (/higher/i.test(reply)) low = guess + 1;
      if (/lower/i.test(reply)) high = guess - 1;
    }
    await episode.close();
    const last = episode.last!;
    console.log(`stop reason: ${last.stopReason}, turns: ${last.turn}`);
    console.log(`reward: ${last.reward ?? "not scored here"} ${JSON.stringify(last.rewards)}`);
  } finally {
    client.close();
  }
}

const [address, env, task] = process.argv.slice(2);
if (!address) {
  console.error("usage: play-episode.js HOST:PORT [ENV] [TASK_ID]");
  process.exit(2);
}
main(address, env, task).catch((e: unknown) => {
  // a RollmeshError says what went wrong and why: e.g. "NOT_FOUND UNKNOWN_TASK: ..."
  console.error(e instanceof RollmeshError ? `${e.message} ${JSON.stringify(e.metadata)}` : e);
  process.exit(1);
});
