"""wiki-search: the bundled corpus and questions, the FTS5 tools, the reward, and the env wiring."""

from __future__ import annotations

import json
import re

import pytest
from rollmesh.examples import wiki_search as ws

# ---- data ---------------------------------------------------------------------------------------


def test_corpus_shape() -> None:
    pages = ws.load_corpus()
    assert len(pages) >= 40
    for page_id, page in pages.items():
        assert page["page_id"] == page_id
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", page_id), page_id
        assert page["title"].strip()
        words = len(page["text"].split())
        assert 120 <= words <= 300, (page_id, words)


def test_questions_shape() -> None:
    questions = ws.load_questions()
    pages = ws.load_corpus()
    assert len(questions) >= 75
    assert len({q["task_id"] for q in questions}) == len(questions)
    assert {q["split"] for q in questions} == {"train", "test"}
    assert len(ws.load_questions("train")) >= 55
    assert len(ws.load_questions("test")) >= 18
    for q in questions:
        assert q["page_id"] in pages, q
        assert q["question"].strip().endswith("?"), q
        assert isinstance(q["aliases"], list)
        assert len(q["answer"].split()) <= 5, q


def test_every_answer_is_stated_in_its_page() -> None:
    pages = ws.load_corpus()
    for q in ws.load_questions():
        text = pages[q["page_id"]]["text"].lower()
        forms = [q["answer"], *q["aliases"]]
        assert any(f.lower() in text for f in forms), (q["task_id"], forms)


def test_every_gold_answer_earns_the_reward() -> None:
    for q in ws.load_questions():
        info = {"aliases": q["aliases"], "page_id": q["page_id"]}
        for form in [q["answer"], *q["aliases"]]:
            completion = [{"role": "assistant", "content": f"ANSWER: {form}"}]
            assert ws.correct_answer(completion, q["answer"], info) == 1.0, (q["task_id"], form)


# ---- search_pages -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "page_id"),
    [
        ("Aswan High Dam", "nile"),
        ("Brigach Breg", "danube"),
        ("Tenzing Norgay Hillary", "mount-everest"),
        ("Pliny the Elder eruption", "mount-vesuvius"),
        ("separate condenser", "steam-engine"),
        ("waggle dance", "honey-bee"),
        ("Reykjavik smoky bay", "reykjavik"),  # diacritics folded: Reykjavík
        ("Hofdi House summit", "reykjavik"),
        ("Deep Blue Kasparov", "chess"),
        ("haemocyanin", "octopus"),
        ("Who invented the piano?", "piano"),
        ("Zamenhof", "esperanto"),
        ("Angara", "lake-baikal"),
    ],
)
async def test_search_finds_the_page(query: str, page_id: str) -> None:
    out = await ws.search_pages(query)
    first = out.splitlines()[0]
    assert first.startswith(f"{page_id}: "), out
    assert " — " in first


async def test_search_line_format_and_limit() -> None:
    out = await ws.search_pages("river", limit=2)
    lines = out.splitlines()
    assert 1 <= len(lines) <= 2
    pages = ws.load_corpus()
    for line in lines:
        page_id, rest = line.split(": ", 1)
        assert page_id in pages
        assert rest.startswith(pages[page_id]["title"] + " — ")
        assert "\n" not in rest


@pytest.mark.parametrize("limit", [0, -3, 100, "3", "many", None, 2.7])
async def test_search_limit_is_clamped(limit) -> None:
    out = await ws.search_pages("the river lake mountain city", limit=limit)
    assert 1 <= len(out.splitlines()) <= ws.MAX_RESULTS


async def test_search_falls_back_to_any_term() -> None:
    # No page contains all of these words; the OR fallback still ranks the Nile page first.
    out = await ws.search_pages("Khartoum zeppelin quasar")
    assert out.splitlines()[0].startswith("nile: ")


@pytest.mark.parametrize(
    "query",
    [
        'AND OR "(',
        '"',
        '""',
        "(",
        ")",
        "*",
        "^nile",
        "NEAR(nile dam, 3)",
        "title:nile",
        "col:x - + : {}",
        "NOT",
        "a AND",
        "'; DROP TABLE pages; --",
        "Höfði ß Ł ǅ 東京 🚀",
        "x" * 5000,
        " ".join(["nile"] * 500),
        "under_score",
        "\x00\n\t",
    ],
)
async def test_weird_queries_do_not_raise(query: str) -> None:
    out = await ws.search_pages(query)
    assert isinstance(out, str) and out


