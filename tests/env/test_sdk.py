"""The environment SDK without any transport: tools, rubrics, datasets and the Episode state machine."""

from __future__ import annotations

import asyncio
import json
import math
from typing import Literal, Optional

import pytest
from rollmesh.env import (
    MultiTurnEnv,
    Rubric,
    SingleTurnEnv,
    Task,
    ToolEnv,
    load_tasks,
    tool_spec,
)
from rollmesh.env.tools import call_tool
from rollmesh.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError

# ---- tools: schema from signature + docstring ----------------------------------------------------


async def search(
    query: str,
    k: int = 5,
    scale: float = 1.5,
    exact: bool = False,
    tags: list[str] | None = None,
    mode: Literal["fast", "slow"] = "fast",
    lang: Optional[str] = None,  # noqa: UP045 - typing.Optional must be understood too
    *args: str,
    **kwargs: str,
) -> str:
    """Search the index for documents.

    Returns the best matches first.

    Args:
        query: What to look for. The query may be a long
            sentence that spans more than one line
            of the docstring.
        k: How many results to return.
        scale: Score multiplier.
        exact (bool): Only exact matches.
        tags: Tags that must all match.
        mode: Search mode.
        lang: Language code, e.g. "en".

    Returns:
        The matching documents, one per line.

    Raises:
        ValueError: never, really.
    """
    return query


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: first
        b: second
    """
    return a + b


def untyped(x, y=3):
    return x


def test_tool_spec_from_signature_and_docstring() -> None:
    spec = tool_spec(search)
    assert spec["name"] == "search"
    assert spec["description"] == "Search the index for documents.\n\nReturns the best matches first."
    params = spec["parameters"]
    assert params["type"] == "object"
    assert params["required"] == ["query"]
    props = params["properties"]
    assert list(props) == ["query", "k", "scale", "exact", "tags", "mode", "lang"]  # no *args/**kwargs
    assert props["query"] == {
        "type": "string",
        "description": "What to look for. The query may be a long sentence that spans more than one "
        "line of the docstring.",
    }
    assert props["k"] == {"type": "integer", "description": "How many results to return.", "default": 5}
    assert props["scale"] == {"type": "number", "description": "Score multiplier.", "default": 1.5}
    assert props["exact"] == {"type": "boolean", "description": "Only exact matches.", "default": False}
    # Optional[...] / X | None: the inner type, and no "default": null
    assert props["tags"] == {
        "type": "array",
        "items": {"type": "string"},
        "description": "Tags that must all match.",
    }
    assert props["mode"] == {"enum": ["fast", "slow"], "description": "Search mode.", "default": "fast"}
    assert props["lang"] == {"type": "string", "description": 'Language code, e.g. "en".'}
    json.dumps(spec)  # the spec is plain JSON


def test_tool_spec_all_required_and_untyped() -> None:
    spec = tool_spec(add)
    assert spec["description"] == "Add two integers."
    assert spec["parameters"]["required"] == ["a", "b"]
    assert spec["parameters"]["properties"]["a"] == {"type": "integer", "description": "first"}
    spec = tool_spec(untyped)
    assert spec["description"] == ""
    assert spec["parameters"] == {
        "type": "object",
        "properties": {"x": {}, "y": {"default": 3}},
        "required": ["x"],
    }


# ---- tools: call_tool turns every failure into text ----------------------------------------------


async def boom(x: int) -> str:
    raise ValueError(f"cannot handle {x}")


async def sleepy() -> str:
    await asyncio.sleep(30)
    return "woke up"


async def test_call_tool_success_sync_and_async() -> None:
    assert await call_tool(add, '{"a": 2, "b": 3}', timeout_s=5) == "5"  # sync, JSON-encoded result
    assert await call_tool(search, '{"query": "cats"}', timeout_s=5) == "cats"
    assert await call_tool(untyped, '{"x": [1]}', timeout_s=5) == "[1]"
    assert await call_tool(lambda: None, "  ", timeout_s=5) == "null"  # blank arguments = {}


@pytest.mark.parametrize(
    ("fn", "arguments", "expected"),
    [
        (add, "{not json", "Error: arguments are not valid JSON"),
        (add, "[1, 2]", "Error: arguments must be a JSON object, got list"),
        (add, '"text"', "Error: arguments must be a JSON object, got str"),
        (add, '{"a": 1, "c": 2}', "Error: bad arguments for add"),
        (add, "{}", "Error: bad arguments for add"),
        (add, "", "Error: bad arguments for add"),
        (boom, '{"x": 7}', "Error: boom failed: ValueError: cannot handle 7"),
    ],
)
async def test_call_tool_errors_are_text(fn, arguments: str, expected: str) -> None:
    result = await call_tool(fn, arguments, timeout_s=5)
    assert isinstance(result, str)
    assert result.startswith(expected), result


async def test_call_tool_timeout_is_text() -> None:
    result = await asyncio.wait_for(call_tool(sleepy, "{}", timeout_s=0.05), 10)
    assert result == "Error: sleepy timed out after 0.05 s."


# ---- rubric --------------------------------------------------------------------------------------


def _ctx(**overrides) -> dict:
    ctx = {
        "completion": [{"role": "assistant", "content": "42"}],
        "answer": "42",
        "prompt": [{"role": "user", "content": "q"}],
        "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "42"}],
        "state": {"guesses": 2},
        "info": {"level": 3},
        "task": Task(task_id="t", prompt=[]),
    }
    ctx.update(overrides)
    return ctx


async def test_rubric_weights_metric_only_and_async() -> None:
    def exact(completion, answer) -> float:
        return float(completion[-1]["content"] == answer)

    async def length(completion) -> float:
        await asyncio.sleep(0)
        return len(completion[-1]["content"])

    def level(info) -> int:
        return info["level"]

    rubric = Rubric([exact, length, level], weights=[1.0, 0.0, 0.5])
    rewards, total = await rubric.score(_ctx())
    assert rewards == {"exact": 1.0, "length": 2.0, "level": 3.0}
    assert total == pytest.approx(1.0 + 0.5 * 3)  # length (weight 0) is reported, not rewarded
    assert rubric.names == ["exact", "length", "level"]


async def test_rubric_passes_only_the_parameters_asked_for() -> None:
    seen: dict[str, set[str]] = {}

    def only_state(state) -> float:
        seen["only_state"] = {"state"}
        return state["guesses"]

    def everything(**kwargs) -> float:
        seen["everything"] = set(kwargs)
        return 0.0

    def task_and_prompt(task, prompt, messages) -> float:
        seen["task_and_prompt"] = {"task", "prompt", "messages"}
        assert isinstance(task, Task)
        return len(messages) - len(prompt)

    rewards, total = await Rubric([only_state, everything, task_and_prompt]).score(_ctx())
    assert rewards == {"only_state": 2.0, "everything": 0.0, "task_and_prompt": 1.0}
    assert total == 3.0
    assert seen["everything"] == {"completion", "answer", "prompt", "messages", "state", "info", "task"}


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
async def test_rubric_non_finite_reward_is_an_error(bad: float) -> None:
    def broken(answer) -> float:
        return bad

    with pytest.raises(ValueError, match="'broken'"):
        await Rubric([broken]).score(_ctx())


def test_rubric_construction() -> None:
    def a(answer):
        return 1

    def b(answer):
        return 0

    with pytest.raises(ValueError, match="2 functions but 1 weights"):
        Rubric([a, b], weights=[1.0])
    with pytest.raises(ValueError, match="unique"):
        Rubric([a, a])
    assert Rubric.of(None) is None
    single = Rubric.of(a)
    assert single is not None and single.names == ["a"] and single.weights == [1.0]
    pair = Rubric.of([a, b])
    assert pair is not None and pair.names == ["a", "b"]
    assert Rubric.of(pair) is pair


def test_rubric_rejects_unknown_required_parameter() -> None:
    def needs_foo(completion, foo):
        return 1

    with pytest.raises(ValueError, match="foo"):
        Rubric([needs_foo])

    def optional_foo(completion, foo=1):  # a defaulted extra parameter is fine
        return foo

    Rubric([optional_foo])


# ---- datasets ------------------------------------------------------------------------------------


def test_list_rows_question_and_prompt() -> None:
    rows = [
        {"question": "What is 1 + 1?", "answer": 2},
        {"id": "p", "prompt": "Say hi"},
        {"task_id": "m", "prompt": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
        {"question": "none", "answer": None},
    ]
    tasks = load_tasks(rows, "train")
    assert [t.task_id for t in tasks] == ["0", "p", "m", "3"]  # task_id, then id, then the row index
    assert tasks[0].prompt == [{"role": "user", "content": "What is 1 + 1?"}]
    assert tasks[0].answer == "2" and tasks[3].answer == ""
    assert tasks[1].prompt == [{"role": "user", "content": "Say hi"}]
    assert tasks[2].prompt[1] == {"role": "assistant", "content": "b"}
    assert {t.split for t in tasks} == {"train"}
    with pytest.raises(ValueError, match="neither 'prompt' nor 'question'"):
        load_tasks([{"answer": "1"}], "train")


def test_extra_columns_go_to_info_and_system_prompt() -> None:
    rows = [
        {"question": "q", "info": {"a": 1}, "difficulty": "hard", "tags": ["x"]},
        {"prompt": [{"role": "system", "content": "own"}, {"role": "user", "content": "q2"}]},
    ]
    tasks = load_tasks(rows, "test", system_prompt="Be brief.")
    assert tasks[0].info == {"a": 1, "difficulty": "hard", "tags": ["x"]}
    assert tasks[0].prompt == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "q"}]
    assert tasks[1].prompt[0] == {"role": "system", "content": "own"}  # not prepended twice
    assert len(tasks[1].prompt) == 2
    assert tasks[0].split == "test"


def test_jsonl_file(tmp_path) -> None:
    path = tmp_path / "tasks.jsonl"
    path.write_text('{"task_id": "a", "question": "q1", "answer": "1"}\n\n{"task_id": "b", "question": "q2"}\n')
    tasks = load_tasks(path, "train")
    assert [(t.task_id, t.answer) for t in tasks] == [("a", "1"), ("b", "")]
    assert [t.task_id for t in load_tasks(str(path), "train")] == ["a", "b"]  # a str path too
    env = SingleTurnEnv(name="file", tasks=str(path))
    assert env.get_task("b").prompt == [{"role": "user", "content": "q2"}]


def test_bad_jsonl_line_names_the_line(tmp_path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "ok"}\n{"question": "ok2"}\n{"question": oops}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:3: not valid JSON"):
        load_tasks(path, "train")


def test_duplicate_task_ids_rejected() -> None:
    with pytest.raises(ValueError, match="duplicate task_id 'x' in split 'dev'"):
        load_tasks([{"id": "x", "question": "a"}, {"id": "x", "question": "b"}], "dev")


def test_hugging_face_dataset() -> None:
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list(
        [{"question": "q1", "answer": "1", "level": 1}, {"question": "q2", "answer": "2", "level": 2}]
    )
    tasks = load_tasks(ds, "train", system_prompt="sys")
    assert [t.answer for t in tasks] == ["1", "2"]
    assert tasks[1].info == {"level": 2}
    assert tasks[0].prompt[0] == {"role": "system", "content": "sys"}
    env = SingleTurnEnv(name="hf", tasks=datasets.DatasetDict({"train": ds, "test": ds}))
    assert {k: len(v) for k, v in env.splits.items()} == {"train": 2, "test": 2}


# ---- environments and episodes -------------------------------------------------------------------


def exact(completion, answer) -> float:
    return float(completion[-1]["content"].strip() == answer)


def _single(**kwargs) -> SingleTurnEnv:
    return SingleTurnEnv(
        name="single",
        tasks={
            "train": [{"id": "t1", "question": "1+1?", "answer": "2"}],
            "test": [{"id": "u1", "question": "?"}],
        },
        reward=exact,
        **kwargs,
    )


class CountdownEnv(MultiTurnEnv):
    """Say "stop" to end the episode."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("tasks", [{"id": "c", "question": "go"}])
        super().__init__(name="countdown", **kwargs)
        self.cleanups = 0

    async def setup_state(self, task, state) -> None:
        state["replies"] = 0
        state["draw"] = state["_rng"].random()
        state["_secret"] = "hidden"

    async def env_response(self, messages, state):
        state["replies"] += 1
        if messages[-1]["content"] == "stop":
            state["done"] = True
            state["metrics"] = {"replies": float(state["replies"])}
            return [{"role": "user", "content": "stopped"}]
        return [{"role": "user", "content": f"reply {state['replies']}"}]

    async def cleanup(self, state) -> None:
        self.cleanups += 1


