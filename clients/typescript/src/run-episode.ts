// One RunEpisode, free of any transport: the environment's harness plays the whole episode through
// an Agent, and its outcome becomes the trajectory (rewards from `score` when it gave none). The
// caller fills the trajectory's turns from the model calls it recorded.
import { type Agent, TurnLimitReached } from "./agent.js";
import type { Task } from "./gen/rollmesh/v1/messages.js";
import { StopReason, Trajectory } from "./gen/rollmesh/v1/trajectory.js";
import {
  asRewards,
  type Environment,
  type RunContext,
  type RunOutcome,
  type RunStopReason,
  type State,
  weightedReward,
} from "./environment.js";
import { toMessage } from "./messages.js";
import { jsonClone } from "./tasks.js";

const STOP_REASONS: Record<RunStopReason, StopReason> = {
  done: StopReason.STOP_REASON_DONE,
  max_turns: StopReason.STOP_REASON_MAX_TURNS,
  length: StopReason.STOP_REASON_LENGTH,
  cancelled: StopReason.STOP_REASON_CANCELLED,
};

/**
 * Runs the environment's runEpisode on `task`. A harness that calls the model more than maxTurns
 * times (TurnLimitReached, uncaught) ends with stop reason max_turns and the agent's transcript.
 */
export async function runEpisode<S extends State>(
  env: Environment<S>,
  task: Task,
  agent: Agent,
  ctx: RunContext,
): Promise<Trajectory> {
  const run = env.spec.runEpisode;
  if (!run) throw new Error(`environment "${env.name}" has no runEpisode`);
  let outcome: RunOutcome<S>;
  try {
    outcome = await run(task, agent, ctx);
  } catch (e) {
    if (!(e instanceof TurnLimitReached)) throw e;
    outcome = { stopReason: "max_turns" };
  }
  const stopReason = STOP_REASONS[outcome.stopReason ?? "done"];
  if (stopReason === undefined) {
    throw new Error(
      `runEpisode returned stopReason ${JSON.stringify(outcome.stopReason)}; use done, max_turns or length`,
    );
  }
  const messages = outcome.messages?.map(toMessage) ?? [...(agent.transcript.length ? agent.transcript : task.prompt)];
  const state = jsonClone(outcome.state ?? ({} as S));
  const score = env.spec.score;
  const rewards = outcome.rewards ?? (score ? asRewards(await score({ task, messages, state })) : {});
  return Trajectory.fromPartial({
    task,
    messages,
    rewards,
    reward: outcome.reward ?? weightedReward(rewards, env.spec.rewardWeights),
    metrics: { turns: messages.filter((m) => m.role === "assistant").length, ...outcome.metrics },
    stopReason,
    state,
  });
}
