"""Tools are plain async (or sync) Python functions; their JSON schema comes from the signature
and the Google-style docstring, so a tool is written once and described nowhere else."""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import types
import typing
from collections.abc import Callable
from typing import Any, Literal, Union

ToolFn = Callable[..., Any]

_JSON_TYPES: dict[type, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}
_ARGS_HEADER = re.compile(r"^\s*(Args|Arguments|Parameters):\s*$")
_SECTIONS = "Args|Arguments|Parameters|Returns?|Raises|Yields|Examples?|Notes?|Attributes|See Also|Todo|Warnings?"
_SECTION_HEADER = re.compile(rf"^\s*({_SECTIONS}):\s*$")
_ARG_LINE = re.compile(r"^\s*(\*{0,2}\w+)\s*(\([^)]*\))?\s*:\s*(.*)$")


def _type_schema(tp: Any) -> dict[str, Any]:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        return _type_schema(non_none[0]) if len(non_none) == 1 else {"anyOf": [_type_schema(a) for a in non_none]}
    if origin is Literal:
        return {"enum": list(args)}
    if origin in (list, tuple, set, frozenset) or tp in (list, tuple, set):
        return {"type": "array", "items": _type_schema(args[0])} if args else {"type": "array"}
    if origin is dict or tp is dict:
        return {"type": "object"}
    if tp in _JSON_TYPES:
        return {"type": _JSON_TYPES[tp]}
    return {}


def _docstring_parts(fn: ToolFn) -> tuple[str, dict[str, str]]:
    """Returns (description, {arg: description}) from a Google-style docstring."""
    description: list[str] = []
    params: dict[str, str] = {}
    section, current, arg_indent = "description", "", -1
    for line in (inspect.getdoc(fn) or "").splitlines():
        if _SECTION_HEADER.match(line):
            section = "args" if _ARGS_HEADER.match(line) else "other"
            continue
        if section == "description":
            description.append(line)
        elif section == "args" and line.strip():
            indent = len(line) - len(line.lstrip())
            m = _ARG_LINE.match(line)
            if m and (arg_indent < 0 or indent == arg_indent):
                arg_indent, current = indent, m.group(1).lstrip("*")
                params[current] = m.group(3).strip()
            elif current:
                params[current] = f"{params[current]} {line.strip()}".strip()
    return "\n".join(description).strip(), params


def tool_spec(fn: ToolFn) -> dict[str, Any]:
    """OpenAI-style function description: {"name", "description", "parameters"}."""
    description, arg_docs = _docstring_parts(fn)
    hints = typing.get_type_hints(fn)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, param in inspect.signature(fn).parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        schema = _type_schema(hints.get(name, Any))
        if name in arg_docs:
            schema["description"] = arg_docs[name]
        if param.default is inspect.Parameter.empty:
            required.append(name)
        elif param.default is not None:
            schema["default"] = param.default
        properties[name] = schema
    parameters: dict[str, Any] = {"type": "object", "properties": properties, "required": required}
    return {"name": fn.__name__, "description": description, "parameters": parameters}


async def call_tool(fn: ToolFn, arguments_json: str, *, timeout_s: float) -> str:
    """Runs one tool call; every failure becomes text the model can read, never an exception,
    because a bad tool call is the policy's mistake, not the environment's."""
    try:
        args = json.loads(arguments_json) if arguments_json.strip() else {}
    except json.JSONDecodeError as e:
        return f"Error: arguments are not valid JSON ({e.msg}). Call {fn.__name__} with a JSON object."
    if not isinstance(args, dict):
        return f"Error: arguments must be a JSON object, got {type(args).__name__}."
    try:
        inspect.signature(fn).bind(**args)
    except TypeError as e:
        return f"Error: bad arguments for {fn.__name__}: {e}."
    try:
        if inspect.iscoroutinefunction(fn):
            result = await asyncio.wait_for(fn(**args), timeout_s)
        else:
            result = await asyncio.wait_for(asyncio.to_thread(fn, **args), timeout_s)
    except TimeoutError:
        return f"Error: {fn.__name__} timed out after {timeout_s:g} s."
    except Exception as e:  # the tool's own failure, reported to the model
        return f"Error: {fn.__name__} failed: {type(e).__name__}: {e}"
    return result if isinstance(result, str) else json.dumps(result, default=str)
