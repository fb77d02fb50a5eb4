"""mmeb-mini: deterministic, leak-free, in the MMEB formats; and the readers of the Debian data.

The benchmark tests build at a small scale from the real Debian data and are skipped, with the reason,
only where that data is not installed.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from mmemb.data import sources
from mmemb.data.mini import build_mini, file_hashes, is_complete, read_manifest
from mmemb.data.mini_common import Clip, category_labels, label_of, slug, usable_clipart
from mmemb.data.mini_image import QA_QUESTIONS, clean_keyword, clip_hint

from .conftest import IN_CI, SETUP_INSTALLS_DATA

SCALE = 0.05
TASKS = {
    "Clipart-CLS": ("image", "local"),
    "FashionMNIST-CLS": ("image", "local"),
    "Clipart-QA": ("image", "local"),
    "Clipart-T2I": ("image", "local"),
    "Clipart-I2T": ("image", "local"),
    "Clipart-GD": ("image", "local"),
    "WordNet-DocRet": ("visdoc", "global"),
    "Clipart-VideoRET": ("video", "global"),
    "Clipart-VideoCLS": ("video", "local"),
}
HINTED = ("Clipart-CLS", "Clipart-QA", "Clipart-I2T", "Clipart-VideoCLS")  # train rows carry qry_hint
IMAGE_KEYS = ["qry_inst", "qry_text", "qry_img_path", "tgt_inst", "tgt_text", "tgt_img_path"]
VIDEO_KEYS = ["qry_inst", "qry_text", "qry_video_path", "tgt_inst", "tgt_text", "tgt_video_path"]
DATA = [
    sources.OPENCLIPART / "png",
    sources.OPENCLIPART / "svg",
    sources.FASHION_MNIST / "t10k-images-idx3-ubyte.gz",
    sources.WORDNET_NOUNS,
    sources.DEJAVU / "DejaVuSans.ttf",
]
MISSING = [str(p) for p in DATA if not p.exists()]
needs_data = pytest.mark.skipif(  # in CI, which installs the data, a missing file fails the tests instead
    bool(MISSING) and not (IN_CI and SETUP_INSTALLS_DATA),
    reason=f"Debian data not installed ({', '.join(MISSING)}): {sources.INSTALL}",
)


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    root = tmp_path_factory.mktemp("mini")
    return (
        build_mini(root / "a", seed=0, scale=SCALE),
        build_mini(root / "b", seed=0, scale=SCALE),
        build_mini(root / "c", seed=1, scale=SCALE),
    )


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def media_files(root: Path, rel: str) -> list[Path]:
    """The files a path in a row names: the image itself, or every frame of a frame folder."""
    path = root / rel
    return sorted(path.iterdir()) if path.is_dir() else [path]


def by_slug() -> dict[str, object]:
    return {slug(c.key): c for c in usable_clipart()}


def clip_of(rel: str, clips: dict) -> object | None:
    """The clip-art item behind a media/clipart or media/video path, else None."""
    parts = rel.split("/")
    if parts[:2] in (["media", "clipart"], ["media", "video"]):
        return clips[parts[2].removesuffix(".png")]
    return None


def split_content(root: Path, task: dict, split: str) -> tuple[set[str], set[str], set[str]]:
    """(sha256 of every picture, every item text, every clip-art source key) a task's split uses."""
    clips, titles = by_slug(), {c.title: c for c in usable_clipart()}
    paths: set[str] = set()
    texts: set[str] = set()
    keys: set[str] = set()
    if task["format"] == "beir":
        folder = root / task["name"] / split
        paths |= {row["image_path"] for row in read_jsonl(folder / "corpus.jsonl")}
        texts |= {row["text"] for row in read_jsonl(folder / "queries.jsonl")}
    else:
        kind = "img" if task["format"] == "image_rows" else "video"
        for row in read_jsonl(root / task["name"] / f"{split}.jsonl"):
            paths |= {p for p in [row[f"qry_{kind}_path"], *row[f"tgt_{kind}_path"]] if p}
            texts |= {t for t in [row["qry_text"], *row["tgt_text"]] if t}
            if task["name"] == "Clipart-GD":
                keys.add(titles[row["qry_text"]].key)
    keys |= {c.key for p in paths if (c := clip_of(p, clips))}
    shared = set(category_labels()) | set(sources.FASHION_CLASSES) | set(QA_QUESTIONS)
    hashes = {hashlib.sha256(f.read_bytes()).hexdigest() for p in paths for f in media_files(root, p)}
    return hashes, texts - shared, keys


# ---- build, reuse, determinism ----------------------------------------------------------------------


