"""Finding environments by module path, entry point name or .py file."""

from __future__ import annotations

import textwrap
import uuid

import pytest
from rollmesh.env import SingleTurnEnv
from rollmesh.env.loader import available, load_environments, parse_args
from rollmesh.errors import NotFoundError

TINY_ENV = """
from rollmesh.env import SingleTurnEnv


def load_environment(n: int = 2, name: str = "tiny"):
    rows = [{"task_id": f"t{i}", "question": f"echo {i}", "answer": str(i)} for i in range(n)]
    return SingleTurnEnv(name=name, tasks=rows, reward=lambda completion, answer: 1.0)
"""


def _write(tmp_path, source: str) -> str:
    path = tmp_path / f"env_{uuid.uuid4().hex[:8]}.py"  # unique: the loader registers the module by stem
    path.write_text(textwrap.dedent(source))
    return str(path)


def test_available_lists_the_builtin_entry_points() -> None:
    names = available()
    assert names["arithmetic"] == "rollmesh.examples.arithmetic"
    assert names["guess-number"] == "rollmesh.examples.guess_number"


def test_load_by_module_path() -> None:
    [env] = load_environments("rollmesh.examples.arithmetic", {"num_train": 3, "num_test": 2})
    assert env.name == "arithmetic" and {k: len(v) for k, v in env.splits.items()} == {"train": 3, "test": 2}


@pytest.mark.parametrize(("target", "name"), [("arithmetic", "arithmetic"), ("guess-number", "guess-number")])
def test_load_by_entry_point_name(target: str, name: str) -> None:
    [env] = load_environments(target)
    assert env.name == name


def test_load_by_py_file(tmp_path) -> None:
    path = _write(tmp_path, TINY_ENV)
    [env] = load_environments(path, {"n": 4, "name": "from-file"})
    assert isinstance(env, SingleTurnEnv)
    assert env.name == "from-file" and [t.task_id for t in env.tasks()] == ["t0", "t1", "t2", "t3"]


def test_load_several_environments_from_one_module(tmp_path) -> None:
    path = _write(
        tmp_path,
        """
        from rollmesh.env import SingleTurnEnv

        def load_environment():
            return [SingleTurnEnv(name=n, tasks=[{"question": "q"}]) for n in ("a", "b")]
        """,
    )
    assert [e.name for e in load_environments(path)] == ["a", "b"]


def test_parse_args_json_values() -> None:
    kwargs = parse_args(["num_train=5", "num_test=2", "seed=7", "ops=+-", "flag=true", "xs=[1, 2]", 's="42"', "e="])
    assert kwargs == {
        "num_train": 5,
        "num_test": 2,
        "seed": 7,
        "ops": "+-",
        "flag": True,
        "xs": [1, 2],
        "s": "42",
        "e": "",
    }
    with pytest.raises(ValueError, match="key=value"):
        parse_args(["novalue"])
    with pytest.raises(ValueError, match="key=value"):
        parse_args(["=1"])
    [env] = load_environments("arithmetic", parse_args(["num_train=5", "num_test=2", "ops=+"]))
    assert len(env.tasks("train")) == 5 and len(env.tasks("test")) == 2
    assert all("+" in t.prompt[-1]["content"] for t in env.tasks("train"))


@pytest.mark.parametrize("target", ["no-such-env", "rollmesh.examples.no_such_module", "missing_file_xyz.py"])
def test_unknown_target_lists_installed_names(target: str) -> None:
    with pytest.raises(NotFoundError) as info:
        load_environments(target)
    message = str(info.value)
    assert repr(target) in message
    assert "arithmetic" in message and "guess-number" in message


def test_module_without_load_environment() -> None:
    with pytest.raises(NotFoundError, match=r"'rollmesh\.parsing' has no load_environment"):
        load_environments("rollmesh.parsing")


def test_broken_dependency_is_not_reported_as_a_missing_environment(tmp_path, monkeypatch) -> None:
    name = f"broken_env_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text("import rollmesh_no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="rollmesh_no_such_dependency_xyz"):
        load_environments(name)


def test_load_environment_returning_something_else(tmp_path) -> None:
    path = _write(tmp_path, "def load_environment():\n    return ['not an env']\n")
    with pytest.raises(TypeError, match="returned str, not an Environment"):
        load_environments(path)
