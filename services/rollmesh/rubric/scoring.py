"""Scoring: a rubric (weighted reward functions + advantage settings) applied to trajectories.

RewardResult conventions (a consumer can tell a partial or skipped score from a real one):
- `rewards[name]`: the value of each function with a non-zero weight that succeeded;
- `metrics[name]`: the value of each weight-0 function that succeeded (reported, not rewarded);
- `errors[name]`: why a function has no value (exception, time-out, NaN/inf, judge failure after
  retries). Its reward is then absent, never a silent 0;
- `reward`: sum of weight x value over the functions that succeeded;
- `metrics["rubric/failed"]`: number of functions that failed (always present). A result is
  complete iff it is 0; `metrics["rubric/partial"]` is 1 when a weighted function failed, so the
  total misses a term;
- `metrics["rubric/skipped"]` = 1 for a trajectory that ended with an error (stop_reason ERROR):
  it is not scored at all, every function has an errors entry, reward 0.

Group advantages leave out members that were skipped or are partial (advantage 0), so an
infrastructure failure never pulls the others' advantages.

With `redact` (the gRPC server's results), a failure of a server a function calls (a judge, an
environment) is logged in full and reported in `errors` by a fixed text with a reason (upstream.py).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import OrderedDict
from collections.abc import Sequence

from ..advantages import PARTIAL_METRIC, SKIPPED_METRIC, group_advantages
from ..errors import NotFoundError, quoted
from ..proto.v1 import rubric_pb2 as rubric_pb
from ..proto.v1 import trajectory_pb2 as traj_pb
from .config import RubricConfig, RubricServiceConfig, from_spec, to_spec
from .context import ScoreContext
from .functions import CompiledFunction, compile_function
from .matching import INLINE_MAX_CHARS
from .resources import Resources
from .upstream import UpstreamError

log = logging.getLogger(__name__)

FAILED = "rubric/failed"
PARTIAL = PARTIAL_METRIC
SKIPPED = SKIPPED_METRIC


class CompiledRubric:
    def __init__(self, cfg: RubricConfig, functions: Sequence[CompiledFunction]) -> None:
        self.config = cfg
        self.name = cfg.name
        self.spec = to_spec(cfg)
        self.functions = list(functions)

    @classmethod
    def compile(
        cls, cfg: RubricConfig, resources: Resources, *, allow_imports: bool = True, inline: bool = False
    ) -> CompiledRubric:
        """InvalidArgumentError for an unknown function or bad params; `inline`: a client's spec."""
        return cls(
            cfg, [compile_function(f, resources, allow_imports=allow_imports, inline=inline) for f in cfg.functions]
        )

    async def score(self, trajectory: traj_pb.Trajectory, *, redact: bool = False) -> rubric_pb.RewardResult:
        if trajectory.stop_reason == traj_pb.STOP_REASON_ERROR:
            return self._skipped(trajectory)
        ctx = ScoreContext.of(trajectory)
        outcomes = await self._run_all(ctx, redact)
        result = rubric_pb.RewardResult()
        total = 0.0
        partial = False
        for f, (value, error) in zip(self.functions, outcomes, strict=True):
            if error is not None:
                result.errors[f.name] = error
                partial = partial or f.weight != 0
            elif f.weight == 0:
                result.metrics[f.name] = value
            else:
                result.rewards[f.name] = value
                total += f.weight * value
        result.reward = total
        result.metrics[FAILED] = float(len(result.errors))
        result.metrics[PARTIAL] = float(partial)
        return result

    async def score_group(
        self, trajectories: Sequence[traj_pb.Trajectory], *, redact: bool = False
    ) -> tuple[list[rubric_pb.RewardResult], list[float]]:
        results = list(await asyncio.gather(*(self.score(t, redact=redact) for t in trajectories)))
        usable = [None if is_incomplete(r) else r.reward for r in results]
        adv = self.spec.advantage
        return results, group_advantages(usable, normalize_std=adv.normalize_std, leave_one_out=adv.leave_one_out)

    async def _run_all(self, ctx: ScoreContext, redact: bool) -> list[tuple[float, str | None]]:
        """Every function's outcome. Those that wait on something else (judges, servers, workers)
        run concurrently, as tasks when there are several; local text rules run in this task, one
        after another: a task each would cost more than their work (a live trace's scoring).

        A local rule gives the event loop control only to hand a long text to a worker thread
        (matching.in_thread); on a short completion it runs to its end without yielding, where
        no time bound can fire, so it runs without one (a timer costs more than the rule)."""
        waiting = [i for i, f in enumerate(self.functions) if not f.local]
        tasks = {i: asyncio.ensure_future(self._run(self.functions[i], ctx, redact)) for i in waiting[1:]}
        short = len(ctx.completion) <= INLINE_MAX_CHARS
        try:
            outcomes = [
                None if i in tasks else await self._run(f, ctx, redact, bounded=not (f.local and short))
                for i, f in enumerate(self.functions)
            ]
            for i, task in tasks.items():
                outcomes[i] = await task
        except BaseException:
            for task in tasks.values():
                task.cancel()
            raise
        return outcomes  # type: ignore[return-value]  # every None was replaced

    async def _run(
        self, f: CompiledFunction, ctx: ScoreContext, redact: bool, *, bounded: bool = True
    ) -> tuple[float, str | None]:
        bound = asyncio.timeout(f.timeout_s) if bounded else None
        try:
            if bound is None:
                value = float(await f.fn(ctx))
            else:
                async with bound:
                    value = float(await f.fn(ctx))
        except UpstreamError as e:
            if not redact:
                return 0.0, e.detail
            log.warning("reward function %s of rubric %s: %s", f.name, self.name, e.detail)
            return 0.0, e.public
        except Exception as e:
            if isinstance(e, TimeoutError) and bound is not None and bound.expired():
                return 0.0, f"timed out after {f.timeout_s:g} s"
            log.debug("reward function %s of rubric %s failed", f.name, self.name, exc_info=True)
            return 0.0, f"{type(e).__name__}: {e}"
        if not math.isfinite(value):
            return 0.0, f"returned {value}, not a finite number"
        return value, None

    def _skipped(self, trajectory: traj_pb.Trajectory) -> rubric_pb.RewardResult:
        err = trajectory.error
        why = f"not scored: the trajectory ended with an error ({err.source or 'unknown source'}: {err.message})"
        result = rubric_pb.RewardResult()
        for f in self.functions:
            result.errors[f.name] = why
        result.metrics[FAILED] = float(len(self.functions))
        result.metrics[PARTIAL] = 1.0
        result.metrics[SKIPPED] = 1.0
        return result


