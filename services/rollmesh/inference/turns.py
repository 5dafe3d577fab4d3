"""Token bookkeeping of multi-turn conversations: each model call's prompt extends the previous
call's prompt + completion exactly, so a trajectory's tokens are the tokens the policy really saw.

Why: re-rendering the whole conversation with the chat template each turn and tokenizing the text
again does not reproduce the tokens the model generated (a completion's tokens need not be the
canonical tokenization of its text; templates rewrite history, e.g. drop earlier reasoning), so
the trainer would compute logprobs on sequences that were never sampled (verifiers #115/#180,
prime-rl #1334). Instead (Generate's `next_turn` input):

    prompt[k+1] = prompt[k] + completion[k] + bridge(completion[k]) + render(new messages)

- `bridge` closes the assistant turn the way the template does (e.g. `<|im_end|>` `\\n`), adding
  only what the completion does not already end with (a completion stopped by EOS carries it; one
  cut by max_tokens does not);
- `render(new messages)` is the template's rendering of the environment's reply plus the next
  generation prompt: the difference between rendering [user ".", assistant ".", *new] and the
  rendering of [user ".", assistant "."], learned once.

Templates whose rendering of earlier messages depends on later ones fail the prefix check and fall
back to rendering with the real assistant message; when even that is not a prefix, the call fails
with a clear error instead of training on inconsistent tokens. Assumed (true of the common
templates): a message renders the same after the stub assistant message as after the real one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import FailedPreconditionError

STUB_USER: Mapping[str, Any] = {"role": "user", "content": "."}
STUB_ASSISTANT: Mapping[str, Any] = {"role": "assistant", "content": "."}

# (messages, add_generation_prompt) -> token ids of the model's chat template rendering
Render = Callable[[Sequence[Mapping[str, Any]], bool], Sequence[int]]


def starts_with(ids: Sequence[int], prefix: Sequence[int]) -> bool:
    return len(ids) >= len(prefix) and tuple(ids[: len(prefix)]) == tuple(prefix)


def bridge(completion_ids: Sequence[int], turn_end: Sequence[int]) -> list[int]:
    """The part of `turn_end` the completion does not already end with: the longest k such that the
    completion ends with turn_end[:k] decides where the template's closing tokens resume."""
    for k in range(min(len(turn_end), len(completion_ids)), 0, -1):
        if list(completion_ids[-k:]) == list(turn_end[:k]):
            return list(turn_end[k:])
    return list(turn_end)


def _not_prefix_stable(what: str) -> FailedPreconditionError:
    return FailedPreconditionError(
        f"the model's chat template renders {what}; multi-turn token bookkeeping needs a prefix-stable template",
        reason="TEMPLATE_NOT_PREFIX_STABLE",
    )


@dataclass(frozen=True)
class TurnTemplate:
    """What a model's chat template puts around turns."""

    stub_ids: tuple[int, ...]  # render([user ".", assistant "."]), no generation prompt
    turn_end: tuple[int, ...]  # tokens that close an assistant turn

    @classmethod
    def learn(cls, render: Render, dot_ids: Sequence[int]) -> TurnTemplate:
        """From three renderings; `dot_ids` = the tokens of the text "."."""
        user_only = list(render([STUB_USER], True))
        stub = list(render([STUB_USER, STUB_ASSISTANT], False))
        if not starts_with(stub, user_only):
            raise _not_prefix_stable("a user turn differently once an assistant turn follows")
        assistant = stub[len(user_only) :]
        end = _find_last(assistant, dot_ids)
        if end < 0:
            raise FailedPreconditionError(
                "cannot find the assistant's content in the chat template's rendering; cannot learn how it "
                "closes an assistant turn",
                reason="TEMPLATE_UNKNOWN_TURN_END",
            )
        return cls(tuple(stub), tuple(assistant[end + len(dot_ids) :]))

    def next_prompt(
        self, prompt_ids: Sequence[int], completion_ids: Sequence[int], rendered: Sequence[int]
    ) -> list[int]:
        """The next turn's prompt from this turn's tokens and `rendered` = the new messages' tokens."""
        return [*prompt_ids, *completion_ids, *bridge(completion_ids, self.turn_end), *rendered]

    def rendered_from_stub(self, ids: Sequence[int]) -> list[int] | None:
        """The new messages' tokens from a rendering of [stub user, stub assistant, *new]; None when
        the stub rendering is not a prefix of it (the template depends on what follows)."""
        if not starts_with(ids, self.stub_ids):
            return None
        return list(ids[len(self.stub_ids) :])

    def render(
        self, render: Render, assistant: Mapping[str, Any] | None, new_messages: Sequence[Mapping[str, Any]]
    ) -> list[int]:
        """Tokens of `new_messages` + the generation prompt, as the template renders them after an
        assistant turn. One rendering; two more (with the real assistant message) as a fallback."""
        rendered = self.rendered_from_stub(render([STUB_USER, STUB_ASSISTANT, *new_messages], True))
        if rendered is not None:
            return rendered
        if assistant is None:
            raise _not_prefix_stable(
                "the stub assistant turn differently once new messages follow, and no assistant message was "
                "sent to render them after"
            )
        before = list(render([STUB_USER, assistant], False))
        after = list(render([STUB_USER, assistant, *new_messages], True))
        if not starts_with(after, before):
            raise _not_prefix_stable("earlier turns differently once the environment's reply follows")
        return after[len(before) :]


def _find_last(haystack: Sequence[int], needle: Sequence[int]) -> int:
    n = len(needle)
    if n == 0:
        return -1
    for i in range(len(haystack) - n, -1, -1):
        if list(haystack[i : i + n]) == list(needle):
            return i
    return -1
