"""WordNet-Pick (data/mini_pick.py): a query that needs one inference step, built from WordNet + clip-art tags.

The checks recompute what a row must satisfy from the WordNet files themselves (not from the builder's
tables): the asked category is the gold word's most frequent sense, and no other candidate has any sense
in it.
"""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from mmemb.data import mini, sources
from mmemb.data.mini_pick import CATEGORIES, OPTIONS, PICK_QRY, PICK_TASK

from .conftest import IN_CI, SETUP_INSTALLS_DATA

MISSING = [str(p) for p in (sources.OPENCLIPART / "svg", sources.WORDNET_NOUNS) if not p.exists()]
needs_data = pytest.mark.skipif(
    bool(MISSING) and not (IN_CI and SETUP_INSTALLS_DATA),
    reason=f"Debian data not installed: {sources.INSTALL}",
)
SCALE = 0.2


@pytest.fixture(scope="module")
def pick(tmp_path_factory):
    return mini.build_mini(tmp_path_factory.mktemp("pick") / "p", seed=0, scale=SCALE, tasks=(PICK_TASK,))


def rows(root, split):
    return [json.loads(line) for line in (root / PICK_TASK / f"{split}.jsonl").read_text().splitlines()]


def ancestors():
    """word -> for each noun sense in index.noun's order (first = most frequent): the set of its hypernyms'
    offsets, transitively, itself included (read here from the WordNet files, not from the builder)."""
    synsets = {s.offset: s for s in sources.read_wordnet_nouns()}
    memo: dict[str, frozenset[str]] = {}

    def up(offset):
        if offset not in memo:
            memo[offset] = frozenset({offset}).union(*(up(h) for h in synsets[offset].hypernyms))
        return memo[offset]

    index = sources.read_wordnet_index()
    return lambda word: [up(o) for o in index[word].synsets]


@needs_data
def test_a_pick_build_holds_only_its_task_and_says_so(pick, tmp_path):
    tasks = json.loads((pick / "tasks.json").read_text())
    assert [(t["name"], t["modality"], t["format"], t["metric"]) for t in tasks] == [
        (PICK_TASK, "image", "image_rows", "hit@1")
    ]
    assert tasks[0]["splits"] == {"train": 80, "test": 30}
    assert mini.read_manifest(pick)["tasks"] == [PICK_TASK]
    assert mini.is_complete(pick, 0, SCALE, (PICK_TASK,))
    assert not mini.is_complete(pick, 0, SCALE)  # not the default build, so never reused as one
    assert "## WordNet-Pick" in (pick / "PROVENANCE.md").read_text()


@needs_data
def test_every_row_asks_for_the_one_listed_word_in_the_category_of_its_first_sense(pick):
    senses = ancestors()
    for split in ("train", "test"):
        for i, row in enumerate(rows(pick, split)):
            where = f"{split} row {i}"
            asked = re.fullmatch(PICK_QRY.format("(.+)").replace("?", r"\?"), row["qry_inst"]).group(1)
            roots = set(CATEGORIES[asked])
            gold, *others = row["tgt_text"]
            listed = row["qry_text"].split(", ")
            assert len(row["tgt_text"]) == 10 and len(set(row["tgt_text"])) == 10, where
            assert len(listed) == OPTIONS and gold in listed and set(listed) <= set(row["tgt_text"]), where
            assert row["qry_img_path"] == "" and set(row["tgt_img_path"]) == {""}, where
            assert senses(gold)[0] & roots, f"{where}: the first sense of {gold} is not {asked}"
            for w in others:
                assert not any(s & roots for s in senses(w)), f"{where}: {w} also has a sense that is {asked}"
            assert ("qry_hint" in row) == (split == "train"), where
            if split == "train":
                assert row["qry_hint"].startswith(f"title: {gold}; ") and "description: " in row["qry_hint"]


@needs_data
def test_train_and_test_share_no_word_and_no_row_is_asked_twice(pick):
    words = {}
    for split in ("train", "test"):
        rs = rows(pick, split)
        asked = Counter((r["tgt_text"][0], r["qry_inst"]) for r in rs)
        assert max(asked.values()) == 1, split  # a word's second row asks for another category
        assert max(Counter(r["tgt_text"][0] for r in rs).values()) <= 2, split
        words[split] = {w for r in rs for w in r["tgt_text"]}
    assert not words["train"] & words["test"], sorted(words["train"] & words["test"])[:5]
    questions = {r["qry_inst"] for r in rows(pick, "train")}
    assert len(questions) >= 8  # round-robin over the categories, not one category's words


@needs_data
def test_at_full_scale_words_run_out_and_their_second_rows_ask_for_another_category(tmp_path):
    root = mini.build_mini(tmp_path / "full", seed=0, scale=1.0, tasks=(PICK_TASK,))
    train = rows(root, "train")
    twice = [w for w, k in Counter(r["tgt_text"][0] for r in train).items() if k == 2]
    assert len(train) == 400 and twice  # the train split has fewer answerable words than rows
    for w in twice[:20]:
        assert len({r["qry_inst"] for r in train if r["tgt_text"][0] == w}) == 2


def test_unknown_tasks_are_refused_with_the_known_names(tmp_path, capsys):
    with pytest.raises(ValueError, match=rf"unknown mmeb-mini task Nope; known: .*{PICK_TASK}"):
        mini.build_mini(tmp_path / "x", tasks=("Nope",))
    assert not (tmp_path / "x").exists()
    with pytest.raises(SystemExit) as e:
        mini.main([str(tmp_path / "y"), "--tasks", "Clipart-CLS,Nope"])
    assert e.value.code == 2 and "unknown mmeb-mini task Nope" in capsys.readouterr().err


def test_wordnet_pointers_give_hypernyms_and_the_index_gives_sense_order(tmp_path):
    line = (
        "01816887 05 n 01 parrot 0 003 @ 01503061 n 0000 #m 01816635 n 0000 @i 09999999 n 0000 "
        "| usually brightly colored zygodactyl tropical birds  "
    )
    s = sources.parse_data_line(line)
    assert s.lemmas == ("parrot",) and s.hypernyms == ("01503061", "09999999")
    assert s.gloss.startswith("usually brightly")
    index = tmp_path / "index.noun"
    index.write_text(
        "  1 This software and database is being provided to you, the LICENSEE, by  \n"
        "parrot n 2 4 @ ~ #m + 2 1 01816887 10401331  \n"
        "ice_cream n 1 3 @ ~ + 1 1 07614500  \n"
    )
    assert sources.read_wordnet_index(index) == {
        "parrot": (("01816887", "10401331"), 1),
        "ice cream": (("07614500",), 1),
    }


def test_the_cli_builds_named_tasks_only_into_a_folder_it_is_given(tmp_path, capsys):
    from mmemb.cli import main

    assert main(["data", "build-mini", "--tasks", PICK_TASK]) == 2  # never over the default build
    assert "--out is required" in capsys.readouterr().err
    assert main(["data", "build-mini", "--tasks", "Nope", "--out", str(tmp_path / "x")]) == 2
    assert "unknown mmeb-mini task Nope" in capsys.readouterr().err and not (tmp_path / "x").exists()
