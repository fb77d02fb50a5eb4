"""Training pairs: the mini layout (rows and BEIR), MMEB-train rows, UME-R1 SFT data; selection and errors.

Every fixture is written by hand into tmp_path, so these tests are fast and need no Debian data.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmemb.cache import content_key
from mmemb.data import pairs as pairs_mod
from mmemb.data.pairs import Pair, dataset_fingerprint, read_pairs, ume_rationales
from mmemb.data.registry import suite
from mmemb.data.tasks import load_task
from mmemb.types import InputError

from .conftest import write_image

TASKS = [
    {"name": "Pic-CLS", "modality": "image", "meta_task": "CLS", "metric": "hit@1", "ranking": "local"},
    {"name": "Vid-RET", "modality": "video", "meta_task": "RET", "metric": "hit@1", "ranking": "global"},
    {
        "name": "Doc-RET",
        "modality": "visdoc",
        "meta_task": "RET",
        "metric": "ndcg_linear@5",
        "ranking": "global",
    },
]
FORMATS = {"Pic-CLS": "image_rows", "Vid-RET": "video_rows", "Doc-RET": "beir"}
UME_INSTRUCTION = (
    "<disc_emb>\nRepresent the above input text, images, videos, or any combination of the three as "
    "embeddings. First output the thinking process in <think> </think> tags and then summarize the entire "
    "input in a word or sentence. Finally, use the <gen_emb> tag to represent the entire input."
)


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def frames(folder: Path, n: int = 3, seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [write_image(folder / f"{i:03d}.jpg", seed=seed + i) for i in range(n)]


def pic_row(image: str, labels: list[str]) -> dict:
    """A classification row of MMEB-train's layout: the image, then its labels, the gold one first."""
    return {"qry_inst": "<|image_1|> Represent the given image for classification", "qry_text": "",
            "qry_img_path": image, "tgt_inst": "", "tgt_text": labels, "tgt_img_path": [""] * len(labels)}  # fmt: skip


@pytest.fixture
def mini(tmp_path) -> Path:
    """A mini-layout folder: a local rows task (3 candidates, one hint), a global video task holding only
    the gold, and a BEIR task with graded qrels."""
    root = tmp_path / "mini"
    (root / "media").mkdir(parents=True)
    for i in range(2):
        write_image(root / "media" / f"pic{i}.png", seed=i)
    write_jsonl(
        root / "Pic-CLS" / "train.jsonl",
        [
            pic_row("media/pic0.png", ["animals", "food", "tools"])
            | {"qry_hint": "title: cartoon cat; keywords: pet"},
            pic_row("media/pic1.png", ["food", "animals", "tools"]),
        ],
    )
    frames(root / "media" / "clip0", seed=10)
    frames(root / "media" / "clip1", seed=20)
    write_jsonl(
        root / "Vid-RET" / "train.jsonl",
        [
            {
                "qry_inst": "Find a video that contains the following visual content:",
                "qry_text": f"A video of {what}.",
                "qry_video_path": "",
                "tgt_inst": "<|video_1|> Understand the content of the provided video.",
                "tgt_text": [""],
                "tgt_video_path": [f"media/clip{i}"],
            }
            for i, what in enumerate(["a cat", "a car"])
        ],
    )
    docs = root / "Doc-RET" / "train"
    (docs / "pages").mkdir(parents=True)
    for i in range(3):
        write_image(docs / "pages" / f"{i}.png", seed=30 + i)
    write_jsonl(
        docs / "corpus.jsonl",
        [{"_id": f"p{i}", "image_path": f"Doc-RET/train/pages/{i}.png"} for i in range(3)],
    )
    write_jsonl(
        docs / "queries.jsonl",
        [
            {"_id": "q1", "text": "What is a cat?", "hint": "a small pet"},
            {"_id": "q2", "text": "What is a car?"},
            {"_id": "q3", "text": "What is a bus?"},
        ],
    )
    (docs / "qrels.tsv").write_text(
        "query-id\tcorpus-id\tscore\nq1\tp0\t1\nq1\tp1\t2\nq2\tp2\t1\nq2\tp0\t1\nq3\tp1\t0\n"
    )
    entries = [{**t, "format": FORMATS[t["name"]]} for t in TASKS]
    (root / "tasks.json").write_text(json.dumps(entries))
    return root


# ---- mini layout ----------------------------------------------------------------------------------------