@needs_data
def test_same_seed_same_bytes_other_seed_other_bytes(builds):
    a, b, c = builds
    ma, mb, mc = read_manifest(a), read_manifest(b), read_manifest(c)
    assert ma["content_hash"] == mb["content_hash"] and ma["files"] == mb["files"]
    assert ma["content_hash"] != mc["content_hash"]
    assert file_hashes(a) == ma["files"]  # the manifest covers every file
    assert not list(a.parent.glob(".*building*"))  # no temporary folder left behind


@needs_data
def test_complete_build_is_reused_and_a_damaged_one_is_not(builds, tmp_path):
    a = builds[0]
    stamp = os.stat(a / "manifest.json").st_mtime_ns
    assert build_mini(a, seed=0, scale=SCALE) == a
    assert os.stat(a / "manifest.json").st_mtime_ns == stamp
    assert not is_complete(a, seed=1, scale=SCALE) and not is_complete(a, seed=0, scale=1.0)
    copy = tmp_path / "copy"
    shutil.copytree(a, copy)
    (copy / "Clipart-CLS" / "test.jsonl").write_text("damaged\n")
    assert not is_complete(copy, seed=0, scale=SCALE)


@needs_data
def test_refuses_to_replace_a_folder_that_is_not_a_build(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not an mmeb-mini build"):
        build_mini(tmp_path, seed=0, scale=SCALE)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


# ---- formats ------------------------------------------------------------------------------------------


@needs_data
def test_tasks_json_lists_every_task_with_its_row_counts(builds):
    root = builds[0]
    tasks = json.loads((root / "tasks.json").read_text())
    assert [t["name"] for t in tasks] == list(TASKS)
    for t in tasks:
        assert (t["modality"], t["ranking"]) == TASKS[t["name"]]
        assert t["metric"] == ("ndcg_linear@5" if t["modality"] == "visdoc" else "hit@1")
        assert t["format"] == {"image": "image_rows", "video": "video_rows", "visdoc": "beir"}[t["modality"]]
        assert t["meta_task"] in {"CLS", "QA", "RET", "GD", "MRET"}
        for split, n in t["splits"].items():
            assert n > 0
            if t["format"] == "beir":
                assert len(read_jsonl(root / t["name"] / split / "queries.jsonl")) == n
            else:
                assert len(read_jsonl(root / t["name"] / f"{split}.jsonl")) == n
    assert "public domain" in (root / "PROVENANCE.md").read_text()


@needs_data
@pytest.mark.parametrize("name", [n for n, (m, _) in TASKS.items() if m != "visdoc"])
def test_rows_are_valid_and_the_first_candidate_is_gold(builds, name):
    root = builds[0]
    clips = by_slug()
    titles = {c.title: c for c in usable_clipart()}
    kind = "video" if TASKS[name][0] == "video" else "img"
    for split in ("train", "test"):
        rows = read_jsonl(root / name / f"{split}.jsonl")
        assert len({r["qry_inst"] for r in rows}) == 1 and len({r["tgt_inst"] for r in rows}) == 1
        for row in rows:
            hinted = ["qry_hint"] if split == "train" and name in HINTED else []
            assert list(row) == (VIDEO_KEYS if kind == "video" else IMAGE_KEYS) + hinted
            texts, paths = row["tgt_text"], row[f"tgt_{kind}_path"]
            assert len(texts) == len(paths) >= 1
            assert len(texts) == 1 if TASKS[name][1] == "global" else len(texts) >= 10
            cands = list(zip(texts, paths, strict=True))
            assert len(set(cands)) == len(cands) and all(t or p for t, p in cands)
            qry = row[f"qry_{kind}_path"]
            assert row["qry_inst"].startswith(f"<|{'video' if kind == 'video' else 'image'}_1|>") == bool(qry)
            for p in [qry, *paths]:
                assert not p or all(f.is_file() for f in media_files(root, p)), p
            if kind == "video" and qry:
                assert [f.name for f in media_files(root, qry)] == [f"{i:03d}.jpg" for i in range(8)]
            gold_text, gold_path = cands[0]
            if name in ("Clipart-CLS", "Clipart-VideoCLS"):
                assert gold_text == label_of(clip_of(qry, clips).item.category)
            elif name == "Clipart-QA":
                assert gold_text in {clean_keyword(k) for k in clip_of(qry, clips).item.keywords}
            elif name == "Clipart-T2I":
                assert clip_of(gold_path, clips).title == row["qry_text"]
            elif name == "Clipart-I2T":
                assert gold_text == clip_of(qry, clips).title
            elif name == "Clipart-VideoRET":
                assert row["qry_text"] == f"A video of {clip_of(gold_path, clips).title}."
            elif name == "Clipart-GD":
                assert gold_path.startswith(qry.removesuffix(".png") + "-tile")
                assert row["qry_text"] in titles
                assert sum(p.startswith(qry.removesuffix(".png")) for p in paths) == 4


@needs_data
def test_visdoc_is_beir_with_graded_qrels_on_existing_ids(builds):
    root = builds[0]
    for split in ("train", "test"):
        folder = root / "WordNet-DocRet" / split
        corpus = read_jsonl(folder / "corpus.jsonl")
        queries = read_jsonl(folder / "queries.jsonl")
        assert all(list(r) == ["_id", "image_path"] and (root / r["image_path"]).is_file() for r in corpus)
        assert all(list(r) == ["_id", "text"] and r["text"] for r in queries)
        lines = (folder / "qrels.tsv").read_text().splitlines()
        assert lines[0] == "query-id\tcorpus-id\tscore"
        qrels = [line.split("\t") for line in lines[1:]]
        assert {q for q, _, _ in qrels} == {r["_id"] for r in queries}
        assert {c for _, c, _ in qrels} <= {r["_id"] for r in corpus}
        for qid in {r["_id"] for r in queries}:
            grades = sorted(int(s) for q, _, s in qrels if q == qid)
            assert grades in ([2], [1, 2])
            assert len({c for q, c, _ in qrels if q == qid}) == len(grades)


# ---- privileged hints ----------------------------------------------------------------------------------


@needs_data
def test_hints_are_on_train_rows_of_four_tasks_only_and_never_hold_the_answer(builds):
    root = builds[0]
    qa_test_answers = {r["tgt_text"][0] for r in read_jsonl(root / "Clipart-QA" / "test.jsonl")}
    for task in json.loads((root / "tasks.json").read_text()):
        name = task["name"]
        if task["format"] == "beir":
            for split in ("train", "test"):
                assert all("hint" not in r for r in read_jsonl(root / name / split / "queries.jsonl"))
            continue
        assert all("qry_hint" not in r for r in read_jsonl(root / name / "test.jsonl")), name
        train = read_jsonl(root / name / "train.jsonl")
        if name not in HINTED:
            assert all("qry_hint" not in r for r in train), name
            continue
        hints = [r["qry_hint"] for r in train]
        assert all(isinstance(h, str) and len(h) <= 300 for h in hints), name
        assert sum(bool(h) for h in hints) > len(hints) / 2, f"{name}: most train rows should have a hint"
        for row, hint in zip(train, hints, strict=True):
            assert row["tgt_text"][0].lower() not in hint.lower(), (name, row["tgt_text"][0], hint)
            listed = hint.split("keywords: ", 1)[1].split(";")[0].split(", ") if "keywords: " in hint else []
            assert not set(listed) & qa_test_answers, (name, hint)


def hint_clip(key: str, title: str, keywords: tuple[str, ...], description: str = "") -> Clip:
    item = sources.ClipartItem(
        key=key,
        png=Path("/nonexistent.png"),
        category=key.split("/")[0],
        categories=(key.split("/")[0],),
        title=title,
        keywords=keywords,
        description=description,
    )
    return Clip(item=item, title=title, family=title.lower())


def test_clip_hint_drops_every_piece_holding_the_gold_text():
    clip = hint_clip(
        "animals/mammals/housecats/cat_01",
        "Cartoon Cat",
        ("animals", "pet", "kitten", "Mammal_Art", "clipart", "cat", "dog"),
        "A cat drawn for http://example.org by me@example.org. " + "Very long words here. " * 20,
    )
    cls = clip_hint(clip, ("animals",))
    assert cls.startswith("title: Cartoon Cat; keywords: pet, kitten, cat, dog; filed under: mammals / ")
    assert "animals" not in cls.lower() and "http" not in cls and "@" not in cls and len(cls) <= 300
    assert "description: A cat drawn for by" in cls and cls.endswith("...")
    qa = clip_hint(clip, ("cat",), held_out={"dog"})
    assert "cat" not in qa.lower() and "dog" not in qa and qa.startswith("keywords: animals, pet, kitten;")
    i2t = clip_hint(clip, ("Cartoon Cat",), title=False)
    assert "cartoon cat" not in i2t.lower() and not i2t.startswith("title")
    # a gold text hidden in a label ("key" in "keywords") makes the labels go, not the hint
    key = clip_hint(hint_clip("tools/k_01", "Brass thing", ("key", "lock", "brass")), ("key",))
    assert "key" not in key.lower() and key == "Brass thing; lock, brass"
    assert clip_hint(hint_clip("tools/k_01", "Key", ("key",)), ("key",)) == ""


# ---- no leak between train and test -------------------------------------------------------------------


@needs_data
def test_train_and_test_share_no_picture_no_text_and_no_source_item(builds):
    root = builds[0]
    tasks = json.loads((root / "tasks.json").read_text())
    every = {s: (set(), set()) for s in ("train", "test")}
    for task in tasks:
        (h_tr, t_tr, k_tr), (h_te, t_te, k_te) = (split_content(root, task, s) for s in ("train", "test"))
        assert h_tr and h_te and (task["meta_task"] == "CLS" or (t_tr and t_te))  # CLS texts are labels
        assert not h_tr & h_te, f"{task['name']}: pictures in both splits"
        assert not t_tr & t_te, f"{task['name']}: texts in both splits: {sorted(t_tr & t_te)[:5]}"
        assert not k_tr & k_te, f"{task['name']}: clip art in both splits: {sorted(k_tr & k_te)[:5]}"
        for s, (h, k) in (("train", (h_tr, k_tr)), ("test", (h_te, k_te))):
            every[s][0].update(h)
            every[s][1].update(k)
    assert not every["train"][0] & every["test"][0]  # not even across tasks
    assert not every["train"][1] & every["test"][1]


# ---- readers --------------------------------------------------------------------------------------------


def test_readers_name_the_missing_path_and_the_debian_package(tmp_path):
    with pytest.raises(sources.MissingDataError, match="dataset-fashion-mnist"):
        sources.read_fashion_mnist(tmp_path)
    with pytest.raises(sources.MissingDataError, match="wordnet-base"):
        sources.read_wordnet_nouns(tmp_path / "data.noun")
    with pytest.raises(sources.MissingDataError, match=r"openclipart-png.*apt-get install"):
        sources.read_openclipart(tmp_path)
    with pytest.raises(sources.MissingDataError, match=str(tmp_path / "DejaVuSans.ttf")):
        sources.font_path(root=tmp_path)


def test_wordnet_lines_skip_the_licence_and_read_hex_word_counts(tmp_path):
    path = tmp_path / "data.noun"
    path.write_text(
        "  1 This software and database is being provided to you, the LICENSEE, by  \n"
        "02084071 05 n 0b dog 0 domestic_dog 0 Canis_familiaris 0 a 0 b 0 c 0 d 0 e 0 f 0 g 0 h 0 "
        '000 | a member of the genus Canis; "the dog barked all night"  \n'
    )
    (synset,) = sources.read_wordnet_nouns(path)
    assert synset.offset == "02084071" and synset.lexfile == 5
    assert synset.lemmas[:3] == ("dog", "domestic dog", "Canis familiaris") and len(synset.lemmas) == 11
    assert synset.gloss.startswith("a member of the genus Canis;")


def test_fashion_idx_files_are_parsed(tmp_path):
    images = bytes(i % 256 for i in range(2 * 28 * 28))
    for part in ("train", "t10k"):
        with gzip.open(tmp_path / f"{part}-images-idx3-ubyte.gz", "wb") as f:
            f.write((0x803).to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in (2, 28, 28)) + images)
        with gzip.open(tmp_path / f"{part}-labels-idx1-ubyte.gz", "wb") as f:
            f.write((0x801).to_bytes(4, "big") + (2).to_bytes(4, "big") + bytes([3, 9]))
    data = sources.read_fashion_mnist(tmp_path)
    x, y = data["t10k"]
    assert x.shape == (2, 28, 28) and x[0, 0, 5] == 5 and list(y) == [3, 9]


