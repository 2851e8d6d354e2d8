"""Offload vocabulary: the calibrated threshold a plan carries, and what a Result says about routing."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from edgekit.figures import Figure

Mode = Literal["never", "auto", "always"]
Source = Literal["local", "cloud", "local-fallback"]
# Single confidence scores, each oriented "higher = keep local" (edgekit.runtime.confidence says how each
# is computed): low_entropy is minus the entropy of the extracted answers, answered one minus the share
# of samples with no answer; p_true needs the self-check (one extra prefill).
SINGLE_SCORES = (
    "vote_share",
    "mean_logprob",
    "low_logprob",
    "answer_logprob",
    "answer_min_logprob",
    "group_conf",
    "tail_conf",
    "low_entropy",
    "answered",
    "p_true",
)
SCORES = (*SINGLE_SCORES, "combined", "auto")  # combined: a logistic fit; auto: calibrate picks on a fit split
# the scores an accuracy table's samples carry (edgekit.schemas.table.SampleRecord); the rest are per query
TABLE_SCORES = ("mean_logprob", "low_logprob", "answer_logprob", "answer_min_logprob", "group_conf", "tail_conf")
# used when no calibration exists: a default, said to be one, with no guarantee
DEFAULT_THRESHOLDS = {
    "vote_share": 0.6,
    "mean_logprob": -0.5,
    "low_logprob": -2.5,
    "answer_logprob": -0.7,
    "p_true": 0.5,
}
NO_GUARANTEE = "no guarantee holds: the threshold is a default, not calibrated (run `edgekit calibrate`)"


def reads_p_true(score: str, features: list[str] | None = None) -> bool:
    """Does the score read P(True) (itself, or a combined score with it among its features)?"""
    return score == "p_true" or (score == "combined" and "p_true" in (features or ()))


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=True, ser_json_inf_nan="strings")


class OffloadCalibration(_M):
    """A threshold chosen on labelled data (edgekit calibrate), saved into the plan."""

    method: str  # ltt-binomial | ltt-hb | conformal-offload-budget | default-uncalibrated
    score: str
    threshold: float  # keep local iff score >= threshold
    alpha: float | None = None
    delta: float | None = None
    n_calibration: int = 0
    offload_rate: float | None = None
    local_wrong_rate: float | None = None
    p_value: float | None = None
    guarantee: str
    weights: list[float] | None = None  # combined score: logistic weights over ``features`` + bias
    features: list[str] | None = None  # combined score: its inputs (SINGLE_SCORES names); None: the first three
    # which labelled problems chose / fitted the score and which calibrated the threshold (disjoint)
    fit_split: str | None = None
    n_fit: int = 0
    calibration_split: str | None = None
    score_choice: str | None = None  # why this score (AUROC on the fit split)
    model_sha256: str | None = None  # the local model it was calibrated for
    curve: list[dict] = Field(default_factory=list)
    # when the score reads P(True): the self-check's extra prefill, measured over the calibration queries; every
    # local answer pays it, so the runtime adds it to the plan's predicted local latency
    self_check_s: Figure | None = None

    def reads_p_true(self, score: str | None = None) -> bool:
        """Does ``score`` (default: this calibration's) read P(True), so that each query runs the self-check?"""
        return reads_p_true(score or self.score, self.features)


class OffloadInfo(_M):
    """Why a query was answered where it was."""

    mode: Mode
    score: str | None = None
    score_value: float | None = None
    threshold: float | None = None
    calibrated: bool = False
    guarantee: str | None = None
    reason: str
    local_s: float | None = None  # local generation wall time
    cloud_s: float | None = None  # cloud call wall time (incl. retries)
    cloud_expected_s: float | None = None  # the cloud latency estimate used for the deadline decision
    local_answer: str | None = None
    cloud_error: str | None = None  # one line, never the API key
