"""`mmemb serve`: an OpenAI-compatible embeddings server (FastAPI + uvicorn) over one Embedder.

    POST /v1/embeddings   the OpenAI request shape, plus multimodal items, `mode` and `return_text`
                          (serve/inputs.py); the OpenAI response shape, plus per item `mode`, `reasoned`,
                          `reasoning_tokens` (and `text` on request)
    GET  /v1/models       the one model served
    GET  /health          liveness and queue depth (never needs the API key)
    GET  /metrics         Prometheus text format

Requests are batched by serve/batcher.py. Errors use OpenAI's shape, `{"error": {"message", "type", "code"}}`:
400 bad input (which item, what to do), 401 missing or wrong API key, 404 another model or no such route,
405 a wrong method, 408 a body that did not arrive within --read-timeout, 413 body / inputs / text over the
limits (or more inputs than the queue holds), 429 queue full (with Retry-After), 500 a failure inside the
model (that request only), 503 a request cut short by shutdown (with Retry-After). A client that leaves
before its body arrived is counted as 499 and not logged as an error.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ..embedder import truncate
from ..types import MODES, REASONING_MODES, InputError
from .batcher import Batcher, Cancelled, Job, QueueFull
from .inputs import Limits, RequestError, parse_request

log = logging.getLogger("mmemb.serve")


@dataclass
class ServeSettings:
    model_name: str = "nano"
    mode: str = "disc"  # a request without "mode"
    max_batch: int = 16
    max_wait_ms: float = 5.0
    max_queue: int = 256  # items per lane
    lanes: str = "split"
    max_body_bytes: int = 32 * 2**20
    api_key: str | None = None
    limits: Limits = field(default_factory=Limits)
    max_new_tokens: int = (
        1024  # the most tokens any request may generate per item (its own cap, or the model's)
    )
    disconnect_poll_s: float = 0.25  # how often a waiting request checks that its client is still there
    read_timeout_s: float = 30.0  # a client has this long to send its headers, and again its body


class Metrics:
    """The Prometheus series of one server (its own registry: two apps in one process never share them)."""

    def __init__(self) -> None:
        self.registry = reg = CollectorRegistry()
        self.requests = Counter(
            "mmemb_requests", "Embedding requests by mode and HTTP status", ["mode", "status"], registry=reg
        )
        self.items = Counter(
            "mmemb_items",
            "Items embedded by mode and whether reasoning ran",
            ["mode", "reasoned"],
            registry=reg,
        )
        self.tokens = Counter("mmemb_reasoning_tokens", "Tokens generated while reasoning", registry=reg)
        self.latency = Histogram("mmemb_request_seconds", "Request latency (seconds) by mode", ["mode"],
                                 registry=reg, buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))  # fmt: skip
        self.batch = Histogram("mmemb_batch_items", "Items per model batch by lane", ["lane"], registry=reg,
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128))  # fmt: skip
        self.queue = Gauge("mmemb_queue_items", "Items waiting by lane", ["lane"], registry=reg)


def error_response(status: int, message: str, code: str, headers: dict | None = None) -> JSONResponse:
    """OpenAI's error shape."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def unauthorized() -> JSONResponse:
    return error_response(401, "missing or wrong API key (send Authorization: Bearer <key>)", "unauthorized")


def authorized(settings: ServeSettings, request: Request) -> bool:
    """Constant-time check of the bearer key (always true when the server has none)."""
    if not settings.api_key:
        return True
    given = request.headers.get("authorization", "")
    return hmac.compare_digest(given.encode(), f"Bearer {settings.api_key}".encode())


