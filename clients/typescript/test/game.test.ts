import assert from "node:assert/strict";
import { test } from "node:test";
import { credit, feedback, parseGuess, replay } from "../examples/wordle/game.js";
import { WORDS } from "../examples/wordle/words.js";

test("feedback marks greens, yellows and misses", () => {
  assert.equal(feedback("crane", "crane").join(""), "GGGGG");
  assert.equal(feedback("slate", "crane").join(""), "--G-G");
  assert.equal(feedback("nacre", "crane").join(""), "YYYYG");
});

test("feedback counts repeated letters only as often as the secret has them", () => {
  assert.equal(feedback("geese", "those").join(""), "---GG"); // one e left for the last spot
  assert.equal(feedback("eerie", "there").join(""), "Y-Y-G");
  assert.equal(feedback("llama", "hello").join(""), "YY---");
  assert.equal(feedback("sassy", "essay").join(""), "YYG-G");
});

test("parseGuess takes the last 5-letter word, case-insensitively", () => {
  assert.equal(parseGuess("My guess: CRANE"), "crane");
  assert.equal(parseGuess("first slate, then ghost"), "ghost");
  assert.equal(parseGuess("42"), undefined);
  assert.equal(parseGuess("toolong words"), "words");
  assert.equal(parseGuess("abcdef"), undefined);
});

test("credit gives 1 per green and 0.5 per yellow, out of 5", () => {
  assert.equal(credit(feedback("crane", "crane")), 1);
  assert.equal(credit(feedback("nacre", "crane")), (4 * 0.5 + 1) / 5);
  assert.equal(credit(feedback("fudgy", "crane")), 0);
});

test("replay scores a conversation: solved within 6 guesses only", () => {
  assert.equal(replay(["slate", "crane"], "crane").solved, true);
  assert.equal(replay(["slate", "x", "ghost"], "crane").solved, false);
  assert.equal(replay(["a", "b", "c", "d", "e", "f", "crane"], "crane").solved, false);
  assert.ok(replay(["slate"], "crane").partial > 0);
});

test("the word list has unique 5-letter lower-case words", () => {
  assert.ok(WORDS.every((w) => /^[a-z]{5}$/.test(w)));
  assert.equal(new Set(WORDS).size, WORDS.length);
});
