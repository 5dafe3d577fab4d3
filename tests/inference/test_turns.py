"""Multi-turn token bookkeeping (inference/turns.py): how a turn is closed and the environment's
reply rendered after it, learned from a real chat template; the fallback for templates that
rewrite earlier turns, and its clear failure."""

from __future__ import annotations

import pytest
from rollmesh.errors import FailedPreconditionError
from rollmesh.inference.turns import STUB_USER, TurnTemplate, bridge


@pytest.mark.parametrize(
    ("completion", "turn_end", "expected"),
    [
        ([10, 11, 2], [2], []),  # stopped by EOS: nothing to add
        ([10, 11], [2], [2]),  # cut by max_tokens: close the turn
        ([10, 99], [99, 13], [13]),  # Qwen-style <|im_end|> "\n": the newline is still missing
        ([10, 11], [99, 13], [99, 13]),
        ([], [2], [2]),
        ([10], [], []),
    ],
)
def test_bridge_adds_only_what_the_completion_lacks(completion, turn_end, expected) -> None:
    assert bridge(completion, turn_end) == expected


def test_next_prompt_extends_the_previous_prompt_and_completion() -> None:
    template = TurnTemplate(stub_ids=(1, 5, 9, 2, 6, 9, 2), turn_end=(2,))
    assert template.next_prompt([1, 5, 7], [8, 8], [7, 30, 2, 6]) == [1, 5, 7, 8, 8, 2, 7, 30, 2, 6]
    assert template.rendered_from_stub([1, 5, 9, 2, 6, 9, 2, 7, 30, 2, 6]) == [7, 30, 2, 6]
    assert template.rendered_from_stub([1, 5, 9, 2, 6, 9, 3, 7]) is None


def test_turn_template_is_learned_from_the_tiny_chat_template() -> None:
    pytest.importorskip("transformers")
    from rollmesh.inference.tiny import build_tokenizer

    tok = build_tokenizer()

    def render(messages, add_generation_prompt):
        text = tok.apply_chat_template(list(messages), add_generation_prompt=add_generation_prompt, tokenize=False)
        return tok(text, add_special_tokens=False)["input_ids"]

    template = TurnTemplate.learn(render, tok(".", add_special_tokens=False)["input_ids"])
    assert template.turn_end == (tok.eos_token_id,)
    reply = {"role": "user", "content": "Higher."}
    rendered = template.render(render, {"role": "assistant", "content": "50"}, [reply])
    assert tok.decode(rendered) == "<|user|>Higher.</s><|assistant|>"
    assert STUB_USER["content"] == "."


def test_render_falls_back_to_the_real_assistant_message_then_fails_clearly() -> None:
    # A toy "template": one token per message (100 + content length) and a closing 2, 9 for the
    # generation prompt. Like templates that rewrite earlier assistant turns, an assistant "."
    # renders as 66 once something follows it, so the stub is no prefix and the real assistant
    # message is rendered instead; `broken` makes even that inconsistent.
    broken = False

    def render(messages, add_generation_prompt):
        ids = []
        for i, m in enumerate(messages):
            rewritten = m["role"] == "assistant" and m["content"] == "." and i < len(messages) - 1
            ids += [66 if rewritten else 100 + len(m["content"]), 2]
        if broken and len(messages) > 2:
            ids[0] = 55
        return ids + ([9] if add_generation_prompt else [])

    template = TurnTemplate(stub_ids=(101, 2, 101, 2), turn_end=(2,))
    reply = [{"role": "user", "content": "Higher."}]
    assistant = {"role": "assistant", "content": "50"}
    assert template.render(render, assistant, reply) == [107, 2, 9]
    with pytest.raises(FailedPreconditionError, match="no assistant message") as e:
        template.render(render, None, reply)
    assert e.value.reason == "TEMPLATE_NOT_PREFIX_STABLE"
    broken = True
    with pytest.raises(FailedPreconditionError, match="prefix-stable"):
        template.render(render, assistant, reply)
