"""The document and video tasks of mmeb-mini: WordNet-DocRet, Clipart-VideoRET, Clipart-VideoCLS."""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

from . import render
from .mini_common import (
    SPLITS,
    TEST_SHARE,
    Clip,
    Context,
    balanced,
    category_labels,
    classifiable,
    label_candidates,
    label_of,
    ranked,
    slug,
    stable_hash,
    unit,
    video_row,
)
from .mini_image import category_words, clip_hint, qa_vocabulary, with_hint
from .sources import read_wordnet_nouns

# ---- WordNet-DocRet: glossary pages rendered from real noun glosses ------------------------------------

LEMMA = re.compile(r"[a-z][a-z -]{2,29}")  # a common noun (proper nouns start upper-case)
OTHER_LEMMA = re.compile(r"[A-Za-z][A-Za-z -]{2,29}")


@dataclass(frozen=True)
class Gloss:
    """A usable synset: primary lemma, its other lemmas, the definition part of the gloss."""

    offset: str
    lemma: str
    others: tuple[str, ...]
    definition: str
    monosemous: bool  # the lemma names no other noun synset, so "What is {lemma}?" has one answer


def definition_of(gloss: str) -> str:
    """The gloss without its quoted examples: 'a dog; "the dog barked"' -> 'a dog'."""
    return gloss.split('"')[0].strip().rstrip(";").strip()


@lru_cache(maxsize=1)
def usable_glosses() -> tuple[Gloss, ...]:
    """Synsets with a common-noun lemma and a definition of 30-140 characters that avoids the lemma."""
    synsets = read_wordnet_nouns()
    senses = Counter(lemma.lower() for s in synsets for lemma in s.lemmas)
    out = []
    for s in synsets:
        lemma, text = s.lemmas[0], definition_of(s.gloss)
        if not LEMMA.fullmatch(lemma) or not 30 <= len(text) <= 140 or lemma in text.lower():
            continue
        others = tuple(o for o in s.lemmas[1:] if OTHER_LEMMA.fullmatch(o) and o.lower() != lemma)
        out.append(Gloss(s.offset, lemma, others, text, senses[lemma] == 1))
    return tuple(out)


def query_text(ctx: Context, g: Gloss) -> tuple[str, bool]:
    """ "What is {lemma}?", or the definition cut to its first ~60% of words; True for the lemma form."""
    if unit(ctx.seed, "DocRet-form", g.offset) < 0.5:
        return f"What is {g.lemma}?", True
    words = re.sub(r"^\([^)]*\)\s*", "", g.definition).split()  # drop a leading "(computer science)"
    return f"Which term is defined as: {' '.join(words[: max(4, math.ceil(0.6 * len(words)))])} ...?", False


def choose_queries(
    ctx: Context, order: list[Gloss], n: int, used: set[str]
) -> dict[str, tuple[Gloss, str, bool]]:
    """The first `n` monosemous synsets of `order` whose query text is new: offset -> (gloss, text, lemma form)."""
    chosen: dict[str, tuple[Gloss, str, bool]] = {}
    for g in (g for g in order if g.monosemous):
        if len(chosen) == n:
            break
        text, is_lemma = query_text(ctx, g)
        if text not in used:
            used.add(text)
            chosen[g.offset] = (g, text, is_lemma)
    return chosen


def pack_pages(layout: render.Glossary, entries: list[Gloss], reserve: int) -> list[list[Gloss]]:
    """Fill pages in order, leaving `reserve` pixels free at the foot of each for a secondary entry."""
    pages: list[list[Gloss]] = []
    used = layout.capacity
    for g in entries:
        h = layout.height(g.lemma, g.definition)
        if used + h > layout.capacity - reserve:
            pages.append([])
            used = 0
        pages[-1].append(g)
        used += h
    return pages


def place_secondaries(
    ctx: Context,
    layout: render.Glossary,
    pages: list[list[tuple[str, str]]],
    page_of: dict[str, int],
    queries: list[Gloss],
) -> dict[str, int]:
    """For about half of the given synsets, put their gloss under another lemma on another page.

    At most one such entry per page, only where it fits; returns offset -> page of the secondary entry.
    """
    placed: dict[str, int] = {}
    for g in queries:
        if not g.others or unit(ctx.seed, "DocRet-second", g.offset) >= 0.5:
            continue
        entry = (ranked(g.others, str, ctx.seed, "DocRet-lemma", g.offset)[0], g.definition)
        start = stable_hash(ctx.seed, "DocRet-page2", g.offset)
        for p in ((start + i) % len(pages) for i in range(len(pages))):
            fits = sum(layout.height(*e) for e in pages[p]) + layout.height(*entry) <= layout.capacity
            if p != page_of[g.offset] and p not in placed.values() and fits:
                pages[p].insert(stable_hash(ctx.seed, "DocRet-slot", g.offset) % (len(pages[p]) + 1), entry)
                placed[g.offset] = p
                break
    return placed


