"""`mmemb eval`: resolve the tasks, run each requested mode pair, write scores, report, analysis and plot.

runs:     the main (qry_mode, tgt_mode); with --analysis oracle also disc->disc and gen->gen;
          with --analysis pass@k also k sampled gen->gen runs
outputs:  <out>/scores.<run>.json        per-dataset metrics in the published MMEB layout
          <out>/per_query.<run>.jsonl    score, gold rank, latency, tokens, reasoned, per query
          <out>/report.txt               meta-task / modality / overall tables, runs side by side
          <out>/analysis.json            per task: score, invocation ratio, median latency (+ oracle, pass@k)
          <out>/plot.png                 score by meta-task, one bar per run
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from ..data import hub, mmeb_v2
from ..data.registry import MMEB_V2, DatasetInfo, suite
from ..data.tasks import Task, TaskError, load_task
from ..distributed import ONE, Ranks
from ..embedder import Embedder
from ..io import atomic_json, atomic_write
from ..paths import MINI_SEED, embeddings_dir, mini_root, pages_dir
from ..types import InputError
from . import analysis
from .metrics import group_means, meta_task
from .plot import plot_meta_tasks
from .report import format_report, load_scores, summarize, write_scores
from .runner import EvalSettings, TaskResult, check_modes, evaluate_task

MMEB_V2_HOWTO = """MMEB-V2 data is not present{where}. mmemb does not download it. To evaluate on MMEB-V2:
  1. media (images, video frames): clone the hub dataset TIGER-Lab/MMEB-V2 and unpack its archives as
     VLM2Vec's experiments/public/data/download_data.sh does (README: "MMEB-V2");
  2. annotations: `hf download REPO --repo-type dataset` for each hub dataset VLM2Vec reads
     (`mmemb data check-mmeb-v2 --data-root <root>` lists them, with the command for each missing one);
  3. run: mmemb eval --model MODEL --tasks mmeb-v2 --data-root <root> [--hub-cache <hf cache>]
Datasets absent from <root> or the hub cache are reported as missing, never averaged as if present."""


@dataclass
class Suite:
    name: str
    root: Path
    datasets: dict[str, DatasetInfo]
    formats: dict[str, str]  # dataset -> "rows" | "beir" (a tasks.json suite) | "mmeb-v2" (the real layout)
    tasks_json: list[dict] | None = None
    where: mmeb_v2.Where | None = None


def resolve(tasks: str, data_root: Path | None, hub_cache: Path | None = None) -> Suite:
    """'mmeb-mini' (built on first use from Debian data), 'mmeb-v2', or dataset names (comma-separated)."""
    if tasks == "mmeb-mini":
        from ..data.mini import ensure_mini

        root = data_root or mini_root()
        if data_root and not (root / "tasks.json").is_file():
            raise InputError(
                f"{root}: no tasks.json; build mmeb-mini with: mmemb data build-mini --out {root}"
            )
        if not data_root:
            ensure_mini(root, seed=MINI_SEED)
        entries = json.loads((root / "tasks.json").read_text())
        return Suite(
            "mmeb-mini",
            root,
            suite("mmeb-mini", root / "tasks.json"),
            {e["name"]: "beir" if e.get("format") == "beir" else "rows" for e in entries},
            entries,
        )
    names = list(MMEB_V2) if tasks == "mmeb-v2" else [t.strip() for t in tasks.split(",") if t.strip()]
    unknown = [n for n in names if n not in MMEB_V2]
    if unknown:
        raise InputError(f"unknown task(s) {unknown}; use mmeb-mini, mmeb-v2 or MMEB-V2 dataset names")
    if data_root is None or not data_root.is_dir():
        raise InputError(
            MMEB_V2_HOWTO.format(where=f" under {data_root}" if data_root else " (no --data-root)")
        )
    if data_root.name in ("image-tasks", "video-tasks", "visdoc-tasks", "frames"):
        raise InputError(
            f"--data-root {data_root}: give the MMEB-V2 folder that holds image-tasks/, video-tasks/ and "
            f"visdoc-tasks/ (the clone of TIGER-Lab/MMEB-V2), not one of its sub-folders"
        )
    if "snapshots" in data_root.parts or data_root.name.startswith("datasets--"):
        raise InputError(
            f"--data-root {data_root} looks like a Hugging Face cache snapshot: annotation downloads go to "
            f"--hub-cache (the cache root, e.g. ~/.cache/huggingface/hub); --data-root is the MMEB-V2 media clone"
        )
    where = mmeb_v2.Where(data_root, hub_cache or hub.default_cache(), pages_dir())
    return Suite(
        "mmeb-v2", data_root, {n: MMEB_V2[n] for n in names}, dict.fromkeys(names, "mmeb-v2"), where=where
    )


def load(st: Suite, name: str) -> Task:
    if st.formats[name] == "mmeb-v2":
        return mmeb_v2.load_task(name, st.where)
    return load_task(st.datasets[name], st.root, "test", st.formats[name])


def run_specs(
    main: EvalSettings, analyses: list[str], samples: int, temperature: float
) -> dict[str, EvalSettings]:
    runs = {f"{main.qry_mode}-{main.tgt_mode}" + (f"-d{main.dimensions}" if main.dimensions else ""): main}
    if "oracle" in analyses:
        for m in ("disc", "gen"):
            runs.setdefault(f"{m}-{m}", replace(main, qry_mode=m, tgt_mode=m))
    if "pass@k" in analyses:
        for s in range(samples):
            runs[f"gen-gen-sample{s}"] = replace(
                main, qry_mode="gen", tgt_mode="gen", temperature=temperature, sample=s
            )
    return runs


def default_target_mode(qry_mode: str, modes: list[str]) -> str:
    """Candidates in disc for a disc query; else in nothink (the gen space without reasoning) where the model
    has it, or in the query's own mode (UME-R1 embeds both sides in gen)."""
    if qry_mode == "disc":
        return "disc"
    return "nothink" if "nothink" in modes else qry_mode


