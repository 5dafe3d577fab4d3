"""The built-in reward functions. Each `make(params, resources)` validates its params when a rubric
is compiled and returns the async function that scores one trajectory; see their docstrings (also
served by `functions.describe_builtins()`; registered in builtins.py)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from ..errors import InvalidArgumentError, UnavailableError, quoted
from . import judge as judge_mod
from .builtins import BUILTINS, Params, ScoreFn, builtin
from .context import ScoreContext
from .matching import compile_pattern, in_thread, make_extractor, normalize, search
from .mathverify import START_TIMEOUT_S
from .resources import Resources
from .upstream import LOG_HINT, UpstreamError, upstream_failure

ENV_SERVER = "the environment server"

# ---- built-ins: answers ------------------------------------------------------------------------


def reference(ctx: ScoreContext) -> str:
    """The task's reference answer; a task without one cannot be compared against (an error, not a 0)."""
    answer = ctx.answer.strip()
    if not answer:
        raise ValueError(f"task {ctx.task.task_id!r} has no reference answer (trajectory.task.answer is empty)")
    return answer


def _extract(p: Params, default: str = "none") -> Callable[[str], str | None]:
    return make_extractor(p.get("extract", default, kind=str), p.where)


@builtin("exact_match", local=True)
def exact_match(p: Params, res: Resources) -> ScoreFn:
    """1 when the (extracted) completion equals the answer, both stripped, else 0.
    params: extract ("none" | "answer" | "boxed" | "last_number" | "last_line" | a regex whose
    first group is the answer; default "none"), case_sensitive (default true)."""
    extract = _extract(p)
    case_sensitive = p.get("case_sensitive", True, kind=bool)

    async def score(ctx: ScoreContext) -> float:
        got = await in_thread(extract, ctx.completion)
        if got is None:
            return 0.0
        a, b = got.strip(), reference(ctx)
        return float(a == b if case_sensitive else a.casefold() == b.casefold())

    return score


@builtin("normalized_match", local=True)
def normalized_match(p: Params, res: Resources) -> ScoreFn:
    """1 when the (extracted) completion equals the answer after normalisation (lower case,
    punctuation, articles a/an/the and extra whitespace removed), else 0. params: extract."""
    extract = _extract(p)

    async def score(ctx: ScoreContext) -> float:
        got = await in_thread(extract, ctx.completion)
        return float(got is not None and normalize(got) == normalize(reference(ctx)))

    return score


@builtin("math_equivalence", timeout_s=10.0, setup_s=START_TIMEOUT_S + 2.0)
def math_equivalence(p: Params, res: Resources) -> ScoreFn:
    """1 when the completion is mathematically equivalent to the answer (math-verify: "1/2",
    "0.5" and "\\frac{1}{2}" agree; \\boxed{} answers are found by math-verify itself), else 0.
    A reference answer math-verify cannot parse, and a check math-verify gives up on (its time-out:
    equivalence unknown), are errors. params: extract (default "none")."""
    extract = _extract(p)
    timeout_s = p.number("timeout_s", BUILTINS["math_equivalence"].timeout_s, minimum=0.001)

    async def score(ctx: ScoreContext) -> float:
        gold = reference(ctx)
        got = await in_thread(extract, ctx.completion)
        if got is None or not got.strip():
            return 0.0
        check = await res.math.check(gold, got, timeout_s=timeout_s)
        if check.timed_out:
            raise TimeoutError(f"math-verify gave up after {timeout_s:g} s; equivalence unknown")
        if not check.gold_parsed:
            raise ValueError(f"math-verify cannot parse the reference answer {ctx.answer[:100]!r}")
        return float(check.equivalent)

    return score


# ---- built-ins: formats --------------------------------------------------------------------------


@builtin("regex", local=True)
def regex_match(p: Params, res: Resources) -> ScoreFn:
    """1 when the completion matches `pattern` (search; full_match: true for the whole text), else 0;
    must_match: false inverts it (1 when it does not match). ignore_case (default false), dotall
    (default false). Patterns run with a time bound (a backtracking pattern is an error)."""
    import regex

    flags = (regex.IGNORECASE if p.get("ignore_case", False, kind=bool) else 0) | (
        regex.DOTALL if p.get("dotall", False, kind=bool) else 0
    )
    pattern = compile_pattern(p.get("pattern", kind=str), p.where, flags=flags)
    full = p.get("full_match", False, kind=bool)
    must = p.get("must_match", True, kind=bool)

    async def score(ctx: ScoreContext) -> float:
        return float((await in_thread(search, pattern, ctx.completion, full=full) is not None) == must)

    return score


_FORMATS = {
    "boxed": r"\\(?:boxed|fbox)\{.+\}",
    "answer_line": r"(?im)^\s*answer\s*[:=]\s*\S",
    "integer": r"^\s*[-+]?\d[\d,]*\s*$",
    "number": r"^\s*[-+]?(?:\d[\d,]*)?\.?\d+(?:[eE][-+]?\d+)?\s*$",
}


