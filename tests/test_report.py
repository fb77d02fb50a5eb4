"""The MMEB-V2 registry and score reports: counts and rules, the published VLM2Vec-V2 file, round trips."""

from __future__ import annotations

import copy
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from mmemb.data.registry import META_TASKS, MMEB_V2, MODALITIES, DatasetInfo, meta_task_order, suite
from mmemb.eval.report import ScoreFileError, format_report, load_scores, summarize, write_scores

from .conftest import PUBLISHED_SCORES, needs_shared


@pytest.fixture
def published() -> Path:
    """VLM2Vec's real published score file (FACTS §3)."""
    needs_shared(PUBLISHED_SCORES)
    return PUBLISHED_SCORES


def row(report: str, label: str) -> str:
    """The table line whose label is exactly ``label`` (labels are left-aligned, cells follow)."""
    hits = [line for line in report.splitlines() if re.match(rf"{re.escape(label)}( {{2,}}|$)", line)]
    assert len(hits) == 1, f"{label!r}: {hits}"
    return hits[0]


MINI_TASKS = [  # as mmemb.data.mini writes them: extra keys ("format", "splits") are ignored
    {"name": "Clipart-CLS", "modality": "image", "meta_task": "CLS", "metric": "hit@1", "ranking": "local",
     "format": "image_rows", "splits": {"train": 10, "test": 5}},
    {"name": "Clipart-QA", "modality": "image", "meta_task": "QA", "metric": "hit@1", "ranking": "local"},
    {"name": "Clipart-VideoRET", "modality": "video", "meta_task": "RET", "metric": "hit@1", "ranking": "global"},
    {"name": "WordNet-DocRet", "modality": "visdoc", "meta_task": "RET", "metric": "ndcg_linear@5",
     "ranking": "global", "qry_instruction": "Find the page:"},
]  # fmt: skip


# --- registry ---------------------------------------------------------------------------------------------


def test_mmeb_v2_counts_per_modality_and_meta_task():
    assert len(MMEB_V2) == 78
    assert Counter(d.modality for d in MMEB_V2.values()) == {"image": 36, "video": 18, "visdoc": 24}
    counts = Counter((d.modality, d.meta_task) for d in MMEB_V2.values())
    assert counts == {
        ("image", "CLS"): 10, ("image", "QA"): 10, ("image", "RET"): 12, ("image", "GD"): 4,
        ("video", "CLS"): 5, ("video", "QA"): 5, ("video", "RET"): 5, ("video", "MRET"): 3,
        ("visdoc", "ViDoRe-V1"): 10, ("visdoc", "ViDoRe-V2"): 4, ("visdoc", "VisRAG"): 6, ("visdoc", "OOD"): 4,
    }  # fmt: skip
    assert meta_task_order(MMEB_V2) == META_TASKS
    assert list(MMEB_V2)[:2] == ["ImageNet-1K", "N24News"] and list(MMEB_V2)[-1] == "MMLongBench-doc"


def test_mmeb_v2_metrics_and_ranking_rules():
    for d in MMEB_V2.values():
        assert d.metric == ("ndcg_linear@5" if d.modality == "visdoc" else "hit@1"), d
        if d.modality == "image" or d.modality == "visdoc":
            expected = "local" if d.modality == "image" else "global"
        elif d.meta_task in ("QA", "MRET") or d.name == "SmthSmthV2":
            expected = "local"
        else:  # video RET, video CLS other than SmthSmthV2
            expected = "global"
        assert d.ranking == expected, d
    assert MMEB_V2["SmthSmthV2"].ranking == "local" and MMEB_V2["K700"].ranking == "global"


def test_mmeb_v2_instructions():
    for d in MMEB_V2.values():
        if d.modality == "image":  # the released image rows carry their own
            assert d.qry_instruction == d.tgt_instruction == "", d
        else:
            assert d.qry_instruction and d.qry_instruction == d.qry_instruction.strip(), d
    # video CLS / QA targets are bare labels / answers; retrieval-style targets carry an instruction
    assert all(MMEB_V2[n].tgt_instruction == "" for n in ("K700", "MVBench", "ActivityNetQA"))
    assert MMEB_V2["MSR-VTT"].tgt_instruction == "Understand the content of the provided video."
    assert MMEB_V2["ViDoRe_arxivqa"].qry_instruction == "Find a document image that matches the given query:"


