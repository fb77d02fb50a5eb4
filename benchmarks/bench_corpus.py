"""Corpus-scale `mmemb embed` (issue 22): items/s with 1 and 2 processes, and memory over a long run.

    python benchmarks/bench_corpus.py [--model nano-r1] [--rank-shard-size 100] [--repeat 10] [--shard-size 500]

The corpus is mmeb-mini's real unique test items (queries and candidates of its nine tasks: text, images,
frames, pages), written as `mmemb embed` JSONL with their media paths.
1. throughput: the 1x corpus embedded (disc) by one process and by `torchrun --nproc_per_node 2` (gloo,
   one thread each), side by side, in shards of --rank-shard-size (the ranks take them as they free up);
   items/s of each, the ratio, and each rank's share. This CPU has 2 cores, so the ideal is
   about 1x: one process already uses both (two threads). On a GPU node each rank has its own GPU and the
   ratio approaches the number of GPUs.
2. memory: the corpus repeated --repeat times (new ids) embedded by one process into shards while its RSS
   is sampled every 0.5 s: RSS after the first tenth of the items and at the end.
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

from mmemb.eval.evaluate import load, resolve


def corpus_rows() -> list[dict]:
    st = resolve("mmeb-mini", None)
    rows, seen = [], set()
    for name in st.datasets:
        for key, s in load(st, name).items.items():
            if key in seen:
                continue
            seen.add(key)
            row = {"id": key}
            for field in ("text", "instruction"):
                if getattr(s, field):
                    row[field] = getattr(s, field)
            if s.image:
                row["image"] = str(s.image)
            for field in ("frames", "pages"):
                if getattr(s, field):
                    row[field] = [str(p) for p in getattr(s, field)]
            rows.append(row)
    return rows


def write(path: Path, rows: list[dict], repeat: int = 1) -> Path:
    with open(path, "w") as f:
        for r in range(repeat):
            for row in rows:
                f.write(json.dumps(row | {"id": f"{row['id']}#{r}"}) + "\n")
    return path


def rss_mb(pid: int) -> float:
    """RSS of a process and its children (torchrun's workers), MB."""
    total = 0.0
    for p in [pid, *children(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
        except OSError:
            pass
    return total


def children(pid: int) -> list[int]:
    try:
        kids = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    return kids + [g for k in kids for g in children(k)]


def run(cmd: list[str], items: int, out: Path) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    samples: list[tuple[int, float]] = []  # (shards done, RSS)

    def watch() -> None:
        while proc.poll() is None:
            samples.append((len(list(out.glob("shard-*.done.json"))), rss_mb(proc.pid)))
            time.sleep(0.5)

    w = threading.Thread(target=watch, daemon=True)
    w.start()
    err = proc.communicate()[1]
    w.join()
    if proc.returncode:
        raise SystemExit(err[-3000:])
    return {"seconds": round(time.perf_counter() - t0, 1), "items": items, "samples": samples, "log": err}


def main() -> None:
    ap = bench_parser(__doc__, "corpus", model="nano-r1")
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--rank-shard-size", type=int, default=100, help="shard size of the throughput runs")
    ap.add_argument("--shard-size", type=int, default=500, help="shard size of the memory run")
    args = ap.parse_args()
    rows = corpus_rows()
    res: dict = {"model": args.model, "corpus_items": len(rows)}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = write(tmp / "corpus.jsonl", rows)
        embed = ["-m", "mmemb.cli", "embed", "--model", args.model, "--input", str(src), "--shard-size",
                 str(args.rank_shard_size), "--quiet"]  # fmt: skip
        one = run([sys.executable, *embed, "--out", str(tmp / "one")], len(rows), tmp / "one")
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
        two = run([*torchrun, *embed, "--out", str(tmp / "two")], len(rows), tmp / "two")
        res["throughput"] = {
            "one_process_items_per_s": round(len(rows) / one["seconds"], 1),
            "two_processes_items_per_s": round(len(rows) / two["seconds"], 1),
            "ratio_two_over_one": round(one["seconds"] / two["seconds"], 3),
            "seconds": {"one": one["seconds"], "two": two["seconds"]},
            "per_rank": [line for line in two["log"].splitlines() if "items in" in line],
            "shard_size": args.rank_shard_size,
            "note": "wall time including model load (~5 s per process)",
        }
        big = write(tmp / "big.jsonl", rows, args.repeat)
        n = len(rows) * args.repeat
        cmd = [sys.executable, "-m", "mmemb.cli", "embed", "--model", args.model, "--input", str(big),
               "--shard-size", str(args.shard_size), "--quiet", "--out", str(tmp / "big")]  # fmt: skip
        long = run(cmd, n, tmp / "big")
        shards = -(-n // args.shard_size)
        tenth = [rss for done, rss in long["samples"] if done >= shards // 10]
        res["memory"] = {
            "items": n,
            "repeat": args.repeat,
            "seconds": long["seconds"],
            "items_per_s": round(n / long["seconds"], 1),
            "rss_mb_after_a_tenth": round(tenth[0], 1) if tenth else None,
            "rss_mb_peak": round(max(r for _, r in long["samples"]), 1),
            "rss_mb_last": round(long["samples"][-1][1], 1),
        }
    res["machine"] = f"{os.cpu_count()} CPUs"
    write_result(res, args.out)


if __name__ == "__main__":
    main()