def test_mini_rows_and_beir_give_exact_ids_targets_negatives_and_hints(mini):
    got = read_pairs(mini)
    assert [p.id for p in got] == [
        "Pic-CLS/train/0",
        "Pic-CLS/train/1",
        "Vid-RET/train/0",
        "Vid-RET/train/1",
        "Doc-RET/train/q1",
        "Doc-RET/train/q2",
    ]  # q3 has no relevant page
    cls0, cls1, vid0, vid1, doc1, doc2 = got
    assert cls0.task == "Pic-CLS" and cls0.query.image == mini / "media" / "pic0.png"
    assert cls0.query.instruction == "Represent the given image for classification"
    assert cls0.target.text == "animals" and [n.text for n in cls0.negatives] == ["food", "tools"]
    assert cls0.hint == "title: cartoon cat; keywords: pet" and cls1.hint == ""
    assert cls1.target.text == "food" and [n.text for n in cls1.negatives] == ["animals", "tools"]
    assert vid0.query.text == "A video of a cat." and vid0.negatives == () and vid0.hint == ""
    assert vid1.target.frames == tuple(sorted((mini / "media" / "clip1").iterdir()))
    assert doc1.target.pages == (mini / "Doc-RET" / "train" / "pages" / "1.png",)  # grade 2 beats 1
    assert doc2.target.pages == (mini / "Doc-RET" / "train" / "pages" / "2.png",)  # tie: first listed
    assert doc1.hint == "a small pet" and doc2.hint == "" and doc1.negatives == ()
    assert all(isinstance(p, Pair) for p in got)


def test_mini_samples_have_the_eval_loaders_content_keys(mini):
    infos = suite("mmeb-mini", mini / "tasks.json")
    got = read_pairs(mini)
    for name, info in infos.items():
        task = load_task(info, mini, "train", "beir" if FORMATS[name] == "beir" else "rows")
        mine = [p for p in got if p.task == name]
        assert [content_key(p.query) for p in mine] == task.queries
        for i, p in enumerate(mine):
            best = max(task.relevance[i].values())
            assert task.relevance[i][content_key(p.target)] == best
            if task.local is not None:
                assert [content_key(s) for s in (p.target, *p.negatives)] == task.local[i]


def test_mmeb_mini_spec_uses_the_cached_build_and_builds_it_once(mini, tmp_path, monkeypatch, capsys):
    import mmemb.data.mini
    import mmemb.paths

    target = tmp_path / "cache" / "mmeb-mini-seed0"
    monkeypatch.setattr(mmemb.paths, "mini_root", lambda: target)
    built = []

    def fake_build(root, seed=0, scale=1.0):
        built.append((root, seed))
        import shutil

        shutil.copytree(mini, root, dirs_exist_ok=True)
        (root / "manifest.json").write_text(json.dumps({"version": mmemb.data.mini.VERSION}))
        return root

    monkeypatch.setattr(mmemb.data.mini, "build_mini", fake_build)
    first = read_pairs("mmeb-mini", tasks=["Doc-RET"])
    assert built == [(target, 0)] and "building mmeb-mini" in capsys.readouterr().err
    assert [p.id for p in first] == ["Doc-RET/train/q1", "Doc-RET/train/q2"]
    read_pairs("mmeb-mini")
    assert len(built) == 1
    (target / "manifest.json").write_text(json.dumps({"version": "mmeb-mini/1"}))  # an older build
    read_pairs("mmeb-mini")
    assert len(built) == 2


def test_tasks_filter_and_unknown_task(mini):
    assert {p.task for p in read_pairs(mini, tasks=["Vid-RET", "Pic-CLS"])} == {"Vid-RET", "Pic-CLS"}
    with pytest.raises(InputError, match=r"unknown task\(s\) \['Nope'\].*Pic-CLS, Vid-RET, Doc-RET"):
        read_pairs(mini, tasks=["Nope"])


# ---- MMEB-train ---------------------------------------------------------------------------------------


def mmeb_rows(n: int = 2) -> list[dict]:
    rows = [
        {
            "qry": "<|image_1|>\nRepresent the given image with the following question: What is it?",
            "qry_image_path": "images/a.png",
            "pos_text": "a cat",
            "pos_image_path": "",
            "neg_text": "a dog",
            "neg_image_path": "",
        },
        {
            "qry": "Find an image of a dog",
            "qry_image_path": "",
            "pos_text": "<|image_1|>\nRepresent the given image.",
            "pos_image_path": "images/b.png",
            "neg_text": "",
            "neg_image_path": "",
        },
    ]
    rows += [
        {"qry": f"query {i}", "qry_image_path": "", "pos_text": f"answer {i}", "pos_image_path": ""}
        for i in range(2, n)
    ]
    return rows


