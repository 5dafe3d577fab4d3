// higher-lower: an environment whose harness owns the agent loop. Over RunEpisode it asks the model
// for a guess through agent.chat, answers "Higher"/"Lower", and asks again until the model finds
// the number or runs out of guesses: several model calls per episode, every one through the
// caller's endpoint. The same game is also playable over the Episode stream (onAction).
import { defineEnvironment, type MessageInit, type Rewards } from "../../src/index.js";
import { type Game, HIGH, LOW, MAX_GUESSES, newGame, play, replay } from "./game.js";

const PROMPT =
  `I am thinking of an integer between ${LOW} and ${HIGH}. Find it in at most ${MAX_GUESSES} guesses: ` +
  `reply with one integer per turn, and I answer "Higher.", "Lower." or "Correct!".`;

const rewardsOf = (game: Game): Rewards => ({ solved: game.solved ? 1 : 0 });
const metricsOf = (game: Game) => ({ guesses: game.guesses.length });

export function higherLowerEnvironment(count = 20) {
  // deterministic secrets spread over the range
  const rows = Array.from({ length: count }, (_, i) => ({
    taskId: `h${String(i).padStart(3, "0")}`,
    question: PROMPT,
    answer: String(((i * 37 + 11) % HIGH) + LOW),
  }));
  return defineEnvironment<Game>({
    name: "higher-lower",
    version: "0.1.0",
    description: "Find a secret integer from higher/lower feedback; the harness drives the model itself.",
    kind: "multi_turn",
    maxTurns: MAX_GUESSES,
    tasks: { train: rows.slice(4), test: rows.slice(0, 4) },
    rewardWeights: { solved: 1 },
    sampling: { maxTokens: 8 },

    // RunEpisode: the harness plays the whole episode, one agent.chat per guess.
    runEpisode: async (task, agent) => {
      const secret = Number(task.answer);
      const game = newGame();
      const messages: MessageInit[] = [...task.prompt];
      while (!game.solved && game.guesses.length < MAX_GUESSES) {
        const reply = await agent.chat(messages);
        messages.push(reply, { role: "user", content: play(game, reply.content, secret) });
      }
      return {
        messages,
        rewards: rewardsOf(game),
        metrics: metricsOf(game),
        stopReason: game.solved ? "done" : "max_turns",
        state: game,
      };
    },

    // The Episode stream: the caller's policy answers, one action per guess.
    onStart: () => newGame(),
    onAction: (message, game, ctx) => {
      const feedback = play(game, message.content, Number(ctx.task.answer));
      return {
        messages: [{ role: "user", content: feedback }],
        done: game.solved,
        rewards: rewardsOf(game),
        metrics: metricsOf(game),
      };
    },
    score: ({ task, messages }) => {
      const replies = messages.filter((m) => m.role === "assistant").map((m) => m.content);
      return rewardsOf(replay(replies, Number(task.answer)));
    },
  });
}
