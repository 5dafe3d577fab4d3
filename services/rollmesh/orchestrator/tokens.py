"""Token bookkeeping of multi-turn episodes: each model call's prompt extends the previous call's
prompt + completion exactly, so a trajectory's tokens are the tokens the policy really saw.

Why: re-rendering the whole conversation with the chat template each turn and tokenizing the text
again does not reproduce the tokens the model generated (a completion's tokens need not be the
canonical tokenization of its text; templates rewrite history, e.g. drop earlier reasoning), so
the trainer would compute logprobs on sequences that were never sampled (verifiers #115/#180,
prime-rl #1334). Instead:

    prompt[k+1] = prompt[k] + completion[k] + bridge(completion[k]) + render(new messages)

- `bridge` closes the assistant turn the way the template does (e.g. `<|im_end|>` `\\n`), adding
  only what the completion does not already end with (a completion stopped by EOS carries it; one
  cut by max_tokens does not);
- `render(new messages)` is the template's rendering of the environment's reply plus the next
  generation prompt, obtained from the inference server's Tokenize as the difference between
  rendering [user ".", assistant ".", *new] and the cached rendering of [user ".", assistant "."].

The template's turn-closing tokens and the stub rendering are learned once per model (`TurnTemplate.
learn`). Templates whose rendering of earlier messages depends on later ones fail the prefix check
and fall back to rendering with the real assistant message; when even that is not a prefix, the
episode fails with a clear error instead of training on inconsistent tokens. Assumed (true of the
common templates): a message renders the same after the stub assistant message as after the real
one; a template that renders a tool result differently depending on the calls before it would
need the fallback path always.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from ..errors import FailedPreconditionError
from ..proto.v1 import inference_pb2 as inf_pb
from ..proto.v1 import messages_pb2 as msg_pb

STUB_USER = msg_pb.Message(role="user", content=".")
STUB_ASSISTANT = msg_pb.Message(role="assistant", content=".")

# A Tokenize call: (request) -> token ids.
Tokenize = Callable[[inf_pb.TokenizeRequest], Awaitable[Sequence[int]]]


def chat_request(messages: Sequence[msg_pb.Message], *, add_generation_prompt: bool) -> inf_pb.TokenizeRequest:
    req = inf_pb.TokenizeRequest()
    req.chat.messages.extend(messages)
    req.chat.add_generation_prompt = add_generation_prompt
    return req


def starts_with(ids: Sequence[int], prefix: Sequence[int]) -> bool:
    return len(ids) >= len(prefix) and tuple(ids[: len(prefix)]) == tuple(prefix)


def bridge(completion_ids: Sequence[int], turn_end: Sequence[int]) -> list[int]:
    """The part of `turn_end` the completion does not already end with: the longest k such that the
    completion ends with turn_end[:k] decides where the template's closing tokens resume."""
    for k in range(min(len(turn_end), len(completion_ids)), 0, -1):
        if list(completion_ids[-k:]) == list(turn_end[:k]):
            return list(turn_end[k:])
    return list(turn_end)


@dataclass(frozen=True)
class TurnTemplate:
    """What a model's chat template puts around turns, learned from its inference server."""

    stub_ids: tuple[int, ...]  # render([user ".", assistant "."]), no generation prompt
    turn_end: tuple[int, ...]  # tokens that close an assistant turn

    @classmethod
    async def learn(cls, tokenize: Tokenize) -> TurnTemplate:
        user_only = list(await tokenize(chat_request([STUB_USER], add_generation_prompt=True)))
        stub = list(await tokenize(chat_request([STUB_USER, STUB_ASSISTANT], add_generation_prompt=False)))
        dot = list(await tokenize(inf_pb.TokenizeRequest(text=".")))
        if not starts_with(stub, user_only):
            raise FailedPreconditionError(
                "the model's chat template renders a user turn differently once an assistant turn follows; "
                "multi-turn token bookkeeping needs a prefix-stable template",
                reason="TEMPLATE_NOT_PREFIX_STABLE",
            )
        assistant = stub[len(user_only) :]
        end = _find_last(assistant, dot)
        if end < 0:
            raise FailedPreconditionError(
                "cannot find the assistant's content in the chat template's rendering; cannot learn how it "
                "closes an assistant turn",
                reason="TEMPLATE_UNKNOWN_TURN_END",
            )
        return cls(tuple(stub), tuple(assistant[end + len(dot) :]))

    def next_prompt(
        self, prompt_ids: Sequence[int], completion_ids: Sequence[int], rendered: Sequence[int]
    ) -> list[int]:
        """The next turn's prompt from this turn's tokens and `rendered` = the new messages' tokens."""
        return [*prompt_ids, *completion_ids, *bridge(completion_ids, self.turn_end), *rendered]

    def stub_request(self, new_messages: Sequence[msg_pb.Message]) -> inf_pb.TokenizeRequest:
        return chat_request([STUB_USER, STUB_ASSISTANT, *new_messages], add_generation_prompt=True)

    def rendered_from_stub(self, ids: Sequence[int]) -> list[int] | None:
        """The new messages' tokens from a `stub_request` rendering; None when the stub rendering is
        not a prefix of it (the template depends on what follows)."""
        if not starts_with(ids, self.stub_ids):
            return None
        return ids[len(self.stub_ids) :]  # a slice: already a new list

    async def render(
        self, tokenize: Tokenize, assistant: msg_pb.Message, new_messages: Sequence[msg_pb.Message]
    ) -> list[int]:
        """Tokens of `new_messages` + the generation prompt, as the template renders them after an
        assistant turn. One Tokenize call; two (with the real assistant message) as a fallback."""
        rendered = self.rendered_from_stub(await tokenize(self.stub_request(new_messages)))
        if rendered is not None:
            return rendered
        before = list(await tokenize(chat_request([STUB_USER, assistant], add_generation_prompt=False)))
        after = list(await tokenize(chat_request([STUB_USER, assistant, *new_messages], add_generation_prompt=True)))
        if not starts_with(after, before):
            raise FailedPreconditionError(
                "the model's chat template renders earlier turns differently once the environment's reply "
                "follows; multi-turn token bookkeeping needs a prefix-stable template",
                reason="TEMPLATE_NOT_PREFIX_STABLE",
            )
        return after[len(before) :]


def _find_last(haystack: Sequence[int], needle: Sequence[int]) -> int:
    n = len(needle)
    if n == 0:
        return -1
    for i in range(len(haystack) - n, -1, -1):
        if list(haystack[i : i + n]) == list(needle):
            return i
    return -1
