
import pytest

SMOL = "smollm2-135m-instruct"
GEMMA = "gemma-3-270m"
QWEN = "qwen2.5-coder-0.5b-instruct"


@pytest.fixture(scope="session")
def smol_path():
    from edgekit.models import resolve

    return resolve(SMOL).path


@pytest.fixture(scope="session")
def smol_rt():
    from edgekit.runtime import Runtime

    rt = Runtime(SMOL, n_ctx=2048, max_n=8, threads=2)
    yield rt
    rt.close()


@pytest.fixture
def edgekit_home(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"
