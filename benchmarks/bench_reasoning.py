"""Reasoning paths: how fast nano writes rationales, and how fast selection runs once embeddings exist.

    python benchmarks/bench_reasoning.py [--queries 32] [--pairs 2500] [--out benchmarks/results/reasoning.json]

1. Teacher: the default recipe (nano + privileged hints, `mmemb reason generate --teacher nano`) on real
   mmeb-mini train queries, batched 16 against one at a time, measured side by side in one run.
   Reported as rationales per minute and the batched / single ratio.
2. Selection: `reason select` over pairs x 4 candidates (10,000 by default) whose teacher-forced embeddings
   are already in the cache (a first run fills it with random unit vectors through a stand-in embedder).
   The second run is timed end to end: cache load, utilities, negatives mining, selection, files and plot.
   Goal: under a minute.
"""

from __future__ import annotations

import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import bench_parser, write_result

from mmemb import Embedder
from mmemb.config import EmbedderConfig
from mmemb.data.pairs import Pair, read_pairs
from mmemb.reasoning.candidates import generate_candidates
from mmemb.reasoning.select import run_select
from mmemb.reasoning.teachers import LocalTeacher, Reply
from mmemb.types import Embeddings, Sample


def bench_teacher(n: int) -> dict:
    pairs = [p for p in read_pairs("mmeb-mini", tasks=["Clipart-CLS"]) if p.hint][:n]
    teacher = LocalTeacher(Embedder.from_pretrained("nano"), batch_size=16)
    teacher.stop_ids()
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, batch, subset in (("batched16", 16, pairs), ("single", 1, pairs[: max(4, n // 4)])):
            teacher.batch_size = batch
            t = time.perf_counter()
            rep = generate_candidates(
                subset, teacher, 1, Path(tmp) / f"{label}.jsonl", batch_size=batch, progress=False
            )
            secs = time.perf_counter() - t
            out[label] = {
                "rationales": rep.written,
                "malformed": rep.malformed,
                "seconds": round(secs, 2),
                "per_minute": round(60 * rep.written / secs, 1),
            }
    out["batched_over_single"] = round(out["batched16"]["per_minute"] / out["single"]["per_minute"], 2)
    return out


class RandomEmbedder:
    """Stands in for a model: random unit vectors (the cache is what is being measured, not the model)."""

    def __init__(self, dim: int = 576) -> None:
        self.config, self.dim, self.calls = EmbedderConfig(), dim, 0
        self.rng = np.random.default_rng(0)

    def fingerprint(self) -> str:
        return "random-bench"

    def encode(self, inputs, mode="gen", completions=None, batch_size=16, progress=False) -> Embeddings:
        self.calls += 1
        v = self.rng.standard_normal((len(inputs), self.dim)).astype(np.float32)
        n = len(inputs)
        return Embeddings(v / np.linalg.norm(v, axis=1, keepdims=True), mode, texts=list(completions or [""] * n),
                          gen_tokens=[0] * n, gen_emb_found=[True] * n, seconds=[0.0] * n, reasoned=[False] * n)  # fmt: skip


class TextTeacher:
    name = "bench"

    def generate(self, requests):
        return [
            Reply(text=f"<think>query {r.pair_id} idea {r.k}</think><answer>answer {r.k}</answer>")
            for r in requests
        ]


def bench_selection(n_pairs: int, k: int = 4) -> dict:
    tasks = [f"Task{t}" for t in range(8)]
    pairs = [
        Pair(
            id=f"{tasks[i % 8]}/train/{i}",
            task=tasks[i % 8],
            query=Sample(id=str(i), text=f"query {i}", instruction="Find it"),
            target=Sample(id=f"t{i}", text=f"target {i % 500}"),
        )
        for i in range(n_pairs)
    ]
    emb = RandomEmbedder()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate_candidates(pairs, TextTeacher(), k, tmp / "c.jsonl", batch_size=1024, progress=False)
        run_select(emb, pairs, tmp / "c.jsonl", tmp / "cold", tmp / "cache")  # fills the cache
        calls = emb.calls
        t = time.perf_counter()
        summary = run_select(emb, pairs, tmp / "c.jsonl", tmp / "warm", tmp / "cache")
        secs = time.perf_counter() - t
        assert emb.calls == calls and summary["embedded_now"] == 0, "the warm run embedded something"
    return {"pairs": n_pairs, "candidates": n_pairs * k, "seconds": round(secs, 2), "goal_seconds": 60}


def main() -> None:
    ap = bench_parser(__doc__, "reasoning")
    ap.add_argument("--queries", type=int, default=32)
    ap.add_argument("--pairs", type=int, default=2500)
    args = ap.parse_args()
    result = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "command": "python benchmarks/bench_reasoning.py",
        "teacher_nano": bench_teacher(args.queries),
        "selection": bench_selection(args.pairs),
    }
    write_result(result, args.out)


if __name__ == "__main__":
    main()
