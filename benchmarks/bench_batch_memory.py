"""Memory of one `encode` call with and without the per-forward budget (issue 21).

    python benchmarks/bench_batch_memory.py [--model nano-r1] [--items 16] [--batch-size 16]

Each case runs in a fresh subprocess (a clean heap), which embeds one item to warm up and then one `encode`
of --items inputs at --batch-size while a thread samples its RSS every 5 ms:
- pages: items of 32 pages each, a 2000x2000 one-bit PNG (decoded, each is 12 MB as RGB);
- texts: texts of ~1,950 tokens each, as long as nano's context allows.
Each is run with the default budget (`Embedder.max_batch_tokens`, `max_batch_images`) and with it off (both
10**9: a batch is --batch-size rows whatever they hold). Reported: RSS growth at peak over the warm figure,
and seconds; the ratios budget / no budget are the figures to read (this machine is shared and noisy).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import bench_parser, write_result

CHILD = "--child"


def rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(model: str, kind: str, items: int, batch_size: int, budget: bool, folder: str) -> None:
    import numpy as np
    from PIL import Image

    from mmemb import Embedder, Sample

    emb = Embedder.from_pretrained(model)
    if not budget:
        emb.max_batch_tokens = emb.max_batch_images = 10**9
    if kind == "pages":
        page = Path(folder) / "page.png"
        Image.fromarray(np.random.default_rng(0).random((2000, 2000)) > 0.5).convert("1").save(page)
        samples = [Sample(id=f"d{i}", pages=(page,) * 32) for i in range(items)]
    else:
        samples = [Sample(id=f"t{i}", text="word " * 1900) for i in range(items)]
    emb.encode(samples[:1], mode="disc")  # warm: weights, the shared prefix, allocator pools
    warm, peak, done = rss_mb(), [0.0], threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_mb())
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    t0 = time.perf_counter()
    emb.encode(samples, mode="disc", batch_size=batch_size)
    seconds = time.perf_counter() - t0
    done.set()
    watcher.join()
    print(
        json.dumps(
            {"warm_mb": round(warm, 1), "growth_mb": round(peak[0] - warm, 1), "seconds": round(seconds, 1)}
        )
    )


def main() -> None:
    if sys.argv[1:2] == [CHILD]:
        model, kind, items, batch_size, budget, folder = sys.argv[2:]
        return child(model, kind, int(items), int(batch_size), budget == "1", folder)
    ap = bench_parser(__doc__, "batch_memory", model="nano-r1")
    ap.add_argument("--items", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    res: dict = {"model": args.model, "items": args.items, "batch_size": args.batch_size}
    with tempfile.TemporaryDirectory() as folder:
        for kind in ("pages", "texts"):
            runs = {}
            for budget in (True, False):
                cmd = [
                    sys.executable,
                    __file__,
                    CHILD,
                    args.model,
                    kind,
                    str(args.items),
                    str(args.batch_size),
                ]
                out = subprocess.run([*cmd, "1" if budget else "0", folder], capture_output=True, text=True)
                if out.returncode:
                    raise SystemExit(out.stderr[-3000:])
                runs["budget" if budget else "no_budget"] = json.loads(out.stdout.strip().splitlines()[-1])
            runs["growth_ratio"] = round(runs["budget"]["growth_mb"] / runs["no_budget"]["growth_mb"], 3)
            runs["seconds_ratio"] = round(runs["budget"]["seconds"] / runs["no_budget"]["seconds"], 3)
            res[kind] = runs
    res["machine"] = f"{os.cpu_count()} CPUs"
    write_result(res, args.out)


if __name__ == "__main__":
    main()
