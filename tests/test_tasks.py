"""Task loaders, correctness checks, the eval runner (fake sampler) and the OpenAI sampler."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from edgekit.errors import FetchError, UsageError
from edgekit.evaluate.tasks import load_task
from edgekit.runtime.aggregate import get_extractor

DATA = Path(__file__).resolve().parents[1] / "edgekit" / "data" / "bigbench"


# ----------------------------------------------------------------------------- bundled data
def test_bigbench_data_is_bundled_with_notice():
    notice = (DATA / "NOTICE.md").read_text()
    assert "Apache License, Version 2.0" in notice
    shared = Path("/work/shared/data/bigbench")
    for sub in ("object_counting", "date_understanding", "strategyqa"):
        ours = (DATA / sub / "task.json").read_bytes()
        assert b"canary GUID" in ours
        if shared.exists():
            assert ours == (shared / sub / "task.json").read_bytes(), sub


@pytest.mark.parametrize(
    "name,n,kind",
    [
        ("bigbench:object_counting", 1000, "number"),
        ("object_counting", 1000, "number"),
        ("bigbench:date_understanding", 369, "choice"),
        ("strategyqa", 2290, "yesno"),
    ],
)
def test_bigbench_loaders(name, n, kind):
    t = load_task(name)
    assert len(t.problems) == n and t.kind == kind and t.prompt_template == "cot"
    assert t.name.startswith("bigbench:") and t.split is None and not t.has_verifier
    assert len({p.id for p in t.problems}) == n
    assert all(
        p.prompt.rstrip().endswith(
            '"Answer: X", where X is '
            + {"number": "a single number.", "choice": "the option letter.", "yesno": "yes or no."}[kind]
        )
        for p in t.problems
    )


def test_object_counting_targets_are_digits():
    t = load_task("object_counting")
    raw = json.loads((DATA / "object_counting" / "task.json").read_text())["examples"]
    assert [p.target for p in t.problems] == [ex["target"][1] for ex in raw]
    assert all(p.target.isdigit() for p in t.problems)


def test_date_understanding_choices_are_shuffled_and_target_maps_to_score_1():
    t = load_task("date_understanding")
    raw = json.loads((DATA / "date_understanding" / "task.json").read_text())["examples"]
    for p, ex in zip(t.problems, raw):
        assert sorted(p.choices) == sorted(ex["target_scores"])
        assert ex["target_scores"][p.choices["ABCDEF".index(p.target)]] == 1
        for letter, choice in zip("ABCDEF", p.choices):
            assert f"({letter}) {choice}" in p.prompt
    letters = Counter(p.target for p in t.problems)
    assert len(letters) >= 5 and max(letters.values()) < 0.4 * len(t.problems)  # BIG-bench lists the answer first
    assert [p.choices for p in load_task("date_understanding").problems] == [p.choices for p in t.problems]


def test_strategyqa_targets():
    t = load_task("strategyqa")
    raw = json.loads((DATA / "strategyqa" / "task.json").read_text())["examples"]
    assert [p.target for p in t.problems] == [ex["target"].split(".")[0].lower() for ex in raw]
    assert set(p.target for p in t.problems) == {"yes", "no"}


def test_terse_template():
    assert load_task("object_counting", template="terse").problems[0].prompt.endswith("\nAnswer with a single number.")
    assert load_task("strategyqa", template="terse").problems[0].prompt.endswith("\nAnswer yes or no.")
    p = load_task("date_understanding", template="terse").problems[0]
    assert p.prompt.endswith("\nAnswer with the option letter.") and "Options:\n(A) " in p.prompt
    with pytest.raises(UsageError, match="template"):
        load_task("strategyqa", template="fancy")


def test_correctness_with_runtime_extractors():
    oc = load_task("object_counting")
    p = oc.problems[1]  # nine objects
    ex = lambda text: oc.extract(text, p, get_extractor)
    assert oc.is_correct(p, ex("Let me count: car, toaster... that is 9.\nAnswer: 9"))
    assert oc.is_correct(p, ex("There are nine objects."))
    assert oc.is_correct(p, "9.0") and oc.is_correct(p, "nine")
    assert not oc.is_correct(p, ex("Answer: 8")) and not oc.is_correct(p, None) and not oc.is_correct(p, ex("no idea"))

    du = load_task("date_understanding")
    q = du.problems[1]
    wrong = next(c for c in "ABCDEF" if c != q.target)
    assert du.is_correct(q, du.extract(f"Tomorrow is May 2.\nAnswer: ({q.target})", q, get_extractor))
    assert du.is_correct(q, q.target.lower()) and du.is_correct(q, f"({q.target})")
    assert du.is_correct(q, q.choices["ABCDEF".index(q.target)])  # the choice text itself
    assert not du.is_correct(q, wrong) and not du.is_correct(q, "Z")

    sq = load_task("strategyqa")
    r = sq.problems[1]  # "no"
    assert sq.is_correct(r, sq.extract("The Spice Girls have five members, 1 < 5.\nAnswer: No", r, get_extractor))
    assert not sq.is_correct(r, "yes") and not sq.is_correct(r, "maybe")


# ----------------------------------------------------------------------------- user JSONL
def write_jsonl(path: Path, rows) -> str:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return f"jsonl:{path}"


def test_jsonl_kinds(tmp_path):
    num = load_task(
        write_jsonl(
            tmp_path / "n.jsonl", [{"prompt": "2+2?", "answer": 4}, {"prompt": "1.5*2?", "answer": "3.0", "id": "x"}]
        )
    )
    assert num.kind == "number" and [p.id for p in num.problems] == ["1", "x"] and num.is_correct(num.problems[1], "3")
    ch = load_task(
        write_jsonl(
            tmp_path / "c.jsonl",
            [
                {"prompt": "Color of sky?", "choices": ["red", "blue"], "answer": "blue"},
                {"prompt": "Pick A", "choices": ["x", "y", "z"], "answer": "A"},
            ],
        )
    )
    assert ch.kind == "choice" and [p.target for p in ch.problems] == ["B", "A"]
    assert "(A) red\n(B) blue\n" in ch.problems[0].prompt and ch.is_correct(ch.problems[0], "B")
    yn = load_task(
        write_jsonl(
            tmp_path / "y.jsonl",
            [{"prompt": "Is ice cold?", "answer": "Yes"}, {"prompt": "Is fire cold?", "answer": "no"}],
        )
    )
    assert yn.kind == "yesno" and yn.is_correct(yn.problems[0], "yes") and not yn.is_correct(yn.problems[1], "yes")
    tx = load_task(
        write_jsonl(
            tmp_path / "t.jsonl",
            [{"prompt": "Capital of France?", "answer": "Paris"}, {"prompt": "2+2?", "answer": "4"}],
        ),
        template="terse",
    )
    assert tx.kind == "text" and tx.prompt_template == "terse"
    p = tx.problems[0]
    assert tx.is_correct(p, tx.extract("The capital is known.\nAnswer: Paris.", p, get_extractor))
    assert not tx.is_correct(p, "Lyon")


@pytest.mark.parametrize(
    "rows,match",
    [
        ([{"prompt": "a", "answer": "1"}, "{not json"], "line 2"),
        ([{"prompt": "a", "answer": "1"}, {"prompt": "b"}], "line 2 needs a field 'answer'"),
        ([{"answer": "1"}], "line 1 needs a non-empty string field 'prompt'"),
        (
            [{"prompt": "a", "answer": "1", "choices": ["x", "y"]}, {"prompt": "b", "answer": "2"}],
            "line 2 has no 'choices'",
        ),
        ([{"prompt": "a", "answer": "q", "choices": ["x", "y"]}], "line 1: answer 'q'"),
        ([{"prompt": "a", "answer": "1", "id": 1}, {"prompt": "b", "answer": "1", "id": 1}], "line 2: duplicate id"),
        ([{"prompt": "a", "answer": "1", "extra": 2}], "line 1 has unknown fields"),
        (["[1, 2]"], "line 1 needs"),
    ],
)
def test_jsonl_errors_name_the_line(tmp_path, rows, match):
    with pytest.raises(UsageError, match=re.escape(match)):
        load_task(write_jsonl(tmp_path / "bad.jsonl", rows))


def test_unknown_task_lists_known_tasks(tmp_path):
    with pytest.raises(UsageError) as e:
        load_task("gsm8k")
    assert "humaneval" in e.value.fix and "bigbench:strategyqa" in e.value.fix
    with pytest.raises(UsageError, match="does not exist"):
        load_task(f"jsonl:{tmp_path}/missing.jsonl")


def test_split_and_limit():
    full = load_task("strategyqa")
    t = load_task("strategyqa", split="10:20")
    assert t.split == "10:20" and [p.id for p in t.problems] == [p.id for p in full.problems[10:20]]
    assert load_task("strategyqa", split="10:20", limit=3).split == "10:13"
    assert load_task("strategyqa", limit=5).split == "0:5"
    assert load_task("strategyqa", split=":").split is None
    assert load_task("strategyqa", split="2285:").split == "2285:2290"
    assert t.select("2:4").split == "12:14" and t.select("2:4").problems[0].id == full.problems[12].id
    for bad in ("abc", "1-2", "5:5", "3000:"):
        with pytest.raises(UsageError):
            load_task("strategyqa", split=bad)
    with pytest.raises(UsageError):
        load_task("strategyqa", limit=0)


# ----------------------------------------------------------------------------- runner (fake engine)
from fake_engine import FakeEngine  # noqa: E402 - the runner section of this file starts here


def FakeSampler(fail_after_calls=None):  # a Runtime over the scripted engine
    from edgekit.runtime import Runtime

    return Runtime(FakeEngine(fail_after_calls=fail_after_calls))


@pytest.fixture
def num_task(tmp_path):
    return write_jsonl(
        tmp_path / "four.jsonl", [{"prompt": f"Q{i}: what is {i} + {4 - i}?", "answer": "4"} for i in range(5)]
    )


def run(task, sampler, out, **kw):
    from edgekit.evaluate.runner import run_eval
    from edgekit.evaluate.tasks import load_task

    args = dict(model_id="fake-0", out_path=out, n_samples=4, temperature=0.8, top_p=0.95, seed=1, max_tokens=32)
    args.update(kw)
    return run_eval(load_task(str(task)), sampler, **args)  # every caller passes a task file


def test_runner_table(num_task, tmp_path):
    from edgekit.schemas.table import load_table

    seen = []
    t = run(num_task, FakeSampler(), tmp_path / "a.json", progress=lambda d, n, pid: seen.append((d, n, pid)))
    assert seen[-1][:2] == (5, 5) and len(seen) == 5
    assert t.n_problems == 5 and t.backend == "fake" and t.prompt_template == "cot" and not t.has_verifier
    assert {r.aggregation for r in t.rows} == {"greedy", "majority", "pass@k"}
    assert all(s.answer in {"4", "5", "6"} for p in t.problems for s in p.samples)
    assert all(s.correct == (s.answer == "4" and s.finished) for p in t.problems for s in p.samples)
    assert any(not s.finished for p in t.problems for s in p.samples)  # some hit the 32-token budget
    greedy = [r for r in t.rows if r.aggregation == "greedy" and r.budget == 32]
    assert greedy[0].accuracy == sum(p.greedy.finished for p in t.problems) / 5
    assert load_table(tmp_path / "a.json").rows == t.rows
    assert not (tmp_path / "a.json.partial.jsonl").exists()


def test_runner_resumes_after_a_kill(num_task, tmp_path):
    ref = run(num_task, FakeSampler(), tmp_path / "ref.json")
    out = tmp_path / "b.json"
    with pytest.raises(KeyboardInterrupt):
        run(num_task, FakeSampler(fail_after_calls=5), out)  # 2 problems x 2 calls, then dies mid-problem 3
    part = out.with_name("b.json.partial.jsonl")
    assert len(part.read_text().splitlines()) == 1 + 2 and not out.exists()
    with part.open("a") as f:
        f.write('{"problem": {"id": "torn')  # a write cut short by the kill
    again = FakeSampler()
    t = run(num_task, again, out)
    assert again.engine.calls == 3 * 2  # only the 3 remaining problems
    assert t.model_dump(exclude={"created"}) == ref.model_dump(exclude={"created"})
    assert not part.exists()


def test_runner_refuses_resume_with_other_settings(num_task, tmp_path):
    out = tmp_path / "c.json"
    with pytest.raises(KeyboardInterrupt):
        run(num_task, FakeSampler(fail_after_calls=2), out)
    with pytest.raises(UsageError, match=r"temperature 0.8 \(now 0.7\)") as e:
        run(num_task, FakeSampler(), out, temperature=0.7)
    assert "--no-resume" in e.value.fix
    fresh = FakeSampler()
    run(num_task, fresh, out, temperature=0.7, resume=False)
    assert fresh.engine.calls == 10


def test_runner_refuses_resume_after_the_task_changed(num_task, tmp_path):
    """Resume is keyed to the task's content, not only to the settings: ids default to line numbers,
    so an edited answer would otherwise mix stale records into the table."""
    from edgekit.schemas.table import load_table

    path = Path(num_task[len("jsonl:") :])
    original = path.read_text()
    out = tmp_path / "chg.json"
    with pytest.raises(KeyboardInterrupt):
        run(num_task, FakeSampler(fail_after_calls=5), out)  # 2 of 5 problems done
    header = json.loads(out.with_name("chg.json.partial.jsonl").read_text().splitlines()[0])["settings"]
    assert header["task_sha256"] == load_task(num_task).sha256
    path.write_text(original.replace('"answer": "4"}', '"answer": "5"}', 1))  # problem 1's answer changes
    with pytest.raises(UsageError, match="task's problems changed") as e:
        run(num_task, FakeSampler(), out)
    assert "--no-resume" in e.value.fix and "restore the task file" in e.value.fix
    path.write_text(original)  # restored: the run continues where it stopped
    again = FakeSampler()
    t = run(num_task, again, out)
    assert again.engine.calls == 3 * 2 and t.task_sha256 == load_task(num_task).sha256
    assert load_table(out).task_sha256 == t.task_sha256
    path.write_text(original.replace('"answer": "4"}', '"answer": "5"}', 1))
    fresh = FakeSampler()
    assert run(num_task, fresh, out, resume=False).task_sha256 != t.task_sha256 and fresh.engine.calls == 10


def test_task_sha256_covers_ids_prompts_targets_in_order(tmp_path):
    rows = [{"prompt": "a?", "answer": "1"}, {"prompt": "b?", "answer": "2"}]
    base = load_task(write_jsonl(tmp_path / "a.jsonl", rows)).sha256
    assert load_task(write_jsonl(tmp_path / "b.jsonl", rows)).sha256 == base  # the path is not content
    for changed in (
        [rows[1], rows[0]],
        [rows[0], {"prompt": "b?", "answer": "3"}],
        [rows[0], {"prompt": "c?", "answer": "2"}],
        [{**rows[0], "id": "x"}, rows[1]],
    ):
        assert load_task(write_jsonl(tmp_path / "c.jsonl", changed)).sha256 != base
    assert load_task("strategyqa", split="0:5").sha256 != load_task("strategyqa", split="1:6").sha256


def test_runner_refuses_a_partial_that_records_no_task_hash(num_task, tmp_path):
    out = tmp_path / "old.json"
    with pytest.raises(KeyboardInterrupt):
        run(num_task, FakeSampler(fail_after_calls=3), out)
    part = out.with_name("old.json.partial.jsonl")
    lines = part.read_text().splitlines()
    head = json.loads(lines[0])
    del head["settings"]["task_sha256"]  # as written before task hashing
    part.write_text("\n".join([json.dumps(head)] + lines[1:]) + "\n")
    with pytest.raises(UsageError, match="records no hash") as e:
        run(num_task, FakeSampler(), out)
    assert "--no-resume" in e.value.fix


def test_a_failed_zero_work_run_leaves_nothing_that_blocks_the_next(num_task, tmp_path):
    from edgekit.errors import BackendError
    from edgekit.runtime import Runtime

    class Broken(FakeEngine):
        def _events(self, text, o):
            raise BackendError("the engine failed", fix="restart it")

    out = tmp_path / "z.json"
    part = out.with_name("z.json.partial.jsonl")
    with pytest.raises(BackendError):
        run(num_task, Runtime(Broken()), out)
    assert not part.exists()
    with pytest.raises(KeyboardInterrupt):
        run(num_task, FakeSampler(fail_after_calls=0), out)  # Ctrl-C before the first problem finished
    assert not part.exists()
    # a partial holding no finished problem, made with other settings, is replaced, not refused
    part.write_text(json.dumps({"format": 1, "settings": {"temperature": 0.1, "backend": "other"}}) + "\n")
    fresh = FakeSampler()
    t = run(num_task, fresh, out, temperature=0.7)
    assert fresh.engine.calls == 10 and t.n_problems == 5 and not part.exists()


def test_evaluate_refuses_a_changed_task_before_loading_a_model(num_task, tmp_path):
    """The resume check that needs no model runs before the model loads (here: before an unknown
    model id would even be looked up)."""
    from edgekit.evaluate.api import evaluate

    path = Path(num_task[len("jsonl:") :])
    out = tmp_path / "pre.json"
    kw = dict(out_path=out, n_samples=4, temperature=0.8, top_p=0.95, seed=1, max_tokens=32)
    with pytest.raises(KeyboardInterrupt):
        evaluate(num_task, "fake-0", runtime=FakeSampler(fail_after_calls=3), **kw)
    path.write_text(path.read_text().replace("Q1", "Q one"))
    with pytest.raises(UsageError, match="task's problems changed"):
        evaluate(num_task, "no-such-model-anywhere", **kw)


def test_runner_rejects_short_sample_lists(num_task, tmp_path):
    from edgekit.errors import BackendError
    from edgekit.runtime import Runtime

    class Short(FakeEngine):
        def _events(self, text, o):
            return (ev for ev in super()._events(text, o) if ev.seq <= 0)

    with pytest.raises(BackendError):
        run(num_task, Runtime(Short()), tmp_path / "d.json")


# ----------------------------------------------------------------------------- OpenAI engine
def openai_engine(handler, **kw):
    import httpx

    from edgekit.engines.openai import OpenAIEngine

    return OpenAIEngine("m", base_url="http://srv:8080", transport=httpx.MockTransport(handler), **kw)


def gen(engine, prompt="hi", **kw):
    from edgekit.runtime import Runtime

    return Runtime(engine).generate(prompt, aggregate="none", extractor=None, **kw)


def test_openai_engine_counts_and_fallbacks():
    import httpx

    bodies = []

    def ignores_n(request):  # llama.cpp-like: one choice, no logprobs, usage only
        body = json.loads(request.content)
        bodies.append(body)
        assert request.url.path == "/v1/chat/completions"
        k = len(bodies)
        return httpx.Response(
            200,
            json={
                "choices": [{"message": {"content": f"Answer: {k}"}, "finish_reason": "length" if k == 3 else "stop"}],
                "usage": {"prompt_tokens": 12, "completion_tokens": 10 + k},
            },
        )

    e = openai_engine(ignores_n)
    res = gen(e, [{"role": "user", "content": "hi"}], max_tokens=16, n=3, seed=7)
    assert [x.text for x in res.samples] == ["Answer: 1", "Answer: 2", "Answer: 3"]
    assert [x.tokens for x in res.samples] == [11, 12, 13] and res.timings.prompt_tokens == 12
    assert [x.finish_reason for x in res.samples] == ["stop", "stop", "budget"]
    seeds = [b["seed"] for b in bodies]
    assert seeds[0] == 7 and len(set(seeds)) == 3 and e.label == "openai:http://srv:8080"
    assert res.engine == "openai" and not any(x.tokens_estimated for x in res.samples)

    def multi(request):  # n honoured, per-choice logprobs present for one, absent for the other
        return httpx.Response(
            200,
            json={
                "choices": [
                    {
                        "message": {"content": "a b c"},
                        "finish_reason": "stop",
                        "logprobs": {"content": [{"logprob": -0.1}] * 3},
                    },
                    {"message": {"content": "x" * 40}, "finish_reason": "stop"},
                ],
                "usage": {"prompt_tokens": 5, "completion_tokens": 99},
            },
        )

    res = gen(openai_engine(multi), n=2)
    assert [x.tokens for x in res.samples] == [3, 10]
    assert [x.tokens_estimated for x in res.samples] == [False, True] and res.samples[0].logprobs == [-0.1] * 3


def test_openai_engine_errors_never_show_the_key(monkeypatch):
    import httpx

    monkeypatch.setenv("EDGEKIT_CLOUD_API_KEY", "sk-secret-123")

    def refuse(request):
        assert request.headers["authorization"] == "Bearer sk-secret-123"
        raise httpx.ConnectError("connection refused sk-secret-123", request=request)

    with pytest.raises(FetchError, match="cannot connect") as e:
        gen(openai_engine(refuse))
    assert e.value.fix and "\n" not in e.value.one_line() and "sk-secret-123" not in e.value.one_line()
    with pytest.raises(FetchError, match="HTTP 404") as e:
        gen(openai_engine(lambda r: httpx.Response(404, text="no model for key sk-secret-123")))
    assert "sk-secret-123" not in e.value.one_line()
    assert "sk-secret-123" not in repr(openai_engine(refuse))

    def no_logprobs(request):
        if json.loads(request.content).get("logprobs"):
            return httpx.Response(400, json={"error": "logprobs unsupported"})
        return httpx.Response(
            200,
            json={
                "choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1},
            },
        )

    e = openai_engine(no_logprobs)
    assert gen(e).samples[0].text == "ok" and gen(e).samples[0].tokens == 1


def test_openai_engine_refuses_what_it_cannot_enforce():
    import httpx

    from edgekit.errors import UsageError

    e = openai_engine(lambda r: httpx.Response(500))
    with pytest.raises(UsageError, match="cannot enforce a GBNF grammar"):
        gen(e, grammar='root ::= "a"')


def test_target_width_stops_when_intervals_are_narrow_or_separate(tmp_path):
    from edgekit.evaluate.estimators import default_budgets
    from edgekit.evaluate.runner import _precise_enough
    from edgekit.runtime import Runtime

    big = write_jsonl(
        tmp_path / "big.jsonl", [{"prompt": f"Q{i}: what is {i} + {4 - i}?", "answer": "4"} for i in range(200)]
    )
    rt = Runtime(FakeEngine())
    t = run(big, rt, tmp_path / "w.json", target_width=0.3, batch=10)
    assert t.n_problems < 200 and t.n_problems % 10 == 0 and t.split == f"0:{t.n_problems}"
    b = default_budgets(32)
    assert _precise_enough(t.problems, b, True, False, 0.3)  # stopped at the first batch that was precise enough
    assert not _precise_enough(t.problems[: t.n_problems - 10], b, True, False, 0.3)
    with pytest.raises(UsageError, match="target width"):
        run(big, rt, tmp_path / "x.json", target_width=2.0)
