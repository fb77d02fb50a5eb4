"""The embeddings server (mmemb.serve): the real app in-process, the batcher's lanes, one real socket with the
`openai` client. A tiny random Qwen2-VL stands in for the model (built offline in seconds)."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from mmemb import Embedder, Sample  # noqa: E402
from mmemb.serve.app import ServeSettings, create_app  # noqa: E402
from mmemb.serve.batcher import Batcher, Job, QueueFull  # noqa: E402
from mmemb.serve.inputs import Limits  # noqa: E402
from mmemb.testing.tiny_hf import build_tiny_hf  # noqa: E402
from mmemb.types import InputError

from .conftest import assert_same_vectors, write_image  # noqa: E402

CAP = 4  # reasoning tokens in these tests (random weights never write <gen_emb>: every row hits the cap)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import transformers

    transformers.utils.logging.disable_progress_bar()
    return Embedder.from_pretrained(build_tiny_hf("qwen2_vl", tmp_path_factory.mktemp("qwen2_vl")))


def make_client(embedder, **kw) -> TestClient:
    limits = kw.pop("limits", Limits())
    return TestClient(create_app(embedder, ServeSettings(model_name="tiny", limits=limits, **kw)))


@pytest.fixture(scope="module")
def client(tiny):
    with make_client(tiny) as c:
        yield c


def png_b64(tmp_path, name="a.png", size=(40, 32), seed=0) -> tuple[str, object]:
    path = write_image(tmp_path / name, size=size, seed=seed)
    return base64.b64encode(path.read_bytes()).decode(), path


def vectors(resp) -> np.ndarray:
    assert resp.status_code == 200, resp.text
    return np.array([d["embedding"] for d in resp.json()["data"]], dtype=np.float32)


def test_openai_shape_and_same_vectors_as_encode(client, tiny):
    texts = ["a red car", "two dogs on a beach", "x"]
    r = client.post("/v1/embeddings", json={"model": "tiny", "input": texts})
    body = r.json()
    assert body["object"] == "list" and body["model"] == "tiny"
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    assert all(d["object"] == "embedding" and d["mode"] == "disc" and not d["reasoned"] for d in body["data"])
    assert body["usage"]["prompt_tokens"] > 0
    np.testing.assert_allclose(vectors(r), tiny.encode(texts, mode="disc").vectors, atol=1e-5)
    one = client.post("/v1/embeddings", json={"input": "a red car"})  # a bare string, no model field
    np.testing.assert_allclose(vectors(one)[0], vectors(r)[0], atol=1e-5)


def test_base64_encoding_matches_floats(client):
    f = vectors(client.post("/v1/embeddings", json={"input": ["a cat"]}))
    r = client.post("/v1/embeddings", json={"input": ["a cat"], "encoding_format": "base64"})
    b = np.frombuffer(base64.b64decode(r.json()["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_array_equal(b, f[0])


def test_multimodal_items_base64_and_data_url(client, tiny, tmp_path):
    data, path = png_b64(tmp_path)
    frames = [png_b64(tmp_path, f"f{i}.png", seed=i) for i in range(3)]
    items = [
        {"image": data, "text": "what is shown?", "instruction": "Represent the image"},
        {"image": "data:image/png;base64," + data},
        {"frames": [f[0] for f in frames]},
    ]
    got = vectors(client.post("/v1/embeddings", json={"input": items}))
    want = tiny.encode(
        [
            Sample(id="0", image=path, text="what is shown?", instruction="Represent the image"),
            Sample(id="1", image=path),
            Sample(id="2", frames=tuple(f[1] for f in frames)),
        ]
    ).vectors
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_reasoning_modes_report_reasoning(client, tiny):
    r = client.post(
        "/v1/embeddings",
        json={"input": ["a red car", "a dog"], "mode": "think", "max_new_tokens": CAP, "return_text": True},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    for d in body["data"]:
        assert d["mode"] == "think" and d["reasoned"] and 0 < d["reasoning_tokens"] <= CAP + 1
        assert d["text"].startswith("<think>")
    assert body["usage"]["reasoning_tokens"] == sum(d["reasoning_tokens"] for d in body["data"])
    want = tiny.encode(["a red car", "a dog"], mode="think", max_new_tokens=CAP).vectors
    np.testing.assert_allclose(vectors(r), want, atol=1e-5)
    a = client.post(
        "/v1/embeddings", json={"input": ["a red car"], "mode": "adaptive", "max_new_tokens": CAP}
    )
    d = a.json()["data"][0]
    assert (
        "text" not in d and isinstance(d["reasoned"], bool) and (d["reasoning_tokens"] > 0) == d["reasoned"]
    )


@pytest.mark.parametrize(
    "body, status, words",
    [
        ({"input": ["ok", {"text": "x", "colour": "red"}]}, 400, ["input[1]", "colour"]),
        ({"input": [[1, 2, 3]]}, 400, ["input[0]", "token ids"]),
        ({"input": []}, 400, ["non-empty"]),
        ({"inputs": "x"}, 400, ["inputs"]),
        ({"input": "x", "mode": "fast"}, 400, ["mode", "disc"]),
        ({"input": "x", "encoding_format": "int8"}, 400, ["encoding_format"]),
        ({"input": "x", "dimensions": 3}, 400, ["dimensions"]),
        ({"input": "x", "model": "gpt-4"}, 404, ["gpt-4", "tiny"]),
        ({"input": ["ok", {"image": "not base64!"}]}, 400, ["input[1].image", "base64"]),
        ({"input": [{"image": "data:image/png,abc"}]}, 400, ["input[0].image", "data URL"]),
        ({"input": [{"image": "aGVsbG8="}]}, 400, ["input[0].image", "not an image"]),  # base64 of "hello"
        ({"input": [{"image": "https://example.com/a.png"}]}, 400, ["not fetched"]),
        ({"input": [{"image": "file:///etc/passwd"}]}, 400, ["input[0].image", "refused"]),
        ({"input": [{}]}, 400, ["input[0]", "empty"]),
        ({"input": ["x"] * 300}, 413, ["300", "256"]),
        ({"input": "x" * 20_001}, 413, ["input[0].text", "20000"]),
    ],
)
def test_bad_requests_are_clear_errors(client, body, status, words):
    r = client.post("/v1/embeddings", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error"
    for w in words:
        assert w in err["message"], (w, err["message"])


def test_malformed_json_and_oversized_body(tiny, client, tmp_path):
    r = client.post("/v1/embeddings", content=b'{"input": ["a"', headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    with make_client(tiny, max_body_bytes=1000) as small:
        r = small.post("/v1/embeddings", json={"input": "x" * 2000})
        assert r.status_code == 413 and "over the limit of 1,000 bytes" in r.json()["error"]["message"]
        chunked = (
            b'{"input": "' + b"x" * 500,
            b"x" * 600 + b'"}',
        )  # no Content-Length: counted as it streams
        r = small.post("/v1/embeddings", content=iter(chunked))
        assert r.status_code == 413 and "over the limit of 1,000 bytes" in r.json()["error"]["message"]
    big, _ = png_b64(tmp_path, "big.png", size=(300, 200))
    with make_client(tiny, limits=Limits(max_image_pixels=10_000)) as strict:
        r = strict.post("/v1/embeddings", json={"input": ["fine", {"image": big}]})
        assert r.status_code == 400
        msg = r.json()["error"]["message"]
        assert "input[1].image" in msg and "300x200" in msg and "10,000" in msg
        assert strict.post("/v1/embeddings", json={"input": "fine"}).status_code == 200  # the server goes on


def test_file_paths_only_under_the_allowed_root(tiny, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    inside = write_image(root / "in.png")
    outside = write_image(tmp_path / "out.png")
    (root / "link.png").symlink_to(outside)
    with make_client(tiny, limits=Limits(allow_path_root=root)) as c:
        ok = c.post("/v1/embeddings", json={"input": [{"image": f"file://{inside}"}]})
        np.testing.assert_allclose(vectors(ok), tiny.encode([Sample(image=inside)]).vectors, atol=1e-5)
        for path in (outside, root / ".." / "out.png", root / "link.png"):
            r = c.post("/v1/embeddings", json={"input": [{"image": f"file://{path}"}]})
            msg = r.json()["error"]["message"]
            assert r.status_code == 400 and "not under the folder this server may read" in msg, path
            assert str(root) not in msg.replace(str(path), "")  # the allowed root is not told


def test_api_key(tiny):
    with make_client(tiny, api_key="s3cret") as c:
        assert c.post("/v1/embeddings", json={"input": "x"}).status_code == 401
        bad = {"Authorization": "Bearer nope"}
        assert c.post("/v1/embeddings", json={"input": "x"}, headers=bad).status_code == 401
        assert c.get("/metrics").status_code == 401
        good = {"Authorization": "Bearer s3cret"}
        assert c.post("/v1/embeddings", json={"input": "x"}, headers=good).status_code == 200
        assert c.get("/v1/models", headers=good).json()["data"][0]["id"] == "tiny"
        assert c.get("/health").json()["status"] == "ok"  # liveness needs no key


def test_full_queue_is_429_with_retry_after_and_a_request_it_can_never_hold_is_413(tiny):
    gated = Gated(tiny)
    with make_client(gated, max_queue=1, max_batch=1) as c:
        b = c.app.state.batcher
        running = b.submit(Job([Sample(text="a")], "think", CAP))
        gated.started()  # holds the slow lane
        queued = b.submit(Job([Sample(text="b")], "think", CAP))  # the lane's one place
        r = c.post("/v1/embeddings", json={"input": "x", "mode": "think", "max_new_tokens": CAP})
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert "queue is full" in r.json()["error"]["message"]
        gated.open.set()
        running.result(timeout=30), queued.result(timeout=30)
        metrics = c.get("/metrics").text
        assert 'mmemb_requests_total{mode="think",status="429"} 1.0' in metrics
        r = c.post("/v1/embeddings", json={"input": ["x", "y"]})  # idle, but 2 inputs > a queue of 1
        assert r.status_code == 413 and "queues at most 1: split the request" in r.json()["error"]["message"]


def test_metrics_count_requests_items_and_batches(tiny):
    with make_client(tiny) as c:
        c.post("/v1/embeddings", json={"input": ["a", "b", "c"]})
        c.post("/v1/embeddings", json={"input": ["a"], "mode": "think", "max_new_tokens": CAP})
        c.post("/v1/embeddings", json={"input": ["a"], "mode": "nope"})
        m = c.get("/metrics").text
    assert 'mmemb_requests_total{mode="disc",status="200"} 1.0' in m
    assert 'mmemb_requests_total{mode="think",status="200"} 1.0' in m
    assert 'mmemb_requests_total{mode="invalid",status="400"} 1.0' in m
    assert 'mmemb_items_total{mode="disc",reasoned="false"} 3.0' in m
    assert 'mmemb_items_total{mode="think",reasoned="true"} 1.0' in m
    assert 'mmemb_batch_items_count{lane="fast"} 1.0' in m and 'mmemb_batch_items_count{lane="slow"} 1.0' in m
    assert 'mmemb_queue_items{lane="fast"} 0.0' in m


# ---- the batcher ------------------------------------------------------------------------------------
class Gated:
    """The embedder, but encode() in the gated modes waits for `open` (a generation that takes long)."""

    def __init__(self, inner, modes=("think", "gen", "adaptive")):
        self.inner, self.modes, self.open, self.calls = inner, modes, threading.Event(), []
        self.entered = (
            threading.Event()
        )  # a gated call has started (and holds its lane): no sleeping to guess

    def encode(self, samples, mode="disc", **kw):
        self.calls.append((mode, len(samples)))
        if mode in self.modes:
            self.entered.set()
            assert self.open.wait(30)
        return self.inner.encode(samples, mode=mode, **kw)

    def stream(self, pull, mode, **kw):  # the generating lane's continuous decode
        self.calls.append((mode, "stream"))
        if mode in self.modes:
            self.entered.set()
            assert self.open.wait(30)
        yield from self.inner.stream(pull, mode, **kw)

    def started(self):
        assert self.entered.wait(30), "the gated call never started"

    def __getattr__(self, name):  # the rest of the embedder (the app reads its backbone and tokenizer)
        return getattr(self.inner, name)


def test_split_lanes_keep_disc_off_the_generation_path(tiny):
    for lanes, disc_waits in (("split", False), ("shared", True)):
        gated = Gated(tiny)
        b = Batcher(gated, max_batch=4, max_wait_s=0.001, lanes=lanes)
        slow = b.submit(Job([Sample(text="long reasoning")], "think", CAP))
        gated.started()
        fast = b.submit(Job([Sample(text="quick")], "disc"))
        if disc_waits:
            time.sleep(0.5)
            assert not fast.done()  # head-of-line blocking: the baseline the split removes
        else:
            assert fast.result(timeout=30).vectors.shape[0] == 1 and not slow.done()
        gated.open.set()
        assert slow.result(timeout=30).reasoned == [True]
        assert fast.result(timeout=30).mode == "disc"
        b.close()


@pytest.mark.skipif(sys.platform != "linux", reason="thread priorities are Linux's (a no-op elsewhere)")
def test_the_slow_lane_and_the_threads_it_starts_run_at_a_lower_cpu_priority(tiny):
    """So that when both lanes want the cores, a disc request gets them (benchmarks/bench_hostile.py)."""
    import torch

    from mmemb.serve.batcher import SLOW_NICE

    def nice(tid: int) -> int:
        stat = Path(f"/proc/self/task/{tid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2 :].split()[16])

    before = {int(t) for t in os.listdir("/proc/self/task")}
    b = Batcher(tiny, max_batch=4, max_wait_s=0.001)
    try:
        b.submit(Job([Sample(text="think about it")], "think", CAP)).result(timeout=60)
        b.submit(Job([Sample(text="quick")], "disc")).result(timeout=60)
        fast, slow = b.lanes["fast"].thread.native_id, b.lanes["slow"].thread.native_id
        assert nice(fast) == nice(threading.get_native_id()) and nice(slow) == nice(fast) + SLOW_NICE
        started = {int(t) for t in os.listdir("/proc/self/task")} - before - {fast, slow}
        if torch.get_num_threads() > 1:  # the slow lane's OpenMP team inherited its priority
            assert any(nice(t) == nice(slow) for t in started), [nice(t) for t in started]
    finally:
        b.close()


def test_the_generating_lane_lets_requests_join_a_running_decode(tiny):
    """A think request that arrives while another decodes joins the running batch in a free slot, decodes
    beside it, and is answered when its own row ends, long before the first one's."""
    b = Batcher(tiny, max_batch=4, max_wait_s=0.001)
    bb, step, sizes, going = tiny.backbone, tiny.backbone.step, [], threading.Event()

    def slow_step(tok, state, active):  # a slower model, so the second request lands mid-decode
        sizes.append(len(tok))
        going.set() if len(sizes) >= 3 else None
        time.sleep(0.01)
        return step(tok, state, active)

    bb.step = slow_step
    try:
        long = b.submit(Job([Sample(text="a long reasoning")], "think", 60))
        assert going.wait(30)
        short = b.submit(Job([Sample(text="a short one")], "think", 2))
        got = short.result(timeout=30)
        assert got.gen_tokens == [2] and got.reasoned == [True] and not long.done()
        assert max(sizes) == 2  # the two rows decoded side by side in one batch
        assert long.result(timeout=60).gen_tokens == [60]
    finally:
        bb.step = step
        b.close()
    alone = tiny.encode([Sample(text="a short one")], mode="think", max_new_tokens=2)
    if alone.texts == got.texts:
        assert_same_vectors(got.vectors, alone.vectors, tiny.dtype)


