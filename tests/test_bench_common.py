"""benchmarks/_common.py: the statistics helper, the table printer, the option factory, the main wrapper and the
loopback server (a trivial ``python -m http.server`` stands in for a model server)."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import sys
import tempfile
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("bench_common", ROOT / "benchmarks" / "_common.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is made
    spec.loader.exec_module(mod)
    return mod


bc = _load()


def test_summarize_against_hand_computed_values():
    s = bc.summarize([3.0, 1.0, None, 4.0, 1.5, 10.0])  # None is dropped: 1, 1.5, 3, 4, 10
    assert (s.n, s.median, s.min, s.max) == (5, 3.0, 1.0, 10.0)
    # inclusive quartiles: positions 1 + (n-1)/4 = 2 and 1 + 3(n-1)/4 = 4 of the sorted values
    assert (s.q1, s.q3, s.iqr) == (1.5, 4.0, 2.5)
    four = bc.summarize([1, 2, 3, 4])  # positions 1.75 and 3.25: 1 + .75 * 1, 3 + .25 * 1
    assert (four.median, four.q1, four.q3) == (2.5, 1.75, 3.25)
    assert bc.summarize([7.0]).spread() == {"median": 7.0, "min": 7.0, "max": 7.0, "n": 1}
    assert bc.summarize([2.0, 4.0]).spread("reps") == {"median": 3.0, "min": 2.0, "max": 4.0, "reps": 2}
    empty = bc.summarize([None, None])
    assert empty.n == 0 and empty.median is None and empty.iqr is None
    assert empty.spread("reps") == {"median": None, "min": None, "max": None, "reps": 0}
    assert bc.median_or_none([]) is None and bc.median_or_none([None, 5, 1]) == 3.0


def test_median_interval_is_the_exact_order_statistic_interval():
    # n = 10: j = 2 covers 1 - 2 * (1 + 10) / 1024 = 0.979; j = 3 only 0.891
    assert bc.median_interval([9, 1, 8, 2, 7, 3, 6, 4, 5, 0]) == (1, 8)
    assert bc.median_interval(range(20)) == (5, 14)  # j = 6: 0.959; j = 7: 0.885
    assert bc.median_interval(range(6)) == (0, 5)  # 1 - 2 / 64 = 0.969: the extremes
    assert bc.median_interval([1, 2, 3, 4, None]) == (None, None)  # 4 values cannot reach 95 %
    xs = list(range(7))
    assert bc.median_interval(xs, level=0.5) == (2, 4)  # j = 3: 1 - 2 * 29 / 128 = 0.547


def test_table_aligns_columns_and_formats_cells():
    rows = [{"name": "a", "x": 1.0, "y": None}, {"name": "longer", "x": 12.345, "y": 3}]
    lines = bc.format_table(rows, ["name", "x:.2f", bc.Col("y plus one", lambda r: r["y"] and r["y"] + 1)])
    assert lines == [
        "name       x y plus one",
        "a       1.00          -",
        "longer 12.35          4",
    ]
    # a missing key prints as the `none` text; an explicit alignment wins
    assert bc.format_table([{}], [bc.Col("k", "k", align="<", none="n/a")]) == ["k", "n/a"]


def test_table_stream_prints_header_once_and_nothing_when_disabled(capsys):
    t = bc.TableStream(["n", "tok_s:.1f"])
    t.row({"n": 1, "tok_s": 37.71})
    t.row({"n": 16, "tok_s": 1234.5})
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["n", "tok_s"] and out[1].split() == ["1", "37.7"] and out[2].split() == ["16", "1234.5"]
    off = bc.TableStream(["n"], enabled=False)
    off.row({"n": 1})
    assert capsys.readouterr().out == ""


def test_parser_adds_only_the_shared_options_asked_for():
    ap = bc.parser("First line.\n\nMore.", reps=3, model="m", threads=2, out=True)
    a = ap.parse_args(["--out", "o.json"])
    assert (a.reps, a.model, a.threads, a.out, a.json) == (3, "m", 2, "o.json", False)
    assert ap.description == "First line."
    bare = bc.parser(None, json_flag=False).parse_args([])
    assert vars(bare) == {}
    assert bc.parser("x", threads=True).parse_args([]).threads is None


def test_emit_prints_json_or_text(capsys):
    bc.emit({"a": [1]}, True, "text")
    assert json.loads(capsys.readouterr().out) == {"a": [1]}
    bc.emit({"a": 1}, False, lambda: print("called"))
    assert capsys.readouterr().out == "called\n"
    bc.emit({"a": 1}, False, "plain")
    assert capsys.readouterr().out == "plain\n"


def test_run_main_one_line_errors_and_exit_codes(capsys, monkeypatch):
    monkeypatch.delenv("EDGEKIT_DEBUG", raising=False)

    def boom(argv):
        raise ValueError("bad\nvalue")

    with pytest.raises(SystemExit) as e:
        bc.run_main(boom)
    assert e.value.code == 1
    assert capsys.readouterr().err.splitlines()[0].startswith("error: ValueError: bad value")

    from edgekit.errors import UsageError

    def usage(argv):
        raise UsageError("no such model", fix="pick another")

    with pytest.raises(SystemExit) as e:
        bc.run_main(usage)
    assert e.value.code == 2 and capsys.readouterr().err == "error: no such model (fix: pick another)\n"
    with pytest.raises(SystemExit) as e:
        bc.run_main(lambda argv: 3)
    assert e.value.code == 3


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_loopback_server_is_ready_and_killed_on_exit(tmp_path):
    cmd = [sys.executable, "-m", "http.server", "{port}", "--bind", "127.0.0.1", "--directory", str(tmp_path)]
    with bc.loopback_server(cmd, timeout=30, name="http.server") as srv:
        pid, log_path = srv.proc.pid, srv.log_path
        with urllib.request.urlopen(srv.url + "/", timeout=5) as r:
            assert r.status == 200
        assert os.getpgid(pid) == pid  # its own process group, killed as a whole
        assert not Path(log_path).is_relative_to(ROOT)
    assert srv.proc.poll() is not None and not _alive(pid)
    assert not Path(log_path).exists()  # a clean exit leaves no log behind


def test_loopback_server_is_killed_when_the_block_raises_and_keeps_its_log():
    cmd = lambda port: [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    with pytest.raises(RuntimeError, match="inside"):
        with bc.loopback_server(cmd, timeout=30) as srv:
            raise RuntimeError("inside")
    assert srv.proc.poll() is not None
    assert Path(srv.log_path).exists()
    os.unlink(srv.log_path)


def test_loopback_server_that_exits_early_fails_with_its_log_tail(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the kept log lands here
    cmd = [sys.executable, "-c", "import sys; print('cannot start: port {port}'); sys.exit(3)"]
    with pytest.raises(RuntimeError, match=r"exited with code 3 .*cannot start"):
        with bc.loopback_server(cmd, timeout=30):
            pass
    assert [p.name.startswith("edgekit-bench-server-") for p in tmp_path.iterdir()] == [True]


def test_loopback_server_kills_a_server_that_ignores_sigterm(tmp_path):
    script = tmp_path / "stubborn.py"
    script.write_text(
        "import http.server as h, signal, sys\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "h.HTTPServer(('127.0.0.1', int(sys.argv[1])), h.SimpleHTTPRequestHandler).serve_forever()\n"
    )
    with bc.loopback_server([sys.executable, str(script), "{port}"], timeout=30, stop_grace=0.5) as srv:
        pid = srv.proc.pid
    assert srv.proc.poll() == -signal.SIGKILL and not _alive(pid)