@builtin("answer_format", local=True)
def answer_format(p: Params, res: Resources) -> ScoreFn:
    """1 when the completion gives its answer in the expected form, else 0. params: style =
    "boxed" (contains \\boxed{...}), "answer_line" (a line "ANSWER: ..."), "integer" / "number" (the
    answer, as the built-in environments extract it, is just a number), "xml" (<tag>...</tag>,
    with `tag`, default "answer"); default "boxed"."""
    from ..parsing import extract_answer

    style = p.choice("style", "boxed", (*_FORMATS, "xml"))
    tag = p.get("tag", "answer", kind=str)
    if style == "xml":
        import regex

        pattern = compile_pattern(rf"<{regex.escape(tag)}>(.+?)</{regex.escape(tag)}>", p.where, flags=regex.DOTALL)
    else:
        pattern = compile_pattern(_FORMATS[style], p.where)
    on_answer = style in ("integer", "number")

    async def score(ctx: ScoreContext) -> float:
        text = extract_answer(ctx.completion) if on_answer else ctx.completion
        return float(await in_thread(search, pattern, text) is not None)

    return score


@builtin("length_penalty", local=True)
def length_penalty(p: Params, res: Resources) -> ScoreFn:
    """A penalty in [-1, 0] for the completion's length (0 = no penalty), so give it a positive
    weight. unit = "chars" | "words" | "tokens" (completion token ids of every turn; the trajectory
    must carry turns); default "chars". Either `max` (penalise only the excess over it) or `target`
    (penalise any distance from it); the penalty is distance / `scale` (default: max or target),
    capped at 1."""
    unit = p.choice("unit", "chars", ("chars", "words", "tokens"))
    limit = p.number("max", None, minimum=0.0)
    target = p.number("target", None, minimum=0.0)
    if (limit is None) == (target is None):
        raise InvalidArgumentError(f"{p.where}: give exactly one of params.max and params.target", reason="BAD_PARAMS")
    ref = limit if limit is not None else target
    assert ref is not None
    scale = p.number("scale", ref if ref > 0 else 1.0, minimum=0.0)
    if scale <= 0:
        raise InvalidArgumentError(f"{p.where}: params.scale must be > 0", reason="BAD_PARAMS")

    async def score(ctx: ScoreContext) -> float:
        if unit == "tokens":
            if not ctx.trajectory.turns:
                raise ValueError("unit 'tokens' needs the trajectory's turns (token ids); it has none")
            n = float(sum(len(t.completion_ids) for t in ctx.trajectory.turns))
        elif unit == "words":
            n = float(sum(len((m.get("content") or "").split()) for m in ctx.completion_messages))
        else:
            n = float(sum(len(m.get("content") or "") for m in ctx.completion_messages))
        distance = max(0.0, n - limit) if limit is not None else abs(n - ref)
        return -min(1.0, distance / scale)

    return score


# ---- built-ins: tools ----------------------------------------------------------------------------


def _tool_specs(p: Params, res: Resources) -> Callable[[ScoreContext], Awaitable[list[dict[str, Any]]]]:
    fixed = p.get("tools", None, kind=list)
    address = p.get("address", "", kind=str)

    async def specs(ctx: ScoreContext) -> list[dict[str, Any]]:
        if fixed is not None:
            return fixed
        if isinstance(ctx.info.get("tools"), list):
            return ctx.info["tools"]
        if not ctx.env:
            raise ValueError("no tool specs: set params.tools, task.info.tools, or trajectory.task.env")
        try:
            return await res.env_tools(ctx.env, address)
        except Exception as e:
            raise upstream_failure(ENV_SERVER, e) from e

    return specs


@builtin("tool_call_validity", address_params=("address",))
def tool_call_validity(p: Params, res: Resources) -> ScoreFn:
    """Checks every tool call of the assistant messages: it names an offered tool and its arguments
    are a JSON object valid for that tool's JSON schema. mode = "all" (1 when every call is valid,
    else 0; default) or "fraction" (valid calls / calls). No calls scores 1, or 0 with
    require_call: true. Tool specs ({name, description, parameters}) come from params.tools, else
    task.info.tools, else the environment's Describe (params.address, or the registry)."""
    import jsonschema

    mode = p.choice("mode", "all", ("all", "fraction"))
    require_call = p.get("require_call", False, kind=bool)
    specs_of = _tool_specs(p, res)

    async def score(ctx: ScoreContext) -> float:
        calls = [c for m in ctx.completion_messages if m.get("role") == "assistant" for c in m.get("tool_calls") or ()]
        if not calls:
            return 0.0 if require_call else 1.0
        specs = {s.get("name"): s for s in await specs_of(ctx)}
        valid = 0
        for call in calls:
            fn = call.get("function", {})
            spec = specs.get(fn.get("name"))
            if spec is None:
                continue
            try:
                args = json.loads(fn.get("arguments") or "{}")
            except json.JSONDecodeError:
                continue
            if not isinstance(args, dict):
                continue
            schema = spec.get("parameters") or {"type": "object"}
            if isinstance(schema, str):  # a ToolSpec's parameters_json_schema, as JSON text
                schema = json.loads(schema)
            try:
                jsonschema.validate(args, schema)
            except jsonschema.ValidationError:
                continue
            except jsonschema.SchemaError as e:
                raise ValueError(f"tool {spec.get('name')!r} has an invalid JSON schema: {e.message}") from e
            valid += 1
        return float(valid == len(calls)) if mode == "all" else valid / len(calls)

    return score


