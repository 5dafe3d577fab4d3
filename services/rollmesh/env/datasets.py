"""Task datasets: an in-code list, a JSONL file, or a Hugging Face `datasets` object.

A row has `prompt` (a string or a list of messages) or `question` (a string), and optionally
`answer`, `info` (a dict) and `task_id` (or `id`); other columns go into `info`."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..types import Message, Task

TaskSource = Iterable[Mapping[str, Any] | Task] | str | Path

_KNOWN = {"prompt", "question", "answer", "info", "task_id", "id", "split"}


def _rows(source: TaskSource) -> Iterable[Mapping[str, Any] | Task]:
    if isinstance(source, (str, Path)):
        path = Path(source)
        with path.open() as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}:{n}: not valid JSON: {e.msg}") from e
        return
    yield from source  # lists, generators and datasets.Dataset all iterate as rows


def to_task(row: Mapping[str, Any] | Task, index: int, split: str, system_prompt: str | None) -> Task:
    if isinstance(row, Task):
        return row
    prompt: Any = row.get("prompt", row.get("question"))
    if prompt is None:
        raise ValueError(f"task row {index} has neither 'prompt' nor 'question': {sorted(row)}")
    messages: list[Message] = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system_prompt and not (messages and messages[0].get("role") == "system"):
        messages.insert(0, {"role": "system", "content": system_prompt})
    info = dict(row.get("info") or {})
    info.update({k: v for k, v in row.items() if k not in _KNOWN})
    task_id = row.get("task_id", row.get("id", index))
    answer = row.get("answer", "")
    return Task(
        task_id=str(task_id),
        prompt=messages,
        answer="" if answer is None else str(answer),
        info=info,
        split=split,
    )


def load_tasks(source: TaskSource, split: str, system_prompt: str | None = None) -> list[Task]:
    tasks = [to_task(row, i, split, system_prompt) for i, row in enumerate(_rows(source))]
    seen: set[str] = set()
    for t in tasks:
        if t.task_id in seen:
            raise ValueError(f"duplicate task_id {t.task_id!r} in split {split!r}")
        seen.add(t.task_id)
    return tasks