def evaluate(
    model: str | Embedder,
    tasks: str,
    out: Path,
    settings: EvalSettings,
    data_root: Path | None = None,
    hub_cache: Path | None = None,
    analyses: tuple[str, ...] = (),
    samples: int = 4,
    temperature: float = 0.7,
    cache_root: Path | None = None,
    limit: int | None = None,
    ranks: Ranks = ONE,
    name: str | None = None,
) -> dict:
    """Run every requested evaluation; returns {"runs": {run: {task: TaskResult}}, "errors": {...}, ...}.
    ranks: under torchrun, each rank embeds a disjoint slice of every task's missing items into the shared
    cache (cache.CachedEncoder), every rank scores, and rank 0 alone writes `out` (the others return None
    for "out"). name: the model's name in the outputs (default: `model` when it is a name)."""
    started = time.perf_counter()
    st = resolve(tasks, data_root, hub_cache)
    embedder = Embedder.from_pretrained(model) if isinstance(model, (str, Path)) else model
    name = name or str(model)
    if not settings.tgt_mode:
        settings = replace(settings, tgt_mode=default_target_mode(settings.qry_mode, embedder.profile.modes))
    runs = run_specs(settings, list(analyses), samples, temperature)
    for s in runs.values():
        check_modes(embedder, s)
    if settings.dimensions:  # before any embedding: a width the model was trained at
        embedder.check_dimensions(settings.dimensions)
    fingerprint = embedder.fingerprint()
    cache_root = cache_root or embeddings_dir()
    loaded, errors, missing = {}, {}, []
    for name in st.datasets:
        try:
            t0 = time.perf_counter()
            loaded[name] = load(st, name)
            if st.name == "mmeb-v2":  # reading (and hashing every media file) can take a while at full size
                print(
                    f"mmemb eval: {name}: {len(loaded[name].queries)} queries, "
                    f"{len(loaded[name].candidate_keys())} candidates ({time.perf_counter() - t0:.1f}s)",
                    file=sys.stderr,
                )
            if limit:
                loaded[name].limit(limit)
        except mmeb_v2.Missing as e:  # not downloaded: one short line here, the whole story in errors.json
            errors[name] = str(e)
            missing.append(name)
            print(f"mmemb eval: {name}: not downloaded, skipped", file=sys.stderr)
        except TaskError as e:
            errors[name] = str(e)
            print(f"mmemb eval: {name}: skipped: {e}", file=sys.stderr)
    if missing:
        print(
            f"mmemb eval: {len(missing)} of {len(st.datasets)} datasets are not downloaded (errors.json says what "
            f"is missing; `mmemb data check-mmeb-v2 --data-root {st.root} --hub-cache {st.where.hub_cache}` "
            f"gives the command for each)",
            file=sys.stderr,
        )
    if not loaded and st.name == "mmeb-v2":
        raise InputError(
            f"no MMEB-V2 dataset could be read under {st.root} and {st.where.hub_cache}; "
            f"see what is missing with: mmemb data check-mmeb-v2 --data-root {st.root} "
            f"--hub-cache {st.where.hub_cache}"
        )
    results: dict[str, dict[str, TaskResult]] = {}
    writes = ranks.rank == 0
    if writes:
        out.mkdir(parents=True, exist_ok=True)
    for run, s in runs.items():
        results[run] = {}
        for name, task in loaded.items():
            try:
                r = evaluate_task(task, embedder, s, cache_root, fingerprint, ranks)
            except InputError as e:
                errors[name] = str(e)
                print(f"mmemb eval: {name}: failed: {e}", file=sys.stderr)
                continue
            results[run][name] = r
            print(
                f"[{run}] {name:<22} {r.metrics[st.datasets[name].metric] * 100:6.1f} "
                f"({st.datasets[name].metric})  unique/total items {r.unique_items}/{r.total_items}  "
                f"embedded now {r.embedded_now}  {r.seconds:.1f}s",
                file=sys.stderr,
            )
        if not writes:
            continue
        write_scores(
            out / f"scores.{run}.json",
            name,
            st.name,
            {n: r.metrics for n, r in results[run].items()},
            st.tasks_json,
            {
                "run": run,
                "fingerprint": fingerprint,
                "qry_mode": s.qry_mode,
                "tgt_mode": s.tgt_mode,
                "errors": errors,
                **({"mmeb_v2": mmeb_v2.provenance(list(loaded), st.where)} if st.where else {}),
            },
        )
        _write_jsonl(out / f"per_query.{run}.jsonl", [q for r in results[run].values() for q in r.per_query])
    summary = _analysis(results, analyses, samples, st)
    if not writes:
        return {"runs": results, "errors": errors, "missing": missing, "analysis": summary, "report": "",
                "out": None, "seconds": time.perf_counter() - started}  # fmt: skip
    atomic_json(out / "analysis.json", summary)
    atomic_json(out / "errors.json", errors)
    report = format_report([summarize(load_scores(out / f"scores.{run}.json")) for run in runs])
    atomic_write(out / "report.txt", report + "\n")
    plot_meta_tasks(_meta_table(summary, st), out / "plot.png", f"{name} on {st.name}")
    return {
        "runs": results,
        "errors": errors,
        "missing": missing,
        "analysis": summary,
        "report": report,
        "out": out,
        "seconds": time.perf_counter() - started,
    }


def _analysis(results, analyses, samples, st: Suite) -> dict:
    series = {
        run: [q for r in res.values() for q in r.per_query]
        for run, res in results.items()
        if "sample" not in run
    }
    if "oracle" in analyses and "disc-disc" in series and "gen-gen" in series:
        series["oracle (upper bound, uses labels)"] = analysis.oracle(
            {"disc": series["disc-disc"], "gen": series["gen-gen"]}
        )
    if "pass@k" in analyses:
        sampled = [
            [q for r in results[f"gen-gen-sample{s}"].values() for q in r.per_query] for s in range(samples)
        ]
        series[f"gen pass@{samples}"] = analysis.pass_at_k(sampled)
    return {name: analysis.per_task(recs) for name, recs in series.items()}


def _meta_table(summary: dict, st: Suite) -> dict[str, dict[str, float]]:
    group_of = {name: meta_task(info.modality, info.meta_task) for name, info in st.datasets.items()}
    return {
        run: group_means({t: stats["score"] for t, stats in per_task.items()}, group_of)
        for run, per_task in summary.items()
    }


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write(path, "".join(json.dumps(r) + "\n" for r in rows))
