"""MMEB-V2 from the real download layout (mmemb.testing.mmeb_v2_fixture), scored by hand.

The word embedder below stands in for a model: an item is the last word of its text, or, when it has no
text, the name of its media (an image's or page's file stem, a video's frame folder). A word's vector is the
normalised sum of one-hot vectors of its prefixes, so cos(u, v) = shared prefixes / sqrt(len u * len v):
"cat" matches "cat" (1.0), "12" is closer to "123" (0.82) than to "1" (0.71), and words with different first
letters are orthogonal. Every expected score below is worked out from the fixture's rows with that rule.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil

import numpy as np
import pytest

from mmemb import profiles
from mmemb.config import EmbedderConfig
from mmemb.data import hub, mmeb_v2
from mmemb.data.tasks import TaskError
from mmemb.eval.evaluate import evaluate, resolve
from mmemb.eval.runner import EvalSettings
from mmemb.testing import mmeb_v2_fixture as fixture
from mmemb.types import Embeddings, InputError

DIM = 4096


def word(sample) -> str:
    if sample.text:
        return sample.text.split()[-1].strip(".,?!;:()\"'").lower()
    path = sample.media()[0]
    return path.parent.name if sample.frames else path.stem


def vector(w: str) -> np.ndarray:
    v = np.zeros(DIM)
    for i in range(1, len(w) + 1):
        v[int(hashlib.sha256(w[:i].encode()).hexdigest()[:8], 16) % DIM] += 1
    return v / np.linalg.norm(v)


class WordEmbedder:
    def __init__(self):
        self.config = EmbedderConfig()
        self.profile = profiles.get(self.config.profile)  # mmemb's own: every mode

    def fingerprint(self) -> str:
        return "word-prefix"

    def encode(
        self, samples, mode="disc", batch_size=8, progress=False, max_new_tokens=None, temperature=None
    ):
        n = len(samples)
        vecs = np.array([vector(word(s)) for s in samples], dtype=np.float32)
        return Embeddings(
            vecs, mode, texts=[""] * n, gen_tokens=[0] * n, gen_emb_found=[True] * n, seconds=[0.01] * n,
            reasoned=[mode in ("gen", "think")] * n,
        )  # fmt: skip


def ndcg(ranked_grades: list[float], all_grades: list[float]) -> float:
    """ndcg_linear@5 by the textbook formula, for the expectations below."""
    dcg = sum(g / math.log2(i + 2) for i, g in enumerate(ranked_grades[:5]))
    ideal = sum(g / math.log2(i + 2) for i, g in enumerate(sorted(all_grades, reverse=True)[:5]))
    return dcg / ideal


# dataset -> (main metric, hand-computed score in %, why)
EXPECTED = {
    "ImageNet-1K": (50.0, "cat image -> 'cat' (gold); dog image -> 'dog', gold 'bus'"),
    "MSCOCO_t2i": (50.0, "'... cat' -> cat.jpg (gold); '... dog' -> dog.jpg, gold bus.jpg"),
    "RefCOCO-Matching": (50.0, "'the left cat' -> 'left cat' (gold); 'the dog' -> 'right dog', gold 'left cat'"),
    "K700": (50.0, "archery_001 -> 'archery' (gold) among 700 labels; parkour_002 -> 'parkour', gold 'breakdancing'"),
    **{n: (75.0, "guitar -> guitar01 twice (hit), cooking -> cook03 (hit, and a miss on dance02's row)")
       for n in ("MSR-VTT", "MSVD", "DiDeMo", "VATEX", "YouCook2")},
    "QVHighlight": (50.0, "'positive' -> positive_1 (gold); 'negative_2' -> negative_2"),
    "Charades-STA": (50.0, "as QVHighlight, from the Charades_STA folder"),
    "MomentSeeker": (100 * 2 / 3, "text query -> its positive; image query -> the negative; video query -> 2nd positive"),
    "Video-MME": (50.0, "the last option wins: D is gold in row 1, A in row 2"),
    "NExTQA": (50.0, "the last option (a4) wins: gold 4, then gold 0"),
    "EgoSchema": (50.0, "the last option wins: gold '0', then gold '4'"),
    "MVBench": (95.0, "the last option wins: gold pulling (of 3) misses; Rachel and the 18 one-row subsets hit"),
    "ActivityNetQA": (50.0, "'... no.' -> 'no': gold no, then gold yes"),
    # q0 '12' ranks 12 (grade 1), 123 (grade 2); q1 '5' ranks 5 (grade 1) first
    "ViDoRe_arxivqa": (100 * (ndcg([1, 2], [2, 1]) + 1.0) / 2, "see the comment above"),
    # '33' ranks 33 (gold), 34 (shares '3'), then 5 (gold, orthogonal)
    "MMLongBench-doc": (100 * ndcg([1, 0, 1], [1, 1]), "OOD, VLM2Vec's BEIR copy"),
    # q0 '7' -> 7 (gold); q1 '1' ranks 1, then 12 (gold); both languages kept (multilingual)
    "ViDoRe_esg_reports_v2_multilingual": (100 * (1.0 + ndcg([0, 1], [1])) / 2, "no language filter"),
    # q-long -> the long page (gold); q-b -> chart_b, then the long page (gold)
    "VisRAG_ArxivQA": (100 * (1.0 + ndcg([0, 1], [1])) / 2, "string ids, shortened file names"),
}  # fmt: skip


@pytest.fixture(scope="module")
def download(tmp_path_factory):
    out = tmp_path_factory.mktemp("mmeb-v2")
    return fixture.build(out)


@pytest.fixture
def where(download, tmp_path):
    media, cache = download
    return mmeb_v2.Where(media, cache, tmp_path / "pages")


def test_every_schema_family_scores_as_computed_by_hand(download, tmp_path, monkeypatch):
    monkeypatch.setenv("MMEMB_CACHE", str(tmp_path / "mmemb-cache"))
    media, cache = download
    names = ",".join([*EXPECTED, "SmthSmthV2"])
    res = evaluate(WordEmbedder(), names, tmp_path / "out", EvalSettings(progress=False), data_root=media,
                   hub_cache=cache, cache_root=tmp_path / "emb")  # fmt: skip
    assert res["errors"] == {}
    scores = json.loads((tmp_path / "out" / "scores.disc-disc.json").read_text())
    for name, (expected, why) in EXPECTED.items():
        info = mmeb_v2.MMEB_V2[name]
        got = res["runs"]["disc-disc"][name].metrics[info.metric] * 100
        assert got == pytest.approx(expected, abs=1e-6), f"{name}: {got} != {expected} ({why})"
        assert name in json.dumps(scores)
    # the VisRAG page that was not in the data root was written from the corpus bytes, under VLM2Vec's name
    short = mmeb_v2.page_file(mmeb_v2.SOURCES["VisRAG_ArxivQA"], "chart_b.png")
    assert (
        short.startswith("chart_b_")
        and (tmp_path / "mmemb-cache" / "mmeb-v2-pages" / "VisRAG_ArxivQA" / short).is_file()
    )


def test_family_structure(where):
    """What each parser builds, beyond the score: candidate counts, gold placement, corpus sizes."""
    k700 = mmeb_v2.load_task("K700", where)
    assert len(k700.corpus) == 700 and k700.local is None  # VLM2Vec's label list; row labels are in it
    ssv2 = mmeb_v2.load_task("SmthSmthV2", where)  # gold = pos_text, wherever it sits in neg_text
    golds = [ssv2.local[i].index(next(iter(ssv2.relevance[i]))) for i in range(2)]
    assert golds == [1, 0] and [len(c) for c in ssv2.local] == [3, 2]
    msr = mmeb_v2.load_task("MSR-VTT", where)
    assert len(msr.queries) == 4 and len(msr.corpus) == 3  # rows sharing guitar01 give one candidate
    ms = mmeb_v2.load_task("MomentSeeker", where)
    assert [len(r) for r in ms.relevance] == [1, 2, 2]  # label_name is the list of positives
    q = [ms.items[k] for k in ms.queries]
    assert [s.modality for s in q] == ["text", "image", "video"]
    assert q[1].instruction == "Select the video clip that aligns with the given text and image:"
    mvb = mmeb_v2.load_task("MVBench", where)
    cands = [[mvb.items[k].text for k in row] for row in mvb.local]
    # rows in subset_meta's order (episodic_reasoning first), candidates as qa_template names them
    assert cands[:3] == [["(A) Ross", "(B) Rachel"], ["(A) yes", "(B) no"], ["(A) yes", "(B) no"]]
    assert cands[3] == ["(A) pushing", "(B) pulling", "(C) not sure"] and len(cands) == 20
    assert (
        mvb.items[mvb.queries[3]].text
        == "What is the action?\nOptions:\n(A) pushing\n(B) pulling\n(C) not sure"
    )
    vmme = mmeb_v2.load_task("Video-MME", where)
    assert [vmme.items[k].text for k in vmme.local[0]] == ["tennis", "golf", "rugby", "swimming"]
    v2 = mmeb_v2.load_task("ViDoRe_esg_reports_v2_multilingual", where)
    assert len(v2.queries) == 2  # no language filter for the multilingual sets
    arxiv = mmeb_v2.load_task("ViDoRe_arxivqa", where)
    assert [len(r) for r in arxiv.relevance] == [2, 1]  # the grade-0 qrel is dropped
    visrag = mmeb_v2.load_task("VisRAG_ArxivQA", where)
    long_page = visrag.items[next(iter(visrag.relevance[0]))].pages[0]
    assert (
        long_page.parent == where.data_root / "visdoc-tasks" / "VisRAG_ArxivQA"
    )  # found under VLM2Vec's name
    assert (
        long_page.name
        == fixture.VISRAG_LONG[:50] + "_" + hashlib.md5(fixture.VISRAG_LONG.encode()).hexdigest()[:8] + ".png"
    )
    page = v2.items[v2.corpus[0]].pages[0]
    assert page.parent.name == "esg_reports_v2_multilingual"  # read from the data root's v2 folder name


def test_frames_in_natural_order_and_vlm2vec_indices(where):
    """frame1.jpg .. frame10.jpg: natural order, then np.linspace(0, 9, 8, dtype=int) = 0,1,2,3,5,6,7,9."""
    k700 = mmeb_v2.load_task("K700", where)
    frames = k700.items[k700.queries[0]].frames
    assert [p.name for p in frames] == [f"frame{i}.jpg" for i in (1, 2, 3, 4, 6, 7, 8, 10)]
    ms = mmeb_v2.load_task("MomentSeeker", where)  # MomentSeeker loads every frame of a clip, unsampled
    assert sorted(len(ms.items[k].frames) for row in ms.local for k in row) == [8] * 7 + [10]


def test_check_lists_present_missing_and_malformed(download, tmp_path):
    media, cache = download
    statuses = {
        s.name: s for s in mmeb_v2.check(list(mmeb_v2.SOURCES), mmeb_v2.Where(media, cache, tmp_path))
    }
    present = {n for n, s in statuses.items() if s.state == "present"}
    assert present == {*EXPECTED, "SmthSmthV2"}
    assert statuses["ImageNet-1K"].revision == fixture.REVISION
    n24 = statuses["N24News"]  # the card lists it, the partial download lacks it
    assert n24.state == "missing" and '--include "N24News/test-*"' in n24.command
    hmdb = statuses["HMDB51"]  # never downloaded
    assert hmdb.state == "missing" and hmdb.command.startswith(
        "hf download VLM2Vec/HMDB51 --repo-type dataset"
    )
    assert "VLM2Vec/HMDB51" in hmdb.detail


def test_partial_download_evaluates_what_is_present_and_names_the_rest(download, tmp_path, monkeypatch):
    monkeypatch.setenv("MMEMB_CACHE", str(tmp_path / "c"))
    media, cache = download
    res = evaluate(WordEmbedder(), "ImageNet-1K,N24News,HMDB51", tmp_path / "o", EvalSettings(progress=False),
                   data_root=media, hub_cache=cache, cache_root=tmp_path / "emb")  # fmt: skip
    assert set(res["runs"]["disc-disc"]) == {"ImageNet-1K"}
    assert set(res["errors"]) == {"N24News", "HMDB51"} and sorted(res["missing"]) == ["HMDB51", "N24News"]
    meta = json.loads((tmp_path / "o" / "scores.disc-disc.json").read_text())["metadata"]["mmeb_v2"]
    assert meta["annotations"] == {"ImageNet-1K": f"ziyjiang/MMEB_Test_Instruct@{fixture.REVISION}"}
    assert meta["layout"].endswith("6e1e1d42d4cba85ae4db4d3f7a25cba2465d1e16")
    assert (
        "hf download VLM2Vec/HMDB51" in res["errors"]["HMDB51"] or "VLM2Vec/HMDB51" in res["errors"]["HMDB51"]
    )
    assert "N24News" in res["report"] and "HMDB51" in res["report"]


def test_nothing_present_says_how_to_check(tmp_path):
    (tmp_path / "media").mkdir()
    with pytest.raises(InputError, match="check-mmeb-v2"):
        evaluate(WordEmbedder(), "ImageNet-1K", tmp_path / "o", EvalSettings(progress=False),
                 data_root=tmp_path / "media", hub_cache=tmp_path / "hub", cache_root=tmp_path / "e")  # fmt: skip
    with pytest.raises(InputError, match="TIGER-Lab/MMEB-V2"):
        resolve("mmeb-v2", None)
    (tmp_path / "media" / "image-tasks").mkdir()
    with pytest.raises(InputError, match="not one of its sub-folders"):
        resolve("mmeb-v2", tmp_path / "media" / "image-tasks")
    snap = tmp_path / "datasets--ziyjiang--MMEB_Test_Instruct" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    with pytest.raises(InputError, match="--hub-cache"):
        resolve("mmeb-v2", snap)


def _copy(download, tmp_path):
    media, cache = download
    shutil.copytree(media, tmp_path / "m", symlinks=True)
    shutil.copytree(cache, tmp_path / "h", symlinks=True)
    return mmeb_v2.Where(tmp_path / "m", tmp_path / "h", tmp_path / "p")


def _rewrite(where, repo, rel, rows, fmt="jsonl"):
    """Replace one annotation file of the fixture snapshot with other rows (the blob behind the link)."""
    snap = hub.find_snapshot(repo, where.hub_cache)
    path = snap.path / rel
    target = path.resolve()
    path.unlink()
    target.unlink()
    text = "".join(json.dumps(r) + "\n" for r in rows) if fmt == "jsonl" else json.dumps(rows)
    path.write_text(text)


def test_errors_name_dataset_file_row_and_column(download, tmp_path):
    where = _copy(download, tmp_path)
    # a row in another schema: the columns are named, not an "empty item"
    _rewrite(where, "VLM2Vec/Kinetics-700", "test.jsonl", [{"qry_text": "x", "tgt_text": ["y"]}])
    with pytest.raises(TaskError, match=r"K700: .*test.jsonl:1: column\(s\) \['video_id', 'pos_text'\] missing.*"
                       r"this row has \['qry_text', 'tgt_text'\]"):  # fmt: skip
        mmeb_v2.load_task("K700", where)
    # a RET video folder with fewer frames than VLM2Vec needs
    folder = where.data_root / "video-tasks/frames/video_ret/MSVD/dance02"
    for p in sorted(folder.iterdir())[:4]:
        p.unlink()
    with pytest.raises(
        TaskError, match=r"test.json row 1: video_id: frame folder .*dance02: 6 frame\(s\), needs 8"
    ):
        mmeb_v2.load_task("MSVD", where)
    # a gold outside the candidates
    _rewrite(where, "VLM2Vec/SmthSmthV2", "test.json",
             [{"video_id": 101, "pos_text": "Nothing", "neg_text": ["Opening something"]}], fmt="json")  # fmt: skip
    with pytest.raises(TaskError, match=r"test.json row 0: pos_text 'Nothing' is not among neg_text"):
        mmeb_v2.load_task("SmthSmthV2", where)
    # a truncated parquet shard
    snap = hub.find_snapshot("VLM2Vec/Video-MME", where.hub_cache)
    shard = snap.path / "videomme/test-00000-of-00001.parquet"
    data = shard.read_bytes()
    shard.unlink()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(TaskError, match=r"Video-MME: .*test-00000-of-00001.parquet: cannot read parquet"):
        mmeb_v2.load_task("Video-MME", where)
    # a wrong column type
    _rewrite(where, "VLM2Vec/ActivityNetQA", "test.jsonl",
             [{"video_name": "abc", "question": "q", "answer": "maybe", "question_id": "1"}])  # fmt: skip
    with pytest.raises(TaskError, match=r"test.jsonl:1: answer 'maybe' is not yes/no"):
        mmeb_v2.load_task("ActivityNetQA", where)


def test_snapshot_resolution_and_default_split_patterns(tmp_path):
    # local-dir layout with its recorded revision
    d = tmp_path / "org" / "name"
    (d / "data").mkdir(parents=True)
    (d / "data" / "test-00000-of-00002.parquet").write_bytes(b"")
    (d / "data" / "test-00001-of-00002.parquet").write_bytes(b"")
    (d / "data" / "train-00000-of-00001.parquet").write_bytes(b"")
    snap = hub.find_snapshot("org/name", tmp_path)
    assert snap.path == d and snap.revision == ""
    assert [p.name for p in hub.data_files(snap, None, "test")] == [
        "test-00000-of-00002.parquet",
        "test-00001-of-00002.parquet",
    ]
    with pytest.raises(hub.HubError, match="no val data file"):
        hub.data_files(snap, None, "val")
    # a single unsplit file is the train split, as in datasets
    e = tmp_path / "org" / "plain"
    e.mkdir()
    (e / "annotations.jsonl").write_text('{"a": 1}\n')
    assert [p.name for p in hub.data_files(hub.find_snapshot("org/plain", tmp_path), None, "train")] == [
        "annotations.jsonl"
    ]
    assert hub.find_snapshot("org/absent", tmp_path) is None


def test_check_command(download, capsys):
    from mmemb.cli import main

    media, cache = download
    argv = ["data", "check-mmeb-v2", "--data-root", str(media), "--hub-cache", str(cache)]
    assert main([*argv, "--tasks", "ImageNet-1K,MSR-VTT"]) == 0
    out = capsys.readouterr().out
    assert "present   ImageNet-1K" in out and "2 present, 0 missing, 0 malformed of 2" in out
    assert main([*argv, "--tasks", "HMDB51"]) == 1
    out = capsys.readouterr().out
    assert "missing   HMDB51" in out and "get it: hf download VLM2Vec/HMDB51 --repo-type dataset" in out


def test_readme_downloads_every_annotation_repo_the_loaders_read():
    import re
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = readme[readme.index("for repo in ") : readme.index("hf download $repo")]
    listed = set(re.findall(r"[\w.-]+/[\w.-]+", block))
    assert listed == {s.repo for s in mmeb_v2.SOURCES.values()}


def test_language_filter_and_media_missing_in_check(download, tmp_path):
    where = _copy(download, tmp_path)
    english = mmeb_v2.Source(
        "ViDoRe_esg_reports_v2_multilingual", "vidore", "vidore/esg_reports_v2", None, "test",
        ("visdoc-tasks/esg_reports_v2_multilingual",), language="english",
    )  # fmt: skip
    _, files = mmeb_v2._annotation_files(english, where)
    task = mmeb_v2._load_beir(english, mmeb_v2.MMEB_V2[english.name], files, where)
    assert len(task.queries) == 1  # the French query is filtered out, as for VLM2Vec's *_v2 (english) sets
    # the first row's frame folder is gone: the check says missing, names the folder and the archive command
    shutil.rmtree(where.data_root / "video-tasks/frames/video_qa/NExTQA/4010069381")
    (s,) = mmeb_v2.check(["NExTQA"], where)
    assert s.state == "missing" and "NExTQA/4010069381: no such folder" in s.detail
    assert "video_qa.tar.gz-0*" in s.command
    with pytest.raises(
        mmeb_v2.Missing, match=r"NExTQA: .*4010069381: no such folder; get it with: hf download"
    ):
        mmeb_v2.load_task("NExTQA", where)


def test_every_dataset_has_a_source_consistent_with_the_registry():
    """78 sources; each parser's ranking (VLM2Vec's eval_type) matches the registry's."""
    local = {"image rows", "video CLS (multiple choice)", "video MRET (clip folders)", "video MRET (MomentSeeker)",
             "video QA"}  # fmt: skip
    assert len(mmeb_v2.SOURCES) == 78
    for name, src in mmeb_v2.SOURCES.items():
        info = mmeb_v2.MMEB_V2[name]
        assert (info.ranking == "local") == (src.family in local), name
        assert src.parser in mmeb_v2.COLUMNS and (
            src.family.startswith("visdoc") or src.parser in mmeb_v2.PARSERS
        )
    assert mmeb_v2.SOURCES["K700"].repo == "VLM2Vec/Kinetics-700" and mmeb_v2.SOURCES["K700"].media[
        0
    ].endswith("video_cls/K700")
    labels = mmeb_v2.video_labels()
    assert {k: len(v) for k, v in labels.items()} == {
        "Kinetics-700": 700,
        "SmthSmthV2": 174,
        "UCF101": 101,
        "HMDB51": 51,
        "Breakfast": 10,
    }


def test_a_broken_annotation_file_skips_its_dataset_only(download, tmp_path, monkeypatch):
    monkeypatch.setenv("MMEMB_CACHE", str(tmp_path / "c"))
    where = _copy(download, tmp_path)
    shard = (
        hub.find_snapshot("VLM2Vec/Video-MME", where.hub_cache).path / "videomme/test-00000-of-00001.parquet"
    )
    data = shard.read_bytes()
    shard.unlink()
    shard.write_bytes(data[:100])
    res = evaluate(WordEmbedder(), "ImageNet-1K,Video-MME", tmp_path / "o", EvalSettings(progress=False),
                   data_root=where.data_root, hub_cache=where.hub_cache, cache_root=tmp_path / "emb")  # fmt: skip
    assert (
        set(res["runs"]["disc-disc"]) == {"ImageNet-1K"}
        and "cannot read parquet" in res["errors"]["Video-MME"]
    )
    assert res["missing"] == []
