"""Readers of the real data that Debian packages install: clip art, Fashion-MNIST, WordNet, fonts.

Each reader returns plain records and raises `MissingDataError` naming the missing path and the Debian
package that provides it. Nothing is cleaned here beyond parsing: choices about what makes a usable
title or keyword belong to the benchmark that uses the data (`mini`).
"""

from __future__ import annotations

import gzip
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np

OPENCLIPART = Path("/usr/share/openclipart")
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
WORDNET_NOUNS = Path("/usr/share/wordnet/data.noun")
WORDNET_INDEX = Path("/usr/share/wordnet/index.noun")
DEJAVU = Path("/usr/share/fonts/truetype/dejavu")
PACKAGES = (
    "openclipart-png",
    "openclipart-svg",
    "dataset-fashion-mnist",
    "wordnet-base",
    "fonts-dejavu-core",
)
INSTALL = "apt-get install " + " ".join(PACKAGES)

FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip

DC = "{http://purl.org/dc/elements/1.1/}"
RDF = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"


class MissingDataError(FileNotFoundError):
    """A source file or folder is absent; the message says which Debian package installs it."""


def require(path: Path, package: str) -> Path:
    """Return `path` if it exists, else raise `MissingDataError` naming `package`."""
    if not path.exists():
        raise MissingDataError(f"{path} not found: it comes with the Debian package {package} ({INSTALL})")
    return path


@dataclass(frozen=True)
class ClipartItem:
    """One distinct clip-art picture (symbolic links in other categories folded into `categories`)."""

    key: str  # relative path of the real PNG without suffix, e.g. "animals/birds/parrot_01"
    png: Path
    category: str  # top-level folder of the real file
    categories: tuple[str, ...]  # every top-level folder that shows it (via links), sorted
    title: str
    keywords: tuple[str, ...]  # dc:subject entries, stripped, lower-cased, unique, in file order
    description: str


def _text(el: ET.Element | None) -> str:
    return " ".join((el.text or "").split()) if el is not None else ""


def read_svg_metadata(path: Path) -> dict[str, object]:
    """dc:title, dc:subject keywords and dc:description of the cc:Work in an SVG; empty when absent.

    Parsing stops at the end of <metadata>, so large drawings cost little. A file that is not
    well-formed XML yields empty fields rather than an error.
    """
    meta = None
    try:
        for _, el in ET.iterparse(path, events=("end",)):
            if el.tag.rsplit("}", 1)[-1] == "metadata":
                meta = el
                break
    except (ET.ParseError, OSError, UnicodeError):
        meta = None
    work = None
    if meta is not None:
        work = next((el for el in meta.iter() if el.tag.rsplit("}", 1)[-1] == "Work"), None)
    if work is None:
        return {"title": "", "keywords": (), "description": ""}
    subject = work.find(DC + "subject")
    words: list[str] = []
    if subject is not None:
        items = list(subject.iter(RDF + "li")) or [subject]
        words = [_text(li).lower() for li in items]
    keywords = tuple(dict.fromkeys(w for w in words if w))
    return {
        "title": _text(work.find(DC + "title")),
        "keywords": keywords,
        "description": _text(work.find(DC + "description")),
    }


@lru_cache(maxsize=4)
def read_openclipart(root: Path = OPENCLIPART) -> tuple[ClipartItem, ...]:
    """Every clip-art picture that has a PNG and an SVG with a non-empty title, sorted by key.

    A PNG is matched to the SVG at the same relative path. Links (the same file shown in several
    categories) are folded into one item keyed by the real file; its metadata come from the first
    path, in sorted order, whose SVG has a title.
    """
    png_root = require(root / "png", "openclipart-png")
    svg_root = require(root / "svg", "openclipart-svg")
    real_root = Path(os.path.realpath(png_root))
    groups: dict[Path, list[Path]] = {}
    for png in sorted(png_root.rglob("*.png")):
        real = Path(os.path.realpath(png))
        if real.is_file():
            groups.setdefault(real, []).append(png)
    items = []
    for real, links in groups.items():
        meta = None
        for png in links:
            svg = (svg_root / png.relative_to(png_root)).with_suffix(".svg")
            found = read_svg_metadata(svg) if svg.is_file() else None
            if found and found["title"]:
                meta = found
                break
        if meta is None:
            continue
        rel = real.relative_to(real_root)
        items.append(
            ClipartItem(
                key=rel.with_suffix("").as_posix(),
                png=real,
                category=rel.parts[0],
                categories=tuple(sorted({p.relative_to(png_root).parts[0] for p in links} | {rel.parts[0]})),
                title=str(meta["title"]),
                keywords=tuple(meta["keywords"]),  # type: ignore[arg-type]
                description=str(meta["description"]),
            )
        )
    return tuple(sorted(items, key=lambda it: it.key))