async def test_single_turn_episode() -> None:
    env = _single(system_prompt="sys")
    ep = env.episode(env.get_task("t1"), seed=3, options={"o": 1}, episode_id="e1")
    first = await ep.start()
    assert first == [{"role": "system", "content": "sys"}, {"role": "user", "content": "1+1?"}]
    result = await ep.step({"role": "assistant", "content": "2"})
    assert result.done and result.stop_reason == "done" and result.turn == 1
    assert result.messages == []
    assert result.rewards == {"exact": 1.0} and result.reward == 1.0
    assert result.metrics == {"turns": 1.0}
    assert result.state == {"seed": 3, "options": {"o": 1}, "turn": 1}  # no "_rng"
    assert ep.episode_id == "e1"
    assert ep.messages[-1] == {"role": "assistant", "content": "2"}
    with pytest.raises(FailedPreconditionError, match="is done"):
        await ep.step({"content": "again"})


async def test_step_before_start() -> None:
    env = _single()
    ep = env.episode(env.get_task("t1"))
    with pytest.raises(InvalidArgumentError, match="not started"):
        await ep.step({"role": "assistant", "content": "2"})


async def test_multi_turn_custom_env_response_and_done() -> None:
    env = CountdownEnv(max_turns=5, reward=lambda state: state["replies"])
    ep = env.episode(env.get_task("c"), seed=1)
    await ep.start()
    r1 = await ep.step({"content": "hello"})  # role defaults to assistant
    assert not r1.done and r1.stop_reason == "" and r1.turn == 1 and r1.reward is None
    assert r1.messages == [{"role": "user", "content": "reply 1"}]
    r2 = await ep.step({"role": "assistant", "content": "stop"})
    assert r2.done and r2.stop_reason == "done" and r2.turn == 2
    assert r2.messages == [{"role": "user", "content": "stopped"}]
    assert r2.rewards == {"<lambda>": 2.0} and r2.reward == 2.0
    assert r2.metrics == {"turns": 2.0, "replies": 2.0}
    assert r2.state is not None and "_secret" not in r2.state and "_rng" not in r2.state
    assert [m["role"] for m in ep.messages] == ["user", "assistant", "user", "assistant", "user"]