def test_batches_merge_requests_and_split_rows_back(tiny):
    gated = Gated(tiny, modes=("disc",))
    b = Batcher(gated, max_batch=8, max_wait_s=0.001)
    first = b.submit(Job([Sample(text="t0")], "disc"))  # takes the lane; the rest queue behind it
    gated.started()
    texts = [[f"q{i}", f"r{i}"] for i in range(3)]
    futures = [b.submit(Job([Sample(text=t) for t in pair], "disc")) for pair in texts]
    gated.open.set()
    first.result(timeout=30)
    for pair, f in zip(texts, futures, strict=True):
        np.testing.assert_allclose(f.result(timeout=30).vectors, tiny.encode(pair).vectors, atol=1e-5)
    assert gated.calls == [("disc", 1), ("disc", 6)]  # the three queued requests went as one batch
    b.close()


def test_a_bad_item_fails_its_own_request_only(tiny, tmp_path):
    gated = Gated(tiny, modes=("disc",))
    b = Batcher(gated, max_batch=8, max_wait_s=0.001)
    block = b.submit(Job([Sample(text="t0")], "disc"))
    gated.started()
    img = write_image(tmp_path / "gone.png")
    good = b.submit(Job([Sample(text="fine")], "disc"))
    bad = b.submit(Job([Sample(image=img)], "disc"))
    img.unlink()  # the file vanishes before the batch runs: the backbone raises for that item
    gated.open.set()
    block.result(timeout=30)
    assert good.result(timeout=30).vectors.shape == (1, tiny.encode(["x"]).vectors.shape[1])
    with pytest.raises(InputError, match="file not found"):
        bad.result(timeout=30)
    assert b.submit(Job([Sample(text="after")], "disc")).result(timeout=30).vectors.shape[0] == 1
    b.close()


