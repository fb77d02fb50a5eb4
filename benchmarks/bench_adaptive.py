"""Adaptive reasoning: wall time of adaptive against always-think and never-think, side by side in one run.

    python benchmarks/bench_adaptive.py --model runs/train/policy-nano/final [--per-task 12] [--repeats 2]
                                        [--out benchmarks/results/adaptive.json]

Real mmeb-mini test queries (the first --per-task of each task) are embedded with `encode` in modes think,
adaptive and nothink, the three interleaved in each repeat so machine noise hits them alike; the best
repeat of each is kept. Reported: seconds per query per mode, adaptive / always-think (goal: <= 0.60, the
score side of the goal comes from `mmemb train policy-sweep` / `mmemb eval --qry-mode adaptive`), and the
adaptive invocation ratio on these queries. A check first: every adaptive row equals the fixed mode of its
action (the sweep's scores rely on it).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from mmemb import Embedder
from mmemb.eval.evaluate import resolve
from mmemb.eval.tasks import load_task


def queries(per_task: int) -> list:
    st = resolve("mmeb-mini", None)
    out = []
    for name, info in st.datasets.items():
        task = load_task(info, st.root, "test", st.formats[name])
        out += [task.items[q] for q in task.queries[:per_task]]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a saved mmemb model with a trained policy head")
    ap.add_argument("--per-task", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/adaptive.json"))
    args = ap.parse_args()
    model = Embedder.from_pretrained(args.model)
    items = queries(args.per_task)
    cap = model.config.policy.budgets[-1]
    seconds: dict[str, list[float]] = {"think": [], "adaptive": [], "nothink": []}
    outputs = {}
    for _ in range(args.repeats):
        for mode in seconds:
            t = time.perf_counter()
            outputs[mode] = model.encode(items, mode=mode, batch_size=args.batch_size, max_new_tokens=cap)
            seconds[mode].append(time.perf_counter() - t)
    ad, nt, th = outputs["adaptive"], outputs["nothink"], outputs["think"]
    for i, did in enumerate(ad.reasoned):  # binary policy: think rows match think mode at the top budget
        ref = th.vectors[i] if did else nt.vectors[i]
        if len(model.config.policy.budgets) == 2 and not np.allclose(ad.vectors[i], ref, atol=1e-4):
            raise SystemExit(f"adaptive row {i} differs from its action's fixed mode")
    best = {m: min(v) for m, v in seconds.items()}
    n = len(items)
    result = {
        "model": args.model,
        "queries": n,
        "per_task": args.per_task,
        "budgets": model.config.policy.budgets,
        "seconds_per_query": {m: round(s / n, 4) for m, s in best.items()},
        "all_runs_seconds": {m: [round(x, 2) for x in v] for m, v in seconds.items()},
        "adaptive_over_think": round(best["adaptive"] / best["think"], 3),
        "nothink_over_think": round(best["nothink"] / best["think"], 3),
        "adaptive_invocation": round(float(np.mean(ad.reasoned)), 3),
        "mean_think_tokens": round(float(np.mean(th.gen_tokens)), 1),
        "goal_adaptive_over_think_max": 0.60,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
    }
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
