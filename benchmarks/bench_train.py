"""Stage-1 step time and peak memory against the contrastive batch size, with and without GradCache (nano).

    python benchmarks/bench_train.py [--sizes 8,16,32] [--chunk 4] [--out benchmarks/results/train.json]

Each (batch size, GradCache on/off) runs in its own process on real mmeb-mini train pairs (variant none,
so no selection file is needed): load nano, then one warm-up step and one timed forward + backward of a
whole contrastive batch. Peak memory is the largest resident set size sampled every 5 ms during the
warm-up and timed steps, minus the resident size after loading (what training adds: activations, graph,
gradients). Goal: with GradCache the added
memory stays about flat as the batch grows; without it, it grows with the batch.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

from common import bench_parser, write_result


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def worker(size: int, chunk: int) -> dict:
    import torch

    from mmemb import Embedder
    from mmemb.data.pairs import read_pairs
    from mmemb.train.config import load_train_config
    from mmemb.train.data import BatchOrder, build_examples
    from mmemb.train.stage1 import batch_backward

    torch.manual_seed(0)
    cfg = load_train_config(None, ["data.variant=none", f"batch.size={size}", f"batch.chunk={chunk}"])
    emb = Embedder.from_pretrained("nano")
    emb.backbone.configure_trainable()
    emb.backbone.train()
    examples = build_examples(read_pairs("mmeb-mini", limit_per_task=16), cfg.data, emb.config.tokens)
    order = BatchOrder(len(examples), 0)
    base, peak, stop = rss_mb(), [0.0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_mb())
            time.sleep(0.005)

    thread = threading.Thread(target=sample)
    thread.start()
    batch_backward(emb.backbone, emb, [examples[i] for i in order.next(size)], cfg, lambda x: x.backward())
    batch = [examples[i] for i in order.next(size)]
    t = time.perf_counter()
    out = batch_backward(emb.backbone, emb, batch, cfg, lambda x: x.backward())
    secs = time.perf_counter() - t
    stop.set()
    thread.join()
    return {
        "batch": size,
        "gradcache": bool(chunk),
        "chunk": chunk or size,
        "seconds": round(secs, 2),
        "added_mb": round(peak[0] - base, 1),
        "loss": round(float(out["loss"]), 4),
    }


def main() -> None:
    ap = bench_parser(__doc__, "train")
    ap.add_argument("--sizes", default="8,16,32")
    ap.add_argument("--chunk", type=int, default=4)
    ap.add_argument("--worker", nargs=2, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker)))
        return
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        for chunk in (0, args.chunk):
            res = subprocess.run(
                [sys.executable, __file__, "--worker", str(size), str(chunk)], capture_output=True, text=True
            )
            if res.returncode:
                raise SystemExit(res.stderr[-2000:])
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    import torch

    result = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "command": "python benchmarks/bench_train.py",
        "rows": rows,
    }
    write_result(result, args.out, show=False)


if __name__ == "__main__":
    main()
