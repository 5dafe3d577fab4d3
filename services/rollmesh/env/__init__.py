"""The environment SDK: write an environment once, serve it over gRPC, use it in-process."""

from ..types import Message, State, StepResult, Task
from .agent import AgentContext, EpisodeResult
from .datasets import load_tasks
from .environment import Environment, MultiTurnEnv, SingleTurnEnv, ToolEnv
from .episode import Episode
from .program import ProgramFailed, ProgramResult
from .rubric import Rubric, reward_context
from .tools import tool_spec

__all__ = [
    "AgentContext",
    "Environment",
    "Episode",
    "EpisodeResult",
    "Message",
    "MultiTurnEnv",
    "ProgramFailed",
    "ProgramResult",
    "Rubric",
    "SingleTurnEnv",
    "State",
    "StepResult",
    "Task",
    "ToolEnv",
    "load_tasks",
    "reward_context",
    "tool_spec",
]
