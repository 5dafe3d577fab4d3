"""wiki-search: answer questions by searching and reading a small offline encyclopedia.

The corpus (`corpus.jsonl`, ~40 short articles) ships with the package and is indexed once per
process in an in-memory SQLite FTS5 table (bm25 ranking, snippets). The policy has two tools,
`search_pages` and `read_page`, and ends the episode with a message without tool calls that
contains "ANSWER: <answer>".

Rewards: `correct_answer` (weight 1) compares the normalised answer with the gold answer and its
aliases; `used_tools` (weight 0, a metric) counts the tool calls made.
"""

from __future__ import annotations

import difflib
import json
import re
import sqlite3
import threading
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rollmesh.env import ToolEnv

__all__ = [
    "SYSTEM_PROMPT",
    "correct_answer",
    "extract_answer",
    "load_corpus",
    "load_environment",
    "load_questions",
    "normalize_answer",
    "read_page",
    "search_pages",
    "used_tools",
]

SYSTEM_PROMPT = """\
You answer questions using a small offline encyclopedia. You have two tools:
- search_pages(query, limit): full-text search; returns matching pages as lines "page_id: title — snippet".
- read_page(page_id): returns the full text of a page, given a page_id from the search results.

Search with a few distinctive keywords from the question, read the most relevant page, and check \
that the page really states the answer. Base your answer on the encyclopedia, not on memory.
When you are done, reply with a message that calls no tool and ends with one line:
ANSWER: <answer>
The answer should be short: a name, a number, a year, a date or a place, as written in the page."""

MAX_RESULTS = 10
_MAX_QUERY_TOKENS = 32
_MAX_ANSWER_WORDS = 12

# Words that carry no signal in a full-text query; dropped unless nothing else is left.
_STOPWORDS = frozenset(
    "a about above after again all also an and any are as at be been before being between both but by "
    "can could did do does during each for from had has have he her here his how i if in into is it its "
    "me more most my no nor not of on once only or other our out over own same she should so some such "
    "than that the their them then there these they this those through to too under until up very was "
    "we were what when where which while who whom whose why will with would you your".split()
)


# ---- corpus and index ---------------------------------------------------------------------------


def _read_jsonl(name: str) -> list[dict[str, Any]]:
    text = resources.files(__name__).joinpath(name).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@cache
def load_corpus() -> dict[str, dict[str, str]]:
    """The bundled pages: {page_id: {"page_id", "title", "text"}}, in corpus order."""
    return {row["page_id"]: row for row in _read_jsonl("corpus.jsonl")}


@cache
def _questions() -> tuple[dict[str, Any], ...]:
    return tuple(_read_jsonl("questions.jsonl"))


def load_questions(split: str | None = None) -> list[dict[str, Any]]:
    """The bundled questions (all, or one split) as stored: task_id, question, answer, aliases,
    page_id, split."""
    return [dict(q) for q in _questions() if split is None or q["split"] == split]


@dataclass
class _Index:
    conn: sqlite3.Connection
    lock: threading.Lock = field(default_factory=threading.Lock)

    def query(self, match: str, limit: int) -> list[tuple[str, str, str]]:
        sql = (
            "SELECT page_id, title, snippet(pages, 2, '', '', ' … ', 24) FROM pages "
            "WHERE pages MATCH ? ORDER BY bm25(pages, 0.0, 4.0, 1.0) LIMIT ?"
        )
        with self.lock:
            return self.conn.execute(sql, (match, limit)).fetchall()


@cache
def _index() -> _Index:
    """The FTS5 index over the corpus, built once per process in memory."""
    conn = sqlite3.connect(":memory:", check_same_thread=False)
    try:
        conn.execute(
            "CREATE VIRTUAL TABLE pages USING fts5("
            "page_id UNINDEXED, title, text, tokenize = 'porter unicode61 remove_diacritics 2')"
        )
    except sqlite3.OperationalError:  # SQLite < 3.27 lacks remove_diacritics 2
        conn.execute(
            "CREATE VIRTUAL TABLE pages USING fts5("
            "page_id UNINDEXED, title, text, tokenize = 'porter unicode61 remove_diacritics 1')"
        )
    conn.executemany(
        "INSERT INTO pages (page_id, title, text) VALUES (?, ?, ?)",
        [(p["page_id"], p["title"], p["text"]) for p in load_corpus().values()],
    )
    conn.commit()
    return _Index(conn)


def _query_terms(query: str) -> list[str]:
    """Word tokens of a free-text query, deduplicated, without stopwords (unless only stopwords)."""
    tokens = list(dict.fromkeys(t.lower() for t in re.findall(r"\w+", query)))
    content = [t for t in tokens if t not in _STOPWORDS]
    return (content or tokens)[:_MAX_QUERY_TOKENS]


def _fts_match(terms: Sequence[str], operator: str) -> str:
    # Every term becomes an FTS5 string literal, so no user text is ever parsed as query syntax.
    return f" {operator} ".join('"' + t.replace('"', '""') + '"' for t in terms)


def _search(query: str, limit: int) -> list[tuple[str, str, str]]:
    """Pages matching all terms first (best bm25 first), then pages matching any term."""
    terms = _query_terms(query)
    if not terms:
        return []
    index = _index()
    results = index.query(_fts_match(terms, "AND"), limit)
    if len(results) < limit and len(terms) > 1:
        seen = {r[0] for r in results}
        for row in index.query(_fts_match(terms, "OR"), limit + len(results)):
            if row[0] not in seen and len(results) < limit:
                results.append(row)
                seen.add(row[0])
    return results


def _clamp_limit(limit: Any) -> int:
    try:
        value = int(limit)
    except (TypeError, ValueError):
        value = 5
    return max(1, min(MAX_RESULTS, value))


