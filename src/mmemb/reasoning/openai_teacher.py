"""OpenAITeacher: candidate rationales from an OpenAI-compatible chat-completions server (vLLM, SGLang).

Each `Request` becomes one POST to `{base_url}/chat/completions`: a system message (`TEACHER_SYSTEM`) and a
user message holding the query's images as PNG data URLs (its image, its pages, or `num_frames` frames
sampled uniformly from its video) followed by `teacher_user_text(query, hint)`. Up to `concurrency`
requests are in flight at once; replies come back in request order. Only the standard library is used.

Retry policy: timeouts, connection errors, HTTP 408/409/429/5xx, and a 200 whose body is not JSON or lacks
`choices[0].message.content` are retried up to `retries` attempts in all, sleeping `backoff * 2**attempt`
seconds (at most 30 s) in between, or the server's numeric `Retry-After` (at most 30 s) when it sends one.
Other 4xx errors are not retried. A request that still fails, or whose media cannot be read, gets
`Reply(error=...)` (one line saying what happened and where); the rest of the batch goes on.

Example with vLLM:

    vllm serve Qwen/Qwen2.5-VL-7B-Instruct --port 8000

    from mmemb.reasoning.openai_teacher import OpenAITeacher
    teacher = OpenAITeacher("http://127.0.0.1:8000/v1", "Qwen/Qwen2.5-VL-7B-Instruct", concurrency=16)
    replies = teacher.generate(requests)   # list[Reply], one per Request, same order

The API key is `api_key`, or else the environment variable `MMEMB_TEACHER_API_KEY` (sent as a Bearer token).
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import math
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..media import sample_images
from ..types import InputError
from .format import TEACHER_SYSTEM, teacher_user_text
from .teachers import Reply, Request

MAX_SLEEP = 30.0
RETRY_STATUS = {408, 409, 429}
API_KEY_ENV = "MMEMB_TEACHER_API_KEY"


def _one_line(text: str, limit: int = 200) -> str:
    return " ".join(text[:limit].split())


class _Retryable(Exception):
    """A failed attempt worth retrying; the final message is `{what} (N attempts){where}`."""

    def __init__(self, what: str, where: str, retry_after: float | None = None) -> None:
        super().__init__(what)
        self.what, self.where, self.retry_after = what, where, retry_after


class _Fatal(Exception):
    pass


class OpenAITeacher:
    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_tokens: int = 256,
        concurrency: int = 8,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 1.0,
        num_frames: int = 8,
        max_image_pixels: int = 40_000_000,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise InputError(
                f"teacher base_url {base_url!r}: give an http(s) URL like http://127.0.0.1:8000/v1"
            )
        if concurrency < 1 or retries < 1:
            raise InputError(f"teacher: concurrency ({concurrency}) and retries ({retries}) must be >= 1")
        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/chat/completions"
        self.model = model
        self.api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        self.temperature, self.top_p, self.max_tokens = temperature, top_p, max_tokens
        self.concurrency, self.timeout, self.retries, self.backoff = concurrency, timeout, retries, backoff
        self.num_frames, self.max_image_pixels = num_frames, max_image_pixels
        self.name = f"openai:{model}@{self.base_url}"

    def generate(self, requests: list[Request]) -> list[Reply]:
        if not requests:
            return []
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(self._one, requests))

    def _messages(self, request: Request) -> list[dict[str, Any]]:
        content: list[dict[str, Any]] = []
        for im in sample_images(request.query, num_frames=self.num_frames, max_pixels=self.max_image_pixels):
            buf = io.BytesIO()
            im.convert("RGB").save(buf, format="PNG")
            url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
            content.append({"type": "image_url", "image_url": {"url": url}})
        content.append({"type": "text", "text": teacher_user_text(request.query, request.hint)})
        return [{"role": "system", "content": TEACHER_SYSTEM}, {"role": "user", "content": content}]

    def _one(self, request: Request) -> Reply:
        start = time.monotonic()
        try:
            messages = self._messages(request)
        except (InputError, OSError, ValueError) as e:
            return Reply(error=_one_line(f"media: {e}", 500), seconds=time.monotonic() - start)
        body = {
            "model": self.model,
            "messages": messages,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
            "n": 1,
            "seed": request.seed,
        }
        data = json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        for attempt in range(self.retries):
            try:
                text, tokens = self._post(data, headers)
                return Reply(text=text, tokens=tokens, seconds=time.monotonic() - start)
            except _Fatal as e:
                return Reply(error=str(e), seconds=time.monotonic() - start)
            except _Retryable as e:
                if attempt + 1 == self.retries:
                    n = f"{self.retries} attempt{'s' if self.retries > 1 else ''}"
                    return Reply(error=f"{e.what} ({n}){e.where}", seconds=time.monotonic() - start)
                delay = e.retry_after if e.retry_after is not None else self.backoff * 2**attempt
                time.sleep(min(max(delay, 0.0), MAX_SLEEP))
        raise AssertionError("unreachable")

    def _post(self, data: bytes, headers: dict[str, str]) -> tuple[str, int]:
        """One attempt: (content, completion tokens), or raises _Retryable / _Fatal."""
        req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            try:
                detail = _one_line(e.read().decode("utf-8", "replace")) if e.fp else ""
            except (OSError, http.client.HTTPException):
                detail = "(body unreadable)"
            if e.code in RETRY_STATUS or e.code >= 500:
                raise _Retryable(f"HTTP {e.code}", f" at {self.url}: {detail}", _retry_after(e)) from None
            raise _Fatal(f"HTTP {e.code} at {self.url}: {detail}") from None
        except (OSError, http.client.HTTPException) as e:  # URLError, TimeoutError, ConnectionError...
            reason = e.reason if isinstance(e, urllib.error.URLError) else e
            if isinstance(reason, TimeoutError):
                raise _Retryable(f"timeout after {self.timeout:g} s", f" at {self.url}") from None
            what = _one_line(f"{type(reason).__name__}: {reason}")
            raise _Retryable("connection error", f" at {self.url}: {what}") from None
        try:
            payload = json.loads(raw)
            content = payload["choices"][0]["message"]["content"]
            if not isinstance(content, str):
                raise TypeError("content is not a string")
        except (ValueError, KeyError, IndexError, TypeError) as e:
            snippet = _one_line(raw.decode("utf-8", "replace"))
            raise _Retryable("malformed response", f" at {self.url}: {type(e).__name__}: {snippet}") from None
        usage = payload.get("usage") if isinstance(payload, dict) else None
        tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
        return content, tokens if isinstance(tokens, int) else 0


def _retry_after(e: urllib.error.HTTPError) -> float | None:
    """The server's numeric Retry-After in seconds (capped), or None (absent, an HTTP date, nonsense)."""
    try:
        value = float(e.headers.get("Retry-After", "")) if e.headers else math.nan
    except ValueError:
        return None
    return None if math.isnan(value) else min(max(value, 0.0), MAX_SLEEP)
