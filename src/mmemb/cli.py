"""`mmemb <command>`. `main(argv) -> int` so tests drive the real CLI.

A user's mistake (InputError, AssetError) prints one line naming the input and exits 2; nothing
half-written is left behind (outputs are written to temporary names and renamed at the end).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .io import atomic_files
from .runtime import deprecated, quiet_libraries
from .types import MODES, InputError

COMMANDS = {
    "embed": "Embed the items of a JSONL file (text, image, frames, pages) into a .npy matrix.",
    "eval": "Evaluate a model on mmeb-mini or MMEB-V2: scores, report, per-query records, plot.",
    "report": "Print meta-task, modality and overall tables for score files, side by side.",
    "data": "Datasets: `mmemb data build-mini` makes mmeb-mini from Debian data; `mmemb data check-mmeb-v2` "
    "says which MMEB-V2 datasets are downloaded.",
    "index": "Build a FAISS index (exact or HNSW) from `mmemb embed`'s shard folder: `mmemb index build`.",
    "search": "Search an index with a text or an image query: the top k ids and scores.",
    "info": "Print a model's settings (backbone, tokens, modes) and where its weights come from.",
    "train": "Train: `mmemb train stage1|policy|policy-sweep --config FILE [key=value ...]` (contrastive + "
    "reasoning SFT; the policy that decides when to reason; its λ sweep).",
    "reason": "Reasoning paths: generate candidate rationales, select them by counterfactual utility, inspect.",
    "serve": "An OpenAI-compatible embeddings server (POST /v1/embeddings, /health, /metrics) with dynamic "
    "batching and adaptive reasoning.",
    "reproduce": "The MMEmb-R1 study end to end (data, rationales, warm start, selection, stage 1 x 4 ablations, policy, "
    "evaluation, λ sweep, report), resumable stage by stage; --eval-only evaluates shipped weights.",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmemb",
        description="Multimodal embeddings that reason only when reasoning helps.",
        formatter_class=lambda prog: argparse.HelpFormatter(prog, width=110, max_help_position=16),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("embed", help=COMMANDS["embed"], description=COMMANDS["embed"])
    _model_args(p)
    p.add_argument(
        "--input",
        required=True,
        type=Path,
        help="JSONL: {id, text?, image?, frames?, pages?, "
        "instruction?} a line; media paths relative to this file",
    )
    p.add_argument(
        "--out",
        type=Path,
        help="(required) vectors (.npy, float32, N x D); ids go to OUT.ids.json; in the other modes, per item "
        "whether it reasoned, its tokens and completion to OUT.gen.jsonl. A folder (no suffix): the input is "
        "streamed into resumable shards of --shard-size items, one process or a torchrun (README: Corpus scale)",
    )
    deprecated(p, "--output", "--out", type=Path)
    p.add_argument(
        "--mode",
        default="disc",
        choices=MODES,
        help="disc: one forward; gen: generate, then embed; think: always reason; nothink: never "
        "(<no_think><gen_emb>); adaptive: the model's policy decides per item",
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--shard-size", type=int, default=10_000, help="items per output shard (folder --out)")
    p.add_argument("--dimensions", type=int, help="Matryoshka: keep the first N entries of each vector, "
                   "renormalised (only for a model trained with loss.matryoshka_dims at N)")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"),
                   help="compute dtype (default: the model's saved setting, auto = bf16 where the hardware has it)")  # fmt: skip

    p = sub.add_parser("eval", help=COMMANDS["eval"], description=COMMANDS["eval"] + " Settings: defaults < "
                       "--config FILE < flags < key=value (eval/config.py); the resolved ones are saved as "
                       "OUT/eval_config.yaml.")  # fmt: skip
    _model_args(p)
    p.set_defaults(model=None)  # unset flags leave the config's value (default nano)
    p.add_argument("--config", type=Path, help="a YAML eval config (e.g. a run's eval_config.yaml)")
    p.add_argument("overrides", nargs="*", help="key=value settings, e.g. run.batch_size=32 data.limit=5")
    p.add_argument("--tasks", help="mmeb-mini (default) | mmeb-v2 | MMEB-V2 dataset names, comma-separated")
    p.add_argument(
        "--data-root", type=Path, help="MMEB-V2 data folder (mmeb-mini: built on first use if omitted)"
    )
    p.add_argument("--hub-cache", type=Path, help="MMEB-V2: where the annotation datasets were downloaded "
                   "(default: the Hugging Face cache; see `mmemb data check-mmeb-v2`)")  # fmt: skip
    p.add_argument("--out", type=Path, help="output folder (default runs/eval/<model>-<tasks>)")
    p.add_argument(
        "--qry-mode", choices=MODES, help="how queries are embedded (default disc; see embed --mode)"
    )
    p.add_argument(
        "--tgt-mode",
        choices=MODES,
        help="how candidates are embedded (default: disc for a disc query, else nothink: targets are "
        "indexed without reasoning, as stage-1 training embeds them; a profile without nothink, e.g. "
        "ume-r1, embeds them in the query's mode)",
    )
    p.add_argument(
        "--allow-any-mode-pair",
        action="store_true",
        default=None,
        help="run a query/target mode pair the model's config does not list as valid",
    )
    p.add_argument(
        "--analysis",
        help="comma-separated: oracle (best of disc and gen per query, an "
        "upper bound), pass@k (k sampled gen runs)",
    )
    p.add_argument("--samples", type=int, help="k for pass@k (default 4)")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"),
                   help="compute dtype (default: the model's saved setting, auto = bf16 where the hardware has it)")  # fmt: skip
    p.add_argument("--temperature", type=float, help="sampling temperature for pass@k (default 0.7)")
    p.add_argument("--max-new-tokens", type=int, help="gen: override the model's max_new_tokens")
    p.add_argument("--batch-size", type=int, help="items per model batch (default 16)")
    p.add_argument("--dimensions", type=int, help="Matryoshka: score at this width (a model trained with "
                   "loss.matryoshka_dims; the cache keeps full vectors, so every width reuses one embedding pass)")  # fmt: skip
    p.add_argument("--limit", type=int, help="first N queries per task (smoke runs)")
    p.add_argument("--cache", type=Path, help="embedding cache folder (default ~/.cache/mmemb/embeddings)")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("report", help=COMMANDS["report"], description=COMMANDS["report"])
    p.add_argument("files", nargs="+", type=Path, help="score files (published MMEB layout)")

    p = sub.add_parser("data", help=COMMANDS["data"], description=COMMANDS["data"])
    dsub = p.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    b = dsub.add_parser("build-mini", help="build mmeb-mini from installed Debian packages (deterministic)")
    b.add_argument("--out", type=Path, help="output folder (default: the folder `mmemb eval` uses)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--scale", type=float, default=1.0, help="multiplies the number of queries per task")
    b.add_argument("--tasks", help="comma-separated tasks instead of mmeb-mini's nine, e.g. WordNet-Pick "
                   "(needs --out; docs/reasoning.md)")  # fmt: skip

    c = dsub.add_parser(
        "check-mmeb-v2",
        help="per MMEB-V2 dataset: present, missing (with the command that downloads it) or malformed",
    )
    c.add_argument("--data-root", type=Path, required=True, help="the TIGER-Lab/MMEB-V2 media folder")
    c.add_argument("--hub-cache", type=Path, help="where the annotation datasets were downloaded (default: "
                   "the Hugging Face cache, HF_HUB_CACHE or ~/.cache/huggingface/hub)")  # fmt: skip
    c.add_argument("--tasks", default="mmeb-v2", help="mmeb-v2 or dataset names, comma-separated")

    p = sub.add_parser("info", help=COMMANDS["info"], description=COMMANDS["info"])
    p.add_argument("--model", default="nano")

    p = sub.add_parser("index", help=COMMANDS["index"], description=COMMANDS["index"])
    isub = p.add_subparsers(dest="index_command", metavar="INDEX_COMMAND", required=True)
    b = isub.add_parser("build", help="index a shard folder written by `mmemb embed --out FOLDER`")
    src = b.add_mutually_exclusive_group(required=True)
    src.add_argument("--shards", type=Path, help="a shard folder written by `mmemb embed --out FOLDER`")
    src.add_argument("--media", type=Path, help="a folder of images: embedded first (into OUT.shards/, "
                     "resumable; the listing in OUT.items.jsonl), then indexed")  # fmt: skip
    b.add_argument("--out", type=Path, required=True, help="the index folder to write")
    b.add_argument("--kind", default="flat", choices=("flat", "hnsw"), help="flat: exact; hnsw: approximate")
    _model_args(b)
    b.add_argument("--mode", default="disc", choices=MODES, help="--media: the mode to embed the images in")
    b.add_argument("--batch-size", type=int, default=8)
    b.add_argument("--shard-size", type=int, default=10_000)
    b.add_argument("--quiet", action="store_true")

    p = sub.add_parser("search", help=COMMANDS["search"], description=COMMANDS["search"])
    p.add_argument("--index", type=Path, required=True)
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--query", help="a text query")
    q.add_argument("--image", type=Path, help="an image query")
    p.add_argument("--instruction", help="the query's instruction (e.g. 'Find an image that matches')")
    p.add_argument("--model", help="the model to embed the query with (default: the index's)")
    p.add_argument("--mode", help="the query's mode (default: the index's; adaptive: the policy decides)")
    p.add_argument("--k", type=int, default=10)

    from .reasoning.cli import add_parser as add_reason

    add_reason(sub)
    p = sub.add_parser("train", help=COMMANDS["train"], description=COMMANDS["train"])
    tsub = p.add_subparsers(dest="train_command", metavar="TRAIN_COMMAND", required=True)
    t = tsub.add_parser("stage1", help="joint InfoNCE (disc + gen) + LM loss on the selected rationales")
    t.add_argument("--config", type=Path, help="YAML config (configs/nano.yaml); keys: mmemb/train/config.py")
    t.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=1e-4 run.max_steps=50")
    t = tsub.add_parser(
        "policy", help="GRPO of the policy head that decides when to reason (embedder frozen)"
    )
    t.add_argument(
        "--config", type=Path, help="YAML config (configs/policy-nano.yaml); keys: mmemb/train/config.py"
    )
    t.add_argument("overrides", nargs="*", help="key=value overrides, e.g. policy.lam=0.01 optim.steps=100")
    t = tsub.add_parser(
        "policy-sweep", help="one policy per λ, each scored on the eval split: the accuracy-invocation curve"
    )
    t.add_argument("--config", type=Path, help="the policy config (as for `train policy`)")
    t.add_argument("--lams", default="0,0.003,0.01,0.03,0.1,1", help="comma-separated prices of reasoning")
    t.add_argument("--tasks", default="mmeb-mini", help="evaluation tasks (as `mmemb eval --tasks`)")
    t.add_argument("--data-root", type=Path, help="evaluation data folder (as `mmemb eval`)")
    t.add_argument("--limit", type=int, help="first N test queries per task (smoke runs)")
    t.add_argument("--out", type=Path, help="output folder (default: run.output + '-sweep')")
    t.add_argument("overrides", nargs="*", help="key=value overrides of the policy config")
    p = sub.add_parser("reproduce", help=COMMANDS["reproduce"], description=COMMANDS["reproduce"])
    p.add_argument("--out", type=Path, help="study folder (default runs/reproduce, runs/reproduce-eval, "
                   "runs/reproduce-tiny); rerun the same command to resume")  # fmt: skip
    p.add_argument("--eval-only", action="store_true", help="evaluate --model only (no training)")
    p.add_argument("--model", help="eval-only: the model to evaluate (default nano-r1, the shipped weights)")
    p.add_argument("--tiny", action="store_true", help="tiny random Qwen2-VL and a 5%% mmeb-mini build (CI)")
    p.add_argument("--recipe", type=Path, help="a YAML or JSON file of study settings over the default recipe (the "
                   "fields of reproduce.Recipe, as OUT/recipe.json records them), e.g. configs/study-pick.json")  # fmt: skip
    p.add_argument("overrides", nargs="*", help="key=value recipe settings, last, e.g. eval_limit=5 k=2")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"),
                   help="compute dtype (default: the model's saved setting, auto = bf16 where the hardware has it)")  # fmt: skip
    p.add_argument("--limit", type=int, help="test queries per task (default 0: all)")
    p.add_argument("--quiet", action="store_true")
    p = sub.add_parser("serve", help=COMMANDS["serve"], description=COMMANDS["serve"] + " The API key, if any, "
                       "is read from the MMEMB_API_KEY environment variable (not a flag: flags show in `ps`).")  # fmt: skip
    _model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"),
                   help="compute dtype (default: the model's saved setting, auto = bf16 where the hardware has it)")  # fmt: skip
    p.add_argument("--mode", default="disc", choices=MODES, help="mode of a request that names none")
    p.add_argument("--max-batch", type=int, default=16, help="items per model batch")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="longest wait for a batch to fill")
    p.add_argument("--max-queue", type=int, default=256, help="items waiting per lane; more get 429")
    p.add_argument("--lanes", default="split", choices=("split", "shared"),
                   help="split: disc/nothink never wait behind generation; shared: one queue (a benchmark baseline: "
                        "disc can wait minutes behind a busy decode)")  # fmt: skip
    p.add_argument("--max-body-mb", type=float, default=32.0, help="largest request body (413 above)")
    p.add_argument("--max-items", type=int, default=256, help="inputs per request (413 above)")
    p.add_argument("--max-image-pixels", type=int, default=4_000_000, help="per decoded image (400 above)")
    p.add_argument("--max-new-tokens", type=int, default=1024, help="the most tokens a request may generate per "
                   "item (400 above); a request that names none gets the model's budget, or this where lower")  # fmt: skip
    p.add_argument("--read-timeout", type=float, default=30.0, help="seconds a client has to send its request "
                   "head, and again its body (a stalled connection is closed, a stalled body is a 408)")  # fmt: skip
    p.add_argument("--allow-path-root", type=Path,
                   help="allow file:// media under this folder (refused by default)")  # fmt: skip
    return parser


def main(argv: list[str] | None = None) -> int:
    from .backbones.assets import AssetError

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return handlers()[args.command](args)
    except (InputError, AssetError) as e:
        print(f"mmemb {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mmemb {args.command}: interrupted; no output written", file=sys.stderr)
        return 130


def handlers() -> dict:
    """The function that runs each command (every name in COMMANDS has one: tests/test_cli.py)."""
    return {
        "embed": cmd_embed,
        "eval": cmd_eval,
        "report": cmd_report,
        "data": cmd_data,
        "info": cmd_info,
        "index": cmd_index,
        "search": cmd_search,
        "reason": cmd_reason,
        "train": cmd_train,
        "reproduce": cmd_reproduce,
        "serve": cmd_serve,
    }


def console() -> None:
    sys.exit(main())


def cmd_embed(args: argparse.Namespace) -> int:
    import numpy as np

    from .embedder import Embedder, load_args
    from .io import check_outputs
    from .items import read_items
    from .shards import gen_rows

    if args.out is None:
        raise InputError("--out is required: a .npy file, or a folder for sharded output")
    if args.batch_size < 1:
        raise InputError("--batch-size must be >= 1")
    if args.out.suffix != ".npy" and (args.out.suffix == "" or args.out.is_dir()):
        return embed_sharded(args)
    if args.out.suffix != ".npy":
        raise InputError(
            f"--out {args.out}: use a .npy file name, or a folder (no suffix) for sharded output"
        )
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise InputError(
            f"--out {args.out}: several processes write a folder of shards; give a folder, not a .npy"
        )
    out = args.out
    outputs = [out, out.with_suffix(".ids.json")] + (
        [out.with_suffix(".gen.jsonl")] if args.mode != "disc" else []
    )
    check_outputs(outputs, [args.input])  # before the model loads: a bad path costs nothing
    samples = read_items(args.input)  # validates every line before loading the model
    quiet_libraries()
    embedder = Embedder.from_pretrained(args.model, **load_args(args))
    try:
        result = embedder.encode(samples, mode=args.mode, batch_size=args.batch_size, progress=not args.quiet,
                                 dimensions=args.dimensions)  # fmt: skip
    except InputError as e:
        raise InputError(f"{args.input}: {e}") from None
    files = {
        out: lambda f: np.save(f, result.vectors, allow_pickle=False),
        out.with_suffix(".ids.json"): lambda f: f.write(json.dumps([s.id for s in samples]).encode()),
    }
    if args.mode != "disc":
        lines = [json.dumps(row) for row in gen_rows(samples, result, args.mode)]
        files[out.with_suffix(".gen.jsonl")] = lambda f: f.write(("\n".join(lines) + "\n").encode())
    atomic_files(files)
    reasoned = f", reasoned on {sum(result.reasoned)}/{len(samples)}" if args.mode != "disc" else ""
    print(
        f"mmemb embed: {len(samples)} items -> {out} {result.vectors.shape} ({args.mode}{reasoned})",
        file=sys.stderr,
    )
    return 0


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def cmd_index(args: argparse.Namespace) -> int:
    from .index import build
    from .io import atomic_write, check_outputs

    check_outputs([args.out / "meta.json"], [args.shards or args.media])
    if args.media is not None:  # embed the folder's images into shards beside the index, then index them
        if not args.media.is_dir():
            raise InputError(f"--media {args.media}: not a folder")
        files = sorted(p for p in args.media.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise InputError(f"--media {args.media}: no images ({', '.join(IMAGE_SUFFIXES)}) under it")
        items = args.out.with_name(args.out.name + ".items.jsonl")
        rows = [{"id": str(p.relative_to(args.media)), "image": str(p.resolve())} for p in files]
        atomic_write(items, "".join(json.dumps(r) + "\n" for r in rows))
        args.input, args.shards = items, args.out.with_name(args.out.name + ".shards")
        embed_sharded(argparse.Namespace(**vars(args) | {"out": args.shards}))
        if int(os.environ.get("RANK", "0")) != 0:
            return 0  # rank 0 builds the index
    meta = build(args.shards, args.out, args.kind)
    print(f"mmemb index: {meta['rows']} vectors ({meta['dim']}-d, {meta['mode']}) -> {args.out} ({args.kind})", file=sys.stderr)  # fmt: skip
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from .embedder import Embedder
    from .index import Index
    from .types import Sample

    if args.k < 1:
        raise InputError("--k must be >= 1")
    if args.image is not None and not args.image.is_file():
        raise InputError(f"--image {args.image}: file not found")
    index = Index.load(args.index)
    mode = args.mode or index.meta["mode"]
    quiet_libraries()
    embedder = Embedder.from_pretrained(args.model or index.meta["model"])
    index.check(embedder, mode)
    query = Sample(id="query", text=args.query, image=args.image, instruction=args.instruction)
    vec = embedder.encode(
        [query], mode=mode, dimensions=index.meta["dim"]
    ).vectors  # (1, D): the index's width
    for rank, (item, score) in enumerate(index.search(vec, args.k)[0], start=1):
        print(f"{rank}\t{score:.4f}\t{item}")
    return 0


def embed_sharded(args: argparse.Namespace) -> int:
    """`mmemb embed --out FOLDER`: streamed input, shards of --shard-size items, resumable; under torchrun
    each rank embeds its own shards (shards.py)."""
    from .distributed import from_env
    from .embedder import Embedder, load_args
    from .io import check_outputs
    from .shards import MANIFEST, check_folder, embed_shards, run_manifest, scan_input, shard_ok

    if args.shard_size < 1 or args.batch_size < 1:
        raise InputError("--shard-size and --batch-size must be >= 1")
    out = args.out
    check_outputs([out / MANIFEST], [args.input])  # before the model loads
    check_folder(out)
    scanned = scan_input(args.input)  # every line validated, streamed; nothing written yet
    quiet_libraries()
    ranks = from_env()  # torchrun: this rank's place (and its process group)
    rank, world = ranks.rank, ranks.world
    embedder = Embedder.from_pretrained(args.model, device=ranks.device, **load_args(args))
    dims = getattr(args, "dimensions", None)  # index build --media embeds at the full width
    manifest = run_manifest(embedder, args.model, args.mode, args.input, scanned, args.shard_size, dims)
    stats = embed_shards(
        embedder, args.input, out, manifest, args.mode, args.batch_size, ranks, args.quiet, dims
    )
    rate = stats["items_embedded"] / stats["seconds"] if stats["seconds"] else 0.0
    print(f"mmemb embed [rank {rank}/{world}]: {stats['items_embedded']} items in {stats['seconds']:.1f} s "
          f"({rate:.1f} items/s), {stats['shards_embedded']} shards written", file=sys.stderr)  # fmt: skip
    if rank == 0:  # every rank's shards are written (embed_shards ends at a barrier)
        bad = [k for k in range(manifest["shards"]) if not shard_ok(out, k, args.mode != "disc")]
        if bad:
            raise InputError(
                f"--out {out}: shards {bad} did not complete; rerun the same command to finish them"
            )
        print(f"mmemb embed: {manifest['items']} items -> {out} ({manifest['shards']} shards of "
              f"{manifest['shard_size']}, {stats['shards_kept']} kept from an earlier run, {manifest['dim']}-d, "
              f"{args.mode})", file=sys.stderr)  # fmt: skip
    ranks.close()
    return 0


# eval flag -> its key in the eval config (eval/config.py)
EVAL_FLAGS = {
    "--model": "model.name", "--base": "model.base", "--profile": "model.profile", "--dtype": "model.dtype",
    "--tasks": "data.tasks", "--data-root": "data.root", "--hub-cache": "data.hub_cache", "--limit": "data.limit",
    "--qry-mode": "run.qry_mode", "--tgt-mode": "run.tgt_mode", "--batch-size": "run.batch_size",
    "--max-new-tokens": "run.max_new_tokens", "--analysis": "run.analysis", "--samples": "run.samples",
    "--temperature": "run.temperature", "--allow-any-mode-pair": "run.allow_any_mode_pair", "--out": "run.out",
    "--cache": "run.cache", "--dimensions": "run.dimensions",
}  # fmt: skip


def eval_config(args: argparse.Namespace):
    """The eval settings: defaults < --config < the flags given < key=value overrides."""
    from .config import resolve_tree
    from .eval.config import EvalConfig, check_eval

    if args.analysis is not None:
        args.analysis = [a.strip() for a in args.analysis.split(",") if a.strip()]
    return resolve_tree(EvalConfig, check_eval, args.config, args, EVAL_FLAGS, args.overrides)


def cmd_eval(args: argparse.Namespace) -> int:
    from .config import save_tree
    from .distributed import from_env
    from .embedder import Embedder, load_args
    from .eval.evaluate import evaluate
    from .eval.runner import EvalSettings

    cfg = eval_config(args)
    m, d, r = cfg.model, cfg.data, cfg.run
    quiet_libraries()
    out = cfg.out_dir()
    settings = EvalSettings(
        qry_mode=r.qry_mode,
        tgt_mode=r.tgt_mode,  # "": the default for the query mode and the model (evaluate)
        batch_size=r.batch_size,
        max_new_tokens=r.max_new_tokens or None,
        allow_any_mode_pair=r.allow_any_mode_pair,
        progress=not args.quiet,
        dimensions=r.dimensions or None,
    )
    ranks = from_env()  # torchrun: each rank embeds a slice, rank 0 writes the outputs
    if ranks.world > 1 or load_args(m):
        model = Embedder.from_pretrained(m.name, device=ranks.device, **load_args(m))
    else:
        model = m.name
    result = evaluate(
        model,
        d.tasks,
        out,
        settings,
        data_root=Path(d.root) if d.root else None,
        hub_cache=Path(d.hub_cache) if d.hub_cache else None,
        analyses=tuple(r.analysis),
        samples=r.samples,
        temperature=r.temperature,
        cache_root=Path(r.cache) if r.cache else None,
        limit=d.limit or None,
        ranks=ranks,
        name=m.name,
    )
    ranks.close()
    if ranks.rank != 0:
        return 0
    save_tree(cfg, out / "eval_config.yaml")  # the resolved settings: `--config` reruns them
    print(result["report"])
    for run, per_task in result["analysis"].items():
        a = per_task["ALL"]
        print(
            f"{run:<36} mean over queries {a['score']:5.1f}  reasoned {100 * a['invocation_ratio']:5.1f}%  "
            f"median latency {1000 * a['median_latency_s']:7.1f} ms/query  ({a['queries']} queries)"
        )
    print(
        f"mmemb eval: {result['seconds']:.0f}s; outputs in {out}/ (report.txt, scores.*.json, "
        "per_query.*.jsonl, analysis.json, plot.png)",
        file=sys.stderr,
    )
    failed = sorted(set(result["errors"]) - set(result["missing"]))
    if result["missing"]:
        print(
            f"mmemb eval: {len(result['missing'])} dataset(s) not downloaded, reported as missing",
            file=sys.stderr,
        )
    if failed:
        print(f"mmemb eval: {len(failed)} task(s) failed: {failed} (see errors.json)", file=sys.stderr)
        return 1
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .train.config import load_policy_config, load_train_config

    if args.train_command == "stage1":
        from .train.stage1 import train_stage1

        cfg = load_train_config(args.config, args.overrides)  # every key checked before any compute
        quiet_libraries()
        train_stage1(cfg)
        return 0
    cfg = load_policy_config(args.config, args.overrides)
    quiet_libraries()
    if args.train_command == "policy":
        from .train.policy import train_policy

        train_policy(cfg)
        return 0
    from .train.sweep import run_sweep

    try:
        lams = [float(x) for x in args.lams.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"--lams {args.lams!r}: give comma-separated numbers, e.g. 0,0.01,0.1") from None
    if not lams or min(lams) < 0:
        raise InputError(f"--lams {args.lams!r}: give at least one λ >= 0")
    out = args.out or Path(cfg.run.output + "-sweep")
    result = run_sweep(cfg, lams, out, args.tasks, args.data_root, limit=args.limit)
    from .train.sweep import format_table

    print(format_table(result))
    print(f"mmemb train policy-sweep: {out}/sweep.json, sweep.md, sweep.png", file=sys.stderr)
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from .config import resolve_tree
    from .reproduce import Recipe, check_recipe, reproduce

    out = args.out or Path(
        "runs/reproduce" + ("-tiny" if args.tiny else "") + ("-eval" if args.eval_only else "")
    )
    if args.model and not args.eval_only:
        raise InputError("--model is for --eval-only; the full study trains from the recipe's backbone")
    base = Recipe.tiny(out) if args.tiny else Recipe()
    if args.eval_only:
        base.model = "" if args.tiny else "nano-r1"  # the shipped weights
    flags = {"--model": "model", "--limit": "eval_limit"}
    recipe = resolve_tree(Recipe, check_recipe, args.recipe, args, flags, args.overrides, base=base)
    if args.eval_only and not recipe.model:
        raise InputError("--eval-only --tiny: give --model (a folder written by `mmemb reproduce --tiny`)")
    quiet_libraries()
    reproduce(out, recipe, eval_only=args.eval_only, log=not args.quiet, dtype=args.dtype)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from .serve.app import ServeSettings, serve
        from .serve.inputs import Limits
    except ImportError as e:
        raise InputError(
            f"serving needs the serve extra ({e.name} is missing): pip install 'mmemb[serve]'"
        ) from None
    from .embedder import Embedder, load_args

    for flag in (
        "port",
        "max_batch",
        "max_queue",
        "max_items",
        "max_image_pixels",
        "max_new_tokens",
        "read_timeout",
    ):
        if getattr(args, flag) < (0 if flag == "port" else 1):
            raise InputError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: must be positive")
    root = args.allow_path_root
    if root is not None and not root.is_dir():
        raise InputError(f"--allow-path-root {root}: not a folder")
    quiet_libraries()
    settings = ServeSettings(
        model_name=args.model, mode=args.mode, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue, lanes=args.lanes, max_body_bytes=int(args.max_body_mb * 2**20),
        api_key=os.environ.get("MMEMB_API_KEY") or None, max_new_tokens=args.max_new_tokens,
        read_timeout_s=args.read_timeout,
        limits=Limits(max_items=args.max_items, max_image_pixels=args.max_image_pixels, allow_path_root=root),
    )  # fmt: skip
    embedder = Embedder.from_pretrained(args.model, **load_args(args))
    embedder.profile.check_mode(args.mode)
    print(f"mmemb serve: {args.model} on http://{args.host}:{args.port} (mode {args.mode}, lanes {args.lanes}, "
          f"API key {'on' if settings.api_key else 'off'})", file=sys.stderr, flush=True)  # fmt: skip
    serve(embedder, settings, host=args.host, port=args.port)
    return 0


def cmd_reason(args: argparse.Namespace) -> int:
    from .reasoning.cli import cmd_reason as run

    return run(args)


def cmd_report(args: argparse.Namespace) -> int:
    from .eval.report import report_files

    print(report_files(args.files))
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    if args.data_command == "check-mmeb-v2":
        return cmd_check_mmeb_v2(args)
    from .data.mini import DEFAULT_TASKS, build_mini, parse_tasks
    from .paths import MINI_SEED, mini_root

    try:
        tasks = parse_tasks(args.tasks) if args.tasks else DEFAULT_TASKS
    except ValueError as e:
        raise InputError(f"--tasks: {e}") from None
    default = args.seed == MINI_SEED and args.scale == 1.0 and tasks == DEFAULT_TASKS
    out = args.out or (mini_root() if default else None)
    if out is None:
        raise InputError("--out is required with a non-default --seed, --scale or --tasks")
    path = build_mini(out, seed=args.seed, scale=args.scale, tasks=tasks)
    print(
        f"mmemb data: {', '.join(tasks) if tasks != DEFAULT_TASKS else 'mmeb-mini'} in {path}",
        file=sys.stderr,
    )
    return 0


def _model_args(p: argparse.ArgumentParser) -> None:
    """--model, --base and --profile, shared by embed, eval and serve."""
    from .profiles import PROFILES

    p.add_argument("--model", default="nano", help="'nano', 'nano-r1', a folder saved by mmemb, a Qwen-VL "
                   "folder or hub id, or a PEFT adapter folder (merged into its base at load)")  # fmt: skip
    p.add_argument("--base", help="a PEFT adapter's base model (default: its base_model_name_or_path)")
    p.add_argument("--profile", choices=list(PROFILES), help="embed a published checkpoint as its authors' code "
                   "does (README: Published checkpoints); default: what the checkpoint names, else mmemb's own")  # fmt: skip


def cmd_check_mmeb_v2(args: argparse.Namespace) -> int:
    """Print one line per dataset; exit 0 when every requested dataset is present, 1 otherwise."""
    from .data.mmeb_v2 import check
    from .eval.evaluate import resolve

    st = resolve(args.tasks, args.data_root, args.hub_cache)
    statuses = check(list(st.datasets), st.where)
    width = max(len(s.name) for s in statuses)
    for s in statuses:
        extra = f"  [revision {s.revision[:12]}]" if s.revision else ""
        print(f"{s.state:<9} {s.name:<{width}}  {s.detail}{extra}")
        if s.command:
            print(f"{'':<9} {'':<{width}}  get it: {s.command}")
    counts = {k: sum(s.state == k for s in statuses) for k in ("present", "missing", "malformed")}
    print(
        f"mmemb data check-mmeb-v2: {counts['present']} present, {counts['missing']} missing, "
        f"{counts['malformed']} malformed of {len(statuses)} (media {st.root}, annotations {st.where.hub_cache})"
    )
    return 0 if counts["present"] == len(statuses) else 1


def cmd_info(args: argparse.Namespace) -> int:
    from .embedder import Embedder

    quiet_libraries()
    e = Embedder.from_pretrained(args.model)
    info = {
        "model": str(args.model),
        "fingerprint": e.fingerprint(),
        "policy_fingerprint": e.policy_fingerprint(),
        "modes": list(e.profile.modes),
        "config": e.config.to_dict(),
        "token_ids": e.ids,
    }
    print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    console()
