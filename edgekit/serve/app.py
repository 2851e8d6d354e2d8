"""The HTTP API: OpenAI-compatible completions over one warm :class:`~edgekit.serve.service.Service`.

``/v1/chat/completions``, ``/v1/completions`` (JSON or SSE), ``/v1/models``, ``/healthz``,
``/metrics``. Every error is OpenAI's ``{"error": {...}}``; hostile input is a 4xx, never a 500.
A client that disconnects cancels its generation (:class:`CancelToken`) at the next decode step,
or before it starts when it was still waiting in the queue.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from edgekit.errors import DeadlineUnmeetable, EdgekitError
from edgekit.serve.health import health
from edgekit.serve.metrics import CONTENT_TYPE
from edgekit.serve.responses import Chunker, new_id
from edgekit.serve.responses import body as response_body
from edgekit.serve.service import Job, Service
from edgekit.serve.wire import ApiError, ChatRequest, CompletionRequest, messages_of, parse, prompt_of, runtime_error

log = logging.getLogger("edgekit.serve")


def error_response(e: ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


class Guard:
    """Pure ASGI middleware (keeps ``receive`` untouched for disconnect detection): API key and body-size cap."""

    def __init__(self, app: Any, svc: Service, api_key: str | None):
        self.app, self.svc = app, svc
        self._key = hashlib.sha256(api_key.encode()).digest() if api_key else None

    def authorized(self, headers: list[tuple[bytes, bytes]]) -> bool:
        if self._key is None:
            return True
        given = next((v for k, v in headers if k.lower() == b"authorization"), b"")
        scheme, _, token = given.partition(b" ")
        ok_scheme = scheme.lower() == b"bearer"
        # constant time: compare fixed-length digests, and always compare
        same = hmac.compare_digest(hashlib.sha256(token.strip()).digest(), self._key)
        return ok_scheme and same

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = scope.get("headers", [])
        err = None
        if not self.authorized(headers):
            self.svc.metrics.rejected.labels("unauthorized").inc()
            err = ApiError(
                401,
                "missing or incorrect API key: send 'Authorization: Bearer <key>'",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        else:
            length = next((v for k, v in headers if k.lower() == b"content-length"), None)
            try:
                too_big = length is not None and int(length) > self.svc.limits.max_body_bytes
            except ValueError:
                too_big = False
            if too_big:
                err = _too_large(self.svc)
            elif self.svc.draining and scope.get("path") not in ("/healthz", "/metrics"):
                self.svc.metrics.rejected.labels("draining").inc()
                err = ApiError(
                    503,
                    "the server is shutting down (draining in-flight requests)",
                    type="server_error",
                    code="draining",
                    headers={"Retry-After": "5", "Connection": "close"},
                )
        ep = _endpoint(scope.get("path", ""))
        if err is not None:
            self.svc.metrics.requests.labels(ep, str(err.status)).inc()
            return await error_response(err)(scope, receive, send)
        status = {"code": 500}
        t0 = time.perf_counter()

        async def send_seen(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_seen)
        finally:
            self.svc.metrics.requests.labels(ep, str(status["code"])).inc()
            if ep in KNOWN[:2]:
                self.svc.metrics.latency.labels(ep).observe(time.perf_counter() - t0)


def _too_large(svc: Service) -> ApiError:
    svc.metrics.rejected.labels("body_too_large").inc()
    return ApiError(
        413,
        f"the request body exceeds this server's cap of {svc.limits.max_body_bytes} bytes",
        code="request_too_large",
    )


KNOWN = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/models",
    "/healthz",
    "/metrics",
    "/admin/replan",
    "/admin/live",
)


def _endpoint(path: str) -> str:
    return path if path in KNOWN else ("/v1/models/{id}" if path.startswith("/v1/models/") else "other")


async def read_json(request: Request, svc: Service) -> Any:
    cap = svc.limits.max_body_bytes
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise _too_large(svc)
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise ApiError(400, f"the request body is not valid JSON ({type(e).__name__})", code="invalid_json") from None
    try:  # a lone UTF-16 surrogate escape ("\ud800") is valid JSON but not text: it would fail in the tokenizer
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(
            400,
            "the request body contains a lone UTF-16 surrogate (e.g. \\ud800), which is not text",
            code="invalid_value",
        ) from None
    except (ValueError, RecursionError) as e:
        raise ApiError(400, f"the request body is not valid JSON ({type(e).__name__})", code="invalid_json") from None
    return body


async def _watch_disconnect(request: Request, job: Job) -> None:
    while True:
        msg = await request.receive()
        if msg.get("type") == "http.disconnect":
            job.token.cancel("client disconnected")
            return
        await asyncio.sleep(0.05)  # not expected after the body was read; never spin


def build_app(svc: Service, *, api_key: str | None = None) -> Any:
    app = FastAPI(title="edgekit serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.svc = svc

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError) -> JSONResponse:
        return error_response(e)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        kind = "not_found" if e.status_code == 404 else "method_not_allowed" if e.status_code == 405 else "http_error"
        return error_response(
            ApiError(e.status_code, f"{request.method} {request.url.path[:100]}: {e.detail}", code=kind)
        )

    @app.exception_handler(Exception)
    async def _bug(request: Request, e: Exception) -> JSONResponse:  # a bug: say so, in the same format
        log.exception("internal error on %s", request.url.path)
        return error_response(
            ApiError(
                500,
                f"internal error: {type(e).__name__} (a bug: please report it)",
                type="server_error",
                code="internal_error",
            )
        )

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        doc = await asyncio.get_running_loop().run_in_executor(None, health, svc)
        return JSONResponse(doc, status_code=200 if doc["status"] == "ok" else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(svc.metrics.render(), media_type=CONTENT_TYPE)

    def model_card() -> dict:
        return {"id": svc.model_id, "object": "model", "created": int(svc.started_at), "owned_by": "edgekit"}

    @app.post("/admin/replan")
    async def admin_replan() -> JSONResponse:  # behind the API key like every route
        out = await asyncio.get_running_loop().run_in_executor(None, svc.live.replan, "admin")
        if out["outcome"] in ("failed", "busy"):
            raise ApiError(409, out["message"], code="replan_" + out["outcome"])
        return JSONResponse(out)

    @app.get("/admin/live")
    async def admin_live() -> JSONResponse:
        return JSONResponse(svc.live.status())

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict:
        svc.check_model(model_id)
        return model_card()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        req = parse(ChatRequest, await read_json(request, svc))
        svc.check_model(req.model)
        return await _serve(request, svc.job(req, messages_of(req), chat=True), req)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        req = parse(CompletionRequest, await read_json(request, svc))
        svc.check_model(req.model)
        return await _serve(request, svc.job(req, prompt_of(req), chat=False), req)

    async def _serve(request: Request, job: Job, req: Any) -> Response:
        svc.admit(job)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        if job.stream and svc.rt.offload is None:  # with offload the answer may come from the cloud: buffer it
            job.push = lambda item: loop.call_soon_threadsafe(queue.put_nowait, item)
        try:
            fut = loop.run_in_executor(svc.executor, svc.work, job)
        except RuntimeError:  # executor shut down
            svc.release(job)
            raise ApiError(503, "the server is shutting down", type="server_error", code="draining") from None
        fut.add_done_callback(lambda f: queue.put_nowait(("done", f)))
        watcher = asyncio.create_task(_watch_disconnect(request, job))
        if svc.log_prompts:
            log.info("request %s prompt=%r", id(job), job.prompt)
        try:
            first = await queue.get()  # "start" (streaming: the first engine event arrived) or "done"
        except BaseException:
            job.token.cancel("client disconnected")
            watcher.cancel()
            raise
        if first[0] == "done":
            try:
                res = _result(first[1], job)
            finally:
                watcher.cancel()
            rid = new_id(job.chat)
            ek = svc.observe(job, res)
            _log(job, res)
            if not job.stream:
                return JSONResponse(
                    response_body(
                        res,
                        chat=job.chat,
                        model=svc.model_id,
                        rid=rid,
                        edgekit=ek,
                        tokens=job.tokens,
                        want_logprobs=job.want_logprobs,
                    )
                )
            ch = Chunker(chat=job.chat, model=svc.model_id, rid=rid, stop=job.options.stop)
            parts = ch.finish(res, ek, job.tokens, job.want_logprobs, _usage_wanted(req))
            return _sse(_iter(parts))
        return _sse(_stream(queue, job, req, watcher))

    def _result(fut: Any, job: Job) -> Any:
        try:
            return fut.result()
        except ApiError:
            raise
        except EdgekitError as e:
            if isinstance(e, DeadlineUnmeetable):
                svc.metrics.rejected.labels("deadline_unmeetable").inc()
            raise runtime_error(e, job.chat, job.options) from None
        except (TypeError, ValueError, KeyError, RecursionError) as e:
            if job.options.json_schema is not None:  # a schema the grammar converter cannot handle
                raise ApiError(
                    400,
                    f"the JSON schema cannot be turned into a grammar ({type(e).__name__})",
                    param="response_format",
                    code="invalid_value",
                ) from None
            raise

    async def _stream(queue: asyncio.Queue, job: Job, req: Any, watcher: asyncio.Task) -> AsyncIterator[str]:
        ch = Chunker(chat=job.chat, model=svc.model_id, rid=new_id(job.chat), stop=job.options.stop)
        finished = False
        try:
            while True:
                item = await queue.get()
                if item[0] == "token":
                    out = ch.token(item[1], item[2])
                    if out:
                        yield out
                elif item[0] == "done":
                    try:
                        res = _result(item[1], job)
                    except Exception as e:  # headers are sent: the error goes in the stream
                        if not isinstance(e, ApiError):
                            log.error("generation failed mid-stream: %s", type(e).__name__, exc_info=e)
                        err = (
                            e
                            if isinstance(e, ApiError)
                            else ApiError(
                                500, f"internal error: {type(e).__name__}", type="server_error", code="internal_error"
                            )
                        )
                        finished = True
                        for part in Chunker.error(err.body()):
                            yield part
                        return
                    ek = svc.observe(job, res)
                    _log(job, res)
                    finished = True
                    for part in ch.finish(res, ek, job.tokens, job.want_logprobs, _usage_wanted(req)):
                        yield part
                    return
        finally:
            watcher.cancel()
            if not finished:
                job.token.cancel("client disconnected")

    def _log(job: Job, res: Any) -> None:
        t = res.timings
        log.info(
            "%s n=%d source=%s tokens=%d+%d queue=%.3fs total=%.3fs flags=%s",
            "chat" if job.chat else "completion",
            job.options.n,
            res.source,
            t.prompt_tokens,
            t.generated_tokens,
            t.queue_s,
            t.total_s,
            res.flags,
        )
        if svc.log_prompts:
            log.info("request %s answer=%r texts=%r", id(job), res.answer, [s.text for s in res.samples])

    app.add_middleware(Guard, svc=svc, api_key=api_key)
    return app


def _usage_wanted(req: Any) -> bool:
    return bool(req.stream_options and req.stream_options.include_usage)


async def _iter(parts: list[str]) -> AsyncIterator[str]:
    for p in parts:
        yield p


def _sse(gen: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(
        gen, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
