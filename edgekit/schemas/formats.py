"""Answer formats: a task kind rendered as a GBNF grammar, so that every sample ends in an answer
the extractor can read (a robot needs an action it can parse, not prose).

``answer``      -> ``Answer: <answer>`` and nothing else;
``reason:<C>``  -> up to C characters of free reasoning (any lines), then ``Answer: <answer>``.

Measured on a two-option task, Qwen2.5-Coder-1.5B with the terse template finished 0 of 30
greedy answers within 48 tokens (it explains instead of answering); constrained, every sample
that finishes carries an answer. Whether that helps *accuracy* is what `edgekit eval
--constrain` measures: the planner treats constrained and free as one more template choice.
"""

from __future__ import annotations

import re

from edgekit.errors import UsageError

ANSWER_RULES = {
    "number": '"-"? [0-9] [0-9]? [0-9]? [0-9]? [0-9]? [0-9]?',
    "choice": '"(" [A-J] ")" | [A-J]',
    "yesno": '"yes" | "no" | "Yes" | "No"',
}
_FMT = re.compile(r"^(answer|reason:(\d{1,5}))$")


def check_format(fmt: str, kind: str | None) -> None:
    if not _FMT.match(fmt or ""):
        raise UsageError(
            f"unknown answer format {fmt!r}",
            fix="use --constrain answer or --constrain reason:<chars>, e.g. reason:400",
        )
    if kind not in ANSWER_RULES:
        raise UsageError(
            f"--constrain applies to number, choice and yes/no tasks, not {kind or 'this'} task",
            fix="drop --constrain for code and free-text tasks",
        )


def answer_grammar(kind: str | None, fmt: str) -> str:
    """The GBNF grammar for answers of ``kind`` in format ``fmt``."""
    check_format(fmt, kind)
    m = _FMT.match(fmt)
    assert m is not None
    rules = [f"answer ::= {ANSWER_RULES[kind]}"]  # type: ignore[index]
    if m.group(2):
        chars = int(m.group(2))
        rules.insert(0, 'root ::= reason "\\nAnswer: " answer')
        rules.append(f"reason ::= [^\\x00]{{0,{chars}}}")
    else:
        rules.insert(0, 'root ::= "Answer: " answer')
    return "\n".join(rules) + "\n"