def test_suite_lookup_and_mini_tasks_json(tmp_path):
    assert suite("mmeb-v2") == MMEB_V2
    (tmp_path / "tasks.json").write_text(json.dumps(MINI_TASKS))
    mini = suite("mmeb-mini", tmp_path / "tasks.json")
    assert list(mini) == [t["name"] for t in MINI_TASKS]
    assert mini["WordNet-DocRet"] == DatasetInfo(
        "WordNet-DocRet", "visdoc", "RET", "ndcg_linear@5", "global", "Find the page:"
    )
    assert meta_task_order(mini) == {"image": ("CLS", "QA"), "video": ("RET",), "visdoc": ("RET",)}
    with pytest.raises(ValueError, match="tasks.json"):
        suite("mmeb-mini")
    with pytest.raises(ValueError, match="unknown suite"):
        suite("mmeb-v9")
    bad = [dict(MINI_TASKS[0], ranking="sideways")]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"bad\.json\[0\].*ranking"):
        suite("mmeb-mini", tmp_path / "bad.json")


# --- the published file -----------------------------------------------------------------------------------


def test_published_file_reproduces_published_modality_scores(published):
    summary = summarize(load_scores(published))
    report = format_report([summary])
    assert row(report, "image").endswith("64.9 (36/36)")
    assert row(report, "video").endswith("34.7 (18/18)")
    assert row(report, "visdoc").endswith("69.2 (22/24)")
    assert list(summary.missing) == ["ViDoSeek-doc", "MMLongBench-doc"]
    assert summary.extra == ("MomentSeeker_1k8",)
    assert "missing (2 of 78): ViDoSeek-doc, MMLongBench-doc" in report
    assert "extra, ignored (1): MomentSeeker_1k8" in report
    # the 18 video datasets counted are the registry's (MomentSeeker, 1,602 text queries), not MomentSeeker_1k8
    assert summary.scores["MomentSeeker"] == pytest.approx(42.88389513108614)
    assert (summary.modalities["video"].present, summary.modalities["video"].expected) == (18, 18)


def test_published_overall_is_labelled_partial(published):
    summary = summarize(load_scores(published))
    assert summary.overall.label == "overall (partial: 76/78)"
    assert summary.overall.present == 76 and not summary.overall.complete
    scores = list(summary.scores.values())
    assert summary.overall.score == pytest.approx(sum(scores) / len(scores))  # plain mean over datasets
    report = format_report([summary])
    overall_lines = [line for line in report.splitlines() if line.startswith("overall")]
    assert overall_lines and all("partial" in line for line in overall_lines)
    assert summary.meta_tasks["visdoc"]["OOD"].label == "OOD (partial: 2/4)"
    assert "62.5 (2/4)" in row(report, "  OOD")


def test_two_files_side_by_side(published, tmp_path):
    data = json.loads(published.read_text())
    modified = copy.deepcopy(data)
    modified["metadata"]["model_name"] = "My-Model"
    for name in ("ViDoSeek-doc", "MMLongBench-doc"):  # complete the visdoc set
        modified["metrics"]["visdoc"][name] = {"ndcg_linear@5": 0.5, "hit@1": 0.4}
    for values in modified["metrics"]["image"].values():
        values["hit@1"] = 0.5
    other = tmp_path / "modified.json"
    other.write_text(json.dumps(modified))
    report = format_report([summarize(load_scores(published)), summarize(load_scores(other))])
    header = next(line for line in report.splitlines() if "My-Model" in line)
    assert "VLM2Vec-V2.0-Qwen2VL-2B" in header
    assert re.search(r"64\.9 \(36/36\) +50\.0 \(36/36\)$", row(report, "image"))
    assert re.search(r"69\.2 \(22/24\) +\S+ \(24/24\)$", row(report, "visdoc"))
    assert re.search(r"\(76/78\) +\S+ \(78/78\)$", row(report, "overall (partial in some columns)"))
    assert "[2] My-Model" in report and "missing (0 of 78): none" in report


