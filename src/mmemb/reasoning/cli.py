"""`mmemb reason generate | select | inspect | diagnose` (registered by mmemb.cli)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..runtime import deprecated
from ..types import InputError
from .scoring import UTILITIES

HELP = "Reasoning paths: generate candidate rationales, select them by counterfactual utility, inspect."

TEACHERS = (
    "hints (rationales written from the privileged hints, no model) | nano | local:MODEL (a model run "
    "here: 'nano', an mmemb folder, a Qwen-VL folder or hub id) | "
    "openai:MODEL (an OpenAI-compatible server at --base-url, e.g. vLLM) | file:PATH (import rationales: "
    "a candidates file or UME-R1 SFT JSON)"
)


def add_parser(sub) -> None:
    p = sub.add_parser("reason", help=HELP, description=HELP)
    rsub = p.add_subparsers(dest="reason_command", metavar="REASON_COMMAND", required=True)

    def data_args(q: argparse.ArgumentParser) -> None:
        q.add_argument(
            "--data",
            default="mmeb-mini",
            help="training pairs: mmeb-mini, a mini-layout folder, an MMEB-train file (.jsonl/.parquet) or "
            "UME-R1 SFT JSON",
        )
        q.add_argument("--split", default="train")
        q.add_argument("--tasks", default="", help="comma-separated task names (default: all)")
        q.add_argument(
            "--limit", type=int, default=0, help="at most N pairs per task, hash-sampled (0 = all)"
        )
        deprecated(q, "--limit-per-task", "--limit", type=int)
        q.add_argument("--media-root", type=Path, help="media folder for MMEB-train / UME-R1 files")
        q.add_argument(
            "--skip",
            type=int,
            default=0,
            help="first drop the pairs --limit N would pick per task: held-out pairs of a model trained on N",
        )
        deprecated(q, "--skip-per-task", "--skip", type=int)

    g = rsub.add_parser("generate", help="K candidate rationales per query, appended; resumes after a kill")
    data_args(g)
    g.add_argument("--teacher", default="nano", help=TEACHERS)
    g.add_argument("--samples", type=int, default=4, help="candidate rationales per query (the K samples)")
    deprecated(g, "--k", "--samples", type=int)
    g.add_argument("--out", type=Path, required=True, help="candidates file (.jsonl), appended to")
    g.add_argument("--temperature", type=float, default=0.7)
    g.add_argument("--top-p", type=float, default=0.9)
    g.add_argument("--batch-size", type=int, default=16, help="requests per teacher call (and per fsync)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--max-think-tokens", type=int, default=48, help="local teachers")
    g.add_argument("--max-answer-tokens", type=int, default=24, help="local teachers")
    g.add_argument("--base-url", default="http://127.0.0.1:8000/v1", help="openai teachers")
    g.add_argument("--max-tokens", type=int, default=256, help="openai teachers")
    g.add_argument("--concurrency", type=int, default=8, help="openai teachers: requests in flight")
    g.add_argument("--timeout", type=float, default=60.0, help="openai teachers: seconds per request")
    g.add_argument("--retries", type=int, default=3, help="openai teachers: attempts per request")
    g.add_argument("--quiet", action="store_true")

    s = rsub.add_parser(
        "select", help="score candidates by counterfactual utility; choose; label think/no-think"
    )
    data_args(s)
    s.add_argument("--model", default="nano", help="the scorer embedder")
    s.add_argument("--candidates", type=Path, required=True)
    s.add_argument(
        "--out", type=Path, required=True, help="folder for selection.jsonl, summary.json, utilities.png"
    )
    s.add_argument("--utility", default="pair", choices=list(UTILITIES))
    s.add_argument("--rule", default="hard", choices=["hard", "soft", "all"])
    s.add_argument("--delta", type=float, default=0.0, help="best utility must exceed this, else no-think")
    s.add_argument("--soft-temperature", type=float, default=0.05, help="soft rule: softmax temperature")
    deprecated(s, "--temperature", "--soft-temperature", type=float)
    s.add_argument(
        "--negatives", type=int, default=15, help="contrastive: negatives per pair (data, then mined)"
    )
    s.add_argument("--loss-temperature", type=float, default=0.02,
                   help="contrastive utility: the InfoNCE temperature (training's loss.temperature)")  # fmt: skip
    deprecated(s, "--tau", "--loss-temperature", type=float)
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument("--seed", type=int, default=0, help="order of swapped-control donors")
    s.add_argument("--cache", type=Path, help="embedding cache folder (default ~/.cache/mmemb/embeddings)")
    s.add_argument("--quiet", action="store_true")

    i = rsub.add_parser(
        "inspect", help="reasoning sensitivity of a model; utilities; kept and rejected examples"
    )
    data_args(i)
    i.add_argument("--model", default="nano")
    i.add_argument("--candidates", type=Path, required=True)
    i.add_argument(
        "--selection", type=Path, help="selection.jsonl from `reason select` (utilities, examples)"
    )
    i.add_argument("--n", type=int, default=64, help="pairs for the sensitivity measurement")
    i.add_argument("--examples", type=int, default=3)
    i.add_argument("--out", type=Path, help="write inspect.json here too")
    i.add_argument("--batch-size", type=int, default=16)
    i.add_argument("--cache", type=Path)
    i.add_argument("--quiet", action="store_true")

    d = rsub.add_parser(
        "diagnose",
        help="what reasoning adds to a model on held-out pairs: hit@1 without reasoning, with the teacher's "
        "rationales (mean, best), with another pair's, with its own; paired intervals; sensitivity",
    )
    data_args(d)
    d.add_argument("--model", default="nano")
    d.add_argument("--candidates", type=Path, required=True, help="teacher candidates for these pairs")
    d.add_argument("--no-own", action="store_true", help="skip the model's own rationales (think mode)")
    d.add_argument("--max-new-tokens", type=int, default=64, help="own rationales: token budget")
    d.add_argument("--out", type=Path, help="write diagnose.json here too")
    d.add_argument("--batch-size", type=int, default=16)
    d.add_argument("--cache", type=Path)
    d.add_argument("--quiet", action="store_true")


def cmd_reason(args: argparse.Namespace) -> int:
    commands = {
        "generate": cmd_generate,
        "select": cmd_select,
        "inspect": cmd_inspect,
        "diagnose": cmd_diagnose,
    }
    return commands[args.reason_command](args)


def load_pairs(args: argparse.Namespace):
    from ..data.pairs import read_pairs

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] or None
    pairs = read_pairs(
        args.data,
        split=args.split,
        tasks=tasks,
        limit_per_task=args.limit,
        media_root=args.media_root,
        skip_per_task=args.skip,
    )
    if not pairs:
        raise InputError(f"--data {args.data}: no pairs (split {args.split!r}, tasks {tasks})")
    return pairs


def make_teacher(args: argparse.Namespace):
    from .teachers import FileTeacher, HintTeacher, LocalTeacher

    spec = args.teacher
    kind, _, rest = spec.partition(":")
    if spec == "hints":
        return HintTeacher()
    if spec == "nano" or kind == "local":
        from ..embedder import Embedder
        from ..runtime import quiet_libraries

        quiet_libraries()
        model = "nano" if spec == "nano" else rest
        return LocalTeacher(
            Embedder.from_pretrained(model),
            name=f"local:{model}",
            temperature=args.temperature,
            top_p=args.top_p,
            max_think_tokens=args.max_think_tokens,
            max_answer_tokens=args.max_answer_tokens,
            batch_size=args.batch_size,
        )
    if kind == "openai" and rest:
        from .openai_teacher import OpenAITeacher

        return OpenAITeacher(
            args.base_url,
            rest,
            temperature=args.temperature,
            top_p=args.top_p,
            max_tokens=args.max_tokens,
            concurrency=args.concurrency,
            timeout=args.timeout,
            retries=args.retries,
        )
    if kind == "file" and rest:
        return FileTeacher(Path(rest))
    raise InputError(f"--teacher {spec!r}: expected {TEACHERS}")


def cmd_generate(args: argparse.Namespace) -> int:
    from .candidates import generate_candidates
    from .teachers import FileTeacher

    if args.batch_size < 1 or args.samples < 1:
        raise InputError("--batch-size and --samples must be >= 1")
    pairs = load_pairs(args)
    teacher = make_teacher(args)
    if isinstance(teacher, FileTeacher):
        unknown = sorted(teacher.ids() - {p.id for p in pairs})
        if unknown:
            raise InputError(
                f"{teacher.path}: {len(unknown)} query id(s) not in --data {args.data} (first: {unknown[:3]}); "
                "import rationales for the same dataset"
            )
    report = generate_candidates(
        pairs,
        teacher,
        args.samples,
        args.out,
        batch_size=args.batch_size,
        seed=args.seed,
        progress=not args.quiet,
    )
    rate = 60 * (report.written + report.failed) / report.seconds if report.seconds else 0.0
    why = "the hints say nothing more" if args.teacher == "hints" else "not in the teacher's file"
    print(
        f"mmemb reason generate: {report.written} written ({report.malformed} malformed), "
        f"{report.existing} already there, {report.failed} failed, {report.skipped} skipped ({why}); "
        f"{report.seconds:.0f}s ({rate:.1f} rationales/min) -> {args.out}",
        file=sys.stderr,
    )
    if report.failed:
        for e in report.errors:
            print(f"  failed: {e}", file=sys.stderr)
        print("mmemb reason generate: rerun the same command to retry the failed requests", file=sys.stderr)
        return 1
    return 0


def _embedder(args: argparse.Namespace):
    from ..embedder import Embedder
    from ..runtime import quiet_libraries

    quiet_libraries()
    return Embedder.from_pretrained(args.model)


def _cache(args: argparse.Namespace) -> Path:
    from ..paths import embeddings_dir

    return args.cache or embeddings_dir()


def cmd_select(args: argparse.Namespace) -> int:
    from .candidates import load_for
    from .scoring import ScoreSettings
    from .select import format_summary, run_select

    pairs = load_pairs(args)
    load_for(pairs, args.candidates)  # checked before the model loads
    embedder = _embedder(args)
    settings = ScoreSettings(
        negatives=args.negatives,
        tau=args.loss_temperature,
        batch_size=args.batch_size,
        seed=args.seed,
        progress=not args.quiet,
    )
    summary = run_select(
        embedder,
        pairs,
        args.candidates,
        args.out,
        _cache(args),
        utility=args.utility,
        rule=args.rule,
        delta=args.delta,
        temperature=args.soft_temperature,
        settings=settings,
    )
    print(format_summary(summary))
    print(
        f"mmemb reason select: outputs in {args.out}/ (selection.jsonl, summary.json, utilities.png)",
        file=sys.stderr,
    )
    return 0


def _scored_pairs(args: argparse.Namespace):
    """inspect / diagnose: the pairs (their candidates checked before the model loads) and the embedder."""
    from .candidates import load_for

    pairs = load_pairs(args)
    load_for(pairs, args.candidates)
    return pairs, _embedder(args)


def _report(args: argparse.Namespace, report: dict, text: str, name: str) -> int:
    """Print a report and, with --out, write it as OUT/name (atomically)."""
    from ..io import atomic_write

    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write(args.out / name, json.dumps(report, indent=2) + "\n")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from .scoring import ScoreSettings
    from .sensitivity import format_inspect, run_inspect

    pairs, embedder = _scored_pairs(args)
    report = run_inspect(
        embedder,
        pairs,
        args.candidates,
        _cache(args),
        selection_path=args.selection,
        n=args.n,
        examples=args.examples,
        settings=ScoreSettings(batch_size=args.batch_size, progress=not args.quiet),
    )
    return _report(args, report, format_inspect(report), "inspect.json")


def cmd_diagnose(args: argparse.Namespace) -> int:
    from .diagnose import format_diagnose, run_diagnose
    from .scoring import ScoreSettings

    pairs, embedder = _scored_pairs(args)
    report = run_diagnose(
        embedder,
        pairs,
        args.candidates,
        _cache(args),
        own=not args.no_own,
        max_new_tokens=args.max_new_tokens,
        settings=ScoreSettings(batch_size=args.batch_size, progress=not args.quiet),
    )
    return _report(args, report, format_diagnose(report), "diagnose.json")