async def test_seed_makes_setup_deterministic() -> None:
    env = CountdownEnv()
    draws = []
    for seed in (7, 7, 8):
        ep = env.episode(env.get_task("c"), seed=seed)
        await ep.start()
        draws.append(ep.state["draw"])
    assert draws[0] == draws[1] != draws[2]


async def test_max_turns_stop_reason() -> None:
    env = CountdownEnv(max_turns=3)
    ep = env.episode(env.get_task("c"))
    await ep.start()
    results = [await ep.step({"content": f"m{i}"}) for i in range(3)]
    assert [r.done for r in results] == [False, False, True]
    assert results[-1].stop_reason == "max_turns" and results[-1].turn == 3
    assert results[-1].messages == [{"role": "user", "content": "reply 3"}]
    assert results[-1].reward is None and results[-1].rewards == {}  # no rubric
    with pytest.raises(FailedPreconditionError):
        await ep.step({"content": "more"})


@pytest.mark.parametrize(
    ("action", "match"),
    [
        ({"role": "user", "content": "hi"}, "role 'user'"),
        ({"role": "tool", "content": "hi"}, "role 'tool'"),
        ({"role": "assistant", "content": ["parts"]}, "must be a string"),
        (
            {"role": "assistant", "tool_calls": [{"id": "1", "function": {"arguments": "{}"}}]},
            "function name",
        ),
    ],
)
async def test_invalid_actions(action, match: str) -> None:
    env = CountdownEnv()
    ep = env.episode(env.get_task("c"))
    await ep.start()
    with pytest.raises(InvalidArgumentError, match=match):
        await ep.step(action)
    assert ep.turn == 0 and len(ep.messages) == 1  # nothing recorded
    assert not (await ep.step({"content": "valid"})).done