def test_queue_bound(tiny):
    gated = Gated(tiny, modes=("disc",))
    b = Batcher(gated, max_batch=2, max_wait_s=0.001, max_queue=3)
    b.submit(Job([Sample(text="running")], "disc"))
    gated.started()
    b.submit(Job([Sample(text="a"), Sample(text="b")], "disc"))
    b.submit(Job([Sample(text="c")], "disc"))
    with pytest.raises(QueueFull) as e:
        b.submit(Job([Sample(text="d")], "disc"))
    assert e.value.retry_after == 1  # 4 items ahead, nothing measured yet: 0.05 s each, rounded up
    time.sleep(1.2)  # the running batch is slow: the estimate grows with it (4 items x >= 1.2 s)
    with pytest.raises(QueueFull) as e:
        b.submit(Job([Sample(text="d")], "disc"))
    assert e.value.retry_after >= 5
    gated.open.set()
    b.close()


# ---- a real socket ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tiny):
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(tiny, ServeSettings(model_name="tiny", max_wait_ms=20))
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    for _ in range(200):
        if srv.started:
            break
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    t.join(timeout=30)


def test_concurrent_clients_over_a_socket(server, tiny):
    import httpx

    texts = [f"query number {i}" for i in range(12)]

    def one(i: int) -> tuple[int, np.ndarray, list]:
        mode = "think" if i % 4 == 0 else "disc"
        body = {"input": [texts[i]], "mode": mode, "max_new_tokens": CAP}
        r = httpx.post(server + "/v1/embeddings", json=body, timeout=60)
        return i, vectors(r)[0], r.json()["data"][0]["reasoned"]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(len(texts))))
    disc = tiny.encode(texts, mode="disc").vectors
    think = tiny.encode(texts, mode="think", max_new_tokens=CAP).vectors
    for i, v, reasoned in results:
        np.testing.assert_allclose(v, think[i] if i % 4 == 0 else disc[i], atol=1e-5)
        assert reasoned == (i % 4 == 0)
    m = httpx.get(server + "/metrics").text
    assert "mmemb_batch_items_bucket" in m


