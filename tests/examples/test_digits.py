"""The `digits` environment's rewards. Its RL run end to end (reward rising on the tiny model) is
tests/apps/test_train.py: the `rollmesh train` quickstart."""

from __future__ import annotations

from rollmesh.examples.digits import load_environment


def test_digits_environment_rewards() -> None:
    from rollmesh.examples.digits import digits, number

    def reply(text: str) -> list[dict]:
        return [{"role": "assistant", "content": text}]

    assert digits(reply(" 18 18")) == 1.0 and number(reply(" 18 18")) == 0.0
    assert digits(reply("a1b2")) == 0.5 and digits(reply("")) == 0.0
    assert number(reply(" -42 ")) == 1.0
    env = load_environment(num_train=5, num_test=2)
    assert {k: len(v) for k, v in env.splits.items()} == {"train": 5, "test": 2}
    assert env.reward_names == ["digits", "number"] and env.sampling == {"max_tokens": 8}
