"""Shared pieces of the mmeb-mini builder: seeded hashing, the build context, row layouts, clip-art pool.

Every choice (split, sample, candidate order, motion of a clip) comes from `stable_hash(seed, ...)`,
so a build depends only on the seed, the scale and the installed data.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import TypeVar

from PIL import Image

from . import render
from .sources import ClipartItem, clipart_categories, read_openclipart

X = TypeVar("X")
SPLITS = ("train", "test")
# Queries per split at scale 1.0, (train, test). Clipart-Video serves both video tasks.
BASE = {
    "Clipart-CLS": (600, 150),
    "FashionMNIST-CLS": (600, 150),
    "Clipart-QA": (500, 150),
    "Clipart-T2I": (500, 150),
    "Clipart-I2T": (500, 150),
    "Clipart-GD": (400, 160),
    "WordNet-DocRet": (400, 150),
    "Clipart-Video": (200, 100),
    "WordNet-Pick": (400, 150),  # not in the default build (mini.DEFAULT_TASKS): `--tasks WordNet-Pick`
}
TEST_SHARE = {"clipart": 0.3, "fashion": 0.5, "keyword": 0.4, "wordnet": 0.3}
MIN_ROWS = 4
NUM_CANDIDATES = 10
MAX_FAMILY, MIN_SIDE, MAX_PIXELS = 3, 32, 4_000_000


def stable_hash(*parts: object) -> int:
    """A 64-bit hash of `parts` that is the same on every machine and Python run."""
    text = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def unit(*parts: object) -> float:
    """`stable_hash` mapped to [0, 1)."""
    return stable_hash(*parts) / 2**64


def ranked(items: Iterable[X], key: Callable[[X], str], *salt: object) -> list[X]:
    """`items` in a seeded pseudo-random order that depends only on `salt` and each item's key."""
    return sorted(items, key=lambda it: (stable_hash(*salt, key(it)), key(it)))


def balanced(items: list[X], n: int, label: Callable[[X], str]) -> list[X]:
    """The first `n` of `items` taken round-robin over labels (sorted), keeping each label's order."""
    groups: dict[str, list[X]] = defaultdict(list)
    for it in items:
        groups[label(it)].append(it)
    out: list[X] = []
    depth = 0
    while len(out) < n and any(depth < len(g) for g in groups.values()):
        out += [groups[lab][depth] for lab in sorted(groups) if depth < len(groups[lab])]
        depth += 1
    return out[:n]


