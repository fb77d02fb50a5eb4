"""`mmeb-mini`: a small real benchmark in MMEB-V2 formats, built deterministically from Debian data.

    python -m mmemb.data.mini OUT [--seed 0] [--scale 1.0] [--tasks NAME,...]

The default build holds the nine mmeb-mini tasks (DEFAULT_TASKS). `--tasks` builds others into their own
folder in the same layout, e.g. `--tasks WordNet-Pick` (data/mini_pick.py: text queries that need one
inference step), which `mmemb eval --data-root OUT` and `mmemb reproduce --recipe` read like mmeb-mini.

Layout under OUT (every path inside a file is relative to OUT):

    <Task>/{train,test}.jsonl   image rows  {qry_inst, qry_text, qry_img_path, tgt_inst, tgt_text[], tgt_img_path[]}
                                video rows  the same with qry_video_path / tgt_video_path (frame folders)
                                the first candidate is the gold one; global-ranking rows hold only the gold
                                train rows of Clipart-CLS, -QA, -I2T and -VideoCLS add `qry_hint` (below)
    WordNet-DocRet/{train,test}/{corpus.jsonl, queries.jsonl, qrels.tsv, pages/}   BEIR style, graded qrels
    media/                      pictures, tiles and frame folders the rows point to
    tasks.json, PROVENANCE.md, manifest.json (sha256 of every other file and one hash over them all)

Source items go to train or test by a seeded hash of a stable key (clip-art title family, Fashion-MNIST
pixel hash, WordNet synset offset), so the two splits share no picture and no item text. Only the label
sets (category and class names) and the fixed QA questions occur in both splits, by design.

Privileged hints: `qry_hint` is text about the query picture that the embedding model never sees, for
teachers that write rationales (it stands in for a strong teacher's eyes): the clip art's SVG title,
cleaned dc:subject keywords, sub-folders below the category and dc:description, at most 300 characters
(`mini_image.clip_hint`). It never contains the row's gold text (case-insensitive): CLS hints drop the
category name, QA hints the gold keyword, I2T hints the title. Keywords that are QA test answers are
left out. Test rows and the other tasks carry no hint.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ..io import replace_dir, staging_dir
from .mini_common import MAX_FAMILY, MAX_PIXELS, MIN_SIDE, Context
from .mini_docvideo import clipart_video_cls, clipart_video_ret, wordnet_docret
from .mini_image import (
    DESCRIPTION_MAX,
    HINT_MAX,
    clipart_cls,
    clipart_gd,
    clipart_i2t,
    clipart_qa,
    clipart_t2i,
    fashion_cls,
)
from .mini_pick import PICK_TASK, wordnet_pick
from .sources import PACKAGES

VERSION = "mmeb-mini/2"
SPLITS = ("train", "test")


def _spec(name: str, modality: str, meta_task: str, ranking: str = "local") -> dict[str, str]:
    metric = "ndcg_linear@5" if modality == "visdoc" else "hit@1"
    fmt = {"image": "image_rows", "video": "video_rows", "visdoc": "beir"}[modality]
    return {
        "name": name,
        "modality": modality,
        "meta_task": meta_task,
        "metric": metric,
        "ranking": ranking,
        "format": fmt,
    }


BUILDERS = [
    (_spec("Clipart-CLS", "image", "CLS"), clipart_cls),
    (_spec("FashionMNIST-CLS", "image", "CLS"), fashion_cls),
    (_spec("Clipart-QA", "image", "QA"), clipart_qa),
    (_spec("Clipart-T2I", "image", "RET"), clipart_t2i),
    (_spec("Clipart-I2T", "image", "RET"), clipart_i2t),
    (_spec("Clipart-GD", "image", "GD"), clipart_gd),
    (_spec("WordNet-DocRet", "visdoc", "RET", "global"), wordnet_docret),
    (_spec("Clipart-VideoRET", "video", "RET", "global"), clipart_video_ret),
    (_spec("Clipart-VideoCLS", "video", "CLS"), clipart_video_cls),
    (_spec(PICK_TASK, "image", "PICK"), wordnet_pick),
]
TASK_NAMES = tuple(spec["name"] for spec, _ in BUILDERS)
DEFAULT_TASKS = TASK_NAMES[:9]  # mmeb-mini: every task but WordNet-Pick


def file_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under `root` except manifest.json, keyed by POSIX relative path."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name != "manifest.json":
            out[path.relative_to(root).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def content_hash(hashes: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()


def read_manifest(out: Path) -> dict | None:
    try:
        return json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_complete(out: Path, seed: int, scale: float, tasks: tuple[str, ...] = DEFAULT_TASKS) -> bool:
    """True when `out` holds a finished build of this version, seed, scale and tasks whose files all match."""
    manifest = read_manifest(out)
    if not manifest or (manifest.get("version"), manifest.get("seed"), manifest.get("scale")) != (
        VERSION,
        seed,
        scale,
    ):
        return False
    if tuple(manifest.get("tasks", DEFAULT_TASKS)) != tuple(tasks):
        return False
    return file_hashes(out) == manifest.get("files")


def package_versions() -> dict[str, str]:
    """Installed versions of the source packages, from dpkg-query ("unknown" where it cannot say)."""
    versions = dict.fromkeys(PACKAGES, "unknown")
    try:
        res = subprocess.run(
            ["dpkg-query", "-W", "-f=${Package}\t${Version}\n", *PACKAGES],
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError:
        return versions
    for line in res.stdout.splitlines():
        name, _, version = line.partition("\t")
        if name in versions and version:
            versions[name] = version
    return versions


PROVENANCE = """# mmeb-mini provenance