@pytest.fixture
def media(tmp_path) -> Path:
    (tmp_path / "images").mkdir()
    write_image(tmp_path / "images" / "a.png", seed=1)
    write_image(tmp_path / "images" / "b.png", seed=2)
    return tmp_path


def check_mmeb(got: list[Pair], stem: str, media: Path) -> None:
    assert [p.id for p in got] == [f"{stem}/0", f"{stem}/1"] and {p.task for p in got} == {stem}
    a, b = got
    assert a.query.text == "Represent the given image with the following question: What is it?"
    assert a.query.image == media / "images" / "a.png" and a.query.instruction is None
    assert a.target.text == "a cat" and a.target.image is None
    assert [n.text for n in a.negatives] == ["a dog"]
    assert b.query.text == "Find an image of a dog" and b.query.image is None
    assert b.target.text == "Represent the given image." and b.target.image == media / "images" / "b.png"
    assert b.negatives == () and a.hint == b.hint == ""


def test_mmeb_train_jsonl(media):
    check_mmeb(read_pairs(write_jsonl(media / "OK-VQA.jsonl", mmeb_rows())), "OK-VQA", media)


def test_mmeb_train_parquet_with_media_root(media, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = mmeb_rows()
    rows[1]["neg_text"], rows[1]["neg_image_path"] = "", "images/a.png"
    path = tmp_path / "data" / "ImageNet_1K.parquet"
    path.parent.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), path)
    with pytest.raises(
        InputError, match=r"ImageNet_1K.parquet row 0: file 'images/a.png' not found.*media_root"
    ):
        read_pairs(path)
    got = read_pairs(path, media_root=media)
    assert [n.image for n in got[1].negatives] == [media / "images" / "a.png"]
    got[1] = Pair(got[1].id, got[1].task, got[1].query, got[1].target)
    check_mmeb(got, "ImageNet_1K", media)


# ---- UME-R1 -------------------------------------------------------------------------------------------


def ume_side(text: str, gpt: str, **media) -> dict:
    return {
        "conversations": [
            {"from": "human", "value": text + "\n" + UME_INSTRUCTION},
            {"from": "gpt", "value": gpt},
        ],
        **media,
    }


def ume_records(media: Path) -> list[dict]:
    frame_list = [str(p.relative_to(media)) for p in frames(media / "vid" / "q", n=4, seed=5)]
    frames(media / "vid" / "pos", n=2, seed=9)
    return [
        {
            "dataset_name": "ImageNet_1K",
            "qry": ume_side(
                "<image>\nRepresent the given image for classification",
                "<think>A small furry animal on a sofa.</think><answer>a cat</answer><gen_emb>",
                image="images/a.png",
            ),
            "pos": ume_side("tabby cat", "<think>A label.</think>tabby cat<gen_emb>"),
        },
        {
            "dataset_name": "MSR-VTT",
            "qry": ume_side(
                "Video 1: <video>\nRecognize the category of the video content.",
                "<think>People dance on a stage.</think>\n dancing \n<gen_emb>",
                video=frame_list,
            ),
            "pos": ume_side("dancing", "<think>x</think><answer>dancing</answer><gen_emb>"),
        },
        {
            "dataset_name": "MSCOCO_t2i",
            "qry": ume_side(
                "Find me an everyday image that matches the given caption: A dog runs.",
                "<think> A running dog. </think>\n<answer> dog running </answer>\n<gen_emb>",
            ),
            "pos": ume_side(
                "Picture 1: <image>\nRepresent the given image.",
                "<think>y</think><answer>z</answer><gen_emb>",
                image=["images/b.png"],
            ),
        },
        {
            "dataset_name": "MSCOCO_t2i",
            "qry": {"conversations": [{"from": "human", "value": "A cat sleeps.\n" + UME_INSTRUCTION}]},
            "pos": ume_side("<video>", "<think>v</think><answer>w</answer><gen_emb>", video="vid/pos"),
        },
    ]


def check_ume(got: list[Pair], media: Path) -> None:
    assert [p.id for p in got] == ["ImageNet_1K/0", "MSR-VTT/1", "MSCOCO_t2i/2", "MSCOCO_t2i/3"]
    img, vid, txt, nogpt = got
    assert img.task == "ImageNet_1K" and img.query.text == "Represent the given image for classification"
    assert img.query.image == media / "images" / "a.png" and img.target.text == "tabby cat"
    assert vid.query.text == "Recognize the category of the video content."
    assert vid.query.frames == tuple(sorted((media / "vid" / "q").iterdir())) and vid.target.text == "dancing"
    assert txt.query.text == "Find me an everyday image that matches the given caption: A dog runs."
    assert txt.query.modality == "text" and txt.target.image == media / "images" / "b.png"
    assert txt.target.text == "Represent the given image."
    assert nogpt.target.text is None and nogpt.target.frames == tuple(
        sorted((media / "vid" / "pos").iterdir())
    )
    assert all(p.negatives == () and p.hint == "" for p in got)


