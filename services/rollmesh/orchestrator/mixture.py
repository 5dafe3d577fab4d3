"""Which environment the next task comes from, in a run over several (a mixture): plain functions
over task lists, no I/O.

The order of environments is smooth weighted round-robin: after any number of draws, each
environment's count is within one of its weight's share, so even a short eval or the first
trainer batches hold the intended mix, and the same weights always give the same order. What is
seeded is the order of tasks within an environment (training: a new shuffle on each pass over
its tasks, from the run's seed and the pass number).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping, Sequence
from typing import TypeVar

T = TypeVar("T")


def interleave(weights: Mapping[str, float]) -> Iterator[str]:
    """Endless environment names, each `weight / sum(weights)` of the time, spread evenly (smooth
    weighted round-robin: each draw adds every weight to its credit and picks the largest credit,
    which then pays the total; ties go to the name listed first)."""
    if not weights or any(not w > 0 for w in weights.values()):
        raise ValueError(f"weights must be positive, got {dict(weights)}")
    total = sum(weights.values())
    credit = dict.fromkeys(weights, 0.0)
    while True:
        for name, w in weights.items():
            credit[name] += w
        chosen = max(credit, key=credit.__getitem__)
        credit[chosen] -= total
        yield chosen


def draw(tasks: Mapping[str, Sequence[T]], weights: Mapping[str, float], n: int) -> list[T]:
    """`n` tasks (0 = all of every environment), taken in each environment's order, environments
    interleaved by weight. An environment whose tasks run out leaves the rotation; the others share
    what is left in proportion to their weights."""
    left = {name: list(reversed(tasks[name])) for name in weights if tasks.get(name)}
    if n <= 0:
        n = sum(map(len, left.values()))
    out: list[T] = []
    while len(out) < n and left:
        for name in interleave({k: weights[k] for k in left}):
            out.append(left[name].pop())
            if len(out) == n:
                break
            if not left[name]:
                del left[name]
                break  # a new rotation over the environments that still have tasks
    return out


def cycle(tasks: Mapping[str, Sequence[T]], weights: Mapping[str, float], seed: int) -> Iterator[tuple[T, int]]:
    """Endless (task, pass) pairs for training: environments interleaved by weight; within one, its
    tasks in a new order on each pass (random.Random(seed + pass), as a run over one environment
    has always shuffled its epochs). Environments without tasks are left out."""
    live = {k: w for k, w in weights.items() if tasks.get(k)}
    if not live:
        return
    passes = dict.fromkeys(live, 0)
    queues: dict[str, list[T]] = {k: [] for k in live}
    for name in interleave(live):
        if not queues[name]:
            order = list(tasks[name])
            random.Random(seed + passes[name]).shuffle(order)
            queues[name] = list(reversed(order))
            passes[name] += 1
        yield queues[name].pop(), passes[name] - 1


__all__ = ["cycle", "draw", "interleave"]