def test_svg_metadata_is_read_and_odd_files_give_empty_fields(tmp_path):
    good = tmp_path / "good.svg"
    good.write_text(
        '<svg xmlns="http://www.w3.org/2000/svg" xmlns:dc="http://purl.org/dc/elements/1.1/" '
        'xmlns:cc="http://web.resource.org/cc/" xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        "<metadata><rdf:RDF><cc:Work><dc:title> A  parrot </dc:title><dc:subject><rdf:Bag><rdf:li></rdf:li>"
        "<rdf:li>Bird</rdf:li><rdf:li>bird</rdf:li><rdf:li>green</rdf:li></rdf:Bag></dc:subject>"
        "<dc:creator><cc:Agent><dc:title>Someone</dc:title></cc:Agent></dc:creator></cc:Work></rdf:RDF>"
        "</metadata><rect/></svg>"
    )
    meta = sources.read_svg_metadata(good)
    assert meta == {"title": "A parrot", "keywords": ("bird", "green"), "description": ""}
    broken = tmp_path / "broken.svg"
    broken.write_text("<svg><metadata><unclosed></svg>")
    empty = {"title": "", "keywords": (), "description": ""}
    assert sources.read_svg_metadata(broken) == empty
    assert sources.read_svg_metadata(tmp_path / "absent.svg") == empty