def clipart_categories(root: Path = OPENCLIPART) -> tuple[str, ...]:
    """The top-level category folders of the PNG tree, sorted (22 in openclipart 0.18)."""
    png_root = require(root / "png", "openclipart-png")
    return tuple(sorted(p.name for p in png_root.iterdir() if p.is_dir()))


def _read_idx(path: Path) -> np.ndarray:
    """An idx file (the MNIST format, gzip-compressed): big-endian header, then unsigned bytes."""
    with gzip.open(require(path, "dataset-fashion-mnist"), "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[:4], "big")
    if magic >> 8 != 0x08:  # 0x08 = unsigned byte; the low byte is the number of dimensions
        raise ValueError(f"{path}: not an unsigned-byte idx file (magic {magic:#x})")
    ndim = magic & 0xFF
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


@lru_cache(maxsize=2)
def read_fashion_mnist(root: Path = FASHION_MNIST) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"train": (images N×28×28 uint8, labels N), "t10k": (...)}; label i names FASHION_CLASSES[i]."""
    out = {}
    for part in ("train", "t10k"):
        images = _read_idx(root / f"{part}-images-idx3-ubyte.gz")
        labels = _read_idx(root / f"{part}-labels-idx1-ubyte.gz")
        if len(images) != len(labels):
            raise ValueError(f"{root}: {part} has {len(images)} images but {len(labels)} labels")
        out[part] = (images, labels)
    return out


@dataclass(frozen=True)
class Synset:
    """A WordNet noun synset: its offset in data.noun, lexicographer file, lemmas and gloss."""

    offset: str
    lexfile: int
    lemmas: tuple[str, ...]  # underscores turned into spaces, in WordNet's order
    gloss: str  # the whole gloss: definition, then examples in quotes after ';'
    hypernyms: tuple[str, ...] = ()  # offsets of its hypernyms ('@') and instance hypernyms ('@i')


def parse_data_line(line: str) -> Synset | None:
    """One line of a WordNet data file, or None for the licence header (lines starting with spaces)."""
    if not line or line.startswith(" "):
        return None
    head, _, gloss = line.partition(" | ")
    fields = head.split()
    count = int(fields[3], 16)  # the word count is hexadecimal
    lemmas = tuple(fields[4 + 2 * i].replace("_", " ") for i in range(count))
    at = 4 + 2 * count
    pointers = [
        fields[at + 1 + 4 * i : at + 5 + 4 * i] for i in range(int(fields[at]))
    ]  # symbol offset pos st
    hypernyms = tuple(p[1] for p in pointers if p[0] in ("@", "@i") and p[2] == "n")
    return Synset(
        offset=fields[0], lexfile=int(fields[1]), lemmas=lemmas, gloss=gloss.strip(), hypernyms=hypernyms
    )


@lru_cache(maxsize=2)
def read_wordnet_nouns(path: Path = WORDNET_NOUNS) -> tuple[Synset, ...]:
    """Every noun synset in data.noun (82,115 in WordNet 3.0), in file order."""
    with open(require(path, "wordnet-base"), encoding="utf-8", errors="replace") as f:
        parsed = (parse_data_line(line.rstrip("\n")) for line in f)
        return tuple(s for s in parsed if s is not None)


class IndexEntry(NamedTuple):
    """A noun lemma's line in index.noun."""

    synsets: tuple[str, ...]  # data.noun offsets in WordNet's sense order (most frequent first)
    tagged: int  # tagsense_cnt: how many of its senses were counted in the tagged corpus (0: order arbitrary)


@lru_cache(maxsize=2)
def read_wordnet_index(path: Path = WORDNET_INDEX) -> dict[str, IndexEntry]:
    """Noun lemma (lower case, underscores as spaces) -> its index.noun entry."""
    out = {}
    with open(require(path, "wordnet-base"), encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith(" "):
                continue  # the licence header
            fields = line.split()
            n = int(fields[2])  # synset_cnt; the line ends with sense_cnt, tagsense_cnt and n offsets
            out[fields[0].replace("_", " ")] = IndexEntry(tuple(fields[-n:]), int(fields[-n - 1]))
    return out


@lru_cache(maxsize=4)
def read_wordnet_lemmas(pos: str, root: Path = WORDNET_INDEX.parent) -> frozenset[str]:
    """Every lemma of index.<pos> ("noun", "verb", "adj", "adv"), lower case, underscores as spaces."""
    with open(require(root / f"index.{pos}", "wordnet-base"), encoding="utf-8", errors="replace") as f:
        return frozenset(line.split(" ", 1)[0].replace("_", " ") for line in f if not line.startswith(" "))


def font_path(name: str = "DejaVuSans.ttf", root: Path = DEJAVU) -> Path:
    """Path of a DejaVu TrueType font."""
    return require(root / name, "fonts-dejavu-core")
