"""The chain-arithmetic agent: an ordinary program that calls an OpenAI-compatible chat API.

It reads {"messages": [...], "steps": [[op, operand], ...]} on stdin (the task's prompt already
asks the first step), asks the model one step at a time in one growing conversation, feeding each
answer into the next question, and prints {"messages": [...], "answer": ...} as its last line.
The endpoint comes from OPENAI_BASE_URL, OPENAI_API_KEY and OPENAI_MODEL, as for any program written
against the `openai` package; this one speaks plain HTTP (urllib) so that it starts fast and needs
nothing installed. Nothing in it knows about rollmesh.

    echo '{"messages": [...], "steps": [["+", 3]]}' | OPENAI_BASE_URL=... OPENAI_API_KEY=... python agent.py
"""

from __future__ import annotations

import json
import os
import re
import sys
import urllib.request

NUMBER = re.compile(r"-?\d+")
MAX_TOKENS = 16


def question(value: int, op: str, operand: int) -> str:
    return f"What is {value} {op} {operand}? Reply with the number only."


def parse(text: str) -> int | None:
    found = NUMBER.findall(text or "")
    return int(found[-1]) if found else None


def chat(messages: list[dict]) -> str:
    """One chat completion: POST {OPENAI_BASE_URL}/chat/completions with the API key as bearer token."""
    body = {"model": os.environ.get("OPENAI_MODEL") or "default", "messages": messages, "max_tokens": MAX_TOKENS}
    request = urllib.request.Request(
        os.environ["OPENAI_BASE_URL"].rstrip("/") + "/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {os.environ['OPENAI_API_KEY']}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.load(response)["choices"][0]["message"]["content"] or ""


def main() -> int:
    job = json.load(sys.stdin)
    messages = list(job["messages"])
    steps = job["steps"]
    answer = None
    for i in range(len(steps)):
        text = chat(messages)
        messages.append({"role": "assistant", "content": text})
        answer = parse(text)
        if answer is None or i + 1 == len(steps):
            break  # no number to carry on with: the agent gives up
        op, operand = steps[i + 1]
        messages.append({"role": "user", "content": question(answer, op, operand)})
    print(json.dumps({"messages": messages, "answer": answer}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
