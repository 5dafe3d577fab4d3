"""What the verifiers adapter cannot host is refused when the environment loads, with the reason
(`rollmesh env serve` prints it and exits with 2, like any load error): a group-level reward
function, an EnvGroup, and a verifiers v1 harness in a sandbox runtime."""

from __future__ import annotations

import json
import subprocess

from .conftest import ENVS, ROOT, VF_BIN

# One verifiers process for all cases: importing verifiers is the slow part.
LOAD_ALL = f"""
import json
from rollmesh.env.loader import load_environments
from rollmesh.errors import RollmeshError
from rollmesh.integrations import verifiers
errors = {{}}
cases = {{
    "group": ({str(ENVS / "vf_unsupported.py")!r}, {{"kind": "group"}}),
    "envgroup": ({str(ENVS / "vf_unsupported.py")!r}, {{"kind": "envgroup"}}),
    "v1-prime": ({str(ENVS / "vf_v1_sum.py")!r}, {{"runtime": "prime"}}),
}}
for case, (path, args) in cases.items():
    try:
        load_environments(path, args, adapters=[verifiers.adapt])
    except RollmeshError as e:
        errors[case] = [e.reason, str(e)]
print(json.dumps(errors))
"""


def test_unsupported_environments_are_refused_with_the_reason() -> None:
    done = subprocess.run([VF_BIN / "python", "-c", LOAD_ALL], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    errors = json.loads(done.stdout.splitlines()[-1])
    assert errors["group"][0] == errors["envgroup"][0] == errors["v1-prime"][0] == "NOT_SUPPORTED", errors
    assert "group-level reward functions" in errors["group"][1]
    assert "EnvGroup" in errors["envgroup"][1] and "[[rollout.envs]]" in errors["envgroup"][1]
    assert "'prime' runtime" in errors["v1-prime"][1] and "SubprocessConfig" in errors["v1-prime"][1]