@pytest.mark.parametrize("query", ["", "   ", "!!! ??? ...", "—", "()"])
async def test_query_without_words_gets_a_helpful_message(query: str) -> None:
    out = await ws.search_pages(query)
    assert "no searchable words" in out


async def test_search_without_matches() -> None:
    out = await ws.search_pages("zyzzyvaqwerty")
    assert out.startswith("No pages matched")


def test_index_is_built_once() -> None:
    assert ws._index() is ws._index()
    (count,) = ws._index().conn.execute("SELECT count(*) FROM pages").fetchone()
    assert count == len(ws.load_corpus())


# ---- read_page ----------------------------------------------------------------------------------


async def test_read_page() -> None:
    out = await ws.read_page("nile")
    page = ws.load_corpus()["nile"]
    assert out.startswith("# Nile\n")
    assert page["text"] in out


@pytest.mark.parametrize("page_id", [" Nile ", '"nile"', "NILE"])
async def test_read_page_tolerates_case_quotes_and_spaces(page_id: str) -> None:
    assert (await ws.read_page(page_id)).startswith("# Nile\n")


async def test_read_page_accepts_a_title() -> None:
    assert (await ws.read_page("Lake Baikal")).startswith("# Lake Baikal\n")


@pytest.mark.parametrize("page_id", ["atlantis", "", "../../etc/passwd", "nile' OR 1=1", "x" * 1000])
async def test_read_page_unknown_id(page_id: str) -> None:
    out = await ws.read_page(page_id)
    assert out.startswith("Unknown page_id")
    assert "search_pages" in out


async def test_read_page_suggests_close_ids() -> None:
    assert "nile" in await ws.read_page("nil")


# ---- rewards ------------------------------------------------------------------------------------


def _done(content: str) -> list[dict]:
    return [{"role": "assistant", "content": content}]


INFO = {"aliases": ["Orellana"], "page_id": "amazon-river"}


@pytest.mark.parametrize(
    "content",
    [
        "ANSWER: Francisco de Orellana",
        "answer: francisco de orellana.",
        "I read the page.\nANSWER: Orellana",
        "**ANSWER:** Francisco de Orellana",
        "Answer : The explorer Francisco de Orellana",
        "Francisco de Orellana",  # no marker: the whole content
        "<think>ANSWER: Pizarro?</think>\nANSWER: Orellana",
        "ANSWER: Pizarro\nOn reflection... ANSWER: Orellana",
    ],
)
def test_correct_answer_accepts(content: str) -> None:
    assert ws.correct_answer(_done(content), "Francisco de Orellana", INFO) == 1.0


@pytest.mark.parametrize(
    "content",
    [
        "ANSWER: Pizarro",
        "ANSWER:",
        "",
        "ANSWER: Orellanas",  # not a whole-word match
        # the gold answer buried in a long response does not count
        "ANSWER: " + "It might be Pizarro or Cabral or Magellan or Cortes or Balboa or maybe Orellana",
        "ANSWER: Orellana\nANSWER: Pizarro",  # the last answer counts
    ],
)
def test_correct_answer_rejects(content: str) -> None:
    assert ws.correct_answer(_done(content), "Francisco de Orellana", INFO) == 0.0


def test_correct_answer_normalisation() -> None:
    assert ws.correct_answer(_done("ANSWER: 8849 m"), "8,849 metres", {"aliases": ["8849"]}) == 1.0
    assert ws.correct_answer(_done("ANSWER: 8 849 metres"), "8,849 metres", {}) == 0.0
    assert ws.correct_answer(_done("ANSWER: Hofdi House"), "Höfði House", {}) == 1.0
    assert ws.correct_answer(_done("ANSWER: heian kyo"), "Heian-kyō", {}) == 1.0
    assert ws.correct_answer(_done("ANSWER: The Doge."), "doge", {}) == 1.0
    assert ws.correct_answer(_done("ANSWER: in 1970"), "1970", {}) == 1.0
    assert ws.correct_answer(_done("ANSWER: 1971"), "1970", {}) == 0.0
    assert ws.correct_answer(_done("ANSWER: 19700"), "1970", {}) == 0.0


def test_normalize_answer() -> None:
    assert ws.normalize_answer("  The  Höfði-House, ") == "hofdi house"
    assert ws.normalize_answer("21,196 km") == "21196 km"
    assert ws.normalize_answer("St. Mary's") == "st mary s"
    assert ws.normalize_answer("A") == ""


