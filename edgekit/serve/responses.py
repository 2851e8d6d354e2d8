"""OpenAI response bodies and SSE chunks built from a :class:`Result` (plus the ``edgekit`` object)."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from edgekit.schemas.result import Result, Sample

FINISH = {
    "stop": "stop",
    "budget": "length",
    "cancelled": "length",
}  # cancelled (deadline, client): see edgekit.finish_reasons


def new_id(chat: bool) -> str:
    return ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]


def usage(res: Result) -> dict:
    t = res.timings
    return {
        "prompt_tokens": t.prompt_tokens,
        "completion_tokens": t.generated_tokens,
        "total_tokens": t.prompt_tokens + t.generated_tokens,
        "prompt_tokens_details": {"cached_tokens": t.cached_prompt_tokens},  # OpenAI's field: from the prefix cache
    }


def _token_logprobs(s: Sample, pieces: list[tuple[str, float | None]] | None) -> list[tuple[str, float]] | None:
    """(token text, logprob) of the tokens inside the sample's final text (a cut stop sequence dropped)."""
    if pieces is None:
        return None
    out, used = [], 0
    for text, lp in pieces:
        if used + len(text) > len(s.text) or lp is None:
            break
        out.append((text, lp))
        used += len(text)
    return out


def chat_logprobs(toks: list[tuple[str, float]] | None) -> dict | None:
    if toks is None:
        return None
    return {
        "content": [{"token": t, "logprob": lp, "bytes": list(t.encode()), "top_logprobs": []} for t, lp in toks],
        "refusal": None,
    }


def completion_logprobs(toks: list[tuple[str, float]] | None) -> dict | None:
    if toks is None:
        return None
    offsets, pos = [], 0
    for t, _ in toks:
        offsets.append(pos)
        pos += len(t)
    return {
        "tokens": [t for t, _ in toks],
        "token_logprobs": [lp for _, lp in toks],
        "top_logprobs": None,
        "text_offset": offsets,
    }


def body(
    res: Result, *, chat: bool, model: str, rid: str, edgekit: dict, tokens: dict | None, want_logprobs: bool
) -> dict:
    choices = []
    for i, s in enumerate(res.samples):
        toks = _token_logprobs(
            s, tokens.get(s.index, []) if tokens is not None and want_logprobs and res.source != "cloud" else None
        )
        if chat:
            choices.append(
                {
                    "index": i,
                    "message": {"role": "assistant", "content": s.text, "refusal": None},
                    "logprobs": chat_logprobs(toks),
                    "finish_reason": FINISH[s.finish_reason],
                }
            )
        else:
            choices.append(
                {
                    "index": i,
                    "text": s.text,
                    "logprobs": completion_logprobs(toks),
                    "finish_reason": FINISH[s.finish_reason],
                }
            )
    return {
        "id": rid,
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": None,
        "choices": choices,
        "usage": usage(res),
        "edgekit": edgekit,
    }


class Chunker:
    """SSE chunks of one streamed response: ``data: {json}\\n\\n`` ... ``data: [DONE]\\n\\n``."""

    def __init__(self, *, chat: bool, model: str, rid: str, stop: list[str]):
        self.chat, self.model, self.rid = chat, model, rid
        self.created = int(time.time())
        self.hold = max((len(x) for x in stop), default=0)  # a stop sequence may still be cut from the tail
        self.acc: dict[int, str] = {}
        self.sent: dict[int, int] = {}

    def _chunk(self, choices: list[dict], **extra: Any) -> str:
        obj = {
            "id": self.rid,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": choices,
            **extra,
        }
        return "data: " + json.dumps(obj, separators=(",", ":")) + "\n\n"

    def _choice(self, i: int, text: str, finish: str | None = None, logprobs: dict | None = None) -> dict:
        if self.chat:
            delta: dict = {"content": text}
            if i not in self.sent:
                delta["role"] = "assistant"
            return {"index": i, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return {"index": i, "text": text, "logprobs": logprobs, "finish_reason": finish}

    def token(self, i: int, piece: str) -> str | None:
        acc = self.acc[i] = self.acc.get(i, "") + piece
        upto = len(acc) - self.hold
        done = self.sent.get(i, 0)
        if upto <= done:
            return None
        out = self._chunk([self._choice(i, acc[done:upto])])
        self.sent[i] = upto
        return out

    def finish(
        self, res: Result, edgekit: dict, tokens: dict | None, want_logprobs: bool, include_usage: bool
    ) -> list[str]:
        out = []
        k = len(res.samples)
        for j, s in enumerate(res.samples):
            streamed = self.acc.get(j, "")[: self.sent.get(j, 0)]
            rest = s.text[len(streamed) :] if s.text.startswith(streamed) else ""
            toks = _token_logprobs(
                s, tokens.get(s.index, []) if tokens is not None and want_logprobs and res.source != "cloud" else None
            )
            lp = chat_logprobs(toks) if self.chat else completion_logprobs(toks)
            extra = {"edgekit": edgekit} if j == k - 1 else {}
            out.append(self._chunk([self._choice(j, rest, FINISH[s.finish_reason], lp)], **extra))
            self.sent[j] = len(s.text)
        if include_usage:
            out.append(self._chunk([], usage=usage(res)))
        out.append("data: [DONE]\n\n")
        return out

    @staticmethod
    def error(body: dict) -> list[str]:
        return ["data: " + json.dumps(body) + "\n\n", "data: [DONE]\n\n"]
