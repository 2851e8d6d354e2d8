"""The GGUF header facts edgekit/data/catalog.json records per model are those of the real files (read here from
the cache, where `.ci/run` pulls every catalogue model): a wrong figure would make every plan of an undownloaded
model wrong without a word."""

import pytest

from edgekit.models.catalog import CATALOG
from edgekit.models.gguf import read_gguf
from edgekit.models.integrity import CORRUPT, MISSING
from edgekit.models.store import cache_status, cached_path


@pytest.mark.parametrize("model_id", sorted(CATALOG))
def test_recorded_header_matches_the_file(model_id):
    e = CATALOG[model_id]
    assert e.header is not None, f"{model_id}: catalog.json records no header facts"
    if cache_status(e).status in (CORRUPT, MISSING):
        pytest.skip(f"{model_id} is not cached (`edgekit models pull {model_id}`)")
    g = read_gguf(cached_path(e))
    shape = g.shape()
    assert shape.pop("arch") == e.arch
    assert e.header == {"quant": g.quant, **shape}
