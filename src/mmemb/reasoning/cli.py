"""`mmemb reason generate | select | inspect | diagnose` (registered by mmemb.cli)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..config import add_flags, resolve_tree, save_tree, tree_field
from ..runtime import deprecated, quiet_libraries
from ..types import InputError
from .config import ReasonConfig, check_reason, required, saved_path

HELP = "Reasoning paths: generate candidate rationales, select them by counterfactual utility, inspect."
SETTINGS = (
    "Settings: defaults < --config FILE < flags < key=value (reasoning/config.py); the resolved ones are saved "
    "beside the outputs, and `--config` on that file reruns them."
)

# flag -> its key in the reason config, per command (the flags' help and defaults come from the config)
DATA_FLAGS = {
    "--data": "data.source", "--split": "data.split", "--tasks": "data.tasks", "--limit": "data.limit",
    "--skip": "data.skip", "--media-root": "data.media_root",
}  # fmt: skip
SCORE_FLAGS = {
    "--model": "score.model", "--candidates": "data.candidates", "--batch-size": "score.batch_size",
    "--cache": "score.cache",
}  # fmt: skip
FLAGS = {
    "generate": DATA_FLAGS | {"--out": "data.candidates"} | {
        f"--{name.replace('_', '-')}": f"generate.{name}"
        for name in ("teacher", "samples", "temperature", "top_p", "batch_size", "seed", "max_think_tokens",
                     "max_answer_tokens", "base_url", "max_tokens", "concurrency", "timeout", "retries")
    },
    "select": DATA_FLAGS | SCORE_FLAGS | {
        f"--{name.replace('_', '-')}": f"select.{name}"
        for name in ("out", "utility", "rule", "delta", "soft_temperature", "negatives", "loss_temperature", "seed")
    },
    "inspect": DATA_FLAGS | SCORE_FLAGS | {
        "--selection": "inspect.selection", "--n": "inspect.n", "--examples": "inspect.examples",
        "--out": "inspect.out",
    },
    "diagnose": DATA_FLAGS | SCORE_FLAGS | {
        "--no-own": "diagnose.own", "--max-new-tokens": "diagnose.max_new_tokens", "--out": "diagnose.out",
    },
}  # fmt: skip
# what each command cannot run without (key -> flag)
REQUIRED = {
    "generate": {"data.candidates": "--out"},
    "select": {"data.candidates": "--candidates", "select.out": "--out"},
    "inspect": {"data.candidates": "--candidates"},
    "diagnose": {"data.candidates": "--candidates"},
}
COMMANDS = {
    "generate": "K candidate rationales per query, appended to the candidates file; resumes after a kill",
    "select": "score candidates by counterfactual utility; choose; label think/no-think",
    "inspect": "reasoning sensitivity of a model; utilities; kept and rejected examples",
    "diagnose": "what reasoning adds to a model on held-out pairs: hit@1 without reasoning, with the teacher's "
    "rationales (mean, best), with another pair's, with its own; paired intervals; sensitivity",
}
DEPRECATED = {  # old flag -> (new flag, type), kept for one release
    "generate": {"--limit-per-task": "--limit", "--skip-per-task": "--skip", "--k": "--samples"},
    "select": {"--limit-per-task": "--limit", "--skip-per-task": "--skip", "--tau": "--loss-temperature",
               "--temperature": "--soft-temperature"},
    "inspect": {"--limit-per-task": "--limit", "--skip-per-task": "--skip"},
    "diagnose": {"--limit-per-task": "--limit", "--skip-per-task": "--skip"},
}  # fmt: skip


def add_parser(sub) -> None:
    p = sub.add_parser("reason", help=HELP, description=HELP)
    rsub = p.add_subparsers(dest="reason_command", metavar="REASON_COMMAND", required=True)
    for command, text in COMMANDS.items():
        q = rsub.add_parser(command, help=text, description=f"{text}. {SETTINGS}")
        q.add_argument("--config", type=Path, help="a YAML reason config (e.g. a run's saved *_config.yaml)")
        q.add_argument(
            "overrides", nargs="*", help="key=value settings, e.g. select.delta=0.01 data.limit=40"
        )
        add_flags(q, ReasonConfig, FLAGS[command])
        for old, new in DEPRECATED[command].items():
            deprecated(q, old, new, type=type(tree_field(ReasonConfig, FLAGS[command][new]).default))
        q.add_argument("--quiet", action="store_true", help="no progress bars")


def reason_config(args: argparse.Namespace) -> ReasonConfig:
    """The settings of `args.reason_command`: defaults < --config < the flags given < key=value overrides."""
    cfg = resolve_tree(
        ReasonConfig, check_reason, args.config, args, FLAGS[args.reason_command], args.overrides
    )
    required(cfg, args.reason_command, REQUIRED[args.reason_command])
    return cfg


def cmd_reason(args: argparse.Namespace) -> int:
    commands = {
        "generate": cmd_generate,
        "select": cmd_select,
        "inspect": cmd_inspect,
        "diagnose": cmd_diagnose,
    }
    cfg = reason_config(args)  # every key checked before any model loads
    quiet_libraries()
    return commands[args.reason_command](cfg, args.quiet)


def save_config(cfg: ReasonConfig, command: str) -> None:
    path = saved_path(cfg, command)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_tree(cfg, path)


def load_pairs(cfg: ReasonConfig):
    from ..data.pairs import read_pairs

    d = cfg.data
    pairs = read_pairs(
        d.source,
        split=d.split,
        tasks=d.task_list(),
        limit_per_task=d.limit,
        media_root=Path(d.media_root) if d.media_root else None,
        skip_per_task=d.skip,
    )
    if not pairs:
        raise InputError(f"data.source {d.source}: no pairs (split {d.split!r}, tasks {d.task_list()})")
    return pairs


def make_teacher(cfg: ReasonConfig):
    from .teachers import FileTeacher, HintTeacher, LocalTeacher

    g = cfg.generate
    spec = g.teacher
    kind, _, rest = spec.partition(":")
    sampling = {"temperature": g.temperature, "top_p": g.top_p}
    if spec == "hints":
        return HintTeacher()
    if spec == "nano" or kind == "local":
        from ..embedder import Embedder

        model = "nano" if spec == "nano" else rest
        return LocalTeacher(
            Embedder.from_pretrained(model),
            name=f"local:{model}",
            **sampling,
            max_think_tokens=g.max_think_tokens,
            max_answer_tokens=g.max_answer_tokens,
            batch_size=g.batch_size,
        )
    if kind == "openai" and rest:
        from .openai_teacher import OpenAITeacher

        return OpenAITeacher(
            g.base_url,
            rest,
            **sampling,
            max_tokens=g.max_tokens,
            concurrency=g.concurrency,
            timeout=g.timeout,
            retries=g.retries,
        )
    if kind == "file" and rest:
        return FileTeacher(Path(rest))
    choices = tree_field(ReasonConfig, "generate.teacher").metadata["help"]
    raise InputError(f"--teacher (generate.teacher) {spec!r}: expected {choices}")


def cmd_generate(cfg: ReasonConfig, quiet: bool) -> int:
    from .candidates import generate_candidates
    from .teachers import FileTeacher

    out = Path(cfg.data.candidates)
    pairs = load_pairs(cfg)
    teacher = make_teacher(cfg)
    if isinstance(teacher, FileTeacher):
        unknown = sorted(teacher.ids() - {p.id for p in pairs})
        if unknown:
            raise InputError(
                f"{teacher.path}: {len(unknown)} query id(s) not in --data {cfg.data.source} (first: "
                f"{unknown[:3]}); import rationales for the same dataset"
            )
    save_config(cfg, "generate")
    report = generate_candidates(
        pairs,
        teacher,
        cfg.generate.samples,
        out,
        batch_size=cfg.generate.batch_size,
        seed=cfg.generate.seed,
        progress=not quiet,
    )
    rate = 60 * (report.written + report.failed) / report.seconds if report.seconds else 0.0
    why = "the hints say nothing more" if cfg.generate.teacher == "hints" else "not in the teacher's file"
    print(
        f"mmemb reason generate: {report.written} written ({report.malformed} malformed), "
        f"{report.existing} already there, {report.failed} failed, {report.skipped} skipped ({why}); "
        f"{report.seconds:.0f}s ({rate:.1f} rationales/min) -> {out}",
        file=sys.stderr,
    )
    if report.failed:
        for e in report.errors:
            print(f"  failed: {e}", file=sys.stderr)
        print("mmemb reason generate: rerun the same command to retry the failed requests", file=sys.stderr)
        return 1
    return 0


def _scored_pairs(cfg: ReasonConfig):
    """select / inspect / diagnose: the pairs (their candidates checked before the model loads), the scorer
    embedder and the cache folder."""
    from ..embedder import Embedder
    from ..paths import embeddings_dir
    from .candidates import load_for

    pairs = load_pairs(cfg)
    load_for(pairs, Path(cfg.data.candidates))
    cache = Path(cfg.score.cache) if cfg.score.cache else embeddings_dir()
    return pairs, Embedder.from_pretrained(cfg.score.model), cache


def cmd_select(cfg: ReasonConfig, quiet: bool) -> int:
    from .scoring import ScoreSettings
    from .select import format_summary, run_select

    s = cfg.select
    pairs, embedder, cache = _scored_pairs(cfg)
    settings = ScoreSettings(
        negatives=s.negatives,
        tau=s.loss_temperature,
        batch_size=cfg.score.batch_size,
        seed=s.seed,
        progress=not quiet,
    )
    summary = run_select(
        embedder,
        pairs,
        Path(cfg.data.candidates),
        Path(s.out),
        cache,
        utility=s.utility,
        rule=s.rule,
        delta=s.delta,
        temperature=s.soft_temperature,
        settings=settings,
    )
    save_config(cfg, "select")
    print(format_summary(summary))
    print(
        f"mmemb reason select: outputs in {s.out}/ (selection.jsonl, summary.json, utilities.png, "
        "select_config.yaml)",
        file=sys.stderr,
    )
    return 0


def _scored_report(cfg: ReasonConfig, command: str, quiet: bool, run, text, **kwargs) -> int:
    """inspect / diagnose: `run` over the pairs and their candidates; print `text(report)` and, with an out
    folder, write OUT/<command>.json (atomically) and the settings."""
    from ..io import atomic_write
    from .scoring import ScoreSettings

    pairs, embedder, cache = _scored_pairs(cfg)
    settings = ScoreSettings(batch_size=cfg.score.batch_size, progress=not quiet)
    report = run(embedder, pairs, Path(cfg.data.candidates), cache, settings=settings, **kwargs)
    print(text(report))
    out = getattr(cfg, command).out
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        atomic_write(Path(out) / f"{command}.json", json.dumps(report, indent=2) + "\n")
        save_config(cfg, command)
    return 0


def cmd_inspect(cfg: ReasonConfig, quiet: bool) -> int:
    from .sensitivity import format_inspect, run_inspect

    i = cfg.inspect
    selection = Path(i.selection) if i.selection else None
    return _scored_report(cfg, "inspect", quiet, run_inspect, format_inspect, selection_path=selection, n=i.n,
                          examples=i.examples)  # fmt: skip


def cmd_diagnose(cfg: ReasonConfig, quiet: bool) -> int:
    from .diagnose import format_diagnose, run_diagnose

    d = cfg.diagnose
    return _scored_report(cfg, "diagnose", quiet, run_diagnose, format_diagnose, own=d.own,
                          max_new_tokens=d.max_new_tokens)  # fmt: skip