@pytest.mark.parametrize("action", [{"role": "assistant", "content": ""}, {"role": "assistant"}, {}])
async def test_an_empty_assistant_message_is_a_move(action) -> None:
    """A model that said nothing made a (bad) move: the environment answers it, like any reply."""
    env = CountdownEnv()
    ep = env.episode(env.get_task("c"))
    await ep.start()
    result = await ep.step(action)
    assert result.turn == 1 and result.messages == [{"role": "user", "content": "reply 1"}]
    assert ep.messages[-2] == {"role": "assistant", "content": ""}


async def test_cleanup_runs_exactly_once() -> None:
    env = CountdownEnv()
    ep = env.episode(env.get_task("c"))
    await ep.start()
    await ep.step({"content": "stop"})
    await ep.close()
    await ep.close()
    assert env.cleanups == 1
    ep2 = env.episode(env.get_task("c"))  # closed without ever stepping
    await ep2.close()
    assert env.cleanups == 2


# ---- tool environments ---------------------------------------------------------------------------


def _tool_env(barrier: asyncio.Barrier | None = None, **kwargs) -> ToolEnv:
    async def rendezvous(tag: str) -> str:
        """Wait until the other call arrives.

        Args:
            tag: Echoed back.
        """
        assert barrier is not None
        await barrier.wait()  # both calls must be in flight at once, or this times out
        return f"met {tag}"

    async def lookup(key: str) -> dict:
        """Look a key up.

        Args:
            key: The key.
        """
        return {"key": key, "value": len(key)}

    return ToolEnv(
        name="tools",
        tasks=[{"id": "t", "question": "use the tools"}],
        tools=[rendezvous, lookup, add],
        tool_timeout_s=10,
        **kwargs,
    )


