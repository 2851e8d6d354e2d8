"""An exact pre-filter for a grammar's verdict over many tokens.

llama.cpp's grammar checks a token by walking its text, character by character, through the
grammar's stacks: a token is accepted only if every prefix of its text is. So a token whose first
byte (or first two bytes) the grammar refuses as a token of its own is refused too, and the
grammar need not see it. Over the whole vocabulary that check costs ~20 ms a row on a
152k-token vocabulary (Qwen2.5); in a JSON object's structural states -- after ``{``, after a
key, inside an enum -- a few hundred single- and two-byte probe tokens leave a few thousand
candidates to check, with the same verdict.

The classes: every token is put in the class of its first byte, and in a large first-byte class
(more than ``SPLIT`` tokens) in the class of its first two bytes; a class is probed through a
token whose text is exactly that prefix. A class with no such token, and every token the prefix
argument does not cover (end-of-generation and control tokens, tokens with no text), is always
checked. Grammars that can name tokens directly (llama.cpp's ``<[id]>`` / ``<token>`` syntax: any
``<`` in the grammar text) are never pre-filtered. ``tests/test_grammar_prefilter.py`` compares
the verdicts with the whole vocabulary's, state by state.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

import numpy as np

from edgekit.host.threads import apply_before_load

apply_before_load()  # before llama.cpp's library loads (see llamacpp_core)
import llama_cpp as ll  # noqa: E402 - after apply_before_load

SPLIT = 2048  # a first-byte class larger than this is split by the second byte
MIN_IDS = 4096  # fewer candidates than this: the grammar checks them all directly (probing costs ~512)


def prefilterable(grammar: str | None) -> bool:
    """Whether ``grammar`` only matches text (no token-id elements, which the prefix argument misses)."""
    return grammar is not None and "<" not in grammar


class PrefixClasses:
    """Per vocabulary: each token's class, each class's probe token (-1: none) and parent class."""

    def __init__(self, vocab, n_vocab: int):
        buf = ctypes.create_string_buffer(512)
        b0 = np.full(n_vocab, -1, np.int32)  # first byte; -1: always checked
        b1 = np.full(n_vocab, -1, np.int32)  # second byte; -1: a one-byte text
        one: dict[int, int] = {}
        two: dict[tuple[int, int], int] = {}
        for t in range(n_vocab):
            if ll.llama_vocab_is_eog(vocab, t) or ll.llama_vocab_is_control(vocab, t):
                continue
            n = ll.llama_token_to_piece(vocab, t, buf, len(buf), 0, True)  # the text llama.cpp's grammar reads
            if n <= 0 or n > len(buf):
                continue
            p = buf.raw[:n]
            b0[t] = p[0]
            if n == 1:
                one.setdefault(p[0], t)
            else:
                b1[t] = p[1]
                if n == 2:
                    two.setdefault((p[0], p[1]), t)
        sizes = np.bincount(b0[b0 >= 0], minlength=256)
        # class 0: always checked; 1 + b: first byte b; then the (b, c) classes of the large first bytes
        cls = np.zeros(n_vocab, np.int32)
        has = b0 >= 0
        cls[has] = 1 + b0[has]
        probe, parent = [-1] + [one.get(b, -1) for b in range(256)], [0] * 257
        for b in np.flatnonzero(sizes > SPLIT):
            sub = has & (b0 == b) & (b1 >= 0)
            for c in np.unique(b1[sub]):
                cls[sub & (b1 == c)] = len(probe)
                probe.append(two.get((int(b), int(c)), -1))
                parent.append(1 + int(b))
        self.cls = cls
        self.probe = np.array(probe, np.int32)
        self.parent = np.array(parent, np.int32)
        self._level1 = self.probe[1:257] >= 0
        self._probe1 = self.probe[1:257][self._level1]
        self._sub = np.arange(len(probe)) >= 257

    def candidates(self, check: Callable[[np.ndarray], np.ndarray], ids: np.ndarray) -> np.ndarray:
        """The tokens of ``ids`` that may be accepted (order kept); ``check(probe ids)`` gives the
        probe tokens the grammar accepts now."""
        ok = np.zeros(len(self.probe), bool)
        ok[0] = True
        ok[1:257] = ~self._level1  # a first byte with no token of its own: checked
        ok[self.cls[check(self._probe1)]] = True
        sub = self._sub & ok[self.parent]
        ok[sub & (self.probe < 0)] = True  # a two-byte prefix with no token of its own: checked
        asked = self.probe[sub & (self.probe >= 0)]
        if len(asked):
            ok[self.cls[check(asked)]] = True
        return ids[ok[self.cls[ids]]]