def wordnet_docret(ctx: Context) -> dict[str, dict]:
    """Question about a noun -> the glossary page defining it, ranked over every page of the split.

    qrels: 2 for the page with the synset's entry, 1 for a page with the same gloss under another of its
    lemmas (added for about half of the "What is {lemma}?" queries whose synset has another lemma).
    """
    layout = render.Glossary()
    reserve = 4 * layout.line_h
    used: set[str] = set()
    out = {}
    for split in ("test", "train"):
        test = split == "test"
        pool = [
            g
            for g in usable_glosses()
            if (unit(ctx.seed, "split-wordnet", g.offset) < TEST_SHARE["wordnet"]) == test
        ]
        order = ranked(pool, lambda g: g.offset, ctx.seed, "DocRet", split)
        chosen = choose_queries(ctx, order, ctx.count("WordNet-DocRet", split), used)
        queries = [g for g, _, _ in chosen.values()]
        mean_h = sum(layout.height(g.lemma, g.definition) for g in queries) / len(queries)
        n_entries = max(3, math.ceil(len(queries) / 2)) * int((layout.capacity - reserve) / mean_h)
        fillers = [g for g in order if g.offset not in chosen][: max(0, n_entries - len(queries))]
        entries = ranked(queries + fillers, lambda g: g.offset, ctx.seed, "DocRet-layout", split)
        packed = pack_pages(layout, entries, reserve)
        page_of = {g.offset: i for i, page in enumerate(packed) for g in page}
        pages = [[(g.lemma, g.definition) for g in page] for page in packed]
        second = place_secondaries(
            ctx, layout, pages, page_of, [g for g, _, lemma in chosen.values() if lemma]
        )
        corpus = [
            {
                "_id": f"{split}-page-{i:04d}",
                "image_path": ctx.save(
                    f"WordNet-DocRet/{split}/pages/{i:04d}.png", lambda p=page: layout.page(p)
                ),
            }
            for i, page in enumerate(pages)
        ]
        rows, qrels = [], []
        for j, (g, text, _) in enumerate(chosen.values()):
            qid = f"{split}-q-{j:04d}"
            rows.append({"_id": qid, "text": text})
            qrels.append((qid, corpus[page_of[g.offset]]["_id"], 2))
            if g.offset in second:
                qrels.append((qid, corpus[second[g.offset]]["_id"], 1))
        out[split] = {"corpus": corpus, "queries": rows, "qrels": qrels}
    return out


# ---- video: 8-frame clips of one clip-art picture moving over a scene --------------------------------

VRET_QRY = "Find a video that contains the following visual content:"
VRET_TGT = "<|video_1|> Understand the content of the provided video."
VCLS_QRY = "<|video_1|> Recognize the category of the video content."


def video_clips(ctx: Context, split: str) -> list[tuple[Clip, str]]:
    """The split's clips (category-balanced, single-category pictures) and their frame folders."""
    key = f"video-{split}"
    if key not in ctx.cache:
        pool = ranked(filter(classifiable, ctx.clipart[split]), lambda c: c.key, ctx.seed, "Video", split)
        clips = []
        for c in balanced(pool, ctx.count("Clipart-Video", split), lambda c: c.item.category):
            folder = f"media/video/{slug(c.key)}"
            frames = render.clip_frames(render.load_rgba(c.item.png), ctx.rng("Video", c.key))
            for i, frame in enumerate(frames):
                ctx.save(f"{folder}/{i:03d}.jpg", lambda f=frame: f)
            clips.append((c, folder))
        ctx.cache[key] = clips
    return ctx.cache[key]  # type: ignore[return-value]


def clipart_video_ret(ctx: Context) -> dict[str, list[dict]]:
    """ "A video of {title}." -> its clip, ranked over every clip of the split (rows hold the gold only)."""
    return {
        split: [
            video_row(VRET_QRY, f"A video of {c.title}.", "", VRET_TGT, [("", folder)])
            for c, folder in video_clips(ctx, split)
        ]
        for split in SPLITS
    }


def clipart_video_cls(ctx: Context) -> dict[str, list[dict]]:
    """Clip -> the category name of its picture, among all category names (train rows carry a hint)."""
    labels = category_labels()
    held_out = qa_vocabulary(ctx)[1]
    return {
        split: [
            with_hint(
                video_row(VCLS_QRY, "", folder, "", label_candidates(label_of(c.item.category), labels)),
                split,
                clip_hint(c, category_words(c), held_out),
            )
            for c, folder in video_clips(ctx, split)
        ]
        for split in SPLITS
    }
