"""Renders client-supplied chat templates in a process of its own (see templates.TemplateSandbox).

A Jinja template is code: `{{ 'x' * 300000000 }}` allocates gigabytes (already while compiling,
by constant folding), nested loops spin for hours, and neither can be stopped inside the server's
process. Here both are bounded: the address space by RLIMIT_AS, the time by the server, which
kills this process when a render overruns. Standard library and jinja2 only, so it starts fast.

Protocol on stdin/stdout: one byte b"R" when ready, then per request an 8-byte big-endian length
and a JSON object {"template", "context", "max_chars"}, answered the same way with {"text"} or
{"error": "too_long" | "memory" | "template", "message"}.
"""

from __future__ import annotations

import json
import os
import resource
import struct
import sys
from collections import OrderedDict
from datetime import datetime
from typing import Any

from jinja2 import Template, nodes
from jinja2.exceptions import TemplateError
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

_LENGTH = struct.Struct(">Q")
_CACHED_TEMPLATES = 8


class _Generation(Extension):
    """`{% generation %}` of Hugging Face templates (it only marks assistant tokens for training
    masks, which the server does not ask for): renders its body."""

    tags = {"generation"}  # noqa: RUF012 (jinja's Extension API)

    def parse(self, parser: Any) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Any) -> str:
        return caller()


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _tojson(
    x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False
) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _environment() -> ImmutableSandboxedEnvironment:
    """The environment transformers renders chat templates in (same options, filters, globals)."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[_Generation, loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


class Renderer:
    def __init__(self) -> None:
        self.env = _environment()
        self._compiled: OrderedDict[str, Template] = OrderedDict()

    def _template(self, source: str) -> Template:
        template = self._compiled.pop(source, None) or self.env.from_string(source)
        self._compiled[source] = template
        while len(self._compiled) > _CACHED_TEMPLATES:
            self._compiled.popitem(last=False)
        return template

    def render(self, request: dict[str, Any]) -> dict[str, Any]:
        max_chars = int(request["max_chars"])
        try:
            parts: list[str] = []
            size = 0
            for chunk in self._template(request["template"]).generate(**request["context"]):
                size += len(chunk)
                if size > max_chars:  # stop at the first chunk over: the rest is never produced
                    return {"error": "too_long", "message": f"more than {max_chars} characters"}
                parts.append(chunk)
            return {"text": "".join(parts)}
        except MemoryError:
            return {"error": "memory", "message": "the template needs more memory than the renderer has"}
        except RecursionError:
            return {"error": "template", "message": "the template recurses too deeply"}
        except Exception as e:  # jinja's own errors, and whatever a template's operations raise
            return {"error": "template", "message": f"{type(e).__name__}: {e}"[:1000]}


def main() -> None:
    memory_bytes = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    os.nice(5)  # a long render yields the CPU to the server it works for
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    renderer = Renderer()
    stdout.write(b"R")
    stdout.flush()
    while True:
        head = stdin.read(_LENGTH.size)
        if len(head) < _LENGTH.size:
            return  # the server closed the pipe
        (size,) = _LENGTH.unpack(head)
        try:
            reply = renderer.render(json.loads(stdin.read(size)))
            data = json.dumps(reply, ensure_ascii=False).encode()
        except MemoryError:
            data = b'{"error": "memory", "message": "the request does not fit the renderer\'s memory"}'
        stdout.write(_LENGTH.pack(len(data)) + data)
        stdout.flush()


if __name__ == "__main__":
    main()
