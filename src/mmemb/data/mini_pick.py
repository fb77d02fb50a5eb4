"""WordNet-Pick: a task whose query needs one inference step that the target does not spell out.

    query   "Which of these words names an animal?"  +  "bicycle, parrot, cake, fog"
    target  "parrot", among the 4 listed words and 6 other words (10 candidates, the gold one first)

Without the inference the query is a bag of four words, and every listed word is as close to it as the
gold one; with it ("a parrot is a bird, an animal") the answer is one word the target matches at once.
So reasoning can pay here by the nature of the task, whatever the model's eyes: the query and the targets
are text (in MMEB's image-row layout, with no pictures), which takes nano's perception out of the test.

Real data only: the words are the Open Clip Art keywords that people tagged pictures with (common concrete
nouns), kept when they are WordNet noun lemmas; a word is in a category when the category's synset is among
the hypernyms of its most frequent WordNet sense (CATEGORIES: 27, from "an animal" down to "a bird"). A row
is unambiguous: no other candidate has *any* WordNet sense in the asked category. Words go to train or test
by a seeded hash, so the splits share no word; the 27 questions are a label set shared by design, like the
class names of a CLS task.

Train rows carry `qry_hint` for the hints teacher: the answer, its WordNet hypernyms and its definition
("title: parrot; keywords: bird; description: usually brightly colored zygodactyl tropical birds ..."),
so the teacher's rationales range from naming the answer to describing it without its name.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from functools import cache, lru_cache
from typing import NamedTuple

from .mini_common import NUM_CANDIDATES, SPLITS, Context, image_row, ranked, unit, usable_clipart
from .mini_image import keywords_of
from .sources import read_wordnet_index, read_wordnet_lemmas, read_wordnet_nouns

PICK_TASK = "WordNet-Pick"
PICK_QRY = "Which of these words names {}?"
OPTIONS = 4  # words listed in a query, the gold one among them
# how a question names a category -> the WordNet 3.0 synsets (data.noun offsets) whose hyponyms it holds
CATEGORIES: dict[str, tuple[str, ...]] = {
    "an animal": ("00015388",),
    "a bird": ("01503061",),
    "a mammal": ("01861778",),
    "an insect": ("02159955",),
    "a fish": ("02512053",),
    "a person": ("00007846",),
    "a plant": ("00017222",),
    "a fruit": ("13134947",),
    "a vegetable": ("07707451",),
    "a flower": ("11669921",),
    "a tree": ("13104059",),
    "a food or a drink": ("00021265", "07555863", "07881800"),
    "a man-made object": ("00021939",),
    "a vehicle": ("04524313",),
    "a musical instrument": ("03800933",),
    "a piece of clothing": ("03051540",),
    "a tool": ("04451818",),
    "a piece of furniture": ("03405725",),
    "a building": ("02913152",),
    "a weapon": ("04565375",),
    "a container": ("03094503",),
    "a part of the body": ("05220461",),
    "a place": ("00027167",),
    "a country": ("08168978", "08544813"),
    "a city": ("08524735",),
    "a body of water": ("09225146",),
    "a substance or a material": ("00019613", "14580897"),
}
TEST_SHARE = 0.3


class Word(NamedTuple):
    first: frozenset[str]  # the categories of its most frequent sense
    any: frozenset[str]  # the categories of any of its noun senses
    definition: str  # of its most frequent sense
    hypernyms: tuple[str, ...]  # first lemmas of that sense's hypernyms


@lru_cache(maxsize=1)
def pick_words() -> dict[str, Word]:
    """The words of the task: one-word clip-art keywords that are WordNet nouns, with their categories.

    A sense is in a category when one of the category's synsets is among its hypernyms, transitively
    (instance hypernyms too: Paris is a city). The sense order is index.noun's (most frequent first); a word
    can be a distractor but never an answer (empty `first`) when its sense order is arbitrary (several senses,
    none counted in WordNet's tagged corpus: "burger" is first a citizen), when WordNet also lists it as an
    adjective or adverb, when it is the plural of another noun, or when it names a category itself.
    """
    index = read_wordnet_index()
    synsets = {s.offset: s for s in read_wordnet_nouns()}
    roots = {o: cat for cat, offs in CATEGORIES.items() for o in offs}

    @cache
    def cats(offset: str) -> frozenset[str]:
        found = {roots[offset]} if offset in roots else set()
        for h in synsets[offset].hypernyms if offset in synsets else ():
            found |= cats(h)
        return frozenset(found)

    vocab = sorted({k for clip in usable_clipart() for k in keywords_of(clip) if k.isalpha()})
    modifiers = read_wordnet_lemmas("adj") | read_wordnet_lemmas("adv")
    names = {lemma.lower() for offs in CATEGORIES.values() for o in offs for lemma in synsets[o].lemmas}
    out = {}
    for word in vocab:
        entry = index.get(word)
        offsets = [o for o in entry.synsets if o in synsets] if entry else []
        if not offsets:
            continue
        first = synsets[offsets[0]]
        answerable = (
            (entry.tagged > 0 or len(offsets) == 1)  # a known most frequent sense
            and word not in modifiers  # "dry", "left": an adjective or adverb first, for a reader
            and not (word.endswith("s") and word[:-1] in index)  # a plural ("gates", "bones")
            and word not in names  # the category's own name ("animal", "food")
        )
        out[word] = Word(
            first=cats(first.offset) if answerable else frozenset(),
            any=frozenset().union(*(cats(o) for o in offsets)),
            definition=first.gloss.split(";")[0].strip(),
            hypernyms=tuple(dict.fromkeys(synsets[h].lemmas[0] for h in first.hypernyms if h in synsets)),
        )
    return out


def pick_hint(word: str, definition: str, hypernyms: tuple[str, ...]) -> str:
    """The privileged hint of a train row: the answer, its hypernyms and its definition (hints teacher)."""
    parts = [f"title: {word}"]
    if others := [h for h in hypernyms[:3] if h != word]:
        parts.append("keywords: " + ", ".join(others))
    return "; ".join([*parts, f"description: {definition}"])


def wordnet_pick(ctx: Context) -> dict[str, list[dict]]:
    """Which of four words names the asked category -> that word, among the four and 6 others.

    A word is asked for under its most specific category (the one with the fewest words: "a bird" rather
    than "an animal"), answers round-robin over the categories; when the split's words run out, words in
    two or more categories are asked for once more, under their broadest one ("an animal").
    """
    words = pick_words()
    size = Counter(c for w in words.values() for c in w.first)

    def asked(word: str, second: bool) -> str | None:
        """The category a word's first row asks for (the most specific), or its second row's (the broadest
        of the others; None when it has only one)."""
        specific = min(words[word].first, key=lambda c: (size[c], c))
        rest = words[word].first - {specific}
        return min(rest, key=lambda c: (-size[c], c)) if second and rest else None if second else specific

    out = {}
    for split in SPLITS:
        pool = [w for w in words if (unit(ctx.seed, "split-pick", w) < TEST_SHARE) == (split == "test")]
        n = ctx.count(PICK_TASK, split)
        golds: list[tuple[str, str]] = []  # (word, category asked), round-robin over the categories
        for second in (False, True):
            by_cat: dict[str, list[str]] = defaultdict(list)
            for w in ranked(pool, str, ctx.seed, "pick-gold", split, second):
                if words[w].first and (cat := asked(w, second)):
                    by_cat[cat].append(w)
            depth = 0
            while len(golds) < n and any(depth < len(v) for v in by_cat.values()):
                golds += [(by_cat[c][depth], c) for c in sorted(by_cat) if depth < len(by_cat[c])]
                depth += 1
        rows = []
        for gold, cat in golds[:n]:
            others = [w for w in ranked(pool, str, ctx.seed, "pick-neg", gold) if cat not in words[w].any]
            options = others[: OPTIONS - 1]
            listed = ranked([gold, *options], str, ctx.seed, "pick-order", gold)  # gold at a seeded place
            cands = [(w, "") for w in [gold, *options, *others[OPTIONS - 1 : NUM_CANDIDATES - 1]]]
            row = image_row(PICK_QRY.format(cat), ", ".join(listed), "", "", cands)
            if split == "train":
                row["qry_hint"] = pick_hint(gold, words[gold].definition, words[gold].hypernyms)
            rows.append(row)
        out[split] = rows
    return out