def is_incomplete(result: rubric_pb.RewardResult) -> bool:
    """Skipped, or a weighted function failed: the total is not comparable with complete ones."""
    return result.metrics.get(PARTIAL, 0.0) > 0 or result.metrics.get(SKIPPED, 0.0) > 0


class RubricBook:
    """The configured rubrics, compiled once, plus inline specs compiled on demand (cached by
    content). Owns the shared resources (clients, judge caches, math workers): close() it."""

    def __init__(
        self,
        rubrics: Sequence[RubricConfig] = (),
        *,
        nats_url: str | None = None,
        allow_inline_imports: bool = False,
        max_inline: int = 256,
    ) -> None:
        self.resources = Resources(nats_url)
        self.allow_inline_imports = allow_inline_imports
        self.max_inline = max_inline
        self._named: dict[str, CompiledRubric] = {}
        for cfg in rubrics:
            if cfg.name in self._named:
                raise ValueError(f"rubric names must be unique, repeated: {cfg.name!r}")
            # configured rubrics are trusted: import paths allowed
            self._named[cfg.name] = CompiledRubric.compile(cfg, self.resources, allow_imports=True)
        self._inline: OrderedDict[bytes, CompiledRubric] = OrderedDict()

    @classmethod
    def from_config(cls, cfg: RubricServiceConfig, *, nats_url: str | None = None) -> RubricBook:
        return cls(cfg.rubric, nats_url=nats_url, allow_inline_imports=cfg.server.allow_inline_imports)

    @property
    def names(self) -> list[str]:
        return sorted(self._named)

    def get(self, name: str) -> CompiledRubric:
        rubric = self._named.get(name)
        if rubric is None:
            raise NotFoundError(
                f"no rubric {quoted(name)}; this service has {self.names or 'none configured'} "
                "(or send an inline spec)",
                reason="UNKNOWN_RUBRIC",
                metadata={"rubrics": ",".join(self.names)},
            )
        return rubric

    def compile(self, spec: rubric_pb.RubricSpec) -> CompiledRubric:
        """An inline spec, compiled (InvalidArgumentError when it is bad) and cached by content."""
        key = spec.SerializeToString(deterministic=True)
        rubric = self._inline.get(key)
        if rubric is None:
            rubric = CompiledRubric.compile(
                from_spec(spec), self.resources, allow_imports=self.allow_inline_imports, inline=True
            )
            self._inline[key] = rubric
            while len(self._inline) > self.max_inline:
                self._inline.popitem(last=False)
        self._inline.move_to_end(key)
        return rubric

    def specs(self) -> list[rubric_pb.RubricSpec]:
        return [self._named[n].spec for n in self.names]

    def configured(self) -> list[RubricConfig]:
        return [self._named[n].config for n in self.names]

    async def close(self) -> None:
        await self.resources.close()
