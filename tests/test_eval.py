"""Evaluation plumbing: loaders on fixtures of each format, ranking, dedup + cache, bad input, analysis.

A mock encoder stands in for the model: it embeds an item by a word it carries (a text, or an image's
file stem), so a query and its gold candidate share a vector, and it counts what it is asked to embed.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from mmemb import profiles
from mmemb.config import EmbedderConfig
from mmemb.data.registry import DatasetInfo
from mmemb.data.tasks import TaskError, load_beir_task, load_rows_task
from mmemb.eval import analysis
from mmemb.eval.evaluate import evaluate, resolve
from mmemb.eval.runner import EvalSettings, evaluate_task, rank_task
from mmemb.types import Embeddings, InputError

from .conftest import write_image

WORDS = ["cat", "dog", "car", "tree", "boat", "fish"]


class MockEmbedder:
    def __init__(self):
        self.config = EmbedderConfig()
        self.profile = profiles.get(self.config.profile)  # mmemb's own: every mode
        self.calls: list[str] = []  # every item embedded, by its word

    def fingerprint(self) -> str:
        return "mock"

    def word(self, s) -> str:
        if s.text:
            return s.text.split()[-1]
        return s.media()[0].stem if s.image or s.pages else s.frames[0].parent.name

    def encode(
        self, samples, mode="disc", batch_size=8, progress=False, max_new_tokens=None, temperature=None
    ):
        vecs = []
        for s in samples:
            w = self.word(s)
            self.calls.append(w)
            seed = int(hashlib.sha256(w.encode()).hexdigest()[:8], 16)
            v = np.random.RandomState(seed).randn(16)
            if mode == "gen" and w == "dog":
                v = -v  # gen gets "dog" wrong: lets oracle differ from either mode
            vecs.append(v / np.linalg.norm(v))
        n = len(samples)
        return Embeddings(
            np.array(vecs, dtype=np.float32),
            mode,
            texts=[""] * n,
            gen_tokens=[5 if mode == "gen" else 0] * n,
            gen_emb_found=[True] * n,
            seconds=[0.01] * n,
            reasoned=[mode in ("gen", "think")] * n,
            actions=["think"] * n if mode == "adaptive" else None,
        )


def info(name, modality="image", ranking="local", metric="hit@1") -> DatasetInfo:
    return DatasetInfo(name=name, modality=modality, meta_task="RET", metric=metric, ranking=ranking)


def write_rows(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


@pytest.fixture
def root(tmp_path):
    """A data root with one task of each format (image rows, video rows, BEIR)."""
    (tmp_path / "img").mkdir()
    for w in WORDS:
        write_image(tmp_path / "img" / f"{w}.png", seed=WORDS.index(w))
        (tmp_path / "vid" / w).mkdir(parents=True)
        for f in range(3):
            write_image(tmp_path / "vid" / w / f"{f:03d}.jpg", seed=10 * WORDS.index(w) + f)
    # text -> image, local: each row has 4 candidates, gold first; "cat" is asked twice (dedup)
    rows = []
    for q in ["cat", "dog", "car", "cat"]:
        cands = [q] + [w for w in WORDS if w != q][:3]
        rows.append(
            {
                "qry_inst": "",
                "qry_text": f"a photo of a {q}",
                "qry_img_path": "",
                "tgt_inst": "<|image_1|> Represent the image",
                "tgt_text": [""] * 4,
                "tgt_img_path": [f"img/{c}.png" for c in cands],
            }
        )
    write_rows(tmp_path / "T2I" / "test.jsonl", rows)
    vrows = [
        {
            "qry_inst": "Find a video of",
            "qry_text": f"a {w}",
            "tgt_inst": "",
            "tgt_text": [""],
            "tgt_video_path": [f"vid/{w}"],
        }
        for w in WORDS
    ]
    write_rows(tmp_path / "VRET" / "test.jsonl", vrows)
    d = tmp_path / "DOC" / "test"
    write_rows(
        d / "corpus.jsonl", [{"_id": f"p{i}", "image_path": f"img/{w}.png"} for i, w in enumerate(WORDS)]
    )
    write_rows(
        d / "queries.jsonl", [{"_id": "q0", "text": "where is the fish"}, {"_id": "q1", "text": "a tree"}]
    )
    (d / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\nq0\tp5\t2\nq0\tp1\t1\nq1\tp3\t1\n")
    tasks = [
        {
            "name": "T2I",
            "modality": "image",
            "meta_task": "RET",
            "metric": "hit@1",
            "ranking": "local",
            "format": "image_rows",
        },
        {
            "name": "VRET",
            "modality": "video",
            "meta_task": "RET",
            "metric": "hit@1",
            "ranking": "global",
            "format": "video_rows",
        },
        {
            "name": "DOC",
            "modality": "visdoc",
            "meta_task": "RET",
            "metric": "ndcg_linear@5",
            "ranking": "global",
            "format": "beir",
        },
    ]
    (tmp_path / "tasks.json").write_text(json.dumps(tasks))
    return tmp_path


def test_rows_loader_dedups_and_keeps_gold_first(root):
    task = load_rows_task(info("T2I"), root)
    assert len(task.queries) == 4 and len(set(task.queries)) == 3  # "cat" asked twice, one key
    assert len(task.candidate_keys()) == 4  # 16 candidate slots, 4 distinct images (cat dog car tree)
    for row, rel in zip(task.local, task.relevance, strict=True):
        assert list(rel) == [row[0]]
    cand = task.items[task.local[0][0]]
    assert cand.instruction == "Represent the image"  # MMEB's <|image_1|> placeholder dropped


def test_parquet_rows_load_like_jsonl(root):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(x) for x in (root / "T2I" / "test.jsonl").read_text().splitlines()]
    (root / "P").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), root / "P" / "test.parquet")
    a, b = load_rows_task(info("T2I"), root), load_rows_task(info("P"), root)
    assert a.queries == b.queries and a.local == b.local


def test_local_vs_global_ranking(root):
    emb = MockEmbedder()
    local = evaluate_task(
        load_rows_task(info("T2I"), root), emb, EvalSettings(progress=False), root / "c1", "m"
    )
    glob = evaluate_task(
        load_rows_task(info("VRET", "video", "global"), root),
        emb,
        EvalSettings(progress=False),
        root / "c1",
        "m",
    )
    assert local.metrics["hit@1"] == 1.0 and glob.metrics["hit@1"] == 1.0
    # local: each query ranks only its own 4 candidates; global: the whole corpus of 6 clips
    for task, n in (
        (load_rows_task(info("T2I"), root), 4),
        (load_rows_task(info("VRET", "video", "global"), root), 6),
    ):
        vecs = {k: emb.encode([task.items[k]]).vectors[0] for k in task.items}
        for ranked, gold_rank in rank_task(task, vecs, vecs):
            assert len(ranked) == n and gold_rank == 1
    assert local.total_items == 4 + 16 and local.unique_items == 3 + 4
    assert glob.total_items == 6 + 6


def test_beir_graded_qrels(root):
    task = load_beir_task(info("DOC", "visdoc", "global", "ndcg_linear@5"), root)
    assert [sorted(r.values()) for r in task.relevance] == [[1.0, 2.0], [1.0]]
    res = evaluate_task(task, MockEmbedder(), EvalSettings(progress=False), root / "c", "m")
    assert 0 < res.metrics["ndcg_linear@5"] <= 1


def test_each_unique_item_embedded_once_and_cache_reused(root, tmp_path):
    emb = MockEmbedder()

    def run(out):
        return evaluate(emb, "mmeb-mini", out, EvalSettings(progress=False), data_root=root,
                        cache_root=tmp_path / "cache")  # fmt: skip

    out1 = run(tmp_path / "o1")
    first = len(emb.calls)
    per_task_unique = sum(r.unique_items for r in out1["runs"]["disc-disc"].values())
    assert first == per_task_unique  # nothing embedded twice within a task
    run(tmp_path / "o2")
    assert len(emb.calls) == first  # second run: everything from the cache
    s1 = json.loads((tmp_path / "o1" / "scores.disc-disc.json").read_text())["metrics"]
    s2 = json.loads((tmp_path / "o2" / "scores.disc-disc.json").read_text())["metrics"]
    assert s1 == s2


def test_interrupted_run_resumes_from_complete_shards(root, tmp_path):
    task = load_rows_task(info("T2I"), root)

    class Dies(MockEmbedder):
        def encode(self, samples, **kw):
            if len(self.calls) >= 3:
                raise KeyboardInterrupt
            return super().encode(samples, **kw)

    dying = Dies()
    with pytest.raises(KeyboardInterrupt):
        evaluate_task(task, dying, EvalSettings(progress=False, shard_size=3), tmp_path / "cache", "m")
    assert len(dying.calls) == 3  # one shard of 3 written, then killed
    fresh = MockEmbedder()
    evaluate_task(task, fresh, EvalSettings(progress=False, shard_size=3), tmp_path / "cache", "m")
    assert len(fresh.calls) == 7 - 3  # 7 unique items; only those the interrupted run had not stored
    assert not list((tmp_path / "cache").rglob(".*"))  # no half-written files


def mock_eval(root, tmp_path, settings=None, **kwargs):
    """mmeb-mini's fixture through the mock embedder, into tmp_path/o (cache tmp_path/c)."""
    return evaluate(MockEmbedder(), "mmeb-mini", tmp_path / "o", settings or EvalSettings(progress=False),
                    data_root=root, cache_root=tmp_path / "c", **kwargs)  # fmt: skip


