"""Answer extraction shared by the built-in environments."""

from __future__ import annotations

import re

_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_ANSWER = re.compile(r"answer\s*[:=]\s*(.+)", re.IGNORECASE)
_INT = re.compile(r"-?\d[\d,]*")


def last_assistant_text(completion: list[dict]) -> str:
    for m in reversed(completion):
        if m.get("role") == "assistant":
            return m.get("content") or ""
    return ""


def extract_answer(text: str) -> str:
    """\\boxed{x}, then "ANSWER: x", then the whole text."""
    if m := _BOXED.findall(text):
        return m[-1].strip()
    if m := _ANSWER.findall(text):
        return m[-1].strip().splitlines()[0].strip()
    return text.strip()


def parse_int(text: str) -> int | None:
    """The last integer in the text, ignoring thousands separators."""
    found = _INT.findall(text)
    if not found:
        return None
    try:
        return int(found[-1].replace(",", ""))
    except ValueError:
        return None