def test_same_model_name_twice_gets_distinct_columns(published, tmp_path):
    copy_path = tmp_path / "copy.json"
    copy_path.write_text(published.read_text())
    report = format_report([summarize(load_scores(published)), summarize(load_scores(copy_path))])
    assert f"[{published.name}]" in report and "[copy.json]" in report
    assert row(report, "overall (partial: 76/78)").split()[-2:] == ["59.0", "59.0"]


# --- arithmetic, writing, errors --------------------------------------------------------------------------


def test_worked_example_plain_means(tmp_path):
    tasks = [
        {"name": "a", "modality": "image", "meta_task": "CLS", "metric": "hit@1", "ranking": "local"},
        {"name": "b", "modality": "image", "meta_task": "QA", "metric": "hit@1", "ranking": "local"},
        {"name": "c", "modality": "video", "meta_task": "RET", "metric": "hit@1", "ranking": "global"},
        {"name": "d", "modality": "video", "meta_task": "RET", "metric": "hit@1", "ranking": "global"},
    ]
    path = write_scores(
        tmp_path / "s.json",
        "m",
        "mmeb-mini",
        {"a": {"hit@1": 0.5}, "b": {"hit@1": 0.7}, "c": {"hit@1": 0.3}},
        tasks,
    )
    s = summarize(load_scores(path))
    assert s.modalities["image"].score == pytest.approx(60.0)
    assert s.modalities["video"].label == "video (partial: 1/2)" and s.modalities[
        "video"
    ].score == pytest.approx(30)
    assert s.overall.label == "overall (partial: 3/4)" and s.overall.score == pytest.approx(50.0)
    assert s.missing == {"d": ""}


def test_mini_suite_round_trip(tmp_path):
    per_dataset = {
        "Clipart-CLS": {"hit@1": 0.75, "hit@5": 1.0, "num_data": 4},
        "Clipart-QA": {"hit@1": 0.5},
        "Clipart-VideoRET": {"hit@1": 0.25},
        "WordNet-DocRet": {"ndcg_linear@5": 0.625, "hit@1": 0.5},
    }
    path = write_scores(
        tmp_path / "out" / "scores.json", "nano", "mmeb-mini", per_dataset, MINI_TASKS, {"seed": 0}
    )
    assert sorted(p.name for p in path.parent.iterdir()) == ["scores.json"]  # no temporary file left behind
    raw = json.loads(path.read_text())
    assert list(raw["metrics"]) == ["image", "video", "visdoc"]
    assert raw["metadata"]["tasks"] == MINI_TASKS and raw["metadata"]["seed"] == 0
    loaded = load_scores(path)
    assert (loaded.model_name, loaded.suite) == ("nano", "mmeb-mini")
    assert loaded.metrics["image"]["Clipart-CLS"] == per_dataset["Clipart-CLS"]
    s = summarize(loaded)
    assert s.scores == {
        "Clipart-CLS": 75.0,
        "Clipart-QA": 50.0,
        "Clipart-VideoRET": 25.0,
        "WordNet-DocRet": 62.5,
    }
    assert s.overall.label == "overall" and s.overall.score == pytest.approx(53.125)
    report = format_report([s])
    assert row(report, "overall").endswith("53.1") and row(report, "visdoc").endswith("62.5 (1/1)")
    assert "ndcg_linear@5 (visdoc)" in report


def test_write_scores_rejects_bad_input(tmp_path):
    target = tmp_path / "s.json"
    with pytest.raises(ValueError, match="not in the suite"):
        write_scores(target, "m", "mmeb-v2", {"NoSuchSet": {"hit@1": 0.1}}, None, {})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        write_scores(target, "m", "mmeb-v2", {"K700": {"hit@1": 38.2}}, None, {})
    with pytest.raises(ValueError, match="main metric 'ndcg_linear@5'"):
        write_scores(target, "m", "mmeb-v2", {"VisRAG_ChartQA": {"hit@1": 0.5}}, None, {})
    with pytest.raises(ValueError, match="tasks"):
        write_scores(target, "m", "mmeb-mini", {}, None, {})
    with pytest.raises(ValueError, match="model_name"):
        write_scores(target, "m", "mmeb-v2", {}, None, {"model_name": "x"})
    assert not target.exists()


