"""Adaptive reasoning costs what it reasons: wall time of adaptive at a forced invocation ratio p against
(1 - p) x never-think + p x always-think, side by side in one run (run by hand, not in CI).

    python benchmarks/bench_adaptive.py [--model nano-r1] [--per-task 6] [--repeats 2]
                                        [--out benchmarks/results/adaptive.json]

Real mmeb-mini test queries (the first --per-task of each task). For each p in {0, 0.25, 0.5, 0.75, 1} the
policy head is replaced by one that forces p: it scores each query's disc state by a fixed random direction
and thinks above the (1 - p) quantile of those scores. nothink, think and every p run interleaved in each
repeat (machine noise hits them alike) and the best repeat of each is kept. Goal: adaptive / ((1 - p) x
nothink + p x think) <= 1.1 at every p. A check first: every adaptive row equals the fixed mode of its action.

"split" is the same work done as two fixed-mode calls: think mode on exactly the rows adaptive thinks on,
nothink on the others. adaptive / split ~ 1 says adaptive adds nothing to the work of its actions; where
adaptive / ideal is above it, the gap is decoding's fixed tail: a decode step costs about the same at batch 4
as at 16 on this CPU (per-operation overhead), so a few thinkers cost the steps of their longest row, not a
p-share of think mode's batches.
"""

from __future__ import annotations

import platform
import sys
import time

import numpy as np
import torch
from bench_precision import queries  # the script's folder is on sys.path
from common import bench_parser, write_result

from mmemb import Embedder

PS = (0.0, 0.25, 0.5, 0.75, 1.0)


def force_head(model: Embedder, disc: torch.Tensor, p: float) -> None:
    """A binary head that thinks on the top-p share of queries by a fixed random score of their disc state."""
    direction = torch.randn(disc.shape[1], generator=torch.Generator().manual_seed(0))
    scores = torch.nn.functional.normalize(disc, dim=-1) @ direction  # (N,): what the head computes
    cut = float(torch.quantile(scores, 1 - p)) if 0 < p < 1 else (float("inf") if p == 0 else -float("inf"))
    with torch.no_grad():
        w, b = model.policy.linear.weight, model.policy.linear.bias
        w.zero_()
        w[1] = direction  # logit(think) - logit(no_think) = score - cut
        b.zero_()
        b[1] = -cut if np.isfinite(cut) else (-1e9 if p == 0 else 1e9)


def main() -> None:
    ap = bench_parser(
        __doc__, "adaptive", model="nano-r1", dtype_help="; float32: thinkers' tokens equal think mode's"
    )
    ap.add_argument("--per-task", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    model = Embedder.from_pretrained(args.model, dtype=args.dtype)
    items = queries(args.per_task)
    cap = model.config.policy.budgets[-1]
    disc_states = []
    bb = model.backbone
    for i in range(0, len(items), args.batch_size):  # the states the head reads (prompt + no-think: at -3)
        chunk = items[i : i + args.batch_size]
        prompts = bb.prepare(chunk, [model.prompt(s) + model.no_think for s in chunk])
        disc_states.append(bb.prefill(prompts, use_cache=False)[0][:, -3].float())
    disc = torch.cat(disc_states)

    def run(mode: str, p: float | None = None):
        if p is not None:
            force_head(model, disc, p)
        return model.encode(items, mode=mode, batch_size=args.batch_size, max_new_tokens=cap)

    names = ["nothink", "think"] + [f"adaptive p={p}" for p in PS] + [f"split p={p}" for p in PS]
    seconds: dict[str, list[float]] = {n: [] for n in names}
    outputs: dict = {}
    for _ in range(args.repeats):
        for n in names:
            t = time.perf_counter()
            if n.startswith("split"):  # think mode on the rows adaptive thinks on, nothink on the others
                did = np.array(outputs[n.replace("split", "adaptive")].reasoned)  # this repeat's adaptive run
                thinkers, others = np.flatnonzero(did).tolist(), np.flatnonzero(~did).tolist()
                for mode, rows in (("think", thinkers), ("nothink", others)):
                    if rows:
                        model.encode([items[i] for i in rows], mode=mode, batch_size=args.batch_size,
                                     max_new_tokens=cap)  # fmt: skip
            else:
                mode, p = (n, None) if not n.startswith("adaptive") else ("adaptive", float(n.split("=")[1]))
                outputs[n] = run(mode, p)
            seconds[n].append(time.perf_counter() - t)
    nt, th = outputs["nothink"], outputs["think"]
    best = {n: min(v) for n, v in seconds.items()}
    rows = []
    for p in PS:
        ad = outputs[f"adaptive p={p}"]
        diverged = 0
        for i, did in enumerate(ad.reasoned):  # each row equals the fixed mode of its action
            ref, text = (th.vectors[i], th.texts[i]) if did else (nt.vectors[i], nt.texts[i])
            if ad.texts[i] != text:  # bf16: another batch rounds differently, greedy tokens may part ways
                diverged += 1
            elif float(ad.vectors[i] @ ref) < 1 - 2e-3:
                raise SystemExit(f"p={p}: adaptive row {i} differs from its action's fixed mode")
        real_p = float(np.mean(ad.reasoned))
        ideal = (1 - real_p) * best["nothink"] + real_p * best["think"]
        a, sp = best[f"adaptive p={p}"], best[f"split p={p}"]
        rows.append({"p": p, "invocation": round(real_p, 3), "adaptive_s": round(a, 2),
                     "ideal_s": round(ideal, 2), "ratio": round(a / ideal, 3),
                     "split_s": round(sp, 2), "ratio_to_split": round(a / sp, 3),
                     "rows_whose_tokens_parted_from_think_mode": diverged})  # fmt: skip
    result = {
        "command": "python benchmarks/bench_adaptive.py " + " ".join(sys.argv[1:]),
        "model": args.model,
        "dtype": str(model.dtype).removeprefix("torch."),
        "queries": len(items),
        "cap": cap,
        "seconds": {"nothink": round(best["nothink"], 2), "think": round(best["think"], 2)},
        "mean_think_tokens": round(float(np.mean(th.gen_tokens)), 1),
        "by_p": rows,
        "goal_ratio_max": 1.1,
        "all_runs_seconds": {n: [round(x, 2) for x in v] for n, v in seconds.items()},
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
    }
    write_result(result, args.out)


if __name__ == "__main__":
    main()
