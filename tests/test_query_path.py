"""The plain `edgekit run` path (no plan) is the runtime floor: it loads neither the planner nor a terminal renderer."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = r"""
import json, sys
from edgekit.cli import main, run_cmd  # the run command, as `edgekit run` registers it
from edgekit.runtime.query import Query, check_query, run_query
main._register()
print(json.dumps(sorted(sys.modules)))
"""


def test_plain_run_loads_no_planner_and_no_renderer():
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    loaded = json.loads(r.stdout)
    assert "edgekit.plan.planner" not in loaded
    assert not [m for m in loaded if m == "edgekit.plan" or m.startswith("edgekit.plan.")], loaded
    renderers = [m for m in loaded if m.startswith("edgekit.") and "render" in m]
    assert not renderers, renderers
    assert "matplotlib" not in loaded


def test_plan_file_helpers():
    from edgekit.schemas.plan import load_plan

    p = load_plan(Path(__file__).parent / "fixtures" / "plan-v2.json")
    assert p.planned_model() == p.chosen.model_id
    opts, overrides = p.options_with({})
    assert opts == p.chosen.options and overrides == []
    opts, overrides = p.options_with({"n": 1, "max_tokens": p.chosen.options.max_tokens}, "other-model")
    assert opts.n == 1 and overrides == ["model=other-model (plan: qwen2.5-coder-0.5b-instruct)", "n=1 (plan: 3)"]
