"""The image tasks of mmeb-mini: Clipart-CLS, FashionMNIST-CLS, Clipart-QA, -T2I, -I2T and -GD.

Also the privileged hints (`clip_hint`) that train rows of the clip-art CLS, QA, I2T and VideoCLS tasks
carry in `qry_hint`: text about the query picture for teachers only, never containing the row's gold text.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from collections.abc import Iterable, Set
from functools import lru_cache

from . import render
from .mini_common import (
    NUM_CANDIDATES,
    SPLITS,
    TEST_SHARE,
    Clip,
    Context,
    balanced,
    category_labels,
    classifiable,
    image_row,
    label_candidates,
    label_of,
    negatives,
    ranked,
    sample_pool,
    stable_hash,
    unit,
    usable_clipart,
)
from .sources import FASHION_CLASSES, clipart_categories, read_fashion_mnist, read_wordnet_nouns

# ---- image tasks ------------------------------------------------------------------------------------

CLS_QRY = "<|image_1|> Represent the given image for classification"
QA_QRY = "<|image_1|> Represent the given image with the following question:"
QA_QUESTIONS = (
    "Which keyword describes this picture?",
    "Which tag fits this clip art?",
    "What is this picture about, in one keyword?",
)
T2I_QRY = "Find me a clip-art image that matches the given title:"
I2T_QRY = "<|image_1|> Find a title for the given clip-art image."
IMG_TGT = "<|image_1|> Represent the given image."
GD_QRY = "<|image_1|> Select the portion of the image that shows:"
GD_TGT = "<|image_1|> Represent the given cropped image of the object."


# ---- privileged hints: what the SVG metadata says about a picture, for teachers only -------------------

HINT_MAX = 300
DESCRIPTION_MAX = 200
HINT_KEYWORDS = 6
_URL = re.compile(r"\S*(?:@|https?://|www\.)\S*")


def category_words(clip: Clip) -> tuple[str, ...]:
    """The gold texts of a classification row: the category label and its folder name."""
    return (label_of(clip.item.category), clip.item.category)


def with_hint(row: dict, split: str, hint: str) -> dict:
    """`row` with a `qry_hint` field on train rows (test rows never carry one)."""
    return {**row, "qry_hint": hint} if split == "train" else row


def trim(text: str, limit: int) -> str:
    """`text` cut at a word boundary to at most `limit` characters, "..." marking a cut."""
    if len(text) <= limit:
        return text
    return text[: limit - 3].rsplit(" ", 1)[0].rstrip(" ,;:.") + "..."


def clip_hint(clip: Clip, gold: tuple[str, ...], held_out: Set[str] = frozenset(), title: bool = True) -> str:
    """Privileged text about a clip-art picture, e.g. "title: cartoon cat; keywords: pet, kitten; filed
    under: mammals / housecats; description: ...", at most HINT_MAX characters.

    From the SVG metadata (cleaned title unless `title` is False, cleaned dc:subject keywords, dc:description
    without URLs or e-mail addresses, trimmed) and the sub-folders below the category. Any piece containing
    one of the `gold` texts (case-insensitive) is left out, so the hint never holds the row's answer;
    keywords in `held_out` (the QA test answers) are left out too. Returns "" when nothing is left.
    """
    banned = [g.lower() for g in gold if g]

    def ok(text: str) -> bool:
        return bool(text) and not any(g in text.lower() for g in banned)

    parts: list[tuple[str, str]] = []
    if title and ok(clip.title):
        parts.append(("title", clip.title))
    words = [k for k in dict.fromkeys(clean_keyword(w) for w in clip.item.keywords) if k not in held_out]
    words = [k for k in words if ok(k) and k != clip.title.lower()][:HINT_KEYWORDS]
    while words and len(_join(parts + [("keywords", ", ".join(words))])) > HINT_MAX:
        words.pop()
    if words:
        parts.append(("keywords", ", ".join(words)))
    folders = [f.replace("_", " ") for f in clip.key.split("/")[1:-1]]
    folders = [f for f in folders if ok(f)]
    if folders and len(_join(parts + [("filed under", " / ".join(folders))])) <= HINT_MAX:
        parts.append(("filed under", " / ".join(folders)))
    about = " ".join(_URL.sub(" ", clip.item.description).split())
    room = HINT_MAX - len(_join(parts + [("description", "")]))
    if ok(about) and about.lower().rstrip(" .!") != clip.title.lower() and room >= 40:
        parts.append(("description", trim(about, min(DESCRIPTION_MAX, room))))
    for hint in (_join(parts), "; ".join(v for _, v in parts)):
        if ok(hint):  # a label or a join could spell a gold text ("key" in "keywords")
            return hint
    while parts and not ok("; ".join(v for _, v in parts)):
        parts.pop()
    return "; ".join(v for _, v in parts)


def _join(parts: list[tuple[str, str]]) -> str:
    return "; ".join(f"{label}: {value}" for label, value in parts)


def clipart_cls(ctx: Context) -> dict[str, list[dict]]:
    """Clip art -> its category name, among all category names."""
    labels = category_labels()
    out = {}
    for split in SPLITS:
        pool = ranked(filter(classifiable, ctx.clipart[split]), lambda c: c.key, ctx.seed, "CLS", split)
        chosen = balanced(pool, ctx.count("Clipart-CLS", split), lambda c: c.item.category)
        out[split] = [
            with_hint(
                image_row(
                    CLS_QRY, "", ctx.clip_path(c), "", label_candidates(label_of(c.item.category), labels)
                ),
                split,
                clip_hint(c, category_words(c), qa_vocabulary(ctx)[1]),
            )
            for c in chosen
        ]
    return out


@lru_cache(maxsize=1)
def fashion_items() -> tuple[tuple[str, str, int], ...]:
    """(key, pixel sha256, label) of every distinct Fashion-MNIST picture (first copy kept)."""
    seen: set[str] = set()
    items = []
    for part, (images, labels) in read_fashion_mnist().items():
        for i, (pixels, label) in enumerate(zip(images, labels, strict=True)):
            digest = hashlib.sha256(pixels.tobytes()).hexdigest()
            if digest not in seen:
                seen.add(digest)
                items.append((f"{part}-{i:05d}", digest, int(label)))
    return tuple(items)


def fashion_cls(ctx: Context) -> dict[str, list[dict]]:
    """Fashion-MNIST picture (upscaled, RGB) -> its class name, among the ten."""
    data = read_fashion_mnist()
    labels = list(FASHION_CLASSES)
    out = {}
    for split in SPLITS:
        pool = [
            it
            for it in fashion_items()
            if (unit(ctx.seed, "split-fashion", it[1]) < TEST_SHARE["fashion"]) == (split == "test")
        ]
        pool = ranked(pool, lambda it: it[1], ctx.seed, "FashionMNIST-CLS")
        rows = []
        for key, _, label in balanced(pool, ctx.count("FashionMNIST-CLS", split), lambda it: str(it[2])):
            part, index = key.split("-")
            pixels = data[part][0][int(index)]
            path = ctx.save(f"media/fashion/{key}.png", lambda p=pixels: render.fashion_image(p))
            rows.append(image_row(CLS_QRY, "", path, "", label_candidates(FASHION_CLASSES[label], labels)))
        out[split] = rows
    return out


STOP_KEYWORDS = frozenset(
    "clip art clipart svg png image picture icon icons theme unsorted hash magick gramastar stars media "
    "public domain openclipart drawing color colour simple black white line art cartoon illustration "
    "remix sign symbol shape shapes computer action application people geometry".split()
)


def clean_keyword(raw: str) -> str:
    """A usable dc:subject keyword (1-3 plain words), or "" for a code, a name list or a stop word."""
    k = " ".join(raw.replace("_", " ").split())
    ok = re.fullmatch(r"[a-z][a-z' -]{2,24}", k) and len(k.split()) <= 3 and k not in STOP_KEYWORDS
    return k if ok else ""


@lru_cache(maxsize=1)
def noun_lemmas() -> frozenset[str]:
    """Every WordNet noun lemma, lower-cased ("united states", "tux", "belgium", ...)."""
    return frozenset(lemma.lower() for s in read_wordnet_nouns() for lemma in s.lemmas)


def keyword_vocabulary(clips: Iterable[Clip]) -> set[str]:
    """Keywords that are WordNet nouns, shared by 2 pictures to 2% of them, and not category names.

    The WordNet test drops tags made of glued words or private codes ("networksym", "musicstuff").
    """
    clips = list(clips)
    df = Counter(k for c in clips for k in keywords_of(c))
    banned = set(category_labels()) | set(clipart_categories())
    nouns = noun_lemmas()
    return {
        k for k, n in df.items() if 2 <= n <= max(2, 0.02 * len(clips)) and k not in banned and k in nouns
    }


def keywords_of(clip: Clip) -> set[str]:
    return {k for w in clip.item.keywords if (k := clean_keyword(w))}


def known_words(clip: Clip) -> set[str]:
    """Everything the picture is already described by: raw and cleaned keywords, title words."""
    title = {w for w in re.findall(r"[a-z]+", clip.title.lower()) if len(w) >= 3}
    return set(clip.item.keywords) | keywords_of(clip) | title


def qa_row(ctx: Context, clip: Clip, gold: str, pool: list[str]) -> dict | None:
    """The QA row of `clip`, with 9 negatives from `pool` that overlap nothing the picture has."""
    known = known_words(clip)
    negs = [
        k for k in ranked(pool, str, ctx.seed, "QA-neg", clip.key) if not any(k in w or w in k for w in known)
    ]
    if len(negs) < NUM_CANDIDATES - 1:
        return None
    question = QA_QUESTIONS[stable_hash(ctx.seed, "QA-question", clip.key) % len(QA_QUESTIONS)]
    cands = [(k, "") for k in [gold, *negs[: NUM_CANDIDATES - 1]]]
    return image_row(QA_QRY, question, ctx.clip_path(clip), "", cands)


def qa_vocabulary(ctx: Context) -> tuple[frozenset[str], frozenset[str]]:
    """(QA answer vocabulary, its test share): keywords split by a seeded hash, like the pictures."""
    if "qa-vocab" not in ctx.cache:
        vocab = frozenset(keyword_vocabulary(usable_clipart()))
        test = frozenset(k for k in vocab if unit(ctx.seed, "split-keyword", k) < TEST_SHARE["keyword"])
        ctx.cache["qa-vocab"] = (vocab, test)
    return ctx.cache["qa-vocab"]  # type: ignore[return-value]


def clipart_qa(ctx: Context) -> dict[str, list[dict]]:
    """Picture + question -> one of its keywords, against keywords of other pictures it lacks.

    The keyword vocabulary is split like the pictures, so no answer text occurs in both splits.
    """
    vocab, test_words = qa_vocabulary(ctx)
    out = {}
    for split in SPLITS:
        words = test_words if split == "test" else vocab - test_words
        pool = [c for c in ctx.clipart[split] if keywords_of(c) & words]
        chosen, _ = sample_pool(ctx, "Clipart-QA", split, pool)
        gold = {c.key: ranked(keywords_of(c) & words, str, ctx.seed, "QA-gold", c.key)[0] for c in chosen}
        negs = sorted(set(gold.values()))  # answers of the other rows, topped up to 30 words
        negs += [k for k in ranked(words, str, ctx.seed, "QA-extra") if k not in negs][
            : max(0, 30 - len(negs))
        ]
        out[split] = [
            with_hint(row, split, clip_hint(c, (gold[c.key],), test_words))
            for c in chosen
            if (row := qa_row(ctx, c, gold[c.key], negs))
        ]
    return out


def ten_clips(ctx: Context, c: Clip, pool: list[Clip], tag: str) -> list[Clip]:
    """`c` and 9 other clips of `pool` (seeded by `tag`): the candidates of a title <-> picture row."""
    return [c, *negatives(c, pool, lambda x: x.key, 9, ctx.seed, tag)]


def clipart_t2i(ctx: Context) -> dict[str, list[dict]]:
    """Title -> its picture, among 10 pictures."""
    out = {}
    for split in SPLITS:
        chosen, pool = sample_pool(ctx, "Clipart-T2I", split, ctx.clipart[split])
        out[split] = [
            image_row(
                T2I_QRY,
                c.title,
                "",
                IMG_TGT,
                [("", ctx.clip_path(x)) for x in ten_clips(ctx, c, pool, "T2I")],
            )
            for c in chosen
        ]
    return out


def clipart_i2t(ctx: Context) -> dict[str, list[dict]]:
    """Picture -> its title, among 10 titles."""
    out = {}
    hint_words = qa_vocabulary(ctx)[1]
    for split in SPLITS:
        chosen, pool = sample_pool(ctx, "Clipart-I2T", split, ctx.clipart[split])
        out[split] = [
            with_hint(
                image_row(
                    I2T_QRY, "", ctx.clip_path(c), "", [(x.title, "") for x in ten_clips(ctx, c, pool, "I2T")]
                ),
                split,
                clip_hint(c, (c.title,), hint_words, title=False),
            )
            for c in chosen
        ]
    return out


def clipart_gd(ctx: Context) -> dict[str, list[dict]]:
    """2×2 composite + a title -> the tile showing it, among its 4 tiles and 6 tiles of other composites."""
    out = {}
    for split in SPLITS:
        n_comp = max(3, math.ceil(ctx.count("Clipart-GD", split) / 4))
        order = ranked(ctx.clipart[split], lambda c: c.key, ctx.seed, "GD", split)[: 4 * n_comp]
        groups = [order[i : i + 4] for i in range(0, len(order) - 3, 4)]
        tiles: list[tuple[int, Clip, str]] = []  # (composite index, clip, tile path)
        composites = []
        for i, group in enumerate(groups):
            grid, crops = render.composite_2x2([render.load_on_white(c.item.png) for c in group])
            stem = f"media/grounding/{split}-{i:04d}"
            composites.append(ctx.save(f"{stem}.png", lambda g=grid: g))
            tiles += [
                (i, c, ctx.save(f"{stem}-tile{k}.png", lambda t=t: t))
                for k, (c, t) in enumerate(zip(group, crops, strict=True))
            ]
        rows = []
        for i, clip, path in tiles:
            same = [p for j, c, p in tiles if j == i and c.key != clip.key]
            other = [t for t in tiles if t[0] != i]
            other = ranked(other, lambda t: t[1].key, ctx.seed, "GD-neg", clip.key)[: NUM_CANDIDATES - 4]
            cands = [("", p) for p in [path, *same, *(t[2] for t in other)]]
            rows.append(image_row(GD_QRY, clip.title, composites[i], GD_TGT, cands))
        out[split] = rows
    return out
