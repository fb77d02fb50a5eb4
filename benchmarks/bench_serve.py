"""Load test of `mmemb serve`, loopback only, bounded in requests and time.

    python benchmarks/bench_serve.py [--model nano-r1] [--requests 48] [--soak-s 180]
                                     [--out benchmarks/results/serve.json]

Starts real `mmemb serve` processes on 127.0.0.1 (a free port) and drives them with httpx clients in threads.
The inputs are real mmeb-mini test queries (text, images as base64, video frames, document pages), one item
per request, cycled. Four parts, in one run:

1. latency / throughput: p50 / p95 latency and requests per second at 1, 4 and 16 concurrent clients, for
   mode disc and mode adaptive (with its invocation ratio);
2. head of line: disc latency at 4 clients while 2 more clients keep the server busy with always-think
   requests, with `--lanes split` (the default) against `--lanes shared`, side by side; the ratio is the
   figure (same machine, same minute);
3. soak: `--soak-s` seconds of mixed disc / adaptive load at 4 clients; the server's resident memory is
   sampled every 5 s; reported: the mean RSS of the first and of the last third of the samples, their
   difference, and the range;
4. overload: a server with `--max-queue 8` under 32 clients sending 4-item think requests for `--overload-s` (20) s; every
   answer must be 200 or 429 (with Retry-After), never an error, and /health must answer afterwards;
5. dtype: disc at 1 and 4 clients against a `--dtype float32` server and a `--dtype bfloat16` one, alternating
   for `--dtype-rounds` rounds (the medians of the rounds). `--only-dtype` runs just this part and updates
   the "dtype" entry of `--out`.

Every cell is bounded by `--requests` per client group and `--cell-s` seconds. Nothing leaves the machine.
"""

from __future__ import annotations

import base64
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from common import bench_parser, write_result

from mmemb.data.tasks import load_task
from mmemb.eval.evaluate import resolve


def request_items(per_task: int) -> list[dict]:
    """Real mmeb-mini test queries as request items (media inlined as base64)."""
    st = resolve("mmeb-mini", None)
    b64 = lambda p: base64.b64encode(Path(p).read_bytes()).decode()  # noqa: E731
    out = []
    for name, info in st.datasets.items():
        task = load_task(info, st.root, "test", st.formats[name])
        for q in task.queries[:per_task]:
            s = task.items[q]
            item = {k: v for k, v in (("text", s.text), ("instruction", s.instruction)) if v}
            if s.image:
                item["image"] = b64(s.image)
            if s.frames:
                item["frames"] = [b64(p) for p in s.frames]
            if s.pages:
                item["pages"] = [b64(p) for p in s.pages]
            out.append(item)
    return out