def _call(call_id: str, name: str, arguments) -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


async def test_tool_env_runs_calls_concurrently_and_ends_without_calls() -> None:
    env = _tool_env(asyncio.Barrier(2), reward=lambda completion: len(completion))
    assert env.kind == "tool"
    assert [s["name"] for s in env.tool_specs()] == ["rendezvous", "lookup", "add"]
    ep = env.episode(env.get_task("t"))
    await ep.start()
    step = await asyncio.wait_for(
        ep.step(
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    _call("c1", "rendezvous", '{"tag": "one"}'),
                    _call("c2", "rendezvous", {"tag": "two"}),  # already-parsed arguments
                    _call("c3", "lookup", '{"key": "abc"}'),
                ],
            }
        ),
        20,
    )
    assert not step.done
    assert step.messages == [
        {"role": "tool", "tool_call_id": "c1", "name": "rendezvous", "content": "met one"},
        {"role": "tool", "tool_call_id": "c2", "name": "rendezvous", "content": "met two"},
        {"role": "tool", "tool_call_id": "c3", "name": "lookup", "content": '{"key": "abc", "value": 3}'},
    ]
    step = await ep.step({"role": "assistant", "tool_calls": [_call("c4", "nope", "{}"), _call("c5", "add", "{")]})
    assert not step.done
    assert step.messages[0]["content"] == "Error: unknown tool 'nope'. Available tools: rendezvous, lookup, add."
    assert step.messages[1]["content"].startswith("Error: arguments are not valid JSON")
    final = await ep.step({"role": "assistant", "content": "The answer is 3."})
    assert final.done and final.stop_reason == "done" and final.messages == [] and final.turn == 3
    # completion = 2 assistant tool-call messages + 5 tool results + the final answer
    assert final.reward == 8.0


