"""Disjoint splits of a labelled task for `edgekit deploy`: **tune** (accuracy tables), **calibrate**
(the offload threshold) and **verify** (held out until the end).

Each split is a contiguous range of the task's own order ("a:b", the `--split` form `eval` and
`calibrate` take), so every table and calibration names its range and `task_sha256` ties them to one
version of the task file. Sizes follow the task's size; the time budget then decides how many of
each range's problems are used (a prefix), and the report lists their ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edgekit.errors import UsageError

MIN_TUNE = 20  # fewer cannot separate two configurations by anything but luck
MIN_VERIFY = 20  # a held-out check on fewer says little (a 95 % interval of about +-20 points)
FRACTIONS = {"tune": 0.5, "calibrate": 0.25, "verify": 0.25}  # with a cloud; without: tune 0.6, verify 0.4


@dataclass
class Split:
    name: str
    start: int  # position in the full task
    stop: int
    used: list[str] = field(default_factory=list)  # ids of the problems this deployment ran

    @property
    def range(self) -> str:
        return f"{self.start}:{self.stop}"

    @property
    def size(self) -> int:
        return self.stop - self.start

    def to_dict(self) -> dict:
        return {"range": self.range, "size": self.size, "used": len(self.used), "ids": list(self.used)}


def make_splits(n_total: int, calibrate_need: int | None) -> dict[str, Split]:
    """Tune, then calibrate (when ``calibrate_need`` is given: the problems the offload guarantee needs), then
    verify, in task order. Too few problems for the minimums: one line saying how many are needed."""
    need_c = calibrate_need or 0
    need = MIN_TUNE + need_c + MIN_VERIFY
    if n_total < need:
        parts = f"tune {MIN_TUNE}" + (f", calibrate {need_c}" if calibrate_need else "") + f", verify {MIN_VERIFY}"
        raise UsageError(
            f"the task has {n_total} labelled problems; deploy needs at least {need} ({parts})",
            fix="add labelled problems to the task file"
            + (
                ", or deploy without --cloud-url (no calibration split), or with a larger --alpha/--delta"
                if need_c
                else ""
            ),
        )
    fv, fc = (FRACTIONS["verify"], FRACTIONS["calibrate"]) if calibrate_need else (0.4, 0.0)
    v = max(MIN_VERIFY, int(n_total * fv))
    c = max(need_c, int(n_total * fc)) if calibrate_need else 0
    t = n_total - v - c
    for_tune = MIN_TUNE - t
    if for_tune > 0:  # give tune its minimum back from the others, down to theirs
        take = min(for_tune, v - MIN_VERIFY)
        v, for_tune = v - take, for_tune - take
        c -= min(for_tune, c - need_c)
        t = n_total - v - c
    out = {"tune": Split("tune", 0, t)}
    if calibrate_need:
        out["calibrate"] = Split("calibrate", t, t + c)
    out["verify"] = Split("verify", t + c, n_total)
    return out
