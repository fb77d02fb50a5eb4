"""Matryoshka (issue 23): the mmeb-mini score at each width, for a model trained with nested prefixes and one
trained without.

    python benchmarks/bench_matryoshka.py [--steps 60] [--dims 32,64,128,256] [--limit 0]

1. nano-r1 (the shipped model) is trained on for --steps more stage-1 steps on mmeb-mini's train split
   (variant none: no rationales; batch 32; everything else configs/nano.yaml's), twice from the same seed
   and the same batches: once as it was trained (loss.matryoshka_dims empty), once with
   loss.matryoshka_dims = --dims. Checkpointed under runs/bench-matryoshka/NAME-STEPS/: a rerun resumes.
2. Both are evaluated disc->disc on mmeb-mini's test split (all nine tasks, --limit queries each; 0: all) at
   every width in --dims and at the full 576, from one embedding pass each (the cache keeps full vectors).
   The model trained without is scored at its prefixes too, which mmemb itself refuses to serve: the bench
   lifts that check on its own instance, to show why.
3. Per width: both overall scores (mean of the task scores, x100) and the difference nested - plain with its
   95% paired bootstrap interval over the queries.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from common import bench_parser, write_result

from mmemb import Embedder
from mmemb.eval.evaluate import load, resolve
from mmemb.eval.runner import EvalSettings, evaluate_task
from mmemb.eval.stats import paired_ci_records
from mmemb.train.config import load_train_config
from mmemb.train.stage1 import train_stage1

RUNS = Path("runs/bench-matryoshka")


def train(name: str, dims: list[int], steps: int) -> Path:
    overrides = [
        "model.init=nano-r1", "data.source=mmeb-mini", "data.limit_per_task=0", "data.variant=none",
        f"loss.matryoshka_dims=[{','.join(map(str, dims))}]", "batch.size=32", "batch.chunk=8",
        f"run.max_steps={steps}", "run.save_every=20", "run.log_every=10", "run.tensorboard=false",
        f"run.output={RUNS / f'{name}-{steps}'}", "optim.lr=5e-5",
    ]  # fmt: skip
    final = RUNS / f"{name}-{steps}" / "final"
    if (final / "embedder_config.json").exists():
        return final
    return train_stage1(load_train_config(None, overrides))


def score(model: Embedder, tasks: dict, widths: list[int], cache: Path) -> dict[int, list[dict]]:
    """width -> per-query records over every task (disc->disc)."""
    out = {}
    fp = model.fingerprint()
    for d in widths:
        rows = []
        for task in tasks.values():
            s = EvalSettings(batch_size=16, dimensions=d, progress=False)
            rows += evaluate_task(task, model, s, cache, fp).per_query
        out[d] = rows
    return out


def main() -> None:
    ap = bench_parser(__doc__, "matryoshka")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--dims", default="32,64,128,256")
    ap.add_argument("--limit", type=int, default=0, help="test queries per task (0: all)")
    args = ap.parse_args()
    dims = [int(x) for x in args.dims.split(",")]
    t0 = time.perf_counter()
    folders = {"plain": train("plain", [], args.steps), "nested": train("nested", dims, args.steps)}
    train_s = time.perf_counter() - t0
    st = resolve("mmeb-mini", None)
    tasks = {}
    for name in st.datasets:
        tasks[name] = load(st, name)
        if args.limit:
            tasks[name].limit(args.limit)
    widths = [*dims, 576]
    records = {}
    for name, folder in folders.items():
        model = Embedder.from_pretrained(folder, quiet=True)
        assert model.config.matryoshka_dims == (dims if name == "nested" else [])
        if name == "plain":  # mmemb refuses its prefixes (not trained); scored here to show the difference
            model.check_dimensions = lambda d, w=model.width: None if d in (None, w) else d
        records[name] = score(model, tasks, widths, RUNS / "cache")
    res: dict = {"model": "nano-r1 + stage 1", "steps": args.steps, "dims": dims, "widths": {}}
    for d in widths:
        ci = paired_ci_records(records["plain"][d], records["nested"][d])
        res["widths"][str(d)] = {"plain": ci["a"], "nested": ci["b"], "nested_minus_plain": ci["diff"],
                                 "ci95": ci["ci95"], "queries": ci["queries"]}  # fmt: skip
    res["seconds"] = {"train": round(train_s, 1), "all": round(time.perf_counter() - t0, 1)}
    res["machine"] = f"{os.cpu_count()} CPUs"
    write_result(res, args.out)


if __name__ == "__main__":
    main()
