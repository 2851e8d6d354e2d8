"""The grammar's prefix pre-filter (edgekit.engines.llamacpp_prefilter) gives the grammar's own
verdict over the whole vocabulary, state by state.

Random walks through real grammars on three real vocabularies (SmolLM2: 49k byte-level BPE tokens;
Qwen2.5: 152k, the one the batch-loop benchmark runs; Gemma 3: 262k SentencePiece tokens with byte
fallback): at every state the pre-filtered check and llama.cpp's
check of every token accept the same tokens. The grammars cover JSON structure (a robot-action
schema, whitespace allowed between tokens), a two-word choice, non-ASCII text split across
tokens mid-character (partial UTF-8 states), and the end of the grammar (end-of-generation
tokens). A grammar that names token ids is never pre-filtered.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import GEMMA, QWEN, SMOL

from edgekit.engines import llamacpp_sample as S
from edgekit.engines.grammar import schema_to_grammar
from edgekit.engines.llamacpp_prefilter import PrefixClasses, prefilterable
from edgekit.runtime import Runtime
from edgekit.schemas.options import SamplingOptions

ROBOT = {
    "type": "object",
    "properties": {
        "action": {"enum": ["move", "grasp", "release", "stop"]},
        "target": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 3},
        "reason": {"type": "string", "maxLength": 40},
    },
    "required": ["action", "target", "reason"],
    "additionalProperties": False,
}
GRAMMARS = {
    "schema": schema_to_grammar(ROBOT),
    "two-word": 'root ::= "yes" | "no"',
    "utf8": 'root ::= ("größe" | "日本語" | [α-ω]+) " " [a-z]{1,6}',
}


@pytest.fixture(scope="module", params=[SMOL, QWEN, GEMMA])
def core(request):
    r = Runtime(request.param, n_ctx=512, max_n=1, threads=2)
    yield r.engine._core
    r.close()


@pytest.mark.parametrize("name", sorted(GRAMMARS))
def test_prefiltered_verdicts_equal_the_whole_vocabulary(core, name):
    nv = core._n_vocab
    smp = S.BlockSampler(nv, core._vocab)
    rng = np.random.default_rng(7)
    states = cut = 0
    for walk in range(6):
        rs = S.RowSampler(core._vocab, SamplingOptions(temperature=0.8), walk, GRAMMARS[name])
        assert rs.prefilter
        for _ in range(40):
            row = rng.standard_normal(nv).astype(np.float32)
            want = smp._valid(rs.grammar, smp._ids, row)  # llama.cpp's check of every token
            before = smp.counts["grammar_checks"]
            got = smp._valid_many(rs, smp._ids, row)
            assert np.array_equal(got, want), (name, walk, len(got), len(want))
            states += 1
            cut += smp.counts["grammar_checks"] - before > 1  # probes, then the candidates
            ok = [int(t) for t in want if not S.ll.llama_vocab_is_eog(core._vocab, int(t))]
            if not ok:
                break  # the grammar is done
            S.ll.llama_sampler_accept(rs.grammar, ok[rng.integers(len(ok))])
        rs.free()
    assert states >= 12 and cut == states  # every state went through the pre-filter


def test_a_grammar_naming_tokens_is_not_prefiltered(core):
    assert not prefilterable('root ::= <[1234]> "x"') and not prefilterable(None)
    assert prefilterable(GRAMMARS["schema"])


def test_the_classes_cover_every_token(core):
    """Each token has one class; a class's probe token has that class (or the class has none)."""
    pc = PrefixClasses(core._vocab, core._n_vocab)
    assert len(pc.cls) == core._n_vocab and pc.cls.min() >= 0 and pc.cls.max() < len(pc.probe)
    has = pc.probe >= 0
    assert np.array_equal(pc.cls[pc.probe[has]], np.flatnonzero(has))
    assert len(pc.probe) > 257  # the large first-byte classes were split by their second byte


def test_the_daemon_builds_the_classes_while_loading_the_library_on_first_use():
    """Continuous batching (the daemon's mode) builds the classes in the load's warm-up, so the first
    constrained request does not pay for them; one request at a time (library, CLI) builds them at the
    first large grammar check, and an unconstrained request never does."""
    from edgekit.engines.llamacpp import LlamaCppEngine

    daemon = LlamaCppEngine(SMOL, n_ctx=512, max_n=2, threads=2, max_seqs=2)
    try:
        assert daemon._core.sampling._pre is not None and daemon._core.sampling.prefilter_build_s > 0
    finally:
        daemon.close()
    rt = Runtime(SMOL, n_ctx=512, max_n=2, threads=2)
    try:
        smp = rt.engine._core.sampling
        kw = dict(n=2, temperature=0.8, seed=1, aggregate="none", extractor=None)
        rt.generate("Say hi.", max_tokens=4, **kw)
        assert smp._pre is None
        rt.generate("Give the robot's next action as JSON.", max_tokens=24, json_schema=ROBOT, **kw)
        assert smp._pre is not None and smp.counts["grammar_prefiltered"] > 0
    finally:
        rt.close()
