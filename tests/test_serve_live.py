"""Live latency model in the daemon (edgekit.serve.live): correction, metrics, deadline admission, re-plan.

In-process with a fake engine that runs slower than the profile predicts (it sleeps), and once as
the real daemon with SmolLM2, slowed by the EDGEKIT_TEST_SLOWDOWN hook, re-planning by itself.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")

from conftest import free_port
from fake_engine import FakeEngine

from edgekit.engines import Event

ROOT = Path(__file__).resolve().parents[1]
SMOL = "smollm2-135m-instruct"
KEY = "live-key-1"
AUTH = {"Authorization": f"Bearer {KEY}"}


def metric(text: str, name: str, **labels: str) -> float:
    import re

    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))  # the exposition sorts label names
    pat = re.escape(name) + (r"\{" + re.escape(want) + r"\}" if want else "") + r" ([0-9.e+-]+)"
    m = re.search(r"^" + pat + r"$", text, re.M)
    return float(m.group(1)) if m else 0.0


def make_plan_file(tmp: Path) -> tuple[Path, str]:
    """SmolLM2 on the CI profile: the most accurate configuration whose p50 fits 1.05 x its own latency."""
    from edgekit.plan.make import make_plan
    from edgekit.plan.replan import config_label

    prof, table = str(ROOT / "profiles/ci-2core-amd-epyc.json"), str(ROOT / "tables/object_counting-smollm2-cot.json")
    res, _ = make_plan(prof, [table], 100.0, prefer="most-accurate")
    lat = float(res.latency[res.chosen])
    out = tmp / "plan.json"
    _, written = make_plan(prof, [table], lat * 1.05, prefer="most-accurate", output=out)
    from edgekit.schemas.plan import load_plan

    return written, config_label(load_plan(written))


class SlowFake(FakeEngine):
    """The fake engine on a device slower than the CI profile: it sleeps through prefill and each step."""

    def __init__(
        self, *a, prefill_s: float = 0.45, step_s: float = 0.03, **kw
    ):  # >= 2x the profile (prompts <= 60 tokens)
        super().__init__(*a, **kw)
        self.pre, self.step = prefill_s, step_s

    def _events(self, text, o):
        time.sleep(self.pre)
        evs = list(super()._events(text, o))
        yield evs[0]
        yield Event("token", seq=0, token=1, text="")
        steps = max(e.tokens for e in evs if e.kind == "finish")
        time.sleep(self.step * max(steps - 1, 0))
        yield from evs[1:]


def live_app(tmp: Path, **settings):
    from edgekit.runtime import Runtime
    from edgekit.schemas.plan import load_plan
    from edgekit.serve.app import build_app
    from edgekit.serve.live import LiveSettings
    from edgekit.serve.service import Limits, Service

    path, label = make_plan_file(tmp)
    svc = Service(
        Runtime(SlowFake(SMOL)),
        limits=Limits(max_n=8, max_tokens_cap=512),
        plan=load_plan(path),
        plan_path=str(path),
        live=LiveSettings(**{"min_samples": 2, **settings}),
    )
    return svc, build_app(svc, api_key=KEY), label


def chat(c, content="2 + 2?", **kw):
    return c.post(
        "/v1/chat/completions",
        json={"model": SMOL, "messages": [{"role": "user", "content": content}], **kw},
        headers=AUTH,
    )


def test_correction_moves_above_1_and_the_response_and_metrics_show_it(tmp_path):
    from fastapi.testclient import TestClient

    svc, app, label = live_app(tmp_path)
    c = TestClient(app)
    first = chat(c, max_tokens=4).json()["edgekit"]
    assert first["plan_config"] == label
    live = first["live"]
    assert live["predicted_s"] > 0 and live["measured_s"] > live["predicted_s"]
    assert live["corrected"]["method"] == "estimated" and "live correction" in live["corrected"]["source"]
    assert live["corrected"]["value"] == pytest.approx(live["predicted_s"])  # not active yet: k = 1
    for _ in range(3):
        ek = chat(c, max_tokens=4).json()["edgekit"]
    assert ek["live"]["correction"]["decode"]["active"] and ek["live"]["correction"]["decode"]["factor"] > 1.5
    assert ek["live"]["corrected"]["value"] > ek["live"]["predicted_s"] * 1.5  # corrected before this request ran
    text = c.get("/metrics", headers=AUTH).text
    for part in ("prefill", "decode"):
        assert metric(text, "edgekit_live_correction_factor", part=part) > 1.5
        assert metric(text, "edgekit_live_measured_over_predicted_count", part=part) == 4
    assert metric(text, "edgekit_live_corrected_latency_seconds") > metric(text, "edgekit_live_latency_target_seconds")
    assert metric(text, "edgekit_live_corrected_latency_seconds") > svc.plan.predicted.latency_at_percentile_s * 1.5


def test_deadline_admission_shrinks_a_server_budget_and_refuses_an_explicit_one(tmp_path):
    from fastapi.testclient import TestClient

    svc, app, _ = live_app(tmp_path)
    c = TestClient(app)
    for _ in range(3):
        assert chat(c, max_tokens=4).status_code == 200
    planned = svc.plan.chosen.options.max_tokens
    r = chat(c)  # max_tokens from the plan, deadline = the plan's target: the slowed device cannot make it
    assert r.status_code == 200, r.text
    note = r.json()["edgekit"]["live"]["admission"]
    assert note.startswith(f"max_tokens {planned} -> ") and "deadline" in note
    assert svc.tap.inner.options_seen[-1].max_tokens < planned
    r = chat(c, max_tokens=planned)  # the client asked for this budget itself: refused upfront, nothing run
    calls = svc.tap.inner.calls
    err = r.json()["error"]
    assert r.status_code == 503 and err["code"] == "deadline_unmeetable" and err["param"] == "max_tokens"
    assert set(err) == {"message", "type", "param", "code"} and "max_tokens <=" in err["message"]
    assert int(r.headers["Retry-After"]) >= 1 and svc.tap.inner.calls == calls and svc.admitted == 0
    r = chat(c, max_tokens=4, edgekit={"deadline_s": 1e-4})  # nothing fits at all
    assert r.status_code == 503 and r.json()["error"]["param"] == "edgekit.deadline_s"
    text = c.get("/metrics", headers=AUTH).text
    assert metric(text, "edgekit_deadline_admission_total", action="shrunk") == 1
    assert metric(text, "edgekit_deadline_admission_total", action="refused") == 2


def test_auto_replan_picks_a_cheaper_configuration_of_the_same_model(tmp_path, caplog):
    from fastapi.testclient import TestClient

    svc, app, label = live_app(tmp_path, auto_replan=True, after=2)
    c = TestClient(app)
    before = svc.plan
    deadline = time.time() + 60
    while svc.plan is before and time.time() < deadline:
        assert chat(c, max_tokens=4).status_code == 200
        time.sleep(0.05)
    assert svc.plan is not before, c.get("/admin/live", headers=AUTH).json()
    new = svc.plan.chosen
    assert new.model_id == SMOL and svc.live.corrected_config_s() < svc.live.corrected_config_s(before)
    k = svc.plan.planner.perf_scale  # its predictions assume the slowed device; the correction is applied once
    assert k and k[1] > 1.5 and svc.live.corrected_config_s() < svc.plan.predicted.latency_at_percentile_s * 1.5
    assert (new.budget, new.n) != (before.chosen.budget, before.chosen.n)
    assert svc.plan.planner.replanned and "auto" in svc.plan.planner.replanned
    st = c.get("/admin/live", headers=AUTH).json()
    assert st["last_replan"]["trigger"] == "auto" and st["last_replan"]["previous"] == label
    ek = chat(c).json()["edgekit"]  # the next request runs the new configuration, and says so
    assert ek["plan_config"] == st["config"] != label
    assert svc.tap.inner.options_seen[-1].n == new.n
    text = c.get("/metrics", headers=AUTH).text
    assert sum(metric(text, "edgekit_replans_total", trigger="auto", outcome=o) for o in ("changed", "infeasible")) >= 1
    assert metric(text, "edgekit_plan_predicted_latency_seconds") == pytest.approx(
        svc.plan.predicted.latency_at_percentile_s
    )
    # on demand: nothing moved since, so the same configuration is kept
    r = c.post("/admin/replan", headers=AUTH)
    assert r.status_code == 200 and r.json()["config"] == st["config"]
    assert c.post("/admin/replan").status_code == 401  # behind the API key


def test_without_a_plan_replan_is_a_409_and_nothing_breaks():
    from fastapi.testclient import TestClient

    from edgekit.runtime import Runtime
    from edgekit.serve.app import build_app
    from edgekit.serve.service import Service

    svc = Service(Runtime(FakeEngine()))
    c = TestClient(build_app(svc))
    r = c.post("/admin/replan")
    assert (
        r.status_code == 409
        and r.json()["error"]["code"] == "replan_failed"
        and "no plan" in r.json()["error"]["message"]
    )
    ek = c.post(
        "/v1/chat/completions", json={"model": "fake-0", "messages": [{"role": "user", "content": "1+1"}]}
    ).json()["edgekit"]
    assert ek["live"] is None and ek["plan_config"] is None
    assert c.get("/admin/live").json()["enabled"] is False


def test_replan_needs_the_plans_inputs(tmp_path):
    from edgekit.errors import SchemaError
    from edgekit.plan.replan import replan
    from edgekit.schemas.plan import load_plan

    path, _ = make_plan_file(tmp_path)
    p = load_plan(path)
    assert p.planner is not None and p.planner.prefer == "most-accurate"
    r = replan(p, str(path), SMOL, (1.0, 1.0), "test")
    assert r.outcome == "unchanged" and r.meets_target
    r = replan(p, str(path), SMOL, (50.0, 50.0), "test")  # nothing fits: the fastest is taken, and it says so
    assert r.outcome == "infeasible" and not r.meets_target and "NOT met" in r.message
    gone = p.model_copy(update={"tables": [str(tmp_path / "missing.json")]})
    with pytest.raises(SchemaError, match="not readable"):
        replan(gone, str(path), SMOL, (1.0, 1.0), "test")


# ---------------------------------------------------------------------------- the real daemon
def test_real_daemon_slowed_device_replans_by_itself(tmp_path):
    pytest.importorskip("llama_cpp")
    path, label = make_plan_file(tmp_path)
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "EDGEKIT_TEST_SLOWDOWN": "6",
    }
    env.pop("EDGEKIT_API_KEY", None)
    log = open(tmp_path / "serve.log", "w+")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgekit.cli.main",
            "serve",
            "--plan",
            str(path),
            "--replan",
            "--replan-after",
            "2",
            "--port",
            str(port),
            "--api-key",
            KEY,
            "--ctx",
            "1024",
            "--threads",
            "2",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=ROOT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        t0 = time.time()
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-1500:]
            assert time.time() - t0 < 180, "edgekit serve did not come up"
            try:
                if httpx.get(url + "/healthz", headers=AUTH, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        # a long deadline: under contention a prefill alone can exceed the plan's target, and a request cut at its
        # first token measures no decode step
        body = {
            "model": SMOL,
            "messages": [{"role": "user", "content": "2 + 2?"}],
            "max_tokens": 4,
            "edgekit": {"deadline_s": 600},
        }
        replanned = None
        for _ in range(12):
            r = httpx.post(url + "/v1/chat/completions", json=body, headers=AUTH, timeout=120)
            assert r.status_code == 200, r.text
            st = httpx.get(url + "/admin/live", headers=AUTH, timeout=10).json()
            if st["last_replan"]:
                replanned = st
                break
        assert replanned is not None, st
        assert replanned["correction"]["decode"]["factor"] > 1.5, replanned
        assert replanned["last_replan"]["trigger"] == "auto"
        assert replanned["config"] != label and replanned["last_replan"]["previous"] == label
        text = httpx.get(url + "/metrics", headers=AUTH, timeout=10).text
        assert metric(text, "edgekit_live_correction_factor", part="decode") > 1.5
        from edgekit.schemas.plan import load_plan

        original = load_plan(path)  # at the corrected speed the new configuration fits the target again
        assert replanned["last_replan"]["meets_target"], replanned
        assert 0 < metric(text, "edgekit_live_corrected_latency_seconds") < original.target_s * 1.2
        assert metric(text, "edgekit_live_corrected_latency_seconds") < original.predicted.latency_at_percentile_s * 2
        assert metric(text, "edgekit_live_measured_over_predicted_count", part="decode") >= 3
        assert (
            sum(metric(text, "edgekit_replans_total", trigger="auto", outcome=o) for o in ("changed", "infeasible"))
            == 1
        )
        ek = httpx.post(url + "/v1/chat/completions", json={**body, "max_tokens": 2}, headers=AUTH, timeout=120).json()[
            "edgekit"
        ]
        assert ek["plan_config"] == replanned["config"]
        assert "live re-plan (auto" in (tmp_path / "serve.log").read_text()
        proc.send_signal(signal.SIGHUP)  # on demand: re-plans at the same correction, keeps serving
        t1 = time.time()
        while (
            metric(
                httpx.get(url + "/metrics", headers=AUTH, timeout=10).text,
                "edgekit_replans_total",
                trigger="sighup",
                outcome="unchanged",
            )
            + metric(
                httpx.get(url + "/metrics", headers=AUTH, timeout=10).text,
                "edgekit_replans_total",
                trigger="sighup",
                outcome="changed",
            )
            < 1
        ):
            assert time.time() - t1 < 30 and proc.poll() is None, (tmp_path / "serve.log").read_text()[-1500:]
            time.sleep(0.2)
        assert httpx.get(url + "/healthz", headers=AUTH, timeout=10).status_code == 200
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_replan_flag_needs_a_plan():
    r = subprocess.run(
        [sys.executable, "-m", "edgekit.cli.main", "serve", "--replan", "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")},
    )
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "--replan needs a plan" in lines[0] and "(fix: " in lines[0], (
        r.stderr
    )
