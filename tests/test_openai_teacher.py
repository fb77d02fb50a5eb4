"""OpenAITeacher against a stub chat-completions server on 127.0.0.1 (no real network, no model)."""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from mmemb.media import sample_frames
from mmemb.reasoning.format import TEACHER_SYSTEM
from mmemb.reasoning.openai_teacher import OpenAITeacher
from mmemb.reasoning.teachers import Request
from mmemb.types import Sample

from .conftest import write_image


class Stub:
    """Records every request; behaviour is chosen by a marker word in the user text."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[dict] = []
        self.attempts: dict[str, int] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.url = ""

    def seen(self, marker: str) -> int:
        with self.lock:
            return sum(n for text, n in self.attempts.items() if marker in text)


def _user_text(body: dict) -> str:
    return next(p["text"] for p in body["messages"][1]["content"] if p["type"] == "text")


def _handler(stub: Stub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # quiet
            pass

        def _send(self, code: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
            self._leave()  # before the reply: once the client has it, it may send its next request
            try:
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (SLOW)
                pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            text = _user_text(body)
            with stub.lock:
                stub.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                attempt = stub.attempts.get(text, 0)
                stub.attempts[text] = attempt + 1
                stub.in_flight += 1
                stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
            self._counted = True
            try:
                self._respond(text, attempt)
            finally:
                self._leave()

        def _leave(self) -> None:
            with stub.lock:
                if getattr(self, "_counted", False):
                    stub.in_flight -= 1
                    self._counted = False

        def _respond(self, text: str, attempt: int) -> None:
            if "FAIL500" in text or ("FLAKY" in text and attempt == 0):
                return self._send(500, b"internal error\nsecond line")
            if "RATE" in text and attempt == 0:
                return self._send(429, b"slow down", {"Retry-After": "0"})
            if "AUTH" in text:
                return self._send(401, b'{"error": "bad key"}')
            if "GARBAGE" in text:
                return self._send(200, b"<html>not json</html>", {"Content-Type": "text/html"})
            if "NOCONTENT" in text:  # valid JSON without a string content
                return self._send(200, b'{"choices": [{"message": {"content": null}}]}')
            if "SLOW" in text:
                time.sleep(1.0)
            if "NAP" in text:
                time.sleep(0.1)
            content = f"<think>seen: {text}</think><answer>ok</answer>"
            reply = {
                "choices": [{"message": {"role": "assistant", "content": content}}],
                "usage": {"completion_tokens": 7},
            }
            return self._send(200, json.dumps(reply).encode(), {"Content-Type": "application/json"})

    return Handler


@pytest.fixture
def stub():
    s = Stub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(s))
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    s.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    yield s
    server.shutdown()
    server.server_close()


def req(text: str, i: int = 0, **sample) -> Request:
    return Request(pair_id=f"p{i}", k=0, query=Sample(id=f"q{i}", text=text, **sample), seed=100 + i)


def sent_images(body: dict) -> list[bytes]:
    content = body["messages"][1]["content"]
    assert content[-1]["type"] == "text"  # images first, then the text
    out = []
    for part in content[:-1]:
        assert part["type"] == "image_url"
        url = part["image_url"]["url"]
        assert url.startswith("data:image/png;base64,")
        out.append(base64.b64decode(url.split(",", 1)[1]))
    return out


def body_for(stub: Stub, marker: str) -> dict:
    return next(r["body"] for r in stub.requests if marker in _user_text(r["body"]))


def test_replies_in_order_with_body_and_key(stub, monkeypatch):
    monkeypatch.delenv("MMEMB_TEACHER_API_KEY", raising=False)
    t = OpenAITeacher(stub.url, "big-vlm", api_key="sekrit", temperature=0.7, max_tokens=99, backoff=0.01)
    assert t.name == f"openai:big-vlm@{stub.url}"
    replies = t.generate([req(f"item {i}", i) for i in range(5)])
    assert [r.error for r in replies] == [""] * 5
    for i, r in enumerate(replies):
        assert r.text == f"<think>seen: item {i}</think><answer>ok</answer>"
        assert r.tokens == 7 and r.seconds > 0
    assert len(stub.requests) == 5
    for r in stub.requests:
        assert r["path"] == "/v1/chat/completions"
        assert r["headers"]["Authorization"] == "Bearer sekrit"
        b = r["body"]
        assert (b["model"], b["temperature"], b["max_tokens"], b["n"]) == ("big-vlm", 0.7, 99, 1)
        assert b["messages"][0] == {"role": "system", "content": TEACHER_SYSTEM}
        assert b["messages"][1]["role"] == "user"
    assert body_for(stub, "item 3")["seed"] == 103


def test_api_key_from_env_or_none(stub, monkeypatch):
    monkeypatch.setenv("MMEMB_TEACHER_API_KEY", "from-env")
    assert OpenAITeacher(stub.url, "m").generate([req("envkey")])[0].error == ""
    monkeypatch.delenv("MMEMB_TEACHER_API_KEY")
    assert OpenAITeacher(stub.url, "m").generate([req("nokey")])[0].error == ""
    assert stub.requests[0]["headers"]["Authorization"] == "Bearer from-env"
    assert "Authorization" not in stub.requests[1]["headers"]


def test_hint_reaches_the_user_text(stub):
    r = Request("p", 0, Sample(id="q", text="a cat", instruction="Find"), hint="tabby, indoor")
    assert OpenAITeacher(stub.url, "m").generate([r])[0].error == ""
    text = _user_text(stub.requests[0]["body"])
    assert text.startswith("Find\na cat") and "tabby, indoor" in text


def test_image_video_pages_and_missing_file(stub, tmp_path):
    img = write_image(tmp_path / "img.jpg", size=(30, 20))
    frames = tuple(write_image(tmp_path / f"f{i}.png", size=(10 + i, 8), seed=i) for i in range(12))
    pages = tuple(write_image(tmp_path / f"page{i}.png", size=(20, 30 + i)) for i in range(2))
    requests = [
        req("IMG one", 0, image=img),
        req("VID clip", 1, frames=frames),
        req("MISSING pic", 2, image=tmp_path / "nope.png"),
        req("DOC pages", 3, pages=pages),
    ]
    replies = OpenAITeacher(stub.url, "m", num_frames=4, backoff=0.01).generate(requests)
    assert [bool(r.error) for r in replies] == [False, False, True, False]
    assert "nope.png" in replies[2].error and "not found" in replies[2].error
    assert "\n" not in replies[2].error
    assert stub.seen("MISSING") == 0  # a media failure never reaches the server

    (png,) = sent_images(body_for(stub, "IMG"))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(png)) as im:
        assert (im.format, im.mode, im.size) == ("PNG", "RGB", (30, 20))

    video = sent_images(body_for(stub, "VID"))
    assert len(video) == 4
    widths = [Image.open(io.BytesIO(b)).size[0] for b in video]
    assert widths == [Image.open(p).size[0] for p in sample_frames(frames, 4)]
    assert len(set(widths)) == 4

    doc = sent_images(body_for(stub, "DOC"))
    assert [Image.open(io.BytesIO(b)).size for b in doc] == [(20, 30), (20, 31)]


def test_image_over_pixel_limit_is_an_error(stub, tmp_path):
    big = write_image(tmp_path / "big.png", size=(100, 100))
    replies = OpenAITeacher(stub.url, "m", max_image_pixels=5000).generate([req("BIG", image=big)])
    assert "over the limit" in replies[0].error and not stub.requests


def test_retries_and_errors(stub):
    t = OpenAITeacher(stub.url, "m", retries=3, backoff=0.01)
    markers = ["FLAKY", "RATE", "FAIL500", "GARBAGE", "NOCONTENT", "AUTH", "fine"]
    replies = dict(
        zip(markers, t.generate([req(f"{m} case", i) for i, m in enumerate(markers)]), strict=True)
    )

    for m in ("FLAKY", "RATE"):
        assert replies[m].error == "" and replies[m].text.startswith("<think>seen:")
        assert stub.seen(m) == 2
    assert stub.seen("fine") == 1

    err = replies["FAIL500"].error
    assert err.startswith("HTTP 500 (3 attempts)") and stub.seen("FAIL500") == 3
    assert "/v1/chat/completions" in err and "internal error second line" in err and "\n" not in err

    assert replies["GARBAGE"].error.startswith("malformed response (3 attempts)")
    assert "not json" in replies["GARBAGE"].error and stub.seen("GARBAGE") == 3
    assert replies["NOCONTENT"].error.startswith("malformed response (3 attempts)")
    assert stub.seen("NOCONTENT") == 3

    assert replies["AUTH"].error.startswith("HTTP 401 at ") and "bad key" in replies["AUTH"].error
    assert stub.seen("AUTH") == 1  # a 4xx other than 408/409/429 is not retried
    assert all(not r.text for m, r in replies.items() if r.error)


def test_retry_after_overrides_backoff(stub):
    # backoff=5 would sleep 5 s before the second attempt; the server's Retry-After: 0 must win.
    start = time.monotonic()
    (reply,) = OpenAITeacher(stub.url, "m", backoff=5.0).generate([req("RATE again")])
    assert reply.error == "" and stub.seen("RATE") == 2
    assert time.monotonic() - start < 2.0


def test_timeout(stub):
    t = OpenAITeacher(stub.url, "m", timeout=0.3, retries=2, backoff=0.01)
    (reply,) = t.generate([req("SLOW one")])
    assert reply.error.startswith("timeout after 0.3 s (2 attempts) at http://127.0.0.1:")
    assert stub.seen("SLOW") == 2
    assert 0.6 <= reply.seconds < 3.0


def test_connection_refused():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (reply,) = OpenAITeacher(f"http://127.0.0.1:{port}/v1", "m", retries=2, backoff=0.01).generate([req("x")])
    assert reply.error.startswith("connection error (2 attempts) at ") and f":{port}/" in reply.error


def test_concurrency_is_bounded(stub):
    t = OpenAITeacher(stub.url, "m", concurrency=3, backoff=0.01)
    start = time.monotonic()
    replies = t.generate([req(f"NAP {i}", i) for i in range(12)])
    elapsed = time.monotonic() - start
    assert [r.error for r in replies] == [""] * 12
    assert [r.text for r in replies] == [
        f"<think>seen: NAP {i}</think><answer>ok</answer>" for i in range(12)
    ]
    assert 1 < stub.max_in_flight <= 3
    assert elapsed < 12 * 0.1  # concurrent, not one after another


def test_bad_base_url_and_empty_batch():
    from mmemb.types import InputError

    with pytest.raises(InputError, match="http"):
        OpenAITeacher("127.0.0.1:8000/v1", "m")
    assert OpenAITeacher("http://127.0.0.1:9/v1", "m").generate([]) == []
