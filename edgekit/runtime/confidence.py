"""Confidence scores of one query, from what the runtime already holds (and P(True) at one prefill).

Per sample (:func:`sample_scores`), over the tokens the model *chose* -- a token a grammar forced
(one allowed token) carries no doubt and is left out; log-probabilities are renormalised over the
tokens the grammar allowed (the engine's ``logprob_allowed``):

- ``answer_logprob``: the log-probability of the answer span (the tokens after the last answer
  marker, "Answer:", up to the end of the answer; else the last occurrence of the extracted answer;
  else the whole text), i.e. the sum of its token log-probabilities; ``answer_min_logprob`` its
  least likely token.
- ``group_conf`` (DeepConf's *lowest group confidence*): token confidence is minus the mean
  log-probability of the k most likely tokens at a position (high: a peaked distribution); the
  mean over each sliding window of ``window`` tokens, lowest over the windows (a text shorter than
  one window is one window).
- ``tail_conf``: the mean token confidence of the last ``tail`` tokens.

Per query (:func:`query_scores`): the means of those over the samples that agree with the answer,
the vote share, the entropy of the extracted answers (nats, over the samples that answered) and the
share of samples with no answer. ``p_true`` (:func:`p_true`, Kadavath et al. 2022): the model's
probability that its own answer is correct, from one extra prefill.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from edgekit.runtime.aggregate import ANSWER_MARKER

SELF_CHECK_PROMPT = "Is the proposed answer above correct? Reply with one word: True or False."  # P(True)'s question


def answer_span(text: str, starts: Sequence[int], answer: str | None) -> tuple[int, int]:
    """Token index range [i0, i1) of the answer in ``text`` (``starts``: each token's first
    character offset)."""
    n = len(starts)
    if n == 0:
        return 0, 0
    c0, c1 = 0, len(text)
    ms = list(ANSWER_MARKER.finditer(text))
    low = text.lower()
    if ms:
        c0 = ms[-1].end()
        if answer:
            at = low.find(answer.lower(), c0)
            if at >= 0:
                c1 = at + len(answer)
    elif answer:
        at = low.rfind(answer.lower())
        if at >= 0:
            c0, c1 = at, at + len(answer)
    i0 = next((i for i in range(n) if (starts[i + 1] if i + 1 < n else len(text) + 1) > c0), n)
    if i0 >= n:
        return n, n
    i1 = next((i for i in range(i0, n) if starts[i] >= c1), n)
    return i0, max(i1, i0 + 1)


def lowest_group(values: Sequence[float], window: int) -> float | None:
    """Lowest mean over sliding windows of ``window`` values (one window when shorter)."""
    v = [x for x in values if x is not None]
    if not v:
        return None
    w = min(window, len(v))
    s = sum(v[:w])
    best = s
    for i in range(w, len(v)):
        s += v[i] - v[i - w]
        best = min(best, s)
    return best / w


def tail_mean(values: Sequence[float], tail: int) -> float | None:
    v = [x for x in values if x is not None]
    return sum(v[-tail:]) / len(v[-tail:]) if v else None


def sample_scores(
    text: str,
    piece_lens: Sequence[int],
    answer: str | None,
    allowed: Sequence[float | None],
    conf: Sequence[float | None],
    window: int,
    tail: int,
) -> dict:
    """The per-sample scores (module docstring); None where the engine gave no token scores."""
    out: dict = {"answer_logprob": None, "answer_min_logprob": None, "group_conf": None, "tail_conf": None}
    if not allowed or len(allowed) != len(piece_lens):
        return out
    starts, pos = [], 0
    for k in piece_lens:
        starts.append(pos)
        pos += k
    if answer is not None:
        i0, i1 = answer_span(text, starts, answer)
        span = [x for x in allowed[i0:i1] if x is not None]
        if i1 > i0:  # every span token forced: the answer was certain given the prefix
            out["answer_logprob"] = float(sum(span))
            out["answer_min_logprob"] = float(min(span)) if span else 0.0
    out["group_conf"] = lowest_group(conf, window)
    out["tail_conf"] = tail_mean(conf, tail)
    return out


def rescore(sample, answer: str | None, options) -> dict:
    """:func:`sample_scores` of a runtime :class:`~edgekit.schemas.result.Sample` for ``answer``
    (its extracted answer, or another extractor's); {} when the engine gave no token scores."""
    ts = sample._token_scores
    if not ts:
        return {}
    a, c, k = zip(*ts)
    return sample_scores(sample.text, k, answer, a, c, options.conf_window, options.conf_tail)


def answer_entropy(answers: Sequence[str | None]) -> float | None:
    """Entropy (nats) of the extracted answers of the samples that answered."""
    got = [a for a in answers if a is not None]
    if not got:
        return None
    n = len(got)
    return float(-sum(c / n * math.log(c / n) for c in Counter(got).values()) + 0.0)


def _mean(xs) -> float | None:
    v = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return sum(v) / len(v) if v else None


def query_scores(chosen: Sequence, counted: Sequence) -> dict:
    """Per-query scores: ``chosen`` the samples agreeing with the answer, ``counted`` every
    sample in the vote (each with ``answer`` and ``scores``)."""
    out = {
        k: _mean((s.scores or {}).get(k) for s in chosen)
        for k in ("answer_logprob", "answer_min_logprob", "group_conf", "tail_conf")
    }
    out["answer_entropy"] = answer_entropy([s.answer for s in counted])
    out["no_answer_share"] = sum(s.answer is None for s in counted) / len(counted) if counted else None
    return out


def p_true(engine, messages: list[dict], answer: str, options) -> float:
    """P(True): the model's probability that ``answer`` to ``messages`` is correct (one prefill;
    the first tokens of " True"/"True" against " False"/"False", renormalised over the two)."""
    msgs = [
        *messages,
        {"role": "assistant", "content": f"Proposed answer: {answer}"},
        {"role": "user", "content": SELF_CHECK_PROMPT},
    ]
    ids = engine.prompt_ids(msgs, options.replace(n=1, json_schema=None, grammar=None))
    cand = []
    for word in ("True", "False"):
        toks = engine.tokenize(word, add_special=False)
        cand.append(toks[0])
    lt, lf = engine.next_logprobs(ids, cand)
    m = max(lt, lf)
    return math.exp(lt - m) / (math.exp(lt - m) + math.exp(lf - m))
