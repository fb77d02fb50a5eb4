"""The λ sweep: one policy per price of reasoning, each scored on the evaluation split; the accuracy /
invocation / latency curve as JSON, a Markdown table and a PNG, with per-task invocation ratios.

Because the embedder is frozen during policy training (policy.py, departure 1), an adaptive query's vector is
its nothink vector or its think vector (tested: `encode(mode="adaptive")` equals the fixed mode of the action
taken). So the evaluation embeds the test queries once per action (through the evaluation cache) and scores
every policy by picking, per query, the result of the action it takes:

    score(policy)    = mean over tasks of the mean per-query score of the chosen actions
    latency(query)   = its action's latency: nothink, or think (adaptive decides inside that one prefill)
    invocation       = share of queries whose action reasons

Reference rows: never (always no-think), always (think with each budget), and the oracle (the best action per
query, picked with the labels: an upper bound, not a policy).
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..cache import CachedEncoder
from ..data.tasks import load_task
from ..eval.evaluate import resolve
from ..eval.metrics import group_means, meta_task
from ..eval.runner import EvalSettings, evaluate_task
from ..io import atomic_json, atomic_write
from ..paths import embeddings_dir
from .config import PolicyTrainConfig, save_train_config
from .policy import fresh_head, load_inputs, per_task_invocation, train_head


def eval_outcomes(embedder, budgets, tasks, data_root, cache_root, batch_size, limit, progress) -> dict:
    """Per test query: task, disc features (D,), and per action its score, latency and tokens."""
    st = resolve(tasks, data_root)
    fp = embedder.fingerprint()
    base = EvalSettings(qry_mode="nothink", tgt_mode="nothink", batch_size=batch_size, progress=progress)
    rows: dict[str, list] = {"task": [], "meta": [], "features": [], "score": [], "latency": [], "tokens": []}
    for name, info in st.datasets.items():
        task = load_task(info, st.root, "test", st.formats[name])
        if limit:
            task.limit(limit)
        per_action = []
        for a, cap in enumerate(budgets):
            s = base if a == 0 else replace(base, qry_mode="think", max_new_tokens=cap)
            per_action.append(evaluate_task(task, embedder, s, cache_root, fp).per_query)
        disc = CachedEncoder(embedder, cache_root, batch_size, progress=progress, fingerprint=fp)
        disc = disc.encode(task.items, task.queries, "disc")
        for row, q in enumerate(task.queries):
            rows["task"].append(name)
            rows["meta"].append(meta_task(info.modality, info.meta_task))
            rows["features"].append(disc.vectors[q])
            rows["score"].append([r[row]["score"] for r in per_action])
            rows["latency"].append([r[row]["latency_s"] for r in per_action])
            rows["tokens"].append([r[row]["gen_tokens"] for r in per_action])
        if progress:
            print(f"mmemb sweep: {name}: {len(task.queries)} test queries x {len(budgets)} actions",
                  file=sys.stderr)  # fmt: skip
    return {k: np.array(v) if k not in ("task", "meta") else v for k, v in rows.items()}


def evaluate_actions(test: dict, actions: np.ndarray) -> dict:
    """Score, invocation, latency of one choice of action per test query (module docstring)."""
    n = len(actions)
    rows = np.arange(n)
    score = test["score"][rows, actions]  # (n,)
    latency = test["latency"][rows, actions]  # (n,): one prefill decides and embeds or decodes on
    tasks = sorted(set(test["task"]))
    task_arr = np.array(test["task"])
    by_task = {t: float(score[task_arr == t].mean() * 100) for t in tasks}
    return {
        "score": float(np.mean(list(by_task.values()))),
        "invocation": float((actions > 0).mean()),
        "median_latency_s": float(np.median(latency)),
        "mean_latency_s": float(latency.mean()),
        "mean_think_tokens": float(test["tokens"][rows, actions].mean()),
        "score_by_task": by_task,
        "score_by_meta_task": group_means(by_task, dict(zip(test["task"], test["meta"], strict=True))),
        "invocation_by_task": per_task_invocation(test["task"], actions),
    }


def run_sweep(
    cfg: PolicyTrainConfig,
    lams: list[float],
    out: Path,
    tasks: str = "mmeb-mini",
    data_root: Path | None = None,
    cache_root: Path | None = None,
    limit: int | None = None,
    log: bool = True,
) -> dict:
    cache_root = cache_root or embeddings_dir()
    embedder, pairs, outcomes, labels = load_inputs(cfg, cache_root, progress=log)
    budgets = cfg.policy.budgets
    test = eval_outcomes(embedder, budgets, tasks, data_root, cache_root, cfg.run.batch_size, limit, log)
    n = len(test["task"])
    # the fixed-mode rows: "always" for the last budget is the classic always-think
    always = {f"always think<={b}": evaluate_actions(test, np.full(n, a)) for a, b in enumerate(budgets) if a}
    # oracle: the best action per query (ties -> the cheaper action), an upper bound that uses the labels
    oracle = np.argmax(test["score"] - 1e-9 * np.arange(len(budgets)), axis=1)
    rows = {"never (nothink)": evaluate_actions(test, np.zeros(n, dtype=int))} | always
    rows["oracle (upper bound)"] = evaluate_actions(test, oracle)
    heads = out / "heads"
    heads.mkdir(parents=True, exist_ok=True)
    curve = []
    for lam in lams:
        fresh_head(embedder, budgets)
        c = replace(cfg, policy=replace(cfg.policy, lam=lam))
        history = train_head(
            embedder.policy,
            outcomes.features,
            outcomes.reward(lam, c.policy.cost, c.policy.format_weight),
            c,
            labels,
        )
        with torch.no_grad():
            actions = embedder.policy(torch.from_numpy(test["features"]).float()).argmax(-1).numpy()
        r = evaluate_actions(test, actions) | {
            "lam": lam,
            "train_invocation": history[-1]["invocation"],
            "head": f"heads/lam-{lam:g}.safetensors",
        }
        embedder.policy.save(heads)
        (heads / "policy.safetensors").replace(heads / f"lam-{lam:g}.safetensors")
        curve.append(r)
        if log:
            print(f"mmemb sweep: λ={lam:g} score {r['score']:.1f} invocation {r['invocation']:.0%} "
                  f"median latency {r['median_latency_s'] * 1000:.0f} ms", file=sys.stderr)  # fmt: skip
    best = max(curve, key=lambda r: (r["score"], -r["invocation"]))
    result = {
        "model": cfg.model.init,
        "tasks": tasks,
        "test_queries": n,
        "train_pairs": len(pairs),
        "budgets": budgets,
        "cost": cfg.policy.cost,
        "format_weight": cfg.policy.format_weight,
        "fixed": rows,
        "curve": curve,
        "best": {"lam": best["lam"], "score": best["score"], "invocation": best["invocation"]},
    }
    out.mkdir(parents=True, exist_ok=True)
    save_train_config(cfg, out / "config.yaml")
    atomic_json(out / "sweep.json", result)
    atomic_write(out / "sweep.md", format_table(result) + "\n")
    plot_sweep(result, out / "sweep.png")
    return result


def format_table(result: dict) -> str:
    always = [r for k, r in result["fixed"].items() if k.startswith("always")][-1]
    lines = [
        "| policy | score | invocation | median latency (ms) | vs always-think time |",
        "|---|---:|---:|---:|---:|",
    ]
    rows = list(result["fixed"].items()) + [(f"adaptive λ={r['lam']:g}", r) for r in result["curve"]]
    for name, r in rows:
        ratio = r["mean_latency_s"] / always["mean_latency_s"] if always["mean_latency_s"] else float("nan")
        lines.append(
            f"| {name} | {r['score']:.1f} | {r['invocation']:.0%} | {r['median_latency_s'] * 1000:.0f} "
            f"| {ratio:.2f} |"
        )
    tasks = sorted(result["curve"][0]["invocation_by_task"]) if result["curve"] else []
    if tasks:
        lines += ["", "Invocation ratio per task:", "", "| λ | " + " | ".join(tasks) + " |",
                  "|---|" + "---:|" * len(tasks)]  # fmt: skip
        for r in result["curve"]:
            cells = " | ".join(f"{r['invocation_by_task'][t]:.0%}" for t in tasks)
            lines.append(f"| {r['lam']:g} | {cells} |")
    return "\n".join(lines)


def plot_sweep(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    curve = sorted(result["curve"], key=lambda r: r["invocation"])
    for ax, x, label in ((a1, "invocation", "invocation ratio"), (a2, "mean_latency_s", "mean latency (s)")):
        ax.plot(
            [r[x] for r in curve], [r["score"] for r in curve], "o-", label="adaptive (λ sweep)", zorder=3
        )
        spots: dict[tuple, list[str]] = {}  # λs that land on the same point share one label
        for r in curve:
            spots.setdefault((r[x], r["score"]), []).append(f"{r['lam']:g}")
        for (px, py), names in spots.items():
            ax.annotate(
                "λ=" + ",".join(names), (px, py), fontsize=7, xytext=(4, 4), textcoords="offset points"
            )
        for (name, r), marker in zip(result["fixed"].items(), "s^vD<>", strict=False):
            ax.plot([r[x]], [r["score"]], marker, label=name, markersize=10, markerfacecolor="none", mew=1.5)
        ax.set_xlabel(label)
        ax.set_ylabel("score (mean over tasks)")
        ax.grid(alpha=0.3)
    a1.legend(fontsize=7)
    fig.suptitle(f"{result['model']} on {result['tasks']}: accuracy vs reasoning", fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)