# ---- tools --------------------------------------------------------------------------------------


async def search_pages(query: str, limit: int = 5) -> str:
    """Search the encyclopedia for pages matching keywords.

    Returns one line per matching page, best match first, formatted as
    "page_id: title — snippet". Pass a page_id to read_page to read the whole page.

    Args:
        query: Keywords to search for, e.g. "Aswan High Dam completed". Plain words work best.
        limit: Maximum number of pages to return (1 to 10).
    """
    query = "" if query is None else str(query)
    if not _query_terms(query):
        return "The query contains no searchable words. Search with a few keywords, e.g. 'Nile dam'."
    rows = _search(query, _clamp_limit(limit))
    if not rows:
        return f"No pages matched {query!r}. Try other or fewer keywords."
    lines = []
    for page_id, title, snippet in rows:
        snippet = " ".join(snippet.split())
        lines.append(f"{page_id}: {title} — {snippet}")
    return "\n".join(lines)


async def read_page(page_id: str) -> str:
    """Read the full text of an encyclopedia page.

    Args:
        page_id: The page's id as shown by search_pages, e.g. "nile".
    """
    pages = load_corpus()
    key = str(page_id or "").strip().strip("\"'`").strip().lower()
    page = pages.get(key)
    if page is None:  # tolerate a title or a spaced id
        slug = re.sub(r"[^\w]+", "-", key).strip("-")
        page = pages.get(slug) or next((p for p in pages.values() if p["title"].lower() == key), None)
    if page is None:
        close = difflib.get_close_matches(key, list(pages), n=3, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        return f"Unknown page_id {page_id!r}.{hint} Use search_pages to find valid page ids."
    return f"# {page['title']}\npage_id: {page['page_id']}\n\n{page['text']}"


# ---- rewards ------------------------------------------------------------------------------------

_THINK = re.compile(r"<think>.*?</think>", re.IGNORECASE | re.DOTALL)
_ANSWER_MARK = re.compile(r"\banswer\s*\**\s*:", re.IGNORECASE)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
# Letters that Unicode does not decompose into a base letter plus accents.
_FOLD = str.maketrans({"ð": "d", "đ": "d", "þ": "th", "æ": "ae", "œ": "oe", "ø": "o", "ł": "l", "ß": "ss", "ı": "i"})


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):  # OpenAI content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, Mapping))
    return str(content)


def _last_assistant_text(completion: Any) -> str:
    if isinstance(completion, str):
        return completion
    for message in reversed(list(completion or [])):
        if isinstance(message, Mapping) and message.get("role") == "assistant":
            return _text(message.get("content"))
    return ""


def extract_answer(text: str) -> str:
    """The text after the last "ANSWER:" (its first non-empty line); else the whole text."""
    text = _THINK.sub(" ", text)
    marks = list(_ANSWER_MARK.finditer(text))
    if not marks:
        return text.strip()
    rest = text[marks[-1].end() :]
    return next((line.strip() for line in rest.splitlines() if line.strip()), "")


def normalize_answer(text: str) -> str:
    """Lowercase, without accents, punctuation, articles or extra whitespace; "8,849" -> "8849"."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).lower().translate(_FOLD)
    text = re.sub(r"(?<=\d),(?=\d{3})", "", text)
    text = re.sub(r"[\W_]+", " ", text)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def correct_answer(completion: list[dict[str, Any]], answer: str, info: dict[str, Any] | None = None) -> float:
    """1.0 when the final answer matches the gold answer or an alias, else 0.0.

    A match is equality after normalisation, or the normalised gold answer appearing as whole
    words inside a short (<= 12 words) normalised response.
    """
    predicted = normalize_answer(extract_answer(_last_assistant_text(completion)))
    if not predicted:
        return 0.0
    golds = [answer, *((info or {}).get("aliases") or [])]
    short = len(predicted.split()) <= _MAX_ANSWER_WORDS
    for gold in golds:
        norm = normalize_answer(str(gold))
        if not norm:
            continue
        if predicted == norm or (short and f" {norm} " in f" {predicted} "):
            return 1.0
    return 0.0


def used_tools(completion: list[dict[str, Any]]) -> float:
    """The number of tool calls the policy made (a metric)."""
    if isinstance(completion, str):
        return 0.0
    return float(
        sum(
            len(m.get("tool_calls") or [])
            for m in completion or []
            if isinstance(m, Mapping) and m.get("role") == "assistant"
        )
    )


# ---- environment --------------------------------------------------------------------------------


def _task_rows(split: str, limit: int | None) -> list[dict[str, Any]]:
    rows = [
        {
            "task_id": q["task_id"],
            "question": q["question"],
            "answer": q["answer"],
            "info": {"aliases": list(q.get("aliases") or []), "page_id": q["page_id"]},
        }
        for q in load_questions(split)
    ]
    return rows if limit is None else rows[: max(0, int(limit))]


def load_environment(max_turns: int = 8, num_train: int | None = None, num_test: int | None = None) -> ToolEnv:
    """The wiki-search environment.

    Args:
        max_turns: Maximum number of assistant turns per episode.
        num_train: Use only the first N train questions (default: all).
        num_test: Use only the first N test questions (default: all).
    """
    from rollmesh.env import Rubric, ToolEnv

    return ToolEnv(
        name="wiki-search",
        version="0.1.0",
        description="Tool use over a small offline encyclopedia (SQLite FTS5): search, read, answer.",
        tasks={"train": _task_rows("train", num_train), "test": _task_rows("test", num_test)},
        tools=[search_pages, read_page],
        system_prompt=SYSTEM_PROMPT,
        max_turns=max_turns,
        reward=Rubric([correct_answer, used_tools], weights=[1.0, 0.0]),
    )