EXPECTED_RATIONALES = {
    "ImageNet_1K/0": "<think>A small furry animal on a sofa.</think><answer>a cat</answer>",
    "MSR-VTT/1": "<think>People dance on a stage.</think><answer>dancing</answer>",
    "MSCOCO_t2i/2": "<think>A running dog.</think><answer>dog running</answer>",
}


def test_ume_json_and_jsonl_read_alike_with_rationales(media):
    records = ume_records(media)
    as_json = media / "ume.json"
    as_json.write_text(json.dumps(records, indent=1))
    as_jsonl = write_jsonl(media / "ume.jsonl", records)
    a, b = read_pairs(as_json), read_pairs(as_jsonl)
    check_ume(a, media)
    check_ume(b, media)
    assert dataset_fingerprint(a) == dataset_fingerprint(b)
    assert ume_rationales(as_json) == ume_rationales(as_jsonl) == EXPECTED_RATIONALES
    assert [p.id for p in read_pairs(as_jsonl, tasks=["MSCOCO_t2i"])] == ["MSCOCO_t2i/2", "MSCOCO_t2i/3"]


# ---- selection and fingerprint ------------------------------------------------------------------------


def test_limit_per_task_is_seeded_deterministic_and_keeps_order(media, mini):
    path = write_jsonl(media / "many.jsonl", mmeb_rows(30))
    a = read_pairs(path, limit_per_task=5, seed=0)
    assert [p.id for p in a] == [p.id for p in read_pairs(path, limit_per_task=5, seed=0)]
    assert len(a) == 5 and [int(p.id.split("/")[1]) for p in a] == sorted(int(p.id.split("/")[1]) for p in a)
    assert [p.id for p in a] != [f"many/{i}" for i in range(5)]  # chosen by hash, not the first five
    assert {p.id for p in read_pairs(path, limit_per_task=5, seed=1)} != {p.id for p in a}
    assert len(read_pairs(path, limit_per_task=100)) == 30
    per_task = read_pairs(mini, limit_per_task=1)
    assert [p.task for p in per_task] == ["Pic-CLS", "Vid-RET", "Doc-RET"]


def test_fingerprint_follows_ids_and_content(media):
    rows = mmeb_rows(4)
    path = write_jsonl(media / "fp.jsonl", rows)
    base = dataset_fingerprint(read_pairs(path))
    assert len(base) == 16 and int(base, 16) >= 0
    assert dataset_fingerprint(read_pairs(path)) == base
    rows[3]["qry"] = "query 3, changed"
    assert dataset_fingerprint(read_pairs(write_jsonl(path, rows))) != base
    assert dataset_fingerprint(read_pairs(path)[::-1]) != dataset_fingerprint(read_pairs(path))


# ---- bad input names file and line ----------------------------------------------------------------------


def test_bad_file_inputs_name_file_and_line(media):
    path = media / "bad.jsonl"
    with pytest.raises(InputError, match=r"bad.jsonl: not found; give 'mmeb-mini'"):
        read_pairs(path)
    rows = mmeb_rows(3)
    path.write_text(json.dumps(rows[0]) + "\n{broken\n")
    with pytest.raises(InputError, match=r"bad.jsonl:2: not valid JSON"):
        read_pairs(path)
    cases = [
        ({**rows[2], "pos_text": ""}, r"bad.jsonl:2: no positive"),
        ({**rows[2], "qry": ""}, r"bad.jsonl:2: no query"),
        (
            {**rows[2], "pos_image_path": "images/missing.png"},
            r"bad.jsonl:2 positive: file 'images/missing.png' not found",
        ),
    ]
    for bad, message in cases:
        write_jsonl(path, [rows[0], bad])
        with pytest.raises(InputError, match=message):
            read_pairs(path)
    write_jsonl(path, [{"question": "x", "answer": "y"}])
    with pytest.raises(InputError, match=r"bad.jsonl:1: layout not recognised.*MMEB-train.*UME-R1"):
        read_pairs(path)
    (media / "bad.csv").write_text("a,b\n")
    with pytest.raises(InputError, match=r"bad.csv: unknown file type"):
        read_pairs(media / "bad.csv")


