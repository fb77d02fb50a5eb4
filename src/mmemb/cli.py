"""`mmemb <command>`. `main(argv) -> int` so tests drive the real CLI.

A user's mistake (InputError, AssetError) prints one line naming the input and exits 2; nothing
half-written is left behind (outputs are written to temporary names and renamed at the end).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

COMMANDS = {
    "embed": "Embed the items of a JSONL file (text, image, frames, pages) into a .npy matrix.",
    "info": "Print a model's settings (backbone, tokens, modes) and where its weights come from.",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmemb",
        description="Multimodal embeddings that reason only when reasoning helps.",
        formatter_class=lambda prog: argparse.HelpFormatter(prog, width=110, max_help_position=16),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("embed", help=COMMANDS["embed"], description=COMMANDS["embed"])
    p.add_argument(
        "--model", default="nano", help="'nano', a folder saved by mmemb, a Qwen-VL folder or hub id"
    )
    p.add_argument(
        "--input",
        required=True,
        type=Path,
        help="JSONL: {id, text?, image?, frames?, pages?, "
        "instruction?} a line; media paths relative to this file",
    )
    p.add_argument(
        "--output",
        required=True,
        type=Path,
        help="vectors (.npy, float32, N x D); ids go to "
        "OUTPUT.ids.json, gen texts and token counts to OUTPUT.gen.jsonl",
    )
    p.add_argument(
        "--mode", default="disc", choices=["disc", "gen"], help="disc: one forward; gen: reason, then embed"
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("info", help=COMMANDS["info"], description=COMMANDS["info"])
    p.add_argument("--model", default="nano")
    return parser


def main(argv: list[str] | None = None) -> int:
    from .backbones.assets import AssetError
    from .types import InputError

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return {"embed": cmd_embed, "info": cmd_info}[args.command](args)
    except (InputError, AssetError) as e:
        print(f"mmemb {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mmemb {args.command}: interrupted; no output written", file=sys.stderr)
        return 130


def console() -> None:
    sys.exit(main())


def _quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def cmd_embed(args: argparse.Namespace) -> int:
    import numpy as np

    from .embedder import Embedder
    from .items import read_items
    from .types import InputError

    if args.output.suffix != ".npy":
        raise InputError(f"--output {args.output}: use a .npy file name")
    if args.batch_size < 1:
        raise InputError("--batch-size must be >= 1")
    samples = read_items(args.input)  # validates every line before loading the model
    _quiet_libraries()
    embedder = Embedder.from_pretrained(args.model)
    try:
        result = embedder.encode(samples, mode=args.mode, batch_size=args.batch_size, progress=not args.quiet)
    except InputError as e:
        raise InputError(f"{args.input}: {e}") from None
    out = args.output
    files = {
        out: lambda f: np.save(f, result.vectors, allow_pickle=False),
        out.with_suffix(".ids.json"): lambda f: f.write(json.dumps([s.id for s in samples]).encode()),
    }
    if args.mode == "gen":
        lines = [
            json.dumps({"id": s.id, "text": t, "gen_tokens": n, "gen_emb_found": ok})
            for s, t, n, ok in zip(
                samples, result.texts, result.gen_tokens, result.gen_emb_found, strict=True
            )
        ]
        files[out.with_suffix(".gen.jsonl")] = lambda f: f.write(("\n".join(lines) + "\n").encode())
    _write_all(files)
    print(f"mmemb embed: {len(samples)} items -> {out} {result.vectors.shape} ({args.mode})", file=sys.stderr)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .embedder import Embedder

    _quiet_libraries()
    e = Embedder.from_pretrained(args.model)
    info = {
        "model": str(args.model),
        "fingerprint": e.fingerprint(),
        "config": e.config.to_dict(),
        "token_ids": e.ids,
    }
    print(json.dumps(info, indent=2))
    return 0


def _write_all(files: dict) -> None:
    """Write every file to a temporary name first, then rename them all: all or nothing."""
    staged = []
    try:
        for path, write in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
            staged.append((tmp, path))
            with os.fdopen(fd, "wb") as f:
                write(f)
        for tmp, path in staged:
            os.replace(tmp, path)
    finally:
        for tmp, _ in staged:
            if os.path.exists(tmp):
                os.unlink(tmp)


if __name__ == "__main__":
    console()
