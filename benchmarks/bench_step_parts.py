"""Where a bf16 stage-1 step of nano spends its time, and torch threads 1 against 2 (run by hand, not in CI).

    python benchmarks/bench_step_parts.py [--repeats 3] [--out benchmarks/results/step_parts.json]

The step is bench_precision's (real mmeb-mini pairs, batch 8, forward + backward + AdamW, bf16 autocast).
Timed inside it: the frozen vision tower with the projector (`NanoBackbone.encode_images`) and `prepare`
(tokenising, decoding and resizing media): what a cache of frozen vision features could save at most.
Threads 2 and 1 alternate, `--repeats` steps each, twice.
"""

from __future__ import annotations

import platform
import statistics
import time

import torch
from bench_precision import train_step_fn  # the script's folder is on sys.path
from common import bench_parser, write_result

import mmemb.backbones.nano as nano


def main() -> None:
    ap = bench_parser(__doc__, "step_parts")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    step, _ = train_step_fn("bf16")
    spent = {"vision": 0.0, "prepare": 0.0}

    def timed(name: str, fn):
        def wrapper(*a):
            t = time.perf_counter()
            out = fn(*a)
            spent[name] += time.perf_counter() - t
            return out

        return wrapper

    nano.NanoBackbone.encode_images = timed("vision", nano.NanoBackbone.encode_images)
    nano.NanoBackbone.prepare = timed("prepare", nano.NanoBackbone.prepare)
    step()
    step()  # warm-up
    runs: dict[int, list[dict]] = {2: [], 1: []}
    for _ in range(2):
        for threads in (2, 1):
            torch.set_num_threads(threads)
            spent.update(vision=0.0, prepare=0.0)
            times = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                step()
                times.append(time.perf_counter() - t)
            total = sum(times)
            runs[threads].append({"step_s": statistics.median(times), "vision_share": spent["vision"] / total,
                                  "prepare_share": spent["prepare"] / total})  # fmt: skip
    torch.set_num_threads(2)
    med = lambda rs, k: round(statistics.median(r[k] for r in rs), 3)  # noqa: E731
    res = {
        "command": "python benchmarks/bench_step_parts.py",
        "step_s": {f"threads={t}": med(rs, "step_s") for t, rs in runs.items()},
        "vision_share": med(runs[2], "vision_share"),
        "prepare_share": med(runs[2], "prepare_share"),
        "threads_2_over_1": round(med(runs[1], "step_s") / med(runs[2], "step_s"), 2),
        "runs": {str(t): rs for t, rs in runs.items()},
        "machine": f"{platform.machine()}, torch {torch.__version__}",
    }
    write_result(res, args.out)


if __name__ == "__main__":
    main()
