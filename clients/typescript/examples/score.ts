// Scores trajectories with the rubric service: a configured rubric by name, or an inline spec.
//   node dist/examples/score.js 127.0.0.1:50071 [RUBRIC]
import { RubricClient, type RubricRef } from "../src/index.js";

async function main(address: string, name?: string): Promise<void> {
  const rubrics = new RubricClient(address, { timeoutS: 30 });
  try {
    const configured = await rubrics.listRubrics();
    console.log(
      `rubrics: ${configured.map((r) => `${r.name} (${r.functions.map((f) => f.function).join(", ")})`).join("; ")}`,
    );

    // exact_match on the last number of the reply, against the task's answer
    const rubric: RubricRef = name ?? {
      name: "inline-correct",
      functions: [{ name: "correct", function: "exact_match", weight: 1, params: { extract: "last_number" } }],
    };
    const rollout = (reply: string) => ({
      task: { answer: "4" },
      messages: [
        { role: "user", content: "What is 2 + 2?" },
        { role: "assistant", content: reply },
      ],
    });
    const one = await rubrics.scoreTrajectory(rubric, rollout("It is 4."));
    console.log(`one: reward ${one.reward} ${JSON.stringify(one.rewards)} errors ${JSON.stringify(one.errors)}`);

    // rollouts of the same task: group-relative advantages, in the same order
    const group = await rubrics.scoreGroup(rubric, [rollout("4"), rollout("5"), rollout("I think 4")]);
    console.log(
      `group: rewards ${JSON.stringify(group.results.map((r) => r.reward))} advantages ${JSON.stringify(group.advantages.map((a) => Number(a.toFixed(3))))}`,
    );
  } finally {
    rubrics.close();
  }
}

const [address, rubric] = process.argv.slice(2);
if (!address) {
  console.error("usage: score.js HOST:PORT [RUBRIC]");
  process.exit(2);
}
main(address, rubric).catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