def test_bad_ume_records_name_the_record(media):
    records = ume_records(media)
    path = media / "ume.json"
    path.write_text(json.dumps([records[0], {**records[2], "pos": {"image": "images/a.png"}}]))
    with pytest.raises(InputError, match=r"ume.json record 1: no positive"):
        read_pairs(path)
    path.write_text('[{"dataset_name": "x",\n "qry": }]')
    with pytest.raises(InputError, match=r"ume.json:2: not valid JSON"):
        read_pairs(path)
    broken = {**records[0], "qry": {**records[0]["qry"], "image": "images/nope.png"}}
    jsonl = write_jsonl(media / "ume.jsonl", [records[2], broken])
    with pytest.raises(InputError, match=r"ume.jsonl:2: file 'images/nope.png' not found"):
        read_pairs(jsonl)
    nothink = {**records[0], "qry": ume_side("<image>", "just an answer<gen_emb>", image="images/a.png")}
    write_jsonl(jsonl, [records[2], nothink])
    with pytest.raises(InputError, match=r"ume.jsonl:2 qry: the gpt turn has no <think>"):
        ume_rationales(jsonl)
    write_jsonl(jsonl, [{**records[2], "dataset_name": 7}])
    with pytest.raises(InputError, match=r'ume.jsonl:1: "dataset_name" should be a non-empty string'):
        read_pairs(jsonl)
    with pytest.raises(InputError, match="not UME-R1 SFT data"):
        ume_rationales(write_jsonl(media / "mmeb.jsonl", mmeb_rows()))


def test_bad_mini_inputs_name_file_and_line(mini, tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(InputError, match=r"plain: no tasks.json, so not a mini-layout folder"):
        read_pairs(tmp_path / "plain")
    rows_file = mini / "Pic-CLS" / "train.jsonl"
    rows = [json.loads(line) for line in rows_file.read_text().splitlines()]
    write_jsonl(rows_file, [rows[0], {**rows[1], "tgt_text": ["", "x", "y"]}])
    with pytest.raises(InputError, match=r"Pic-CLS/train.jsonl:2: no gold candidate"):
        read_pairs(mini)
    write_jsonl(rows_file, [{**rows[0], "qry_hint": ["not", "text"]}])
    with pytest.raises(InputError, match=r"Pic-CLS/train.jsonl:1: \"qry_hint\" must be a string"):
        read_pairs(mini)
    write_jsonl(rows_file, [{**rows[0], "qry_img_path": "media/gone.png"}])
    with pytest.raises(InputError, match=r"Pic-CLS/train.jsonl:1: file 'media/gone.png' not found"):
        read_pairs(mini)
    with pytest.raises(InputError, match=r"Pic-CLS: no test.jsonl"):
        read_pairs(mini, split="test", tasks=["Pic-CLS"])
    qrels = mini / "Doc-RET" / "train" / "qrels.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\nq1\tp9\t1\n")
    with pytest.raises(InputError, match=r"qrels.tsv:2: unknown corpus id 'p9'"):
        read_pairs(mini, tasks=["Doc-RET"])
    (mini / "tasks.json").write_text("[{")
    with pytest.raises(InputError, match=r"tasks.json: cannot read tasks"):
        read_pairs(mini)


def test_module_documents_the_ume_layout_source():
    doc = " ".join(pairs_mod.__doc__.split())
    assert "src/sft-train/qwenvl/data/data_qwen.py" in doc and "08891de" in doc


def test_ume_records_as_its_own_loader_reads_them(media):
    """data_qwen.py: role/content turns as well as from/value, no dataset_name (task = file stem), several
    images per side (a multi-image sample, in order)."""
    rec = {
        "qry": {"conversations": [{"role": "user", "content": "<image><image>Compare them.\n<disc_emb>\n" + UME_INSTRUCTION},
                                  {"role": "assistant", "content": "<think>t</think><answer>a</answer><gen_emb>"}],
                "image": ["images/a.png", "images/b.png"]},
        "pos": {"conversations": [{"from": "human", "value": "two pictures\n<disc_emb>\n" + UME_INSTRUCTION}],
                "image": "images/a.png"},
    }  # fmt: skip
    path = write_jsonl(media / "ume_sft.jsonl", [rec])
    (pair,) = read_pairs(path)
    assert pair.id == "ume_sft/0" and pair.task == "ume_sft"
    assert pair.query.text == "Compare them." and [p.name for p in pair.query.pages] == ["a.png", "b.png"]
    assert pair.target.image.name == "a.png" and pair.target.text == "two pictures"
    assert ume_rationales(path) == {"ume_sft/0": "<think>t</think><answer>a</answer>"}
