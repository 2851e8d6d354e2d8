"""``/healthz``: model loaded, queue depth, and (when offload is configured) whether the cloud answers."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx

_PROBE_TTL_S = 10.0
_cache: dict[str, tuple[float, dict]] = {}
_lock = threading.Lock()


def probe_cloud(base_url: str, timeout_s: float = 1.0) -> dict:
    """GET {base}/models without credentials (cached 10 s): any HTTP answer, even 401, means reachable."""
    now = time.monotonic()
    with _lock:
        hit = _cache.get(base_url)
        if hit is not None and now - hit[0] < _PROBE_TTL_S:
            return hit[1]
    root = base_url.rstrip("/")
    root = root if root.endswith("/v1") else root + "/v1"
    t0 = time.perf_counter()
    try:
        r = httpx.get(root + "/models", timeout=timeout_s)
        doc: dict = {"reachable": True, "http_status": r.status_code, "probe_s": round(time.perf_counter() - t0, 4)}
    except httpx.HTTPError as e:
        doc = {"reachable": False, "error": type(e).__name__, "probe_s": round(time.perf_counter() - t0, 4)}
    with _lock:
        _cache[base_url] = (now, doc)
    return doc


def health(svc: Any) -> dict:
    rt = svc.rt
    loaded = not rt.closed
    cloud: dict | None = None
    if rt.offload is not None:
        eng = rt.offload.cloud
        url = getattr(eng, "base_url", None)
        cloud = {
            "configured": True,
            "url": url,
            "mode": rt.offload.mode,
            "circuit": getattr(getattr(eng, "breaker", None), "state", None),
        }
        if url:
            cloud.update(probe_cloud(url))
    status = "ok" if loaded and not svc.draining else ("draining" if svc.draining else "unavailable")
    return {
        "status": status,
        "model": svc.model_id,
        "model_loaded": loaded,
        "engine": rt.engine.name,
        "load_s": round(rt.load_s, 3),
        "queue_depth": svc.waiting,
        "in_flight": svc.admitted,
        "max_queue": svc.limits.max_queue,
        "slots": svc.slots,
        "batching": svc.tap.batching_stats(),
        "uptime_s": round(time.time() - svc.started_at, 1),
        "plan": svc.plan_path,
        "cloud": cloud or {"configured": False},
        # llama.cpp: the kernel configuration the probe found safe here (probed before the daemon listened),
        # and the thread policy in force
        "kernels": (getattr(rt.engine, "info", None) and rt.engine.info.extra or {}).get("kernels"),
        "threading": rt.engine.threading() if hasattr(rt.engine, "threading") else None,
    }