def test_correct_answer_uses_the_last_assistant_message() -> None:
    completion = [
        {"role": "assistant", "content": "ANSWER: Khartoum", "tool_calls": []},
        {"role": "user", "content": "Are you sure?"},
        {"role": "assistant", "content": "ANSWER: Cairo"},
    ]
    assert ws.correct_answer(completion, "Khartoum", {}) == 0.0
    assert ws.correct_answer(completion[:1], "Khartoum", {}) == 1.0
    assert ws.correct_answer([], "Khartoum", {}) == 0.0
    assert ws.correct_answer([{"role": "assistant", "content": None}], "Khartoum", None) == 0.0
    parts = [{"role": "assistant", "content": [{"type": "text", "text": "ANSWER: Khartoum"}]}]
    assert ws.correct_answer(parts, "Khartoum", {}) == 1.0


def _call(i: int, name: str, **arguments) -> dict:
    return {"id": f"c{i}", "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}


def test_used_tools() -> None:
    completion = [
        {"role": "assistant", "content": "", "tool_calls": [_call(1, "search_pages", query="nile")]},
        {"role": "tool", "tool_call_id": "c1", "name": "search_pages", "content": "nile: Nile — ..."},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [_call(2, "read_page", page_id="nile"), _call(3, "read_page", page_id="danube")],
        },
        {"role": "tool", "tool_call_id": "c2", "name": "read_page", "content": "# Nile"},
        {"role": "tool", "tool_call_id": "c3", "name": "read_page", "content": "# Danube"},
        {"role": "assistant", "content": "ANSWER: Khartoum"},
    ]
    assert ws.used_tools(completion) == 3.0
    assert ws.used_tools(completion[-1:]) == 0.0
    assert ws.used_tools([]) == 0.0
    assert ws.correct_answer(completion, "Khartoum", {}) == 1.0


# ---- the environment ----------------------------------------------------------------------------


def test_load_environment() -> None:
    env_sdk = pytest.importorskip("rollmesh.env")
    env = ws.load_environment()
    assert isinstance(env, env_sdk.ToolEnv)
    assert env.name == "wiki-search"
    assert env.max_turns == 8
    assert [fn.__name__ for fn in env.tools] == ["search_pages", "read_page"]
    assert set(env.splits) == {"train", "test"}
    assert len(env.tasks("train")) == len(ws.load_questions("train"))
    assert len(env.tasks("test")) == len(ws.load_questions("test"))
    assert env.reward_names == ["correct_answer", "used_tools"]

    task = env.tasks("train")[0]
    assert task.prompt[0] == {"role": "system", "content": ws.SYSTEM_PROMPT}
    assert task.prompt[-1]["role"] == "user"
    assert set(task.info) >= {"aliases", "page_id"}

    specs = {s["name"]: s for s in env.tool_specs()}
    search = specs["search_pages"]["parameters"]
    assert search["required"] == ["query"]
    assert search["properties"]["query"]["type"] == "string" and search["properties"]["query"]["description"]
    assert search["properties"]["limit"] == {
        "type": "integer",
        "description": search["properties"]["limit"]["description"],
        "default": 5,
    }
    read = specs["read_page"]["parameters"]
    assert read["required"] == ["page_id"] and read["properties"]["page_id"]["description"]


def test_load_environment_kwargs() -> None:
    pytest.importorskip("rollmesh.env")
    env = ws.load_environment(max_turns=3, num_train=5, num_test=2)
    assert env.max_turns == 3
    assert len(env.tasks("train")) == 5 and len(env.tasks("test")) == 2


async def test_scripted_episode_earns_the_reward() -> None:
    """An oracle policy (search, read the top hit, answer) through the SDK's Episode."""
    pytest.importorskip("rollmesh.env")
    env = ws.load_environment()
    for task in env.tasks("test")[:5]:
        episode = env.episode(task, seed=0)
        await episode.start()
        question = task.prompt[-1]["content"]
        step = await episode.step(
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [_call(1, "search_pages", query=question, limit=3)],
            }
        )
        assert not step.done
        top = step.messages[0]["content"].splitlines()[0].split(":", 1)[0]
        assert top == task.info["page_id"]
        step = await episode.step(
            {"role": "assistant", "content": "", "tool_calls": [_call(2, "read_page", page_id=top)]}
        )
        assert task.answer.lower() in step.messages[0]["content"].lower() or any(
            a.lower() in step.messages[0]["content"].lower() for a in task.info["aliases"]
        )
        step = await episode.step({"role": "assistant", "content": f"ANSWER: {task.answer}"})
        assert step.done and step.stop_reason == "done"
        assert step.rewards == {"correct_answer": 1.0, "used_tools": 2.0}
        assert step.reward == 1.0
        await episode.close()
