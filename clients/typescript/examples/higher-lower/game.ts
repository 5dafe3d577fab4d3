// The game, shared by both ways to play it: find a secret integer from "Higher"/"Lower" feedback.
export const LOW = 1;
export const HIGH = 100;
export const MAX_GUESSES = 7; // enough for binary search over 1..100

export interface Game {
  [key: string]: unknown;
  guesses: number[];
  solved: boolean;
}

export const newGame = (): Game => ({ guesses: [], solved: false });

/** The first integer in a reply, if any. */
export function parseGuess(text: string): number | undefined {
  const m = /-?\d+/.exec(text);
  return m ? Number(m[0]) : undefined;
}

/** Plays one reply; returns the feedback the player sees next. */
export function play(game: Game, reply: string, secret: number): string {
  const guess = parseGuess(reply);
  const left = MAX_GUESSES - game.guesses.length - 1;
  if (guess === undefined) {
    game.guesses.push(Number.NaN);
    return `Please reply with one integer between ${LOW} and ${HIGH}. ${left} guess(es) left.`;
  }
  game.guesses.push(guess);
  if (guess === secret) {
    game.solved = true;
    return `Correct! The number was ${secret}.`;
  }
  const hint = guess < secret ? "Higher." : "Lower.";
  return left > 0 ? `${hint} ${left} guess(es) left.` : `${hint} Out of guesses; the number was ${secret}.`;
}

/** The game a list of replies plays (for Score). */
export function replay(replies: readonly string[], secret: number): Game {
  const game = newGame();
  for (const reply of replies.slice(0, MAX_GUESSES)) {
    play(game, reply, secret);
    if (game.solved) break;
  }
  return game;
}
