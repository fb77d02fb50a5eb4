"""bf16 against fp32 on this machine, side by side in one run (run by hand, not in CI).

    python benchmarks/bench_precision.py [--model nano-r1] [--per-task 4] [--repeats 3]
                                         [--out benchmarks/results/precision.json]

The same model is loaded twice, `--dtype float32` and `--dtype bfloat16`, and each measurement alternates the
two (fp32, bf16, fp32, ...), keeping the median, so load on a shared machine hits both alike:
1. disc encode of real mmeb-mini test queries (text, images, frames, pages), batch 16;
2. think encode of 16 text queries among them (<= 32 new tokens), batch 16;
3. one stage-1 step of nano on real mmeb-mini training pairs (batch 8, one GradCache chunk; forward,
   backward and AdamW): float32 throughout, against autocast bf16 with float32 masters (frozen weights bf16),
   as `mmemb train stage1` runs it.
Goal: bf16 / fp32 time >= 2.5x for each. Also reported: the cosine between the two dtypes' disc and nothink
vectors of every query (min, mean), the bound the tests use, and the loss of the two training steps.
"""

from __future__ import annotations

import platform
import statistics
import time

import numpy as np
import torch
from common import bench_parser, write_result

from mmemb import Embedder
from mmemb.data.tasks import load_task
from mmemb.eval.evaluate import resolve


def queries(per_task: int) -> list:
    st = resolve("mmeb-mini", None)
    out = []
    for name, info in st.datasets.items():
        task = load_task(info, st.root, "test", st.formats[name])
        out += [task.items[q] for q in task.queries[:per_task]]
    return out


def alternate(fns: dict, repeats: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def cos_rows(a: np.ndarray, b: np.ndarray) -> dict:
    c = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return {"min": round(float(c.min()), 6), "mean": round(float(c.mean()), 6),
            "max_1_minus_cos": float(f"{(1 - c).max():.2e}")}  # fmt: skip


def train_step_fn(precision: str):
    """One stage-1 step as `train_stage1` runs it, on real mmeb-mini pairs (no reasoning variant)."""
    from mmemb.precision import autocast
    from mmemb.train.config import load_train_config, mixed_precision
    from mmemb.train.data import build_examples, read_training_pairs
    from mmemb.train.stage1 import batch_backward, build_embedder

    cfg = load_train_config(None, ["model.init=nano", "data.variant=none", "data.limit_per_task=8",
                                   "batch.size=8", "batch.chunk=8", f"run.mixed_precision={precision}"])  # fmt: skip
    emb = build_embedder(cfg, cast_frozen=True)
    examples = build_examples(read_training_pairs(cfg.data), cfg.data, emb.config.tokens)
    params = [p for p in emb.backbone.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    low = {"bf16": torch.bfloat16}.get(mixed_precision(cfg), torch.float32)
    emb.backbone.train()
    batch = examples[::9][:8]  # one pair from each of 8 tasks
    losses = []

    def forward(*args):
        with autocast(low):
            return emb.backbone(*args)

    def step():
        out = batch_backward(forward, emb, batch, cfg, lambda x: x.backward())
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(out["loss"]))

    return step, losses


def main() -> None:
    ap = bench_parser(__doc__, "precision")
    ap.add_argument("--model", default="nano-r1")
    ap.add_argument("--per-task", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    models = {d: Embedder.from_pretrained(args.model, dtype=d) for d in ("float32", "bfloat16")}
    items = queries(args.per_task)
    texts = [s for s in items if not s.media()][:16]
    res: dict = {"command": "python benchmarks/bench_precision.py", "model": args.model, "queries": len(items),
                 "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"}  # fmt: skip

    disc = alternate(
        {d: (lambda m=m: m.encode(items, batch_size=16)) for d, m in models.items()}, args.repeats
    )
    think = alternate(
        {d: (lambda m=m: m.encode(texts, mode="think", batch_size=16, max_new_tokens=32)) for d, m in models.items()},
        args.repeats,
    )  # fmt: skip
    steps = {p: train_step_fn(p) for p in ("no", "bf16")}
    step = alternate({p: fn for p, (fn, _) in steps.items()}, args.repeats)
    res["seconds"] = {
        "disc_encode": {k: round(v, 3) for k, v in disc.items()},
        "think_encode": {k: round(v, 3) for k, v in think.items()},
        "stage1_step": {"float32": round(step["no"], 3), "bf16_autocast": round(step["bf16"], 3)},
    }
    res["speedup_bf16"] = {
        "disc_encode": round(disc["float32"] / disc["bfloat16"], 2),
        "think_encode": round(think["float32"] / think["bfloat16"], 2),
        "stage1_step": round(step["no"] / step["bf16"], 2),
    }
    res["goal_speedup_min"] = 2.5
    vec = {d: {m: models[d].encode(items, mode=m, batch_size=16).vectors for m in ("disc", "nothink")}
           for d in models}  # fmt: skip
    res["cosine_fp32_vs_bf16"] = {
        m: cos_rows(vec["float32"][m], vec["bfloat16"][m]) for m in ("disc", "nothink")
    }
    # the bound the equivalence tests use (tests/conftest.py BF16_COS): how far one bf16 vector moves when the
    # same input is embedded alone instead of in a batch, against what a real bug costs (positions counted
    # with padding left unmasked: the bug padding invariance guards against; positions counted from the padded
    # index instead would cost nothing here, RoPE sees only relative positions)
    bf = models["bfloat16"]
    sub = items[:: max(1, len(items) // 12)]
    batched = bf.encode(sub, batch_size=len(sub)).vectors
    alone = np.concatenate([bf.encode([x]).vectors for x in sub])
    bb, prepare = bf.backbone, type(bf.backbone).prepare

    def unmasked(samples, texts):  # the bug: padding is not masked out of attention
        p = prepare(bb, samples, texts)
        p.attention_mask = torch.ones_like(p.attention_mask)
        return p

    bb.prepare = unmasked
    try:
        buggy = bf.encode(sub, batch_size=len(sub)).vectors
    finally:
        del bb.prepare
    res["bf16_same_input_alone_vs_batched"] = cos_rows(alone, batched)
    res["bf16_padding_bug_vs_correct"] = cos_rows(buggy, batched)
    res["stage1_losses"] = {p: [round(x, 4) for x in losses] for p, (_, losses) in steps.items()}
    write_result(res, args.out)


if __name__ == "__main__":
    main()