async def test_tool_env_max_turns_and_unique_names() -> None:
    env = _tool_env(max_turns=2)
    ep = env.episode(env.get_task("t"))
    await ep.start()
    r1 = await ep.step({"tool_calls": [_call("1", "add", '{"a": 1, "b": 2}')]})
    assert r1.messages[0]["content"] == "3" and not r1.done
    r2 = await ep.step({"tool_calls": [_call("2", "add", '{"a": 1, "b": 3}')]})
    assert r2.done and r2.stop_reason == "max_turns" and r2.messages[0]["content"] == "4"
    with pytest.raises(ValueError, match="unique"):
        ToolEnv(name="dup", tools=[add, add])


# ---- environment construction, tasks and digest --------------------------------------------------


def test_environment_basics() -> None:
    env = CountdownEnv()
    assert env.description == 'Say "stop" to end the episode.'
    assert env.kind == "multi_turn" and env.default_split == "train"
    assert not env.has_score and env.reward_names == []
    assert _single().has_score and _single().reward_names == ["exact"]
    assert _single().max_turns == 1
    with pytest.raises(ValueError, match="name"):
        SingleTurnEnv(name="")
    with pytest.raises(ValueError, match="max_turns"):
        MultiTurnEnv(name="x", max_turns=0)
    env2 = SingleTurnEnv(name="d", tasks={"a": [{"question": "q"}], "b": []}, default_split="b")
    assert env2.default_split == "b" and env2.tasks() == [] and len(env2.tasks("a")) == 1


async def test_score_default_and_missing() -> None:
    env = _single()
    task = env.get_task("t1")
    messages = [*task.prompt, {"role": "assistant", "content": "2"}]
    assert await env.score(task, messages, {}) == {"exact": 1.0}
    with pytest.raises(NotImplementedError, match="countdown"):
        await CountdownEnv().score(task, messages, {})


def test_get_task_not_found_mentions_the_split() -> None:
    env = _single()
    assert env.get_task("u1", "test").task_id == "u1"
    with pytest.raises(NotFoundError, match=r"no task 'u1' in split 'train'"):
        env.get_task("u1")
    with pytest.raises(NotFoundError, match=r"no task 'zz' in split 'test'"):
        env.get_task("zz", "test")
    with pytest.raises(NotFoundError, match=r"no split 'dev'.*\['test', 'train'\]"):
        env.get_task("t1", "dev")
    with pytest.raises(NotFoundError, match=r"no split 'dev'"):
        env.tasks("dev")


def test_digest_changes_with_tasks() -> None:
    def make(rows, reward=exact) -> SingleTurnEnv:
        return SingleTurnEnv(name="d", tasks=rows, reward=reward)

    base = [{"id": "1", "question": "q", "answer": "a", "info": {"k": 1}}]
    digest = make(base).digest
    assert len(digest) == 64 and digest == make(base).digest  # stable
    assert make([{**base[0], "answer": "b"}]).digest != digest
    assert make([{**base[0], "question": "other"}]).digest != digest
    assert make([{**base[0], "id": "2"}]).digest != digest
    assert make([*base, {"id": "2", "question": "q"}]).digest != digest
    assert make([{**base[0], "info": {"k": 2}}]).digest != digest  # info is part of the task

    def other_reward(completion, answer) -> float:
        return 0.0

    assert make(base, reward=other_reward).digest != digest  # reward code is part of the environment


def test_a_description_line_ending_in_a_colon_is_kept() -> None:
    async def add(a: int) -> int:
        """Adds these numbers:

        Args:
            a: The number.
        """
        return a

    spec = tool_spec(add)
    assert spec["description"] == "Adds these numbers:"
    assert spec["parameters"]["properties"]["a"]["description"] == "The number."