Built by `python -m mmemb.data.mini OUT --seed {seed} --scale {scale}` (builder {version}).
Every picture and text comes from the Debian packages below; nothing was downloaded.

| source | Debian package | version | licence |
|---|---|---|---|
| Open Clip Art Library 0.18: PNG pictures, SVG metadata (dc:title, dc:subject) | openclipart-png, openclipart-svg | {openclipart-png} / {openclipart-svg} | public domain |
| Fashion-MNIST (Zalando Research) | dataset-fashion-mnist | {dataset-fashion-mnist} | MIT |
| WordNet 3.0 noun glosses (Princeton University) | wordnet-base | {wordnet-base} | WordNet 3.0 licence (BSD-like; keep its copyright notice) |
| DejaVu Sans fonts (rendering of document pages) | fonts-dejavu-core | {fonts-dejavu-core} | Bitstream Vera / DejaVu font licence (free) |

WordNet 3.0 Copyright 2006 by Princeton University. All rights reserved.

## How it was made

- Clip art: titles cleaned (underscores, "Clipart by NAME - " prefixes, trailing numbers); titles
  of collections (a title family shared by more than {max_family} pictures, or words like
  "collection", "theme", "icon set") dropped; one picture kept per title family; PNGs under
  {min_side} px a side or over {max_pixels:,} pixels, and byte-identical copies, dropped. Pictures
  linked into several categories are not used as classification queries, nor are "unsorted" ones.
- Splits: a seeded hash of the clip-art title family, the Fashion-MNIST pixel bytes and the WordNet
  synset offset; QA keywords are split the same way, so train and test share no picture and no item
  text. Category names, Fashion-MNIST class names and QA questions are label sets shared by design.
- Hints (`qry_hint`, train rows of Clipart-CLS, Clipart-QA, Clipart-I2T and Clipart-VideoCLS only):
  text about the query picture for teachers, never shown to the embedding model: its SVG title, cleaned
  dc:subject keywords, sub-folders below the category ("filed under") and dc:description without URLs,
  trimmed to {description_max} characters; at most {hint_max} characters in all. A piece containing the
  row's gold text (case-insensitive) is dropped: the category name for CLS, the gold keyword for QA, the
  title for I2T (which shows no title). Keywords that are QA test answers are dropped as well.
- WordNet-DocRet qrels: 2 = the page with the synset's entry under the asked lemma, 1 = a page with
  the same synset's gloss under another of its lemmas.
- Seed {seed}, scale {scale}.

## Tasks

{table}
"""


PICK_PROVENANCE = """
## WordNet-Pick (built with `--tasks {tasks}`)

- Words: one-word Open Clip Art keywords that are WordNet noun lemmas. A word is in one of 27 categories
  ("an animal", "a bird", "a country", ...) when the category's synset is among the hypernyms, transitively,
  of its most frequent sense (index.noun order). Answers are never adjectives or adverbs in WordNet, plurals,
  category names, or words whose sense order WordNet's tagged corpus never fixed. Split by a seeded hash of
  the word (30% test): train and test share no word.
- A query lists 4 words and asks for the one in a category; the 10 candidates are those 4 and 6 more words
  of the same split, none of which has any WordNet sense in the asked category.
