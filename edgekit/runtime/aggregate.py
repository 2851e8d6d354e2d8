"""Answer extractors and aggregators (majority vote, first verified, none).

Extractors turn a sample's text into a short canonical answer (``"7"``, ``"B"``, ``"yes"``) or
None. Where the text has an answer marker ("Answer: 7", "the answer is 7") the answer is taken
after the last marker; otherwise the last occurrence in the text wins.

Tie rule (shared with :mod:`edgekit.evaluate.estimators`): among answers tied for the most
votes, one is chosen uniformly at random (seeded). Samples with no extracted answer never win
unless no sample has one.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Callable, Sequence

from edgekit.errors import UsageError

Extractor = Callable[[str], str | None]

ANSWER_MARKER = re.compile(r"(?:final answer|answer\s*(?:is|:|=)|answer\s*\*\*\s*:?|\\boxed\{)", re.I)

_UNITS = {
    "zero": 0,
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "thirteen": 13,
    "fourteen": 14,
    "fifteen": 15,
    "sixteen": 16,
    "seventeen": 17,
    "eighteen": 18,
    "nineteen": 19,
    "a dozen": 12,
    "dozen": 12,
}
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90}
_WORD_NUM = (
    r"(?:(?:"
    + "|".join(_TENS)
    + r")(?:[\s-](?:"
    + "|".join(k for k in _UNITS if _UNITS[k] < 10 and k != "zero")
    + r"))?"
    r"|" + "|".join(sorted(_UNITS, key=len, reverse=True)) + r")(?:\s+hundred)?"
)
_NUM = re.compile(r"(?<![\w.])(-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?)(?![\w])|\b(" + _WORD_NUM + r")\b", re.I)


def _word_to_int(w: str) -> int:
    w = w.lower().strip()
    mult = 1
    if w.endswith("hundred"):
        mult = 100
        w = w[: -len("hundred")].strip()
    if w in _UNITS:
        return _UNITS[w] * mult
    parts = re.split(r"[\s-]+", w)
    total = _TENS.get(parts[0], 0)
    if len(parts) > 1:
        total += _UNITS.get(parts[1], 0)
    return total * mult


def _norm_number(s: str) -> str:
    s = s.replace(",", "")
    try:
        v = float(s)
    except ValueError:
        return s
    if v == int(v):
        return str(int(v))
    return repr(v).rstrip("0").rstrip(".")


def _after_marker(text: str) -> str | None:
    ms = list(ANSWER_MARKER.finditer(text))
    return text[ms[-1].end() :] if ms else None


def extract_number(text: str) -> str | None:
    def scan(s: str, first: bool) -> str | None:
        ms = list(_NUM.finditer(s))
        if not ms:
            return None
        m = ms[0] if first else ms[-1]
        return _norm_number(m.group(1)) if m.group(1) else str(_word_to_int(m.group(2)))

    tail = _after_marker(text)
    if tail is not None:
        got = scan(tail, first=True)
        if got is not None:
            return got
    return scan(text, first=False)


_CHOICE_PATTERNS = [
    re.compile(r"\(([A-Z])\)"),
    re.compile(r"(?<![A-Za-z])([A-Z])[).:](?=\s|$)"),
    re.compile(r"^\s*([A-Z])\s*$", re.M),
]


def extract_choice(text: str) -> str | None:
    tail = _after_marker(text)
    if tail is not None:
        m = re.search(r"\(?\b([A-Z])\b\)?", tail)
        if m:
            return m.group(1)
    best = None
    for pat in _CHOICE_PATTERNS:
        for m in pat.finditer(text):
            if best is None or m.start() > best[0]:
                best = (m.start(), m.group(1))
    return best[1] if best else None


_YESNO = re.compile(r"\b(yes|no|true|false)\b", re.I)


def extract_yesno(text: str) -> str | None:
    tail = _after_marker(text)
    src = tail if tail is not None and _YESNO.search(tail) else text
    lead = re.match(r"\W*(yes|no|true|false)\b", text, re.I)
    if src is text and lead:  # "Yes, because ..." answers up front
        src = text[: lead.end()]
    ms = list(_YESNO.finditer(src))
    if not ms:
        return None
    m = ms[0] if src is tail else ms[-1]
    w = m.group(1).lower()
    return {"true": "yes", "false": "no"}.get(w, w)


_CODE = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.S)


def extract_code(text: str) -> str | None:
    m = _CODE.search(text)
    if m:
        return m.group(1).strip("\n")
    m = re.search(r"```(?:python|py)?\s*\n(.*)", text, re.S)  # unterminated block (budget hit)
    return m.group(1).strip("\n") if m else None


def extract_text(text: str) -> str | None:
    t = (_after_marker(text) or text).strip().strip(".").strip()
    return " ".join(t.lower().split()) or None


def regex_extractor(pattern: str) -> Extractor:
    try:
        rx = re.compile(pattern, re.S)
    except re.error as e:
        raise UsageError(f"bad regex extractor {pattern!r}: {e}", fix="pass a valid Python regular expression") from e

    def ex(text: str) -> str | None:
        ms = list(rx.finditer(text))
        if not ms:
            return None
        m = ms[-1]
        return (m.group(1) if rx.groups else m.group(0)).strip()

    return ex


_FENCE = re.compile(r"^\s*```(?:json)?\s*\n?(.*?)\n?```\s*$", re.S)


def extract_json(text: str) -> str | None:
    """The sample's JSON value in canonical form (sorted keys, no spaces), so that majority vote
    compares parsed values, not strings. None when the text is not one JSON value."""
    t = text.strip()
    m = _FENCE.match(t)
    if m:
        t = m.group(1).strip()
    try:
        value = json.loads(t)
    except (ValueError, RecursionError):
        return None
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def json_answer(text: str, schema: dict | None) -> tuple[str | None, str | None]:
    """(canonical JSON answer or None, why not): parses, then validates against ``schema``."""
    ans = extract_json(text)
    if ans is None:
        return None, "not valid JSON"
    if schema is not None:
        import jsonschema  # only for constrained outputs

        try:
            jsonschema.validate(json.loads(ans), schema)
        except jsonschema.ValidationError as e:
            return None, f"does not match the schema: {e.message[:120]}"
        except jsonschema.SchemaError as e:
            raise UsageError(f"invalid JSON schema: {e.message[:160]}", fix="pass a valid JSON schema") from None
    return ans, None


EXTRACTORS: dict[str, Extractor] = {
    "json": extract_json,
    "number": extract_number,
    "choice": extract_choice,
    "yesno": extract_yesno,
    "code": extract_code,
    "text": extract_text,
}


def get_extractor(kind: str | Extractor | None) -> Extractor:
    if kind is None:
        return extract_number
    if callable(kind):
        return kind
    if kind.startswith("regex:"):
        return regex_extractor(kind[len("regex:") :])
    if kind in EXTRACTORS:
        return EXTRACTORS[kind]
    raise UsageError(
        f"unknown extractor {kind!r}", fix=f"use one of {', '.join(EXTRACTORS)}, regex:<pattern>, or a callable"
    )


def quantile(xs: Sequence[float], q: float) -> float | None:
    """Linear-interpolated quantile (the confidence scores' "low logprob" is quantile(token logprobs, 0.1))."""
    if not xs:
        return None
    s = sorted(xs)
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def majority_vote(answers: Sequence[str | None], seed: int | None = None) -> tuple[str | None, int, list[str]]:
    """Return (winner, votes for it, tied answers). Ties: uniform random, seeded."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None, 0, []
    top = max(counts.values())
    tied = sorted(a for a, c in counts.items() if c == top)
    winner = tied[0] if len(tied) == 1 else random.Random(seed).choice(tied)
    return winner, top, tied


AGGREGATES = ("majority", "first_verified", "none")