def test_openai_client(server, tiny):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server + "/v1", api_key="unused")
    out = client.embeddings.create(model="tiny", input=["a red car", "a dog"])  # base64 on the wire
    got = np.array([d.embedding for d in out.data], dtype=np.float32)
    np.testing.assert_allclose(got, tiny.encode(["a red car", "a dog"]).vectors, atol=1e-5)
    gen = client.embeddings.create(
        model="tiny", input="a cat", extra_body={"mode": "think", "max_new_tokens": CAP}
    )
    assert gen.data[0].model_extra["reasoned"] is True
    with pytest.raises(openai.BadRequestError, match="mode"):
        client.embeddings.create(model="tiny", input="a cat", extra_body={"mode": "fast"})


def test_cli_refuses_bad_flags(capsys):
    from mmemb.cli import main

    assert main(["serve", "--max-batch", "0"]) == 2
    assert "--max-batch 0" in capsys.readouterr().err


def test_a_prompt_over_the_context_is_a_400_naming_the_item(client):
    r = client.post("/v1/embeddings", json={"input": ["fine", "word " * 3000]})
    assert r.status_code == 400, r.text
    msg = r.json()["error"]["message"]
    assert msg.startswith("input[1]: prompt is") and "context limit" in msg
    assert client.post("/v1/embeddings", json={"input": "fine"}).status_code == 200


