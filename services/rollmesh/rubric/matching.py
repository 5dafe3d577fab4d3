"""Text helpers of the answer-comparing reward functions: answer extraction and normalisation."""

from __future__ import annotations

import asyncio
import re
import string
from collections.abc import Callable
from typing import Any, TypeVar

import regex

from ..errors import InvalidArgumentError
from ..parsing import extract_answer

T = TypeVar("T")
_NUMBER = re.compile(r"[-+]?(?:\d[\d,]*)?\.?\d+(?:[eE][-+]?\d+)?")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)
# User patterns run with a time bound, off the event loop (see in_thread) and releasing the GIL, so a
# catastrophic pattern costs one worker thread a moment instead of stalling the server.
REGEX_TIMEOUT_S = 1.0


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}), nested braces included."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth = 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j].strip()
    return None


def last_number(text: str) -> str | None:
    found = _NUMBER.findall(text)
    return found[-1].replace(",", "") if found else None


def last_line(text: str) -> str | None:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else None


def compile_pattern(pattern: str, where: str, *, groups: int = 0, flags: int = 0) -> regex.Pattern:
    try:
        compiled = regex.compile(pattern, flags)
    except regex.error as e:
        raise InvalidArgumentError(f"{where}: invalid regular expression {pattern!r}: {e}", reason="BAD_PARAMS") from e
    if compiled.groups < groups:
        raise InvalidArgumentError(
            f"{where}: the regular expression {pattern!r} needs a capturing group (...) around the value",
            reason="BAD_PARAMS",
        )
    return compiled


# Below this many characters the work is microseconds (regexes keep their time bound either way),
# and a thread hop would cost more than the work: a third of the live scorer's CPU per trace.
INLINE_MAX_CHARS = 4096


def search(pattern: regex.Pattern, text: str, *, full: bool = False) -> regex.Match | None:
    """A time-bounded match; TimeoutError when the pattern backtracks for too long. The GIL is
    released only for a long text (matched in a worker thread, see in_thread): on the event loop,
    giving it up for microseconds lets another thread take it for a whole switch interval."""
    match = pattern.fullmatch if full else pattern.search
    return match(text, timeout=REGEX_TIMEOUT_S, concurrent=len(text) > INLINE_MAX_CHARS)


async def in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Text work on possibly large completions (user regexes) runs off the event loop; short
    texts run inline."""
    if sum(len(a) for a in args if isinstance(a, str)) <= INLINE_MAX_CHARS:
        return fn(*args, **kwargs)
    return await asyncio.to_thread(fn, *args, **kwargs)


EXTRACTORS: dict[str, Callable[[str], str | None]] = {
    "none": lambda t: t,
    "answer": extract_answer,  # \boxed{x}, then "ANSWER: x", then the whole text
    "boxed": last_boxed,
    "last_number": last_number,
    "last_line": last_line,
}


def make_extractor(spec: str, where: str) -> Callable[[str], str | None]:
    """One of EXTRACTORS, or a regular expression whose first group (of its last match) is the answer.
    None = nothing found: the model did not produce an answer in that form."""
    if spec in EXTRACTORS:
        return EXTRACTORS[spec]
    pattern = compile_pattern(spec, f"{where}: extract", groups=1)

    def by_regex(text: str) -> str | None:
        last = None
        for m in pattern.finditer(text, timeout=REGEX_TIMEOUT_S, concurrent=len(text) > INLINE_MAX_CHARS):
            last = m
        return last.group(1) if last else None

    return by_regex


def normalize(text: str) -> str:
    """SQuAD-style: lower case, no punctuation, no articles, single spaces."""
    text = _ARTICLES.sub(" ", text.lower().translate(_PUNCT))
    return " ".join(text.split())