class Server:
    """`mmemb serve` in a child process on a free loopback port."""

    def __init__(self, model: str, *flags: str) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [
            sys.executable,
            "-c",
            "from mmemb.cli import console; console()",
            "serve",
            "--model",
            model,
            "--port",
            str(self.port),
            *flags,
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"mmemb serve exited: {self.proc.stderr.read()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.5)
        raise SystemExit("mmemb serve did not come up in 5 min")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


def drive(url, items, mode, clients, requests, seconds, extra=None, stop=None) -> dict:
    """`clients` closed-loop clients share `requests` requests (or `seconds`, whichever ends first)."""
    lat, codes, reasoned, lock = [], {}, [], threading.Lock()
    counter = iter(range(requests))
    end = time.monotonic() + seconds

    def client(k: int) -> None:
        with httpx.Client(timeout=300) as http:
            for i in counter:
                if time.monotonic() > end or (stop is not None and stop.is_set()):
                    return
                body = {"input": [items[(i * 7 + k) % len(items)]], "mode": mode, **(extra or {})}
                t = time.perf_counter()
                r = http.post(url + "/v1/embeddings", json=body)
                dt = time.perf_counter() - t
                with lock:
                    codes[r.status_code] = codes.get(r.status_code, 0) + 1
                    if r.status_code == 200:
                        lat.append(dt)
                        reasoned.extend(d["reasoned"] for d in r.json()["data"])

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    wall = time.perf_counter() - t0
    q = statistics.quantiles(lat, n=20) if len(lat) >= 2 else [float("nan")] * 19
    return {
        "mode": mode,
        "clients": clients,
        "requests_ok": len(lat),
        "codes": {str(k): v for k, v in sorted(codes.items())},
        "p50_ms": round(1000 * statistics.median(lat), 1) if lat else None,
        "p95_ms": round(1000 * q[18], 1),
        "req_per_s": round(len(lat) / wall, 2),
        "invocation": round(sum(reasoned) / len(reasoned), 3) if reasoned else None,
    }


def dtype_part(model: str, items: list[dict], rounds: int, requests: int, cell_s: float) -> dict:
    """Part 5: the same disc cells against a float32 and a bf16 server, alternating."""
    cells: dict[str, list[dict]] = {}
    for _ in range(rounds):
        for dt in ("float32", "bfloat16"):
            srv = Server(model, "--dtype", dt)
            try:
                drive(srv.url, items, "disc", 2, 8, 60)  # warm-up
                for c in (1, 4):
                    cells.setdefault(f"{dt} clients={c}", []).append(
                        drive(srv.url, items, "disc", c, requests, cell_s)
                    )
            finally:
                srv.close()
    med = lambda runs, k: round(statistics.median(r[k] for r in runs), 1)  # noqa: E731
    out = {name: {k: med(runs, k) for k in ("p50_ms", "p95_ms", "req_per_s")} for name, runs in cells.items()}
    for c in (1, 4):
        f, b = out[f"float32 clients={c}"], out[f"bfloat16 clients={c}"]
        out[f"bf16 speed-up clients={c}"] = {"p50": round(f["p50_ms"] / b["p50_ms"], 2),
                                             "req_per_s": round(b["req_per_s"] / f["req_per_s"], 2)}  # fmt: skip
    out["rounds"] = rounds
    return out


def main() -> None:
    ap = bench_parser(__doc__, "serve")
    ap.add_argument("--model", default="nano-r1")
    ap.add_argument("--per-task", type=int, default=8, help="mmeb-mini test queries per task to cycle")
    ap.add_argument("--requests", type=int, default=48, help="requests per cell")
    ap.add_argument("--cell-s", type=float, default=60, help="time bound per cell")
    ap.add_argument("--soak-s", type=float, default=180)
    ap.add_argument("--overload-s", type=float, default=20)
    ap.add_argument("--budget", type=int, default=64, help="max_new_tokens of think / adaptive requests")
    ap.add_argument("--dtype-rounds", type=int, default=2, help="part 5: float32 / bf16 rounds (0: skip)")
    ap.add_argument("--only-dtype", action="store_true", help="run part 5 alone and update --out")
    args = ap.parse_args()
    items = request_items(args.per_task)
    if args.only_dtype:
        res = json.loads(args.out.read_text()) if args.out.is_file() else {}
        res["dtype"] = dtype_part(args.model, items, args.dtype_rounds, args.requests, args.cell_s)
        args.out.write_text(json.dumps(res, indent=2) + "\n")
        print(json.dumps(res["dtype"], indent=2))
        return
    cap = {"max_new_tokens": args.budget}
    res: dict = {"model": args.model, "items": len(items), "budget": args.budget}

    def say(msg: str) -> None:
        print(f"[bench_serve {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    srv = Server(args.model)
    try:
        drive(srv.url, items, "disc", 2, 8, 60)  # warm-up
        res["latency"] = []
        for mode in ("disc", "adaptive"):
            for c in (1, 4, 16):
                cell = drive(srv.url, items, mode, c, args.requests, args.cell_s, cap)
                say(json.dumps(cell))
                res["latency"].append(cell)
        say("soak")
        rss, stop = [], threading.Event()

        def sample() -> None:
            while not stop.wait(5):
                rss.append(round(srv.rss_mb(), 1))

        sampler = threading.Thread(target=sample)
        sampler.start()
        n = 10**9
        with ThreadPoolExecutor(2) as pool:
            soak = list(
                pool.map(lambda m: drive(srv.url, items, m, 2, n, args.soak_s, cap), ("disc", "adaptive"))
            )
        stop.set()
        sampler.join()
        third = max(1, len(rss) // 3)  # RSS swings by tens of MB between samples: compare means, not ends
        first, last = statistics.fmean(rss[:third]), statistics.fmean(rss[-third:])
        res["soak"] = {
            "seconds": args.soak_s,
            "runs": soak,
            "rss_mb_first_third_mean": round(first, 1),
            "rss_mb_last_third_mean": round(last, 1),
            "rss_growth_mb": round(last - first, 1),
            "rss_mb_min_max": [min(rss), max(rss)],
            "rss_samples_mb": rss,
        }
        say(json.dumps({k: v for k, v in res["soak"].items() if k != "rss_samples_mb"}))
    finally:
        srv.close()

    res["head_of_line"] = {}
    for lanes in ("split", "shared"):
        srv = Server(args.model, "--lanes", lanes)
        try:
            drive(srv.url, items, "disc", 2, 8, 60)
            stop = threading.Event()
            with ThreadPoolExecutor(1) as bg:
                busy = bg.submit(drive, srv.url, items, "think", 2, 10**9, 3 * args.cell_s, cap, stop)
                time.sleep(2)  # the think requests are decoding
                disc = drive(srv.url, items, "disc", 4, args.requests, args.cell_s)
                stop.set()
                think = busy.result()
            res["head_of_line"][lanes] = {"disc": disc, "think_background": think}
            say(f"lanes {lanes}: {json.dumps(disc)}")
        finally:
            srv.close()
    s, h = res["head_of_line"]["split"]["disc"], res["head_of_line"]["shared"]["disc"]
    res["head_of_line"]["disc_p50_shared_over_split"] = round(h["p50_ms"] / s["p50_ms"], 2)
    res["head_of_line"]["disc_p95_shared_over_split"] = round(h["p95_ms"] / s["p95_ms"], 2)

    srv = Server(args.model, "--max-queue", "8")
    try:
        big = {"input": None, "mode": "think", **cap}
        codes, retry, lock = {}, set(), threading.Lock()
        end = time.monotonic() + args.overload_s

        def flood(k: int) -> None:
            with httpx.Client(timeout=300) as http:
                while time.monotonic() < end:
                    body = big | {"input": [items[(k + j) % len(items)] for j in range(4)]}
                    try:
                        r = http.post(srv.url + "/v1/embeddings", json=body)
                        code = r.status_code
                        if code == 429:
                            retry.add(int(r.headers["retry-after"]))
                    except httpx.HTTPError as e:
                        code = type(e).__name__
                    with lock:
                        codes[str(code)] = codes.get(str(code), 0) + 1

        with ThreadPoolExecutor(32) as pool:
            list(pool.map(flood, range(32)))
        healthy = httpx.get(srv.url + "/health", timeout=10).status_code == 200
        res["overload"] = {
            "clients": 32,
            "seconds": args.overload_s,
            "max_queue": 8,
            "codes": codes,
            "retry_after_s_min_max": [min(retry), max(retry)] if retry else None,
            "only_200_or_429": set(codes) <= {"200", "429"},
            "healthy_after": healthy,
        }
        say(json.dumps(res["overload"]))
    finally:
        srv.close()

    if args.dtype_rounds:
        res["dtype"] = dtype_part(args.model, items, args.dtype_rounds, args.requests, args.cell_s)
        say(json.dumps(res["dtype"]))

    import torch

    res["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}"
    write_result(res, args.out)


if __name__ == "__main__":
    main()