# ---- built-ins: remote scorers -------------------------------------------------------------------


@builtin("env_score", timeout_s=60.0, address_params=("address",))
def env_score(p: Params, res: Resources) -> ScoreFn:
    """The environment's own score: its server's Score RPC on the trajectory's task, messages and
    state. params: address (else a live server of the environment from the registry), env (default
    trajectory.task.env), key (one of the returned rewards; default the environment's weighted
    total)."""
    address = p.get("address", "", kind=str)
    env_name = p.get("env", "", kind=str)
    key = p.get("key", "", kind=str)
    if not address and not res.nats_url:
        raise InvalidArgumentError(
            f"{p.where}: needs params.address, or a rubric service started with a NATS URL (registry lookup)",
            reason="BAD_PARAMS",
        )

    async def score(ctx: ScoreContext) -> float:
        env = env_name or ctx.env
        if not env:
            raise ValueError("trajectory.task.env is empty; set params.env")
        try:
            client = await res.env_client(env, address)
            try:
                rewards, total = await client.score(env, ctx.task, ctx.messages, ctx.state)
            except UnavailableError:
                await res.forget_env(env, client.address)
                raise
        except Exception as e:
            raise upstream_failure(ENV_SERVER, e) from e
        if not key:
            return total
        if key not in rewards:  # the names are the environment's: only the client's own key goes back
            missing = KeyError(f"environment {env!r} returned rewards {sorted(rewards)}, not {key!r}")
            raise UpstreamError(
                f"KeyError: {missing}",
                public=f"the environment returned no reward {quoted(key)} (BAD_PARAMS): check params.key; {LOG_HINT}",
            )
        return rewards[key]

    return score


@builtin("judge", timeout_s=120.0, address_params=("address",))
def judge(p: Params, res: Resources) -> ScoreFn:
    """An LLM judge on a rollmesh inference server; see rollmesh.rubric.judge for its params."""
    model = p.get("model", "", kind=str)
    address = p.get("address", "", kind=str)
    if bool(model) == bool(address):
        raise InvalidArgumentError(
            f"{p.where}: give exactly one of params.model (registry name) and params.address", reason="BAD_PARAMS"
        )
    if model and not res.nats_url:
        raise InvalidArgumentError(
            f"{p.where}: params.model needs a rubric service started with a NATS URL; or give params.address",
            reason="BAD_PARAMS",
        )
    template = p.get("prompt", judge_mod.DEFAULT_PROMPT, kind=str)
    judge_mod.check_template(template, p.where, inline=p.inline)
    temperature = p.number("temperature", 0.0, minimum=0.0)
    sampling: dict[str, Any] = {"temperature": temperature, "max_tokens": int(p.number("max_tokens", 8, minimum=1))}
    if (seed := p.get("seed", None, kind=int)) is not None:
        sampling["seed"] = seed
    parser = judge_mod.make_parser(
        # The default prompt asks for yes or no; a prompt of one's own defaults to a number.
        p.get("parse", "yes_no" if template == judge_mod.DEFAULT_PROMPT else "number", kind=str),
        lo=p.number("min", None),
        hi=p.number("max", None),
        where=p.where,
    )
    endpoint = res.judge_endpoint(
        model=model,
        address=address,
        requests_per_s=p.number("requests_per_s", 0.0, minimum=0.0),
        max_concurrent=int(p.number("max_concurrent", 8, minimum=1)),
        cache_size=int(p.number("cache_size", 4096, minimum=0)),
    )
    return judge_mod.Judge(
        endpoint=endpoint,
        target=model or address,
        template=template,
        system=p.get("system", "", kind=str),
        sampling=sampling,
        parser=parser,
        call_timeout_s=p.number("call_timeout_s", 30.0, minimum=0.001),
        retries=int(p.number("retries", 3, minimum=0)),
        retry_parse=temperature > 0,
        backoff_s=p.number("backoff_s", 0.5, minimum=0.0),
        max_backoff_s=p.number("max_backoff_s", 8.0, minimum=0.0),
    )
