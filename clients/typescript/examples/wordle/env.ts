// The Wordle environment: the policy guesses a secret 5-letter word in up to 6 turns.
import { defineEnvironment, type Rewards } from "../../src/index.js";
import { MAX_GUESSES, newGame, parseGuess, play, replay, type GameState } from "./game.js";
import { WORDS } from "./words.js";

const PROMPT =
  "Let's play Wordle. Guess my secret 5-letter English word in at most 6 guesses. Reply with one " +
  "5-letter word per turn. After each guess I give one mark per letter: G = right letter in the " +
  "right spot, Y = the letter is in the word but elsewhere, - = not in the word.";

function rewardsOf(state: GameState): Rewards {
  return { solved: state.solved ? 1 : 0 };
}

export function wordleEnvironment(words: readonly string[] = WORDS) {
  const rows = words.map((answer, i) => ({ taskId: `w${String(i).padStart(4, "0")}`, question: PROMPT, answer }));
  const testSize = Math.max(1, Math.floor(rows.length / 5));
  return defineEnvironment<GameState>({
    name: "wordle",
    version: "0.1.0",
    description: "Guess a secret 5-letter word from per-letter feedback (G/Y/-) in at most 6 guesses.",
    kind: "multi_turn",
    maxTurns: MAX_GUESSES,
    tasks: { train: rows.slice(testSize), test: rows.slice(0, testSize) },
    rewardWeights: { solved: 1 },
    sampling: { maxTokens: 16 },
    onStart: () => newGame(),
    onAction: (message, state, ctx) => {
      const guess = parseGuess(message.content);
      const left = MAX_GUESSES - ctx.turn;
      const metrics = () => ({ partial: state.partial, guesses: state.guesses.length });
      if (!guess) {
        const reply = `Please reply with one 5-letter word. ${left} guess(es) left.`;
        return { messages: [{ role: "user", content: reply }], metrics: metrics() };
      }
      const marks = play(state, guess, ctx.task.answer);
      if (state.solved) {
        const reply = `${guess.toUpperCase()}: GGGGG. Solved in ${state.guesses.length} guess(es)!`;
        return {
          messages: [{ role: "user", content: reply }],
          done: true,
          rewards: rewardsOf(state),
          metrics: metrics(),
        };
      }
      const reply =
        left > 0
          ? `${guess.toUpperCase()}: ${marks.join("")}. ${left} guess(es) left.`
          : `${guess.toUpperCase()}: ${marks.join("")}. Out of guesses; the word was ${ctx.task.answer.toUpperCase()}.`;
      return { messages: [{ role: "user", content: reply }], rewards: rewardsOf(state), metrics: metrics() };
    },
    score: ({ task, messages }) => {
      const guesses = messages.filter((m) => m.role === "assistant").map((m) => m.content);
      return rewardsOf(replay(guesses, task.answer));
    },
  });
}