def test_a_request_that_went_away_is_dropped_and_the_lane_goes_on(tiny):
    gated = Gated(tiny, modes=("disc",))
    b = Batcher(gated, max_batch=8, max_wait_s=0.001)
    b.submit(Job([Sample(text="running")], "disc"))
    gated.started()
    gone = b.submit(Job([Sample(text="a"), Sample(text="b")], "disc"))
    assert gone.cancel()  # the client disconnected while it waited
    gated.open.set()
    after = b.submit(Job([Sample(text="after")], "disc")).result(timeout=30)
    assert after.vectors.shape[0] == 1 and ("disc", 2) not in gated.calls
    lane = b.lanes["fast"]
    b.close()  # waits for the worker: its bookkeeping is final
    assert lane.queued == 0 and lane.busy == 0


# ---- hostile input: every case is the client's 4xx in OpenAI's shape, never a 500 (issue 21) ----------------
def error_of(r, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    err = r.json()["error"]
    assert set(err) == {"message", "type", "code"} and err["type"] == "invalid_request_error"
    return err["message"]


def test_bodies_the_json_parser_cannot_take_are_400(client):
    deep = b'{"input": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert "nested too deeply" in error_of(client.post("/v1/embeddings", content=deep), 400)
    huge_int = b'{"input": "x", "dimensions": ' + b"9" * 5000 + b"}"
    assert "not valid JSON" in error_of(client.post("/v1/embeddings", content=huge_int), 400)
    assert "not valid JSON" in error_of(client.post("/v1/embeddings", content=b"\xff\xfe{"), 400)


def test_text_that_is_not_unicode_and_paths_with_nul_are_400(tiny, tmp_path):
    lone = b'{"input": [{"text": "a \\ud800 b"}]}'  # valid JSON, not encodable as UTF-8
    with make_client(tiny, limits=Limits(allow_path_root=tmp_path)) as c:
        assert "input[0].text: not valid Unicode" in error_of(c.post("/v1/embeddings", content=lone), 400)
        r = c.post("/v1/embeddings", json={"input": [{"image": f"file://{tmp_path}/a\x00.png"}]})
        assert "NUL" in error_of(r, 400)
        lone_instruction = b'{"input": [{"text": "a", "instruction": "\\udfff"}]}'
        assert "instruction: not valid Unicode" in error_of(
            c.post("/v1/embeddings", content=lone_instruction), 400
        )


def test_unknown_routes_and_methods_answer_in_openai_shape_and_there_are_no_docs(tiny):
    with make_client(tiny, api_key="k") as c:
        error_of(c.get("/v1/nothing"), 404)
        assert c.get("/v1/embeddings").status_code == 405
        assert c.get("/v1/embeddings").json()["error"]["code"] == "method_not_allowed"
        for route in ("/docs", "/redoc", "/openapi.json"):  # nothing answers without the key
            assert error_of(c.get(route), 404)


def test_return_text_must_be_a_json_boolean(client):
    for value in ("false", 0, 1, None, "true"):
        r = client.post("/v1/embeddings", json={"input": "x", "return_text": value})
        assert "return_text must be true or false" in error_of(r, 400), value
    r = client.post("/v1/embeddings", json={"input": "x", "return_text": False})
    assert r.status_code == 200 and "text" not in r.json()["data"][0]


def test_a_client_that_leaves_mid_body_is_499_not_an_error(tiny, caplog):
    import asyncio

    app = create_app(tiny, ServeSettings(model_name="tiny"))
    messages = [
        {"type": "http.request", "body": b'{"input": "a', "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent = []

    async def receive():
        return messages.pop(0)

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/embeddings", "raw_path": b"/v1/embeddings",
             "query_string": b"", "headers": [(b"content-type", b"application/json")], "http_version": "1.1",
             "scheme": "http", "server": ("test", 80), "client": ("client", 1), "root_path": ""}  # fmt: skip
    with caplog.at_level("ERROR", logger="mmemb.serve"):
        asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 499, sent and not caplog.records
    metrics = TestClient(app).get("/metrics").text
    assert 'status="499"} 1.0' in metrics and 'status="500"' not in metrics
    app.state.batcher.close()


def test_generation_is_capped_by_the_server(tiny):
    with make_client(tiny, max_new_tokens=3) as c:
        r = c.post("/v1/embeddings", json={"input": "x", "mode": "think", "max_new_tokens": 1_000_000_000})
        assert "max_new_tokens 1000000000 is over this server's cap of 3" in error_of(r, 400)
        r = c.post("/v1/embeddings", json={"input": "x", "mode": "think"})  # the model's own 64, capped
        assert r.status_code == 200 and r.json()["data"][0]["reasoning_tokens"] == 3


def test_a_cancelled_job_stops_generating_and_the_others_go_on(tiny):
    b = Batcher(tiny, max_batch=4, max_wait_s=0.001)
    asked = {"n": 0}

    def abandoned_after_five_steps():
        asked["n"] += 1
        return asked["n"] > 5

    gone = Job([Sample(text="a long story")], "think", 400)
    gone.is_cancelled = abandoned_after_five_steps
    kept = Job([Sample(text="another one")], "think", 40)
    b.submit(gone), b.submit(kept)
    assert gone.future.result(timeout=60).gen_tokens[0] < 10  # stopped, not run to its 400 tokens
    assert kept.future.result(timeout=60).gen_tokens[0] == 40  # random weights: every row runs to its cap
    b.close()


def test_a_client_that_leaves_while_its_generation_runs_cancels_it(tiny):
    import asyncio

    gated = Gated(tiny)
    tokens = []
    inner_stream = gated.stream

    def recording_stream(pull, mode, **kw):
        for k, emb in inner_stream(pull, mode, **kw):
            tokens.append(emb.gen_tokens[0])
            yield k, emb

    gated.stream = recording_stream
    app = create_app(gated, ServeSettings(model_name="tiny", max_new_tokens=100_000, disconnect_poll_s=0.01))
    body = json.dumps({"input": "x", "mode": "think", "max_new_tokens": 100_000}).encode()
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent = []

    async def receive():
        if messages:
            return messages.pop(0)
        if gated.entered.is_set():  # the generation has started (and is held): the client hangs up now
            return {"type": "http.disconnect"}
        await asyncio.sleep(3600)  # nothing from the client yet (is_disconnected does not wait for it)

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/embeddings", "raw_path": b"/v1/embeddings",
             "query_string": b"", "headers": [(b"content-type", b"application/json")], "http_version": "1.1",
             "scheme": "http", "server": ("test", 80), "client": ("client", 1), "root_path": ""}  # fmt: skip
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 499, sent
    gated.open.set()  # the held generation goes on: its row sees the cancellation at its first token
    with TestClient(app) as c:  # and the lane is free for the next request
        r = c.post("/v1/embeddings", json={"input": "y", "mode": "think", "max_new_tokens": 2})
        assert r.status_code == 200 and r.json()["data"][0]["reasoning_tokens"] == 2
    assert tokens[0] == 0  # the abandoned row generated nothing (uncancelled, it runs to an end token: 56)


def test_close_with_cancel_ends_a_held_generation_and_a_queued_job(tiny):
    from mmemb.serve.batcher import Cancelled

    gated = Gated(tiny)
    b = Batcher(gated, max_batch=1, max_wait_s=0.001)
    running = b.submit(Job([Sample(text="a")], "think", 10_000))
    gated.started()
    queued = b.submit(Job([Sample(text="b")], "think", 10_000))
    closer = threading.Thread(target=b.close, args=(True, 30))
    closer.start()
    gated.open.set()
    closer.join(timeout=30)
    assert not closer.is_alive()
    with pytest.raises(Cancelled):
        running.result(timeout=1)  # never a cut-short vector
    assert queued.cancelled()


def test_media_folders_of_dead_servers_are_removed_at_startup(tiny, tmp_path):
    import tempfile

    from mmemb.serve.app import remove_stale_media_folders

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    stale = Path(tempfile.gettempdir()) / f"mmemb-serve-{int(dead.stdout)}-abc"
    (stale / "req").mkdir(parents=True)
    alive = Path(tempfile.mkdtemp(prefix=f"mmemb-serve-{os.getpid()}-"))
    remove_stale_media_folders()
    assert not stale.exists() and alive.exists()  # ours (alive) is kept
    alive.rmdir()
    ours = lambda: set(Path(tempfile.gettempdir()).glob(f"mmemb-serve-{os.getpid()}-*"))  # noqa: E731
    before = ours()  # other apps of this test process (the module's client) have theirs
    with make_client(tiny) as c:  # a running server keeps its media under one folder, gone when it stops
        mine = ours() - before
        assert len(mine) == 1 and c.get("/health").json()["running"] == {"fast": 0, "slow": 0}
    assert not next(iter(mine)).exists()


def never_ending_tiny(path: Path) -> Path:
    """A tiny Qwen2-VL whose output head is all zeros: greedy decoding always picks token 0, never an end
    token, so a generation runs to its cap (a long one, on demand)."""
    from safetensors.torch import load_file, save_file

    folder = build_tiny_hf("qwen2_vl", path)
    weights = next(folder.glob("*.safetensors"))
    state = load_file(str(weights))
    state["lm_head.weight"].zero_()
    save_file(state, str(weights), metadata={"format": "pt"})
    return folder


def test_sigterm_during_a_long_generation_exits_within_10_s_and_leaves_no_temp_files(tmp_path):
    import tempfile
    import urllib.error
    import urllib.request

    model = never_ending_tiny(tmp_path / "m")
    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    server = subprocess.Popen(
        [sys.executable, "-m", "mmemb.cli", "serve", "--model", str(model), "--port", str(port),
         "--max-new-tokens", "1000000"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        health = wait_for_health(url, server)
        body = json.dumps({"input": "x", "mode": "think", "max_new_tokens": 1_000_000}).encode()
        request = urllib.request.Request(f"{url}/v1/embeddings", body, {"Content-Type": "application/json"})
        answers = []

        def call():
            try:
                urllib.request.urlopen(request, timeout=120)
            except urllib.error.HTTPError as e:
                answers.append((e.code, json.loads(e.read())))

        client = threading.Thread(target=call)
        client.start()
        while health["running"]["slow"] == 0:  # the generation has started
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            health = json.loads(urllib.request.urlopen(f"{url}/health", timeout=5).read())
        t0 = time.perf_counter()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        assert time.perf_counter() - t0 < 10
        assert not list(Path(tempfile.gettempdir()).glob(f"mmemb-serve-{server.pid}-*"))
        client.join(timeout=10)  # the request cut short is told so, in OpenAI's shape, not a bare 500
        assert answers and answers[0][0] == 503 and answers[0][1]["error"]["code"] == "shutting_down", answers
        assert "Exception in ASGI application" not in server.stderr.read().decode()
    finally:
        if server.poll() is None:
            server.kill()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_health(url: str, server: subprocess.Popen, timeout: float = 120) -> dict:
    """/health once the server answers it (polled: a process starting up has no event to wait on)."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, server.stderr.read().decode()[-2000:]
        try:
            return json.loads(urllib.request.urlopen(f"{url}/health", timeout=5).read())
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.2)
    raise AssertionError("the server did not start")


def test_stalled_connections_are_closed_and_a_stalled_body_is_408(tiny):
    """200 connections that never finish their request head, and one that stops mid-body: with a 1 s read
    timeout the server closes the first and answers the second 408, and goes on serving."""
    import uvicorn

    from mmemb.serve.app import timed_protocol

    port = free_port()
    app = create_app(tiny, ServeSettings(model_name="tiny", read_timeout_s=1.0, api_key="k"))
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", http=timed_protocol(1.0))
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not srv.started and time.monotonic() < deadline:
            time.sleep(0.05)
        stalled = []
        for _ in range(200):  # unauthenticated, the head cut short
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n")
            stalled.append(s)
        body = socket.create_connection(("127.0.0.1", port))
        body.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"input\": ")  # fmt: skip
        for s in stalled:
            s.settimeout(10)
            assert s.recv(1024) == b""  # closed by the server
            s.close()
        body.settimeout(10)
        assert b" 408 " in body.recv(4096).split(b"\r\n")[0]
        body.close()
        import httpx

        r = httpx.post(f"http://127.0.0.1:{port}/v1/embeddings", json={"input": "x"},
                       headers={"Authorization": "Bearer k"}, timeout=30)  # fmt: skip
        assert r.status_code == 200
    finally:
        srv.should_exit = True
        thread.join(timeout=30)


FUZZ_STRINGS = ["", "x", "a red car", "data:image/png;base64,AAAA", "data:image/png;base64,!!", "file:///etc/passwd",
                "file://a\x00b.png", "\ud800", "a \udfff b", "\x00", "think", "disc", "é" * 50,
                "http://example.com/a.png", "iVBORw0KGgo=", "<|image_pad|>", "<disc_emb>"]  # fmt: skip


def pick(rng, options: list):
    return options[rng.randint(len(options))]


def _fuzz_value(rng, depth: int = 0):
    """A random JSON value, biased to the request's own fields and kinds of trouble."""
    kinds = ["str", "int", "float", "bool", "null", "list", "dict", "item", "edge"]
    kind = kinds[rng.randint(len(kinds) if depth < 4 else 5)]
    if kind == "str":
        return pick(rng, FUZZ_STRINGS)
    if kind == "int":
        return int(pick(rng, [0, -1, 1, 2, 7, 10**6, -(10**18), 2**63]))
    if kind == "float":
        return float(pick(rng, [0.5, -1e308, 1e308, 3.25]))
    if kind == "bool":
        return bool(rng.randint(2))
    if kind == "null":
        return None
    if kind == "list":
        return [_fuzz_value(rng, depth + 1) for _ in range(rng.randint(4))]
    if kind == "dict":
        keys = ["text", "image", "frames", "pages", "instruction", "input", "mode", "zzz", "\ud800"]
        return {pick(rng, keys): _fuzz_value(rng, depth + 1) for _ in range(rng.randint(4))}
    if kind == "item":
        return {"text": pick(rng, ["a dog", "", "x" * 30]), pick(rng, ["image", "pages", "instruction"]):
                _fuzz_value(rng, depth + 1)}  # fmt: skip
    return pick(rng, [[[[[]]]], {"": {}}, "A" * 3000, [1] * 300])


def _fuzz_body(rng) -> bytes:
    fields = ["input", "mode", "encoding_format", "dimensions", "return_text", "user", "max_new_tokens"]
    body = {f: _fuzz_value(rng) for f in fields if rng.rand() < 0.4}
    if rng.rand() < 0.1:
        body["model"] = _fuzz_value(rng)
    if rng.rand() < 0.8:
        text = pick(rng, FUZZ_STRINGS)
        body["input"] = pick(rng, ["a cat", ["a", "b"], [{"text": "x"}], _fuzz_value(rng), text, [text, "ok"],
                                   [{"text": "ok", "instruction": text}], [{"image": text}], [{"pages": [text]}]])  # fmt: skip
    if rng.rand() < 0.5:
        body["mode"] = pick(rng, ["disc", "nothink", "think", "gen", "adaptive"])
        body["max_new_tokens"] = 2
    raw = json.dumps(body).encode()
    if rng.rand() < 0.2:  # break the bytes: truncate, flip, or splice in garbage
        i = rng.randint(max(1, len(raw)))
        raw = pick(
            rng,
            [raw[:i], raw[:i] + bytes([rng.randint(256)]) + raw[i + 1 :], raw[:i] + b"\xff\xfe" + raw[i:]],
        )
    return raw


def test_fuzzed_request_bodies_never_get_a_5xx(client):
    """600 seeded random bodies around the request's own shape: every answer is a 200 or a 4xx in OpenAI's
    error shape, never a 5xx or a traceback."""
    rng = np.random.RandomState(21)
    seen = {}
    for n in range(600):
        raw = _fuzz_body(rng)
        r = client.post("/v1/embeddings", content=raw, headers={"Content-Type": "application/json"})
        seen[r.status_code] = seen.get(r.status_code, 0) + 1
        assert r.status_code < 500, (n, raw[:300], r.text[:300])
        if r.status_code != 200:
            err = r.json()["error"]
            assert set(err) == {"message", "type", "code"} and "Traceback" not in err["message"], (
                n,
                raw[:300],
            )
    assert seen.get(200, 0) > 20 and seen.get(400, 0) > 100, seen  # both kinds were exercised
