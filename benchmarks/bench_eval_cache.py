"""The evaluation cache: the same mmeb-mini evaluation of nano twice, cold then warm (run by hand).

    python benchmarks/bench_eval_cache.py [--out benchmarks/results/eval_cache.json]

The first run starts from an empty cache folder and embeds every unique item; the second finds them all
in the cache. Goal: the second run >= 10x faster. Also records the cold run's wall time (goal: <= 5 min
for a disc evaluation of nano on 2 cores) and unique / total items per task.
"""

from __future__ import annotations

import platform
import tempfile
import time
from pathlib import Path

import torch
from common import bench_parser, write_result

from mmemb import Embedder
from mmemb.data import tasks as tasks_module
from mmemb.eval.evaluate import evaluate
from mmemb.eval.runner import EvalSettings


def main() -> None:
    ap = bench_parser(__doc__, "eval_cache")
    args = ap.parse_args()
    embedder = Embedder.from_pretrained("nano")
    settings = EvalSettings(progress=False)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for label in ("cold", "warm"):
            tasks_module._file_digests.clear()  # as in a new process: media are hashed again for the keys
            t = time.perf_counter()
            res = evaluate(embedder, "mmeb-mini", Path(tmp) / label, settings, cache_root=Path(tmp) / "cache")
            runs.append(
                {
                    "run": label,
                    "seconds": time.perf_counter() - t,
                    "embedded": sum(r.embedded_now for r in res["runs"]["disc-disc"].values()),
                }
            )
        tasks = {
            n: {"unique_items": r.unique_items, "total_items": r.total_items}
            for n, r in res["runs"]["disc-disc"].items()
        }
    result = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "command": "python benchmarks/bench_eval_cache.py",
        "runs": runs,
        "speedup": runs[0]["seconds"] / runs[1]["seconds"],
        "tasks": tasks,
    }
    write_result(result, args.out, show=False)
    for name, t in tasks.items():
        print(f"{name:<20} unique/total items {t['unique_items']:>5}/{t['total_items']:<5}")
    print(
        f"cold {runs[0]['seconds']:.1f} s ({runs[0]['embedded']} items embedded), warm {runs[1]['seconds']:.1f} s "
        f"({runs[1]['embedded']} embedded): {result['speedup']:.1f}x (goal >= 10x)"
    )


if __name__ == "__main__":
    main()
