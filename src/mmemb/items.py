"""Read `mmemb embed` input: one JSON object a line, media paths relative to the JSONL file.

    {"id": "q1", "text": "a red car", "instruction": "Find an image of"}
    {"id": "img7", "image": "images/7.png"}
    {"id": "clip3", "frames": ["clip3/000.jpg", "clip3/001.jpg"]}
    {"id": "doc2", "pages": ["doc2/p1.png", "doc2/p2.png"]}

Everything is checked before any model work: a bad line is one `InputError` naming the file and line.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from .io import read_jsonl
from .types import InputError, Sample

FIELDS = {"id", "text", "image", "frames", "pages", "instruction"}


def read_items(path: Path) -> list[Sample]:
    samples = list(iter_items(path))
    if not samples:
        raise InputError(f"{path}: no items (expected one JSON object per line)")
    return samples


def iter_items(path: Path) -> Iterator[Sample]:
    """The items of a JSONL file, validated and streamed (only the ids are held, to refuse duplicates)."""
    path = Path(path)
    seen: dict[str, int] = {}
    for where, obj in read_jsonl(path):
        sample = parse_item(obj, base=path.parent, where=where)
        if sample.id in seen:
            raise InputError(f"{where}: duplicate id {sample.id!r} (first on line {seen[sample.id]})")
        seen[sample.id] = int(where.rsplit(":", 1)[1])
        yield sample


def parse_item(obj: object, base: Path, where: str) -> Sample:
    """Validate one item and resolve its media paths against `base`; media files must exist."""
    if not isinstance(obj, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - FIELDS)
    if unknown:
        raise InputError(f"{where}: unknown field(s) {unknown}; allowed: {sorted(FIELDS)}")
    if "id" not in obj or not isinstance(obj["id"], (str, int)) or isinstance(obj["id"], bool):
        raise InputError(f'{where}: every item needs an "id" (string or integer)')
    who = f"{where} (id {obj['id']!r})"
    for key in ("text", "instruction", "image"):
        if key in obj and not isinstance(obj[key], str):
            raise InputError(f'{who}: "{key}" must be a string')
    for key in ("frames", "pages"):
        if key in obj and (not isinstance(obj[key], list) or not all(isinstance(p, str) for p in obj[key])):
            raise InputError(f'{who}: "{key}" must be a list of file paths')

    def resolve(p: str) -> Path:
        full = (base / p) if not Path(p).is_absolute() else Path(p)
        if not full.is_file():
            raise InputError(
                f"{who}: media file {p!r} not found (looked for {full}; paths are relative to the JSONL file)"
            )
        return full

    try:
        return Sample(
            id=str(obj["id"]),
            text=obj.get("text") or None,
            image=resolve(obj["image"]) if obj.get("image") else None,
            frames=tuple(resolve(p) for p in obj.get("frames", [])),
            pages=tuple(resolve(p) for p in obj.get("pages", [])),
            instruction=obj.get("instruction"),
        )
    except InputError as e:
        msg = str(e)
        raise InputError(msg if msg.startswith(where) else f"{who}: {msg}") from None