def test_broken_dataset_reported_others_kept(root, tmp_path):
    (root / "VRET" / "test.jsonl").write_text('{"qry_text": "a cat", "tgt_video_path": ["vid/missing"]}\n')
    res = mock_eval(root, tmp_path)
    assert set(res["errors"]) == {"VRET"} and "test.jsonl:1" in res["errors"]["VRET"]
    assert set(res["runs"]["disc-disc"]) == {"T2I", "DOC"}
    assert "VRET" in res["report"]  # named as missing in the report
    assert json.loads((tmp_path / "o" / "errors.json").read_text())["VRET"]


@pytest.mark.parametrize(
    "content, expected",
    [
        ('{"qry_text": "a", "tgt_text": [], "tgt_img_path": []}', "no gold candidate"),
        ('{"qry_text": "a", "tgt_text": [""], "tgt_img_path": [""]}', "no gold candidate"),
        ('{"qry_text": "a", "tgt_text": ["x", "y"], "tgt_img_path": ["img/cat.png"]}', "has 1 entries"),
        ('{"qry_text": "a", "tgt_img_path": ["img/nope.png"]}', "not found"),
        ('{"qry_text": "a", ', "not valid JSON"),
        ('{"qry_text": "", "tgt_text": ["x"]}', "empty item"),
    ],
)
def test_bad_rows_name_file_and_row(root, content, expected):
    write_rows(root / "BAD" / "test.jsonl", ['{"qry_text": "fine", "tgt_text": ["ok"]}', content])
    with pytest.raises(TaskError, match=expected) as err:
        load_rows_task(info("BAD"), root)
    assert "BAD/test.jsonl:2" in str(err.value)