async def read_body(request: Request, limit: int, timeout_s: float = 30.0) -> bytes:
    """The body, refused (413) as soon as it is known to pass `limit` bytes, with or without Content-Length,
    and (408) when it has not all arrived within `timeout_s` seconds: a stalled client holds nothing long."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise RequestError(
            413, f"the body is {int(declared):,} bytes, over the limit of {limit:,} bytes", "too_large"
        )
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise RequestError(413, f"the body is over the limit of {limit:,} bytes", "too_large")
                chunks.append(chunk)
    except TimeoutError:
        raise RequestError(408, f"the body did not arrive within {timeout_s:g} s", "timeout") from None
    return b"".join(chunks)


def parse_json(raw: bytes) -> object:
    """The body as JSON; anything that is not (bad UTF-8, bad syntax, nesting too deep for the parser,
    integers past Python's digit limit) is the client's 400, never the server's 500."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        why = "nested too deeply" if isinstance(e, RecursionError) else str(e)[:200]
        raise RequestError(400, f"the body is not valid JSON ({why})") from None


def capped(asked: int | None, mode: str, embedder, settings: ServeSettings) -> int | None:
    """The request's token cap, checked against the server's: asking for more is a 400; asking for nothing
    gets the model's own budget, or the server's cap where that is lower."""
    cap = settings.max_new_tokens
    if asked is not None:
        if asked > cap:
            raise RequestError(400, f"max_new_tokens {asked} is over this server's cap of {cap}")
        return asked
    if mode not in REASONING_MODES:  # one forward: nothing is generated
        return None
    own = max([embedder.config.generation.max_new_tokens, *embedder.config.policy.budgets])
    return None if own <= cap else cap


async def answer_or_cancel(request: Request, job: Job, poll_s: float):
    """The job's Embeddings; if the client goes away first, the job is cancelled (dropped from its queue,
    or its rows stop at their next token) and ClientDisconnect is raised: nobody generates for no one."""
    waiting = asyncio.wrap_future(job.future)
    try:
        while True:
            done, _ = await asyncio.wait({waiting}, timeout=poll_s)
            if done:
                break
            if await request.is_disconnected():
                job.cancel()
                raise ClientDisconnect
    except asyncio.CancelledError:  # the server cancels its handlers at shutdown: the job goes with them
        job.cancel()
        raise
    if waiting.cancelled():
        raise Cancelled("cancelled before it ran: the server is shutting down")
    return waiting.result()


def embeddings_body(req, emb, model_name: str, prompt_tokens: int, metrics: Metrics) -> dict:
    """The OpenAI embeddings response for a parsed request and its Embeddings (counted into `metrics`)."""
    data, total_gen = [], 0
    vectors = emb.vectors if req.dimensions is None else truncate(emb.vectors, req.dimensions)  # (N, d)
    for i in range(len(req.samples)):
        vec = vectors[i]
        reasoned = bool(emb.reasoned[i])
        tokens = int(emb.gen_tokens[i])
        total_gen += tokens
        metrics.items.labels(req.mode, str(reasoned).lower()).inc()
        item = {
            "object": "embedding",
            "index": i,
            "embedding": base64.b64encode(vec.astype("<f4").tobytes()).decode()
            if req.encoding_format == "base64"
            else vec.tolist(),
            "mode": req.mode,
            "reasoned": reasoned,
            "reasoning_tokens": tokens,
        }
        if req.return_text:
            item["text"] = emb.texts[i]
        data.append(item)
    metrics.tokens.inc(total_gen)
    return {
        "object": "list",
        "data": data,
        "model": model_name,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "total_tokens": prompt_tokens + total_gen,
            "reasoning_tokens": total_gen,
        },
    }


