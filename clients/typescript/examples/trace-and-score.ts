// Publishes a production trace on the bus and waits for the rubric service to score it.
//   node dist/examples/trace-and-score.js nats://127.0.0.1:4222 shop
// Needs a rubric service scoring the app live: `rollmesh rubric serve --config rubrics.toml --nats URL`
// with `[monitor] apps = { shop = "..." }`. With ROLLMESH_TLS_CA/_CERT/_KEY set it connects over
// TLS with that certificate (its identity needs the publisher and reader roles on a secured bus).
import { connectBus, publishMonitorTrace, readScores } from "../src/index.js";

async function main(natsUrl: string, app: string, timeoutS: number): Promise<void> {
  const nc = await connectBus(natsUrl);
  try {
    // Subscribe first ("new": scores from now on), so the score cannot be missed.
    const scores = await readScores(nc, app, { deliver: "new", createStream: true });
    const published = await publishMonitorTrace(
      nc,
      app,
      {
        messages: [
          { role: "user", content: "What is 2 + 2?" },
          { role: "assistant", content: "Thanks for asking: 4" },
        ],
        answer: "4",
        labels: { source: "example" },
      },
      { createStream: true },
    );
    console.log(`trace ${published.traceId} stored in ${published.stream} #${published.seq}`);
    try {
      for (;;) {
        const score = await scores.next(timeoutS * 1000);
        if (score.traceId !== published.traceId) continue; // another trace of the same app
        console.log(`scored by rubric ${score.rubric}: reward ${score.reward} ${JSON.stringify(score.rewards)}`);
        console.log(
          `metrics ${JSON.stringify(score.metrics)} errors ${JSON.stringify(score.errors)} latency ${score.latencyS.toFixed(3)} s`,
        );
        return;
      }
    } finally {
      await scores.close();
    }
  } finally {
    await nc.close();
  }
}

const [natsUrl, app = "shop", timeout = "30"] = process.argv.slice(2);
if (!natsUrl) {
  console.error("usage: trace-and-score.js NATS_URL [APP] [TIMEOUT_S]");
  process.exit(2);
}
main(natsUrl, app, Number(timeout)).catch((e: unknown) => {
  console.error(e instanceof Error ? e.message : e);
  process.exit(1);
});