def test_bad_parquet_and_beir(root):
    (root / "PQ").mkdir()
    (root / "PQ" / "test.parquet").write_bytes(b"not a parquet file")
    with pytest.raises(TaskError, match="PQ/test.parquet: cannot read parquet"):
        load_rows_task(info("PQ"), root)
    d = root / "DOC" / "test"
    (d / "corpus.jsonl").write_text(
        '{"_id": "p0", "image_path": "img/cat.png"}\n{"_id": "p0", "image_path": "img/dog.png"}\n'
    )
    with pytest.raises(TaskError, match=r"corpus.jsonl:2: duplicate id 'p0'"):
        load_beir_task(info("DOC", "visdoc", "global"), root)
    (d / "corpus.jsonl").write_text('{"_id": "p0", "image_path": "img/cat.png"}\n')
    (d / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\nq0\tp9\t1\n")
    with pytest.raises(TaskError, match=r"qrels.tsv:2: unknown corpus id 'p9'"):
        load_beir_task(info("DOC", "visdoc", "global"), root)


def test_mmeb_v2_without_data_says_what_to_download(tmp_path):
    with pytest.raises(InputError, match="TIGER-Lab/MMEB-V2") as err:
        resolve("mmeb-v2", None)
    assert "--data-root" in str(err.value)
    with pytest.raises(InputError, match="unknown task"):
        resolve("NotADataset", tmp_path)


def test_invalid_mode_pair_is_refused(root, tmp_path):
    with pytest.raises(InputError, match="not a valid pair"):
        mock_eval(root, tmp_path, EvalSettings(qry_mode="gen", tgt_mode="disc"))


def test_oracle_and_pass_at_k_runs(root, tmp_path):
    res = mock_eval(root, tmp_path, analyses=("oracle", "pass@k"), samples=2)
    a = res["analysis"]
    disc, gen = a["disc-disc"]["T2I"]["score"], a["gen-gen"]["T2I"]["score"]
    orc = a["oracle (upper bound, uses labels)"]["T2I"]["score"]
    assert orc >= max(disc, gen)
    assert a["gen-gen"]["ALL"]["invocation_ratio"] == 1.0 and a["disc-disc"]["ALL"]["invocation_ratio"] == 0.0
    assert "gen pass@2" in a
    assert (tmp_path / "o" / "plot.png").stat().st_size > 1000


def test_analysis_functions_by_hand():
    def recs(scores):
        return [{"task": "t", "row": i, "score": s} for i, s in enumerate(scores)]

    o = analysis.oracle({"disc": recs([1, 0, 0]), "gen": recs([0, 0, 1])})
    assert [r["score"] for r in o] == [1, 0, 1] and [r["mode"] for r in o] == ["disc", "disc", "gen"]
    p = analysis.pass_at_k([recs([1, 0]), recs([0, 0]), recs([0, 1])])
    assert [r["score"] for r in p] == [1, 1]
    stats = analysis.per_task(recs([1, 0, 1, 1]))
    assert stats["t"]["score"] == 75.0 and stats["ALL"]["queries"] == 4


def test_frames_are_read_in_vlm2vec_order_and_sampled_at_its_indices(tmp_path):
    """VLM2Vec sorts frame files naturally and samples np.linspace(0, n-1, N, dtype=int): for frame1..frame10
    and 8 frames that is indices 0,1,2,3,5,6,7,9 (hand-computed: 9*k/7 truncated), i.e. frame1..4, 6..8, 10."""
    from mmemb.data.tasks import frame_folder
    from mmemb.media import sample_frames

    folder = tmp_path / "clip"
    folder.mkdir()
    for i in range(1, 11):
        (folder / f"frame{i}.jpg").write_bytes(b"")
    (folder / "notes.txt").write_text("not a frame")
    frames = frame_folder(tmp_path, "clip", "MSR-VTT row 0")
    assert [p.name for p in frames] == [f"frame{i}.jpg" for i in range(1, 11)]  # plain sorted(): frame10 2nd
    picked = [p.name for p in sample_frames(frames, 8)]
    assert picked == [f"frame{i}.jpg" for i in (1, 2, 3, 4, 6, 7, 8, 10)]
    assert sample_frames(frames[:5], 8) == list(frames[:5])  # fewer than asked: all of them, not padded


def test_a_corrupted_cache_neither_crashes_an_eval_nor_changes_its_scores(root, tmp_path, capsys):
    first = mock_eval(root, tmp_path)["runs"]["disc-disc"]
    shards = sorted((tmp_path / "c").rglob("shard-*.npy"))
    for npy in shards[:2]:  # one permuted (a valid file with other numbers), one torn
        v = np.load(npy)
        np.save(npy, v[::-1].copy(), allow_pickle=False)
    shards[2].write_bytes(shards[2].read_bytes()[:40])
    again = mock_eval(root, tmp_path)["runs"]["disc-disc"]
    assert {t: r.metrics for t, r in again.items()} == {t: r.metrics for t, r in first.items()}
    assert capsys.readouterr().err.count("set aside") == 3
