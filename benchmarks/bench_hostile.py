"""Soak: `mmemb serve` under hostile and normal traffic at once (issue 21).

    python benchmarks/bench_hostile.py [--model nano-r1] [--seconds 120]

One real server (a subprocess, default limits but --read-timeout 5) is measured in five phases:
1. unloaded: sequential disc requests (a text and a small image each): p50 / p95 latency;
2. heavy, for --seconds / 2: the slow lane kept busy with page-heavy adaptive requests (--heavy-items items x
   --pages pages of a 2000x2000 PNG, each ~20 KB on the wire and 12 MB decoded) while the same sequential
   disc requests run: p50 / p95 under load (the goal below is on this phase);
3. attack, for --seconds / 2: the heavy requests go on, and beside them
   - hostile: a loop over bodies that once gave 500s or hurt the server (deep nesting, a 5,000-digit
     integer, lone surrogates, NUL in a path, a 5000x1 strip, a 16-bit PNG, "return_text": "false",
     bad base64, unknown routes, a wrong method, more inputs than the queue holds);
   - stalled: 50 connections that never finish their request head;
   disc p50 / p95 again;
4. largest: one request at the limits (--largest-items items x 32 pages of a 2000x2000 one-bit PNG, a
   ~23 MB body, 8,192 pages of 12 MB decoded each), in disc mode; 0 skips it; then one of --text-items
   texts each as long as nano's context allows (~1,950 tokens), the costliest text forward;
5. SIGTERM while a heavy request runs: seconds to exit, its answer, media folders left behind.
The server's RSS is sampled every 0.2 s (/proc/PID/status) from phase 2 on; each phase-4 request's peak is
its own.

Goals (issue 21): RSS within 300 MB of idle; disc p95 under heavy load < 2x unloaded; no 5xx but 503s for
requests cut short by SIGTERM; SIGTERM < 10 s with no temp files. On a 2-core CPU every lane shares the same
two cores, so disc latency under load measures CPU contention as much as the server's design.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
from common import bench_parser, write_result
from PIL import Image


def png(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def hostile_bodies() -> dict[str, tuple[str, str, bytes]]:
    """name -> (method, path, body)."""
    strip = png(Image.new("RGB", (5000, 1), (9, 9, 9)))
    sixteen = png(Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)))
    post = "POST", "/v1/embeddings"
    return {
        "deep nesting": (*post, b'{"input": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
        "5000-digit integer": (*post, b'{"input": "x", "dimensions": ' + b"9" * 5000 + b"}"),
        "lone surrogate": (*post, b'{"input": [{"text": "a \\ud800 b"}]}'),
        "NUL in a path": (*post, json.dumps({"input": [{"image": "file://a\x00.png"}]}).encode()),
        "5000x1 strip": (*post, json.dumps({"input": [{"image": strip}]}).encode()),
        "16-bit PNG": (*post, json.dumps({"input": [{"image": sixteen}]}).encode()),
        'return_text "false"': (*post, b'{"input": "x", "return_text": "false"}'),
        "bad base64": (*post, b'{"input": [{"image": "!!!not base64"}]}'),
        "bad UTF-8": (*post, b'\xff\xfe{"input": "x"}'),
        "unknown route": ("GET", "/v1/nothing", b""),
        "wrong method": ("GET", "/v1/embeddings", b""),
        "docs route": ("GET", "/docs", b""),
        "more than the queue": (*post, json.dumps({"input": ["x"] * 257}).encode()),
    }


def main() -> None:
    ap = bench_parser(__doc__, "hostile", model="nano-r1")
    ap.add_argument("--seconds", type=float, default=120, help="length of the attack phase")
    ap.add_argument("--heavy-items", type=int, default=16)
    ap.add_argument("--pages", type=int, default=32)
    ap.add_argument("--disc-requests", type=int, default=40, help="phase 1 requests")
    ap.add_argument("--largest-items", type=int, default=256, help="phase 4 (0: skip it)")
    ap.add_argument(
        "--text-items", type=int, default=32, help="phase 4b: texts at the context limit (0: skip)"
    )
    args = ap.parse_args()
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "mmemb.cli", "serve", "--model", args.model, "--port", str(port),
           "--read-timeout", "5", "--max-new-tokens", "64"] + (["--dtype", args.dtype] if args.dtype else [])  # fmt: skip
    log = tempfile.NamedTemporaryFile(prefix="bench-hostile-", suffix=".log", delete=False)
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
    http = httpx.Client(base_url=url, timeout=600)
    while True:
        assert server.poll() is None, Path(log.name).read_text()[-2000:]
        try:
            http.get("/health")
            break
        except httpx.TransportError:
            time.sleep(0.2)
    small = png(Image.fromarray((np.random.RandomState(0).rand(64, 64, 3) * 255).astype(np.uint8)))
    disc_body = {"input": [{"text": "a red square"}, {"image": small}]}

    def disc_latencies(n: int | None, stop: threading.Event | None = None) -> list[float]:
        out = []
        while (n is None or len(out) < n) and not (stop and stop.is_set()):
            t0 = time.perf_counter()
            r = http.post("/v1/embeddings", json=disc_body)
            out.append(time.perf_counter() - t0)
            assert r.status_code == 200, r.text
        return out

    disc_latencies(5)  # warm-up
    idle_rss = rss_mb(server.pid)
    unloaded = disc_latencies(args.disc_requests)

    page = png(Image.new("RGB", (2000, 2000), (250, 250, 250)))
    heavy_body = {
        "input": [{"pages": [page] * args.pages} for _ in range(args.heavy_items)],
        "mode": "adaptive",
    }
    stop, done = threading.Event(), threading.Event()  # stop: the attack is over; done: the run is
    statuses: dict[str, Counter] = {"heavy": Counter(), "hostile": Counter(), "shutdown": Counter()}
    phase = ["heavy"]  # the phase the RSS sampler files its readings under
    peaks = {"heavy": idle_rss}

    def sample_rss():
        while not done.is_set():
            peaks[phase[0]] = max(peaks.get(phase[0], 0.0), rss_mb(server.pid))
            time.sleep(0.2)

    def post_heavy(client: httpx.Client, bucket: str) -> None:
        try:
            code = client.post("/v1/embeddings", json=heavy_body).status_code
        except httpx.TransportError as e:
            code = type(e).__name__
        statuses[bucket][code] += 1

    def heavy():
        client = httpx.Client(base_url=url, timeout=3600)
        while not stop.is_set():
            post_heavy(client, "heavy")

    bodies = hostile_bodies()  # built once: the loop measures the server, not PNG encoding

    def hostile():
        client = httpx.Client(base_url=url, timeout=120)
        while not stop.is_set():
            for name, (method, path, body) in bodies.items():
                r = client.request(method, path, content=body, headers={"Content-Type": "application/json"})
                statuses["hostile"][f"{name}: {r.status_code}"] += 1

    def for_seconds(seconds: float) -> threading.Event:
        phase = threading.Event()
        threading.Timer(seconds, phase.set).start()
        return phase

    heavy_thread = threading.Thread(target=heavy, daemon=True)
    for t in (threading.Thread(target=sample_rss, daemon=True), heavy_thread):
        t.start()
    while not any(lane for lane in http.get("/health").json()["running"].values()):
        time.sleep(0.05)  # the slow lane has the first heavy request
    under_heavy = disc_latencies(None, for_seconds(args.seconds / 2))

    stalled = []
    for _ in range(50):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n")
        stalled.append(s)
    hostile_thread = threading.Thread(target=hostile, daemon=True)
    hostile_thread.start()
    attacked = disc_latencies(None, for_seconds(args.seconds / 2))
    stop.set()
    hostile_thread.join()
    closed = 0
    for s in stalled:
        s.settimeout(1)
        try:
            closed += s.recv(16) == b""
        except OSError:
            pass
        s.close()
    heavy_thread.join()  # its last request ends normally

    def one_request(name: str, inputs: list) -> dict:
        body = json.dumps({"input": inputs, "mode": "disc"}).encode()
        before, phase[0] = rss_mb(server.pid), name
        t0 = time.perf_counter()
        r = http.post("/v1/embeddings", content=body, headers={"Content-Type": "application/json"})
        seconds, phase[0] = time.perf_counter() - t0, "after"
        time.sleep(0.3)  # the sampler's last reading of this phase
        return {"items": len(inputs), "body_mb": round(len(body) / 2**20, 1), "status": r.status_code,
                "seconds": round(seconds, 1), "rss_mb_before": round(before, 1),
                "rss_mb_peak": round(peaks[name], 1), "growth_over_idle": round(peaks[name] - idle_rss, 1)}  # fmt: skip

    largest = {}
    if args.largest_items:
        one_bit = png(Image.new("1", (2000, 2000), 1))
        largest = one_request("largest", [{"pages": [one_bit] * 32}] * args.largest_items)
        largest["pages"] = 32 * largest["items"]
    longest = {}
    if args.text_items:  # texts as long as nano's context allows (2048 tokens): ~1,950 tokens each
        longest = one_request("longest_texts", [{"text": "word " * 1900}] * args.text_items)

    # SIGTERM while a heavy request runs
    cut = threading.Thread(target=post_heavy, args=(httpx.Client(base_url=url, timeout=600), "shutdown"))
    cut.start()
    while not http.get("/health").json()["running"]["slow"]:
        time.sleep(0.05)
    time.sleep(1)
    t0 = time.perf_counter()
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=60)
        exit_s = time.perf_counter() - t0
    except subprocess.TimeoutExpired:
        server.kill()
        exit_s = None
    done.set()
    cut.join(timeout=30)
    left = [str(p) for p in Path(tempfile.gettempdir()).glob(f"mmemb-serve-{server.pid}-*")]

    def pct(xs, q):
        return round(1000 * float(np.percentile(xs, q)), 1)

    fives = sum(
        n for b in ("heavy", "hostile") for k, n in statuses[b].items() if str(k).split(": ")[-1][0] == "5"
    )
    ratio = lambda xs: round(float(np.percentile(xs, 95) / np.percentile(unloaded, 95)), 2)  # noqa: E731
    res = {
        "model": args.model,
        "phase_seconds": args.seconds / 2,
        "heavy_request": f"{args.heavy_items} items x {args.pages} pages of a 2000x2000 PNG, adaptive",
        "rss_mb": {"idle": round(idle_rss, 1), "heavy_and_attack_peak": round(peaks["heavy"], 1),
                   "heavy_and_attack_growth": round(peaks["heavy"] - idle_rss, 1)},
        "largest_request": largest,
        "longest_texts_request": longest,
        "disc_ms": {"unloaded_p50": pct(unloaded, 50), "unloaded_p95": pct(unloaded, 95),
                    "heavy_p50": pct(under_heavy, 50), "heavy_p95": pct(under_heavy, 95),
                    "heavy_requests": len(under_heavy),
                    "attack_p50": pct(attacked, 50), "attack_p95": pct(attacked, 95), "attack_requests": len(attacked)},
        "disc_p95_ratio_heavy": ratio(under_heavy),
        "disc_p95_ratio_attack": ratio(attacked),
        "statuses": {k: dict(sorted((str(a), n) for a, n in c.items())) for k, c in statuses.items()},
        "5xx": fives,
        "stalled_connections_closed": f"{closed}/{len(stalled)}",
        "sigterm_exit_s": None if exit_s is None else round(exit_s, 2),
        "temp_folders_left": left,
        "goals": {"rss_growth_mb_max": 300, "disc_p95_ratio_heavy_max": 2.0, "5xx": 0, "shutdown": "503",
                  "sigterm_exit_s_max": 10},
        "server_errors": [line for line in Path(log.name).read_text().splitlines() if "Error" in line][-5:],
        "machine": f"{os.cpu_count()} CPUs",
    }  # fmt: skip
    write_result(res, args.out)


if __name__ == "__main__":
    main()
