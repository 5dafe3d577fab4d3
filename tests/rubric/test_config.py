"""The rubric service's TOML configuration and its RubricSpec round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
from rollmesh.config import load_config
from rollmesh.errors import InvalidArgumentError
from rollmesh.proto.v1 import rubric_pb2 as rubric_pb
from rollmesh.rubric.config import (
    AdvantageConfig,
    RewardFunctionConfig,
    RubricConfig,
    RubricServiceConfig,
    from_spec,
    to_spec,
)

TOML = """
[server]
port = 0
max_concurrent_rpcs = 8

[[rubric]]
name = "math"
description = "maths with a format metric"
advantage = { normalize_std = true }

[[rubric.function]]
name = "correct"
function = "math_equivalence"

[[rubric.function]]
name = "boxed"
function = "answer_format"
weight = 0.0
params = { style = "boxed" }

[[rubric]]
name = "short"

[[rubric.function]]
name = "len"
function = "length_penalty"
weight = 0.5
[rubric.function.params]
max = 200
unit = "chars"
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rubric.toml"
    path.write_text(text)
    return path


def test_toml_with_rubric_and_function_tables(tmp_path: Path) -> None:
    cfg = load_config(RubricServiceConfig, _write(tmp_path, TOML), ["server.port=50999"])
    assert cfg.server.port == 50999 and cfg.server.max_concurrent_rpcs == 8
    assert [r.name for r in cfg.rubric] == ["math", "short"]
    math_rubric = cfg.rubric[0]
    assert math_rubric.advantage == AdvantageConfig(normalize_std=True)
    assert [(f.name, f.function, f.weight) for f in math_rubric.functions] == [
        ("correct", "math_equivalence", 1.0),
        ("boxed", "answer_format", 0.0),
    ]
    assert cfg.rubric[1].functions[0].params == {"max": 200, "unit": "chars"}


def test_spec_round_trip() -> None:
    cfg = RubricConfig(
        name="r",
        description="d",
        functions=[
            RewardFunctionConfig(name="a", function="regex", weight=0.5, params={"pattern": "x+", "full_match": True}),
            RewardFunctionConfig(name="b", function="pkg.mod:fn"),
        ],
        advantage=AdvantageConfig(leave_one_out=True),
    )
    spec = to_spec(cfg)
    assert isinstance(spec, rubric_pb.RubricSpec)
    assert spec.functions[0].params["pattern"] == "x+" and spec.advantage.leave_one_out
    assert from_spec(spec) == cfg


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[[rubric]]\nname = "r"\n', "no reward functions"),
        ('[[rubric]]\nname = "r"\n[[rubric.function]]\nname = "a"\n', "function: Field required"),
        ('[[rubric]]\nname = "r"\n[[rubric.function]]\nname = "a"\nfunction = "exact_match"\nwieght = 1\n', "wieght"),
        (
            '[[rubric]]\nname = "r"\n[[rubric.function]]\nname = "a"\nfunction = "f"\n'
            '[[rubric.function]]\nname = "a"\nfunction = "g"\n',
            "unique",
        ),
        ('[[rubric]]\nname = "bad name"\n[[rubric.function]]\nname = "a"\nfunction = "f"\n', "rubric name"),
        ('[[rubric]]\nname = "r"\n[[rubric.function]]\nname = "rubric/x"\nfunction = "f"\n', "reserved"),
        ("[server]\nmax_group_size = 0\n", "max_group_size"),
    ],
)
def test_bad_config_names_the_problem(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(InvalidArgumentError, match=expected):
        load_config(RubricServiceConfig, _write(tmp_path, text))


def test_bad_inline_spec_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgumentError, match="no reward functions") as e:
        from_spec(rubric_pb.RubricSpec(name="empty"))
    assert e.value.reason == "BAD_RUBRIC"
    spec = rubric_pb.RubricSpec(functions=[rubric_pb.RewardFunctionSpec(name="a", function="f", weight=float("nan"))])
    with pytest.raises(InvalidArgumentError, match="finite"):
        from_spec(spec)