def test_write_scores_replaces_whole_file(tmp_path):
    target = tmp_path / "s.json"
    write_scores(target, "m", "mmeb-v2", {"K700": {"hit@1": 0.1}}, None, {})
    write_scores(target, "m", "mmeb-v2", {"UCF101": {"hit@1": 0.2}}, None, {})
    assert list(load_scores(target).metrics["video"]) == ["UCF101"]
    assert load_scores(target).model_name == "m"


def write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj) if not isinstance(obj, str) else obj)
    return path


@pytest.mark.parametrize(
    ("content", "key"),
    [
        ('{"metrics": {"image": {', "not valid JSON"),
        ({"metrics": {"image": {"ImageNet-1K": {"hit@1": "0.8"}}}}, "metrics.image.ImageNet-1K.hit@1"),
        ({"metrics": {"image": {"ImageNet-1K": {"hit@1": True}}}}, "metrics.image.ImageNet-1K.hit@1"),
        ({"metrics": {"image": {"ImageNet-1K": {"hit@1": None}}}}, "metrics.image.ImageNet-1K.hit@1"),
        ({"metrics": {"image": {"ImageNet-1K": {"hit@1": 80.8}}}}, "metrics.image.ImageNet-1K.hit@1"),
        ({"metrics": {"image": {"ImageNet-1K": 0.808}}}, "metrics.image.ImageNet-1K"),
        ({"metrics": {"image": [0.808]}}, "metrics.image"),
        ({"metrics": [{"image": {}}]}, "metrics"),
        ({"metadata": {"model_name": "x"}}, "metrics"),
        ([1, 2], "(top level)"),
        ({"metadata": [], "metrics": {}}, "metadata"),
        ({"metadata": {"model_name": 3}, "metrics": {}}, "metadata.model_name"),
        ({"metadata": {"suite": "mmeb-mini"}, "metrics": {}}, "metadata.tasks"),
        ({"metadata": {"suite": "mmeb-mini", "tasks": [{"name": "a"}]}, "metrics": {}}, "metadata.tasks"),
    ],
)
def test_malformed_files_name_file_and_key(tmp_path, content, key):
    path = write_json(tmp_path / "broken.json", content)
    with pytest.raises(ScoreFileError) as info:
        load_scores(path)
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert str(path) in message and key in message, message


def test_unreadable_file_is_named(tmp_path):
    with pytest.raises(ScoreFileError, match="nope.json"):
        load_scores(tmp_path / "nope.json")


def test_vlm2vec_status_strings_read_as_missing(tmp_path):
    """VLM2Vec's report script writes e.g. "FILE_N/A" for a dataset whose score file it did not find."""
    path = write_json(
        tmp_path / "m.json",
        {
            "metrics": {
                "video": {"K700": {"hit@1": 0.4}, "UCF101": "FILE_N/A"},
                "audio": {"Clotho": {"hit@1": 0.1}},
            }
        },
    )
    s = summarize(load_scores(path))
    assert s.model_name == "m" and s.suite == "mmeb-v2"  # defaults: file stem, mmeb-v2
    assert s.missing["UCF101"] == "FILE_N/A" and s.missing["HMDB51"] == ""
    assert s.extra == ("Clotho",)
    assert s.modalities["video"].counts == "1/18" and s.modalities["image"].score is None
    report = format_report([s])
    assert row(report, "image").endswith("- (0/36)") and "UCF101 (FILE_N/A)" in report


def test_dataset_under_wrong_modality_is_extra_and_missing(tmp_path):
    path = write_json(tmp_path / "m.json", {"metrics": {"image": {"K700": {"hit@1": 0.4}}}})
    s = summarize(load_scores(path))
    assert "K700" in s.missing and s.extra == ("K700 (under image, expected under video)",)


@pytest.mark.parametrize("modality", MODALITIES)
def test_modality_means_are_plain_means(tmp_path, modality):
    names = [d for d, info in MMEB_V2.items() if info.modality == modality]
    per = {n: {MMEB_V2[n].metric: (i + 1) / (len(names) + 1)} for i, n in enumerate(names)}
    s = summarize(load_scores(write_scores(tmp_path / "s.json", "m", "mmeb-v2", per, None, {})))
    assert s.modalities[modality].score == pytest.approx(
        100 * sum(v for p in per.values() for v in p.values()) / len(names)
    )
