"""The FAISS index (issue 22): build time, query latency and HNSW recall@10 against exact search.

    python benchmarks/bench_index.py [--model nano-r1] [--sizes 10000,100000,1000000] [--hnsw-max 100000]

1. mmeb-mini: its real unique test items (text, images, frames, pages; ~2,000) embedded with --model in
   disc mode; every item queries both indexes: HNSW's recall@10 against the flat (exact) top 10.
2. scaling: random unit vectors (576-d, nano's width) at each size: build seconds, and per-query latency
   (one query a call, median and p95 of 200) for flat and, up to --hnsw-max, HNSW (M=32, efSearch=128),
   with HNSW's recall@10 on 200 random queries. Random vectors are the hard case for HNSW (no cluster
   structure), so its recall here is a floor.
"""

from __future__ import annotations

import os
import time

import numpy as np
from common import bench_parser, write_result


def unit(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def recall(exact: np.ndarray, approx: np.ndarray) -> float:
    """Mean over queries of |approx top-k ∩ exact top-k| / k. (Q, k) row ids each."""
    return float(np.mean([len(set(a) & set(e)) / len(e) for a, e in zip(approx, exact, strict=True)]))


def indexes(vectors: np.ndarray, hnsw: bool) -> dict:
    import faiss

    from mmemb.index import EF_SEARCH, HNSW_M

    out = {}
    dim = vectors.shape[1]
    kinds = {"flat": lambda: faiss.IndexFlatIP(dim)}
    if hnsw:
        kinds["hnsw"] = lambda: faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
    for name, make in kinds.items():
        index = make()
        t0 = time.perf_counter()
        index.add(vectors)
        out[name] = {"index": index, "build_s": time.perf_counter() - t0}
        if name == "hnsw":
            index.hnsw.efSearch = EF_SEARCH
    return out


def latency(index, queries: np.ndarray) -> dict:
    times = []
    for q in queries:
        t0 = time.perf_counter()
        index.search(q[None], 10)
        times.append(time.perf_counter() - t0)
    return {
        "median_ms": round(1000 * float(np.median(times)), 3),
        "p95_ms": round(1000 * float(np.percentile(times, 95)), 3),
    }


def main() -> None:
    ap = bench_parser(__doc__, "index", model="nano-r1")
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--hnsw-max", type=int, default=100_000)
    args = ap.parse_args()
    import faiss

    from mmemb import Embedder
    from mmemb.eval.evaluate import load, resolve

    res: dict = {"model": args.model, "faiss": faiss.__version__, "threads": faiss.omp_get_max_threads()}
    st = resolve("mmeb-mini", None)
    items = {}
    for name in st.datasets:
        items |= load(st, name).items
    emb = Embedder.from_pretrained(args.model)
    vectors = emb.encode(list(items.values()), mode="disc", batch_size=16).vectors  # (N, D)
    built = indexes(vectors, hnsw=True)
    exact = built["flat"]["index"].search(vectors, 10)[1]
    approx = built["hnsw"]["index"].search(vectors, 10)[1]
    res["mmeb_mini"] = {"vectors": len(vectors), "hnsw_recall_at_10": round(recall(exact, approx), 4)}
    del emb

    res["scaling"] = {}
    for n in (int(s) for s in args.sizes.split(",")):
        base = unit(n, 576, seed=0)
        queries = unit(200, 576, seed=1)
        built = indexes(base, hnsw=n <= args.hnsw_max)
        row = {}
        for name, b in built.items():
            row[name] = {"build_s": round(b["build_s"], 2)} | latency(b["index"], queries)
        if "hnsw" in built:
            e = built["flat"]["index"].search(queries, 10)[1]
            a = built["hnsw"]["index"].search(queries, 10)[1]
            row["hnsw"]["recall_at_10"] = round(recall(e, a), 4)
        else:
            row["hnsw"] = f"not built (over --hnsw-max {args.hnsw_max})"
        res["scaling"][str(n)] = row
        print(n, row, flush=True)
        del base, built
    res["machine"] = f"{os.cpu_count()} CPUs"
    write_result(res, args.out)


if __name__ == "__main__":
    main()
