"""`edgekit eval --backend openai` against a real OpenAI-compatible server on loopback
(llama-cpp-python's own server, serving SmolLM2)."""

import pytest
from conftest import free_port

from edgekit.errors import FetchError
from edgekit.evaluate.api import evaluate
from edgekit.schemas.table import load_table

pytest.importorskip("sse_starlette", reason="install the dev extra: pip install -e '.[dev]'")


def test_eval_against_openai_server(server, tmp_path):
    out = tmp_path / "remote.json"
    t = evaluate(
        "bigbench:object_counting",
        "smol",
        backend="openai",
        base_url=server,
        out_path=out,
        n_samples=2,
        max_tokens=16,
        limit=2,
        template="terse",
        seed=3,
    )
    again = load_table(out)
    assert again.backend.startswith("openai") and again.n_problems == 2 and again.n_samples == 2
    for p in again.problems:
        assert len(p.samples) == 2
        for s in p.samples:
            assert 0 <= s.tokens <= 16
    assert {r.aggregation for r in t.rows} >= {"majority"}


def test_unreachable_server_is_one_clear_error(tmp_path):
    with pytest.raises(FetchError) as ei:
        evaluate(
            "bigbench:object_counting",
            "smol",
            backend="openai",
            base_url=f"http://127.0.0.1:{free_port()}/v1",
            out_path=tmp_path / "x.json",
            n_samples=1,
            max_tokens=8,
            limit=1,
        )
    assert "\n" not in ei.value.one_line()
