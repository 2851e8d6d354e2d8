"""What a generation returns: samples, the aggregated answer, confidence and timings."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from edgekit.schemas.offload import OffloadInfo, Source
from edgekit.schemas.options import SamplingOptions

FinishReason = Literal["stop", "budget", "cancelled"]


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class Sample(_M):
    index: int
    text: str
    tokens: int  # generated tokens (stop sequence included, EOS excluded)
    finish_reason: FinishReason  # stop: EOS or a stop sequence; budget: max_tokens; cancelled: batch ended early
    token_ids: list[int] = Field(default_factory=list)
    logprobs: list[float] = Field(default_factory=list)  # chosen-token log-probabilities (model distribution)
    # per-sample confidence scores (edgekit.runtime.confidence): answer_logprob, answer_min_logprob,
    # group_conf, tail_conf -- over the tokens the model chose, renormalised over what a grammar allowed
    scores: dict[str, float | None] = Field(default_factory=dict)
    # per token, in memory only: (logprob over the allowed tokens, token confidence, piece length) --
    # to score the sample again for another extracted answer (edgekit.runtime.confidence.rescore)
    _token_scores: list | None = PrivateAttr(default=None)
    answer: str | None = None  # extracted answer
    verified: bool | None = None  # first_verified: the verifier's verdict, if it was asked
    tokens_estimated: bool = False  # the engine could not count tokens (len(text)/4)


class Confidence(_M):
    votes: int = 0  # samples agreeing with the answer
    n: int = 0  # samples drawn
    vote_share: float | None = None  # votes / n
    tied: list[str] = Field(default_factory=list)  # answers tied for first place (if a tie was broken)
    mean_logprob: float | None = None  # mean chosen-token logprob over the agreeing samples
    low_logprob: float | None = None  # 10 % quantile of those token logprobs
    verified: bool | None = None  # first_verified: did any sample pass?
    # edgekit.runtime.confidence: means over the agreeing samples of their answer-span log-probability
    # (and its least likely token), DeepConf lowest-group and tail confidence; over the vote: the
    # entropy of the extracted answers (nats), the share of samples with no answer; P(True) self-check
    answer_logprob: float | None = None
    answer_min_logprob: float | None = None
    group_conf: float | None = None
    tail_conf: float | None = None
    answer_entropy: float | None = None
    no_answer_share: float | None = None
    p_true: float | None = None

    @property
    def agreement(self) -> str:
        return f"{self.votes}/{self.n}"


class Stopping(_M):
    """What a stopping rule did (``SamplingOptions.stop_rule``; edgekit.schemas.stopping)."""

    rule: str
    stopped: bool = False  # the rule ended the batch before every sample finished
    counted: int = 0  # samples that finished before the stop: the vote and the confidence are over these
    started: int = 0  # samples started (adaptive: n0, or n_max after growing)
    grown: bool = False  # adaptive: the batch grew from n0 to n_max


class Timings(_M):
    """Measured wall-clock times of one generate() call (seconds; time.perf_counter)."""

    load_s: float = 0.0  # model load (once per Runtime; repeated here for reference)
    queue_s: float = 0.0  # waiting for the runtime's lock (another call was running); not in total_s
    prefill_s: float = 0.0  # prompt evaluation + first token = time to first token
    decode_s: float = 0.0  # after the first token, until the last sequence finished
    total_s: float = 0.0  # from holding the lock to the last token, incl. templating and tokenising
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0  # of those, taken from the prefix cache (not prefilled)
    generated_tokens: int = 0  # over all samples
    steps: int = 0  # batched decode steps
    prefill_tok_s: float | None = None
    decode_tok_s: float | None = (
        None  # aggregate over samples: generated tokens / (prefill first token excluded) decode_s
    )
    self_check_s: float | None = None  # P(True) self-check's prefill (SamplingOptions.self_check); in total_s
    kernels: str | None = None  # llama.cpp kernel configuration the probe chose: default / plain
    threads: int | None = None  # CPU threads in force at the end of the call (adaptive unless --threads)


class Result(_M):
    model: str
    engine: str = "llama.cpp"
    source: Source = "local"  # local | cloud | local-fallback (the cloud failed or ran out of time)
    answer: str | None  # aggregated answer (extracted), or the text for aggregate="none" with n=1
    # with a JSON schema: the answer parsed (the vote's winner as a dict, list, ...), so an embedding app
    # need not json.loads it; None when no sample gave a valid answer (or without a schema)
    value: Any = None
    text: str | None = None  # full text of the sample the answer came from
    aggregate: str
    samples: list[Sample]
    confidence: Confidence
    timings: Timings
    n: int
    max_tokens: int
    temperature: float
    seed: int | None = None
    flags: list[str] = Field(default_factory=list)  # e.g. "offloaded", "deadline", "unverified"
    extra: dict = Field(default_factory=dict)
    options: SamplingOptions | None = None  # the options this result was drawn with
    offload: OffloadInfo | None = None  # routing decision, when a cloud engine is configured
    stopping: Stopping | None = None  # what the stopping rule did, when one was set