def slug(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", key.replace("/", "__"))


# ---- clip art: which pictures and titles are usable --------------------------------------------------

JUNK_TITLE = re.compile(
    r"collection|theme|icon ?set|cliparts|untitled|submission|sibmission|"
    r"^(image|drawing|layer|new document|clip ?art)\b",
    re.I,
)


def clean_title(raw: str) -> str:
    """A title without "Clipart by NAME - ", ".svg", a number glued to its end, or underscores."""
    t = re.sub(r"^clip ?art by [^-]+ - ", "", raw.strip(), flags=re.I)
    t = re.sub(r"\.svg$", "", t, flags=re.I)
    t = re.sub(r"(?<=[A-Za-z])\d+$|_\d+$", "", t)
    return " ".join(t.replace("_", " ").split()).strip(" -.")


def title_family(title: str) -> str:
    """Lower-case words of a title without numbers or parentheses: "LED (Grey) 2" -> "led"."""
    return " ".join(re.findall(r"[a-z]+", re.sub(r"\([^)]*\)", " ", title.lower())))


def good_title(title: str) -> bool:
    return len(re.findall(r"[A-Za-z]", title)) >= 3 and len(title) <= 60 and not JUNK_TITLE.search(title)


@dataclass(frozen=True)
class Clip:
    """A usable clip-art picture: the source item, its cleaned title and its title family."""

    item: ClipartItem
    title: str
    family: str

    @property
    def key(self) -> str:
        return self.item.key


@lru_cache(maxsize=1)
def usable_clipart() -> tuple[Clip, ...]:
    """Clip art with a descriptive title unique to its family, a sane PNG size, and unique bytes."""
    cands = [(it, clean_title(it.title)) for it in read_openclipart()]
    cands = [(it, t) for it, t in cands if good_title(t) and title_family(t)]
    family_size = Counter(title_family(t) for _, t in cands)
    families: set[str] = set()
    digests: set[str] = set()
    clips = []
    for it, title in cands:
        fam = title_family(title)
        if family_size[fam] > MAX_FAMILY or fam in families:
            continue  # a collection's name rather than a title, or a near-duplicate of a kept one
        w, h = render.png_size(it.png)
        digest = hashlib.sha256(it.png.read_bytes()).hexdigest()
        if min(w, h) < MIN_SIDE or w * h > MAX_PIXELS or digest in digests:
            continue
        families.add(fam)
        digests.add(digest)
        clips.append(Clip(item=it, title=title, family=fam))
    return tuple(clips)


def label_of(category: str) -> str:
    return category.replace("_", " ")


def category_labels() -> list[str]:
    return [label_of(c) for c in clipart_categories()]


def classifiable(clip: Clip) -> bool:
    """Shown in exactly one category, and that category is not "unsorted"."""
    return len(clip.item.categories) == 1 and clip.item.category != "unsorted"


# ---- the build context: seed, scale, pools and media ---------------------------------------------------


@dataclass
class Context:
    """One build: the folder being written, the seed and scale, and the clip-art pools by split."""

    root: Path
    seed: int
    scale: float
    cache: dict[str, object] = field(default_factory=dict)

    def count(self, task: str, split: str) -> int:
        return max(MIN_ROWS, round(BASE[task][SPLITS.index(split)] * self.scale))

    @cached_property
    def clipart(self) -> dict[str, list[Clip]]:
        """Usable clip art by split; the split follows the title family."""
        pools: dict[str, list[Clip]] = {s: [] for s in SPLITS}
        for clip in usable_clipart():
            test = unit(self.seed, "split-clipart", clip.family) < TEST_SHARE["clipart"]
            pools["test" if test else "train"].append(clip)
        return pools

    def rng(self, *parts: object) -> random.Random:
        return random.Random(stable_hash(self.seed, *parts))

    def save(self, rel: str, make: Callable[[], Image.Image]) -> str:
        """Write the picture `make()` at `rel` (once) and return `rel`."""
        path = self.root / rel
        if not path.exists():
            img = make()
            (render.save_jpeg if rel.endswith(".jpg") else render.save_png)(img, path)
        return rel

    def clip_path(self, clip: Clip) -> str:
        return self.save(f"media/clipart/{slug(clip.key)}.png", lambda: render.load_on_white(clip.item.png))


def eval_row(
    media: str, qry_inst: str, qry_text: str, qry_media: str, tgt_inst: str, cands: list[tuple[str, str]]
) -> dict:
    """An MMEB eval row; `media` is "img" (image paths) or "video" (frame folders), `cands` are (text, media
    path) pairs, the gold one first."""
    return {
        "qry_inst": qry_inst,
        "qry_text": qry_text,
        f"qry_{media}_path": qry_media,
        "tgt_inst": tgt_inst,
        "tgt_text": [t for t, _ in cands],
        f"tgt_{media}_path": [p for _, p in cands],
    }


def image_row(
    qry_inst: str, qry_text: str, qry_img: str, tgt_inst: str, cands: list[tuple[str, str]]
) -> dict:
    return eval_row("img", qry_inst, qry_text, qry_img, tgt_inst, cands)


def video_row(
    qry_inst: str, qry_text: str, qry_video: str, tgt_inst: str, cands: list[tuple[str, str]]
) -> dict:
    return eval_row("video", qry_inst, qry_text, qry_video, tgt_inst, cands)


def label_candidates(gold: str, labels: list[str]) -> list[tuple[str, str]]:
    return [(gold, "")] + [(lab, "") for lab in labels if lab != gold]


def negatives(gold: X, pool: list[X], key: Callable[[X], str], k: int, *salt: object) -> list[X]:
    """`k` members of `pool` other than `gold`, in a seeded order."""
    return [x for x in ranked(pool, key, *salt, key(gold)) if key(x) != key(gold)][:k]


def sample_pool(ctx: Context, task: str, split: str, pool: list[Clip]) -> tuple[list[Clip], list[Clip]]:
    """The task's queries from `pool`, and the candidate pool (the queries, topped up to 2×10)."""
    order = ranked(pool, lambda c: c.key, ctx.seed, task, split)
    chosen = order[: ctx.count(task, split)]
    return chosen, order[: max(len(chosen), 2 * NUM_CANDIDATES)]
