"""Stage-1 step time with the shared prompt prefix run once per forward against every row in full (nano).

    python benchmarks/bench_prefix_train.py [--batch 16] [--rounds 4] [--out benchmarks/results/prefix_train.json]

One process, nano as stage 1 trains it (bf16 autocast where the CPU has it, float32 masters), real
mmeb-mini train pairs with the hints teacher's first rationale as the query completion (what the
`selected` variant mostly trains on). Each round times one forward + backward of the same contrastive batch
twice, sharing on and off in alternating order, so load on the machine hits both alike; the result is the
median of the per-round ratios. Goal (issue 17): the prefix (template and system message, about 30 tokens)
is a large share of nano's short prompts, so sharing it should cut the step by a clear margin; the losses of
the two paths agree (the equivalence itself is tests/test_train.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import time
from pathlib import Path

from common import write_result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/prefix_train.json"))
    args = ap.parse_args()

    import torch

    from mmemb import Embedder
    from mmemb.data.pairs import read_pairs
    from mmemb.precision import autocast
    from mmemb.reasoning.teachers import hint_rationales
    from mmemb.train.config import load_train_config
    from mmemb.train.data import build_examples
    from mmemb.train.stage1 import batch_backward

    torch.manual_seed(0)
    cfg = load_train_config(None, ["data.variant=none", f"batch.size={args.batch}", "batch.chunk=0"])
    emb = Embedder.from_pretrained("nano")
    emb.backbone.configure_trainable()
    emb.backbone.train()
    low = emb.dtype
    pairs = read_pairs("mmeb-mini", limit_per_task=max(2, args.batch // 9 + 1))[: args.batch]
    examples = build_examples(pairs, cfg.data, emb.config.tokens)
    gen = emb.config.tokens.gen_emb
    for i, p in enumerate(pairs):  # a rationale where the hints give one
        levels = hint_rationales(p.hint or "", p.query.text or "")
        if levels:
            examples[i] = dataclasses.replace(examples[i], q_completion=levels[0] + gen)
    prefix_tokens = len(emb.split_prefix([emb.prompt(examples[0].query)])[0])

    def forward(*a):
        with autocast(low):
            return emb.backbone(*a)

    def step(share: bool) -> tuple[float, float]:
        emb.share_prefix = share
        emb.backbone.zero_grad(set_to_none=True)
        t = time.perf_counter()
        out = batch_backward(forward, emb, examples, cfg, lambda x: x.backward())
        return time.perf_counter() - t, float(out["loss"])

    step(True), step(False)  # warm-up
    ratios, times, losses = [], {True: [], False: []}, {True: [], False: []}
    for r in range(args.rounds):
        order = (True, False) if r % 2 == 0 else (False, True)
        got = {s: step(s) for s in order}
        for s, (sec, loss) in got.items():
            times[s].append(sec)
            losses[s].append(loss)
        ratios.append(got[False][0] / got[True][0])
        print(f"round {r + 1}: full {got[False][0]:.2f}s, shared prefix {got[True][0]:.2f}s "
              f"({ratios[-1]:.2f}x)", flush=True)  # fmt: skip
    res = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "dtype": str(low),
        "batch": args.batch,
        "prefix_tokens": prefix_tokens,
        "median_seconds_full": statistics.median(times[False]),
        "median_seconds_shared": statistics.median(times[True]),
        "speedup_median": statistics.median(ratios),
        "speedups": ratios,
        "max_loss_difference": max(abs(a - b) for a, b in zip(losses[True], losses[False], strict=True)),
    }
    write_result(res, args.out)


if __name__ == "__main__":
    main()