def create_app(embedder, settings: ServeSettings):
    m = Metrics()
    batcher = Batcher(
        embedder, max_batch=settings.max_batch, max_wait_s=settings.max_wait_ms / 1000, max_queue=settings.max_queue,
        lanes=settings.lanes, on_batch=lambda lane, n, _s: m.batch.labels(lane).observe(n),
    )  # fmt: skip
    for name, lane in batcher.lanes.items():
        m.queue.labels(name).set_function(lambda lane=lane: lane.queued)
    dim = embedder.width

    media: dict[str, Path] = {}  # "root": the folder of every request's media while the server runs

    @asynccontextmanager
    async def lifespan(_app):
        remove_stale_media_folders()
        media["root"] = Path(tempfile.mkdtemp(prefix=f"mmemb-serve-{os.getpid()}-"))
        yield
        await run_in_threadpool(batcher.close, True, SHUTDOWN_S)  # queued and running jobs cancelled
        shutil.rmtree(media.pop("root"), ignore_errors=True)

    # no /docs, /redoc or /openapi.json: the API is the README's, and nothing answers without the key
    app = FastAPI(title="mmemb", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.batcher = batcher

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, e: StarletteHTTPException):  # 404, 405: in OpenAI's shape too
        codes = {404: "not_found", 405: "method_not_allowed"}
        return error_response(e.status_code, str(e.detail), codes.get(e.status_code, "http_error"), e.headers)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        t0, mode, status = time.perf_counter(), "unknown", 500
        try:
            if not authorized(settings, request):
                status = 401
                return unauthorized()
            raw = await read_body(request, settings.max_body_bytes, settings.read_timeout_s)
            body = await run_in_threadpool(parse_json, raw)  # 32 MB of JSON: not on the event loop
            mode = body.get("mode", settings.mode) if isinstance(body, dict) else mode
            mode = mode if mode in MODES else "invalid"  # a metrics label: never the user's free text
            model = body.get("model") if isinstance(body, dict) else None
            if model not in (None, settings.model_name):
                raise RequestError(404, f"model {model!r} is not served here; this server serves "
                                   f"{settings.model_name!r}", "model_not_found")  # fmt: skip
            with tempfile.TemporaryDirectory(
                prefix="mmemb-serve-request-", dir=media.get("root"), ignore_cleanup_errors=True
            ) as tmp:  # a parse cut short at shutdown may still be writing into it
                req = await run_in_threadpool(
                    parse_request, body, settings.mode, settings.limits, Path(tmp), embedder.check_dimensions
                )
                if len(req.samples) > settings.max_queue:  # would wait for a queue that can never hold it
                    raise RequestError(413, f"{len(req.samples)} inputs in one request; this server queues at "
                                       f"most {settings.max_queue}: split the request", "too_large")  # fmt: skip
                job = Job(req.samples, req.mode, capped(req.max_new_tokens, req.mode, embedder, settings))
                batcher.submit(job)
                emb = await answer_or_cancel(request, job, settings.disconnect_poll_s)
            prompt_tokens = await run_in_threadpool(count_tokens, embedder, req.samples)
            status = 200
        except RequestError as e:
            status = e.status
            return error_response(e.status, e.message, e.code)
        except ClientDisconnect:  # gone before its body arrived: nothing to answer, nothing went wrong here
            status = 499
            return Response(status_code=499)
        except QueueFull as e:
            status = 429
            return error_response(429, str(e), "queue_full", {"Retry-After": str(e.retry_after)})
        except (Cancelled, asyncio.CancelledError):  # the server is shutting down: 503, not uvicorn's bare
            # 500 for a handler it cancels (a client that left is not answered at all)
            status = 503
            return error_response(
                503, "the server is shutting down; retry", "shutting_down", {"Retry-After": "5"}
            )
        except InputError as e:  # found by the model's own checks (e.g. a prompt over the context)
            status = 400
            return error_response(400, re.sub(r"item '(\d+)'", r"input[\1]", str(e)), "invalid_input")
        except Exception as e:  # noqa: BLE001 - this request fails, the server goes on
            log.exception("request failed")
            return error_response(
                500, f"the model failed on this request ({type(e).__name__}: {e})", "model_error"
            )
        finally:
            m.requests.labels(mode, str(status)).inc()
            m.latency.labels(mode).observe(time.perf_counter() - t0)
        return embeddings_body(req, emb, settings.model_name, prompt_tokens, m)

    @app.get("/v1/models")
    async def models(request: Request):
        if not authorized(settings, request):
            return unauthorized()
        return {
            "object": "list",
            "data": [{"id": settings.model_name, "object": "model", "owned_by": "mmemb"}],
        }

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": settings.model_name, "dim": dim, "queued": batcher.queued(),
                "running": batcher.running()}  # fmt: skip

    @app.get("/metrics")
    async def metrics(request: Request):
        if not authorized(settings, request):
            return unauthorized()
        return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def count_tokens(embedder, samples) -> int:
    """Tokens of the inputs' texts and instructions (the prompt template and visual tokens are not counted)."""
    texts = [t for s in samples for t in (s.text, s.instruction) if t]
    if not texts:
        return 0
    with embedder.tokenizer_lock:
        return sum(
            len(ids) for ids in embedder.backbone.tokenizer(texts, add_special_tokens=False)["input_ids"]
        )


def timed_protocol(header_timeout_s: float):
    """uvicorn's h11 protocol with a deadline on the request headers (uvicorn has none): a connection that
    has not sent a whole request head within `header_timeout_s` of connecting, or of its last answer, is
    closed, so stalled connections (authenticated or not) cannot pile up."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class TimedH11Protocol(H11Protocol):
        header_timer = None

        def connection_made(self, transport):
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._arm() if self._waiting_for_head() else self._disarm()

        def connection_lost(self, exc):
            self._disarm()
            super().connection_lost(exc)

        def _waiting_for_head(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _arm(self) -> None:
            if self.header_timer is None:
                self.header_timer = self.loop.call_later(header_timeout_s, self._expire)

        def _disarm(self) -> None:
            if self.header_timer is not None:
                self.header_timer.cancel()
                self.header_timer = None

        def _expire(self) -> None:
            self.header_timer = None
            if self._waiting_for_head() and not self.transport.is_closing():
                self.transport.close()

    return TimedH11Protocol


SHUTDOWN_S = 3  # at SIGTERM: seconds for requests in flight to finish, then again for the lanes to stop


def remove_stale_media_folders() -> None:
    """Media folders of servers that died without cleaning up (SIGKILL): mmemb-serve-<pid>-* in the system
    temp folder (tempfile.gettempdir()) whose process is gone."""
    for folder in Path(tempfile.gettempdir()).glob("mmemb-serve-*-*"):
        pid = folder.name.split("-")[2]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def serve(embedder, settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000) -> None:
    import uvicorn

    if host not in ("127.0.0.1", "localhost", "::1") and not settings.api_key:
        print(
            f"mmemb serve: warning: listening on {host} without an API key (set MMEMB_API_KEY)",
            file=sys.stderr,
        )
    uvicorn.run(create_app(embedder, settings), host=host, port=port, log_level="warning",
                timeout_graceful_shutdown=SHUTDOWN_S, http=timed_protocol(settings.read_timeout_s))  # fmt: skip