- Hints (train rows): the answer, the first lemmas of its hypernyms and its WordNet definition.
"""


def write_provenance(root: Path, seed: int, scale: float, tasks: list[dict]) -> None:
    rows = [
        "| task | modality | meta-task | metric | ranking | train | test |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in tasks:
        rows.append(
            f"| {t['name']} | {t['modality']} | {t['meta_task']} | {t['metric']} | {t['ranking']} "
            f"| {t['splits']['train']} | {t['splits']['test']} |"
        )
    text = PROVENANCE.format(
        seed=seed,
        scale=scale,
        version=VERSION,
        table="\n".join(rows),
        max_family=MAX_FAMILY,
        min_side=MIN_SIDE,
        max_pixels=MAX_PIXELS,
        hint_max=HINT_MAX,
        description_max=DESCRIPTION_MAX,
        **package_versions(),
    )
    if any(t["name"] == PICK_TASK for t in tasks):  # only in builds that ask for it
        text += PICK_PROVENANCE.format(tasks=",".join(t["name"] for t in tasks))
    (root / "PROVENANCE.md").write_text(text, encoding="utf-8")


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_beir(root: Path, name: str, split: str, beir: dict) -> None:
    folder = root / name / split
    write_jsonl(folder / "corpus.jsonl", beir["corpus"])
    write_jsonl(folder / "queries.jsonl", beir["queries"])
    lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{c}\t{s}" for q, c, s in beir["qrels"]]
    (folder / "qrels.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def build_into(root: Path, seed: int, scale: float, names: tuple[str, ...] = DEFAULT_TASKS) -> list[dict]:
    """Write the tasks `names`, tasks.json and PROVENANCE.md into the empty folder `root`."""
    ctx = Context(root=root, seed=seed, scale=scale)
    tasks = []
    for spec, build in BUILDERS:
        if spec["name"] not in names:
            continue
        splits = build(ctx)
        for split in SPLITS:
            if spec["format"] == "beir":
                write_beir(root, spec["name"], split, splits[split])
            else:
                write_jsonl(root / spec["name"] / f"{split}.jsonl", splits[split])
        counts = {s: len(splits[s]["queries"] if spec["format"] == "beir" else splits[s]) for s in SPLITS}
        tasks.append({**spec, "splits": counts})
    (root / "tasks.json").write_text(json.dumps(tasks, indent=2) + "\n", encoding="utf-8")
    write_provenance(root, seed, scale, tasks)
    return tasks


def ensure_mini(root: Path, seed: int = 0) -> Path:
    """The default build at `root`, (re)built when missing or made by an older builder version (a quick
    check: tasks.json and the manifest's version; `build_mini` verifies every file when it builds)."""
    version = (read_manifest(root) or {}).get("version")
    if not (root / "tasks.json").is_file() or version != VERSION:
        print(f"mmemb: building mmeb-mini ({VERSION}) into {root} (once, about a minute)", file=sys.stderr)
        build_mini(root, seed=seed)
    return root


def parse_tasks(text: str) -> tuple[str, ...]:
    """A comma-separated task list (`--tasks`), checked by `check_tasks`."""
    return check_tasks(tuple(t.strip() for t in text.split(",") if t.strip()))


def check_tasks(names: tuple[str, ...]) -> tuple[str, ...]:
    """`names` in builder order, or an error naming the unknown ones and the known ones."""
    unknown = sorted(set(names) - set(TASK_NAMES))
    if unknown or not names:
        raise ValueError(
            f"unknown mmeb-mini task {', '.join(unknown) or '(none given)'}; known: {', '.join(TASK_NAMES)}"
        )
    return tuple(n for n in TASK_NAMES if n in names)


def build_mini(out: Path, seed: int = 0, scale: float = 1.0, tasks: tuple[str, ...] = DEFAULT_TASKS) -> Path:
    """Build mmeb-mini (or the tasks `tasks`) into `out` atomically and return `out`; a complete matching
    build is reused.

    The build goes into a hidden sibling folder that is renamed into place when finished, so `out`
    never holds half a benchmark. An existing `out` is replaced only if it is empty or an earlier build
    (it has a manifest.json); anything else is refused rather than deleted.
    """
    out = Path(out)
    scale = float(scale)
    tasks = check_tasks(tuple(tasks))
    if is_complete(out, seed, scale, tasks):
        return out
    if out.exists() and any(out.iterdir()) and read_manifest(out) is None:
        raise FileExistsError(f"{out} exists and is not an mmeb-mini build; choose another folder")
    tmp = staging_dir(out)
    try:
        build_into(tmp, seed, scale, tasks)
        hashes = file_hashes(tmp)
        manifest = {"name": "mmeb-mini", "version": VERSION, "seed": seed, "scale": scale}
        if tasks != DEFAULT_TASKS:  # the default build's manifest stays as it was
            manifest["tasks"] = list(tasks)
        manifest |= {"content_hash": content_hash(hashes), "files": hashes}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmemb.data.mini", description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="output folder (replaced atomically)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every query count")
    parser.add_argument("--tasks", default=",".join(DEFAULT_TASKS),
                        help=f"comma-separated tasks (default: mmeb-mini's nine; also: {PICK_TASK})")  # fmt: skip
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        tasks = parse_tasks(args.tasks)
    except ValueError as e:
        parser.error(str(e))
    out = build_mini(args.out, seed=args.seed, scale=args.scale, tasks=tasks)
    for task in json.loads((out / "tasks.json").read_text()):
        print(
            f"{task['name']:<18} {task['modality']:<7} train {task['splits']['train']:>5}  test {task['splits']['test']:>4}"
        )
    print(
        f"{out}: content hash {read_manifest(out)['content_hash'][:16]} ({time.perf_counter() - start:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
