// Wordle rules, free of any transport: per-letter feedback, guess parsing, scoring a game.

export const WORD_LENGTH = 5;
export const MAX_GUESSES = 6;

/** Per letter: G = right letter, right spot; Y = in the word, elsewhere; - = not (more often) in the word. */
export type Mark = "G" | "Y" | "-";

export function feedback(guess: string, secret: string): Mark[] {
  const g = guess.toLowerCase();
  const s = secret.toLowerCase();
  const marks: Mark[] = Array.from({ length: WORD_LENGTH }, () => "-");
  const unmatched = new Map<string, number>(); // secret letters not matched exactly
  for (let i = 0; i < WORD_LENGTH; i++) {
    if (g[i] === s[i]) marks[i] = "G";
    else unmatched.set(s[i]!, (unmatched.get(s[i]!) ?? 0) + 1);
  }
  for (let i = 0; i < WORD_LENGTH; i++) {
    const left = unmatched.get(g[i]!) ?? 0;
    if (marks[i] !== "G" && left > 0) {
      marks[i] = "Y";
      unmatched.set(g[i]!, left - 1);
    }
  }
  return marks;
}

/** The last 5-letter word in a message ("My guess: CRANE" -> "crane"), or undefined. */
export function parseGuess(text: string): string | undefined {
  const words = text.match(/\b[a-zA-Z]{5}\b/g);
  return words?.at(-1)?.toLowerCase();
}

/** Partial credit of one guess: greens count 1, yellows 0.5, out of 5. */
export function credit(marks: Mark[]): number {
  return marks.reduce((sum, m) => sum + (m === "G" ? 1 : m === "Y" ? 0.5 : 0), 0) / WORD_LENGTH;
}

export interface GameState {
  [key: string]: unknown;
  guesses: string[];
  solved: boolean;
  /** Best partial credit over the guesses so far. */
  partial: number;
}

export function newGame(): GameState {
  return { guesses: [], solved: false, partial: 0 };
}

/** Plays one guess (already parsed and valid); returns its marks. */
export function play(state: GameState, guess: string, secret: string): Mark[] {
  const marks = feedback(guess, secret);
  state.guesses.push(guess);
  state.partial = Math.max(state.partial, credit(marks));
  state.solved ||= guess === secret.toLowerCase();
  return marks;
}

/** Replays a conversation's assistant guesses (for Score): the state the game ended in. */
export function replay(assistantTexts: string[], secret: string): GameState {
  const state = newGame();
  for (const text of assistantTexts.slice(0, MAX_GUESSES)) {
    const guess = parseGuess(text);
    if (guess) play(state, guess, secret);
    if (state.solved) break;
  }
  return state;
}
