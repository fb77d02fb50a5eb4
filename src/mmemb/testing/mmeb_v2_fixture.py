"""A small MMEB-V2 download, laid out as the real one, for tests: `python -m mmemb.testing.mmeb_v2_fixture OUT`.

It writes two trees under OUT, from the upstream definitions in docs/design/mmeb-v2-layouts.md (VLM2Vec's
download_data.sh, eval yamls and parsers; the hub repos' conventions), never in mmemb's own format:

    OUT/MMEB-V2/   the media root, as `git clone TIGER-Lab/MMEB-V2` + download_data.sh's tar steps leave it
    OUT/hub/       annotation snapshots, in the Hugging Face cache layout (datasets--org--name/refs/main,
                   snapshots/<rev>/ symlinked into blobs/) and, for VisRAG, the `hf download --local-dir`
                   layout (OUT/hub/openbmb/<name>/ with .cache/huggingface/download/*.metadata)

Covered: one dataset of every schema family and file format the loaders meet — parquet shards under a
README `configs:` header, JSON lists, JSON Lines, default split-name patterns, configs (MSR-VTT test_1k,
NExTQA MC, EgoSchema Subset, MVBench's 20 subsets), int and string ids, a BEIR corpus with the page images
embedded as {bytes, path}. Every image and frame has distinct bytes (items are keyed by content).

The row contents are chosen so that `tests/test_mmeb_v2.py`'s word embedder (a sample is its text's last word,
else its media's name) gives scores that can be worked out by hand; the test file does so, row by row.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REVISION = "0123456789abcdef0123456789abcdef01234567"  # a made-up commit, recorded like a real one


def _png_bytes(seed: str, fmt: str = "PNG") -> bytes:
    rng = np.random.RandomState(int(hashlib.sha256(seed.encode()).hexdigest()[:8], 16))
    buf = io.BytesIO()
    Image.fromarray(rng.randint(0, 255, (8, 8, 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_png_bytes(str(path), "JPEG" if path.suffix in (".jpg", ".jpeg") else "PNG"))


def frames(folder: Path, n: int = 10, name: str = "frame{i}.jpg", start: int = 1) -> None:
    """n frames named frame1.jpg ... frame10.jpg (not zero-padded: the natural sort matters)."""
    for i in range(start, start + n):
        image(folder / name.format(i=i))


# ---- writing hub files -----------------------------------------------------------------------------------
def _parquet_bytes(rows: list[dict], schema) -> bytes:
    """A parquet shard as `datasets` writes one: the features in the "huggingface" schema metadata, so that
    an {bytes, path} column named image decodes as an Image feature."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    kinds = {pa.string(): "string", pa.int64(): "int64"}
    features = {}
    for f in schema:
        if f.name == "image":
            features[f.name] = {"_type": "Image"}
        elif pa.types.is_list(f.type):
            features[f.name] = {"feature": {"dtype": "string", "_type": "Value"}, "_type": "List"}
        else:
            features[f.name] = {"dtype": kinds[f.type], "_type": "Value"}
    schema = schema.with_metadata({"huggingface": json.dumps({"info": {"features": features}})})
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), buf)
    return buf.getvalue()


class Repo:
    """Collects a hub dataset's files, then writes them in the HF cache layout or as a --local-dir copy."""

    def __init__(self, repo: str, configs: list[tuple[str, str, str]] | None = None):
        self.repo, self.files = repo, {}
        if configs:  # (config_name, split, path pattern), as the hub's README YAML lists them
            lines = ["---", "configs:"]
            for name in dict.fromkeys(c[0] for c in configs):
                lines += [f"- config_name: {name}", "  data_files:"]
                lines += [f"  - split: {s}\n    path: {p}" for n, s, p in configs if n == name]
            self.files["README.md"] = ("\n".join(lines) + "\n---\n\n# " + repo + "\n").encode()

    def parquet(self, path: str, rows: list[dict], schema) -> Repo:
        self.files[path] = _parquet_bytes(rows, schema)
        return self

    def jsonl(self, path: str, rows: list[dict]) -> Repo:
        self.files[path] = "".join(json.dumps(r) + "\n" for r in rows).encode()
        return self

    def json(self, path: str, rows: list[dict]) -> Repo:
        self.files[path] = json.dumps(rows, indent=1).encode()
        return self

    def write_cache(self, cache: Path) -> None:
        top = cache / ("datasets--" + self.repo.replace("/", "--"))
        (top / "refs").mkdir(parents=True, exist_ok=True)
        (top / "refs" / "main").write_text(REVISION)
        for rel, data in self.files.items():
            blob = top / "blobs" / hashlib.sha256(data).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(data)
            link = top / "snapshots" / REVISION / rel
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(Path(*[".."] * (len(Path(rel).parts) + 1), "blobs", blob.name))

    def write_local(self, cache: Path) -> None:
        top = cache / self.repo
        for rel, data in self.files.items():
            (top / rel).parent.mkdir(parents=True, exist_ok=True)
            (top / rel).write_bytes(data)
            meta = top / ".cache" / "huggingface" / "download" / f"{rel}.metadata"
            meta.parent.mkdir(parents=True, exist_ok=True)
            meta.write_text(f"{REVISION}\n{hashlib.sha256(data).hexdigest()}\n1700000000.0\n")


def _schema(**cols):
    import pyarrow as pa

    kinds = {
        "str": pa.string(),
        "int": pa.int64(),
        "strs": pa.list_(pa.string()),
        "image": pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
    }
    return pa.schema([(name, kinds[kind]) for name, kind in cols.items()])


IMAGE_SCHEMA = dict(qry_inst="str", qry_text="str", qry_img_path="str", tgt_inst="str", tgt_text="strs",
                    tgt_img_path="strs")  # fmt: skip


# ---- the datasets ----------------------------------------------------------------------------------------
def build(out: Path) -> tuple[Path, Path]:
    """Write the fixture; returns (media root, hub cache)."""
    media, cache = out / "MMEB-V2", out / "hub"
    repos = [
        _image(media),
        *_video_cls(media),
        *_video_ret(media),
        *_mret(media),
        *_qa(media),
        *_visdoc(media),
    ]
    for r in repos:
        (r.write_local if r.repo.startswith("openbmb/") else r.write_cache)(cache)
    return media, cache


def _image(media: Path) -> Repo:
    """ziyjiang/MMEB_Test_Instruct: one parquet shard per config, paths relative to image-tasks/."""
    root = media / "image-tasks"
    root.mkdir(parents=True, exist_ok=True)
    cls = [  # image_cls: the query is an image; candidates are label texts, the first is the gold
        ("ImageNet-1K/val/cat.JPEG", ["cat", "dog", "bus"]),  # top: cat = gold
        ("ImageNet-1K/val/dog.JPEG", ["bus", "dog", "cat"]),  # top: dog, gold bus
    ]
    for path, _ in cls:
        image(root / path)
    cls_rows = [
        dict(qry_inst="<|image_1|> Represent the given image for classification", qry_text="", qry_img_path=p,
             tgt_inst="", tgt_text=t, tgt_img_path=[""] * len(t))
        for p, t in cls
    ]  # fmt: skip
    t2i = [("a photo of a cat", ["cat", "dog"]), ("a photo of a dog", ["bus", "dog"])]  # hit, miss
    for w in ("cat", "dog", "bus"):
        image(root / f"MSCOCO_t2i/{w}.jpg")
    t2i_rows = [
        dict(qry_inst="<|image_1|> Find me an everyday image that matches the given caption:", qry_text=q,
             qry_img_path="", tgt_inst="<|image_1|> Represent the given image.", tgt_text=[""] * len(c),
             tgt_img_path=[f"MSCOCO_t2i/{w}.jpg" for w in c])
        for q, c in t2i
    ]  # fmt: skip
    image(root / "RefCOCO-Matching/COCO_1.jpg")
    vg_rows = [  # one image, two captions each (cand_name = path:caption in VLM2Vec)
        dict(qry_inst="<|image_1|> Select the portion of the image that follows the language expressions:",
             qry_text=q, qry_img_path="RefCOCO-Matching/COCO_1.jpg",
             tgt_inst="<|image_1|> Select the portion of the image that follows the language expressions:",
             tgt_text=c, tgt_img_path=["RefCOCO-Matching/COCO_1.jpg"] * 2)
        for q, c in [("the left cat", ["left cat", "right dog"]), ("the dog", ["left cat", "right dog"])]
    ]  # fmt: skip
    schema = _schema(**IMAGE_SCHEMA)
    from ..data.mmeb_v2 import SOURCES

    names = [
        s.name for s in SOURCES.values() if s.repo == "ziyjiang/MMEB_Test_Instruct"
    ]  # the card lists all 36
    repo = Repo("ziyjiang/MMEB_Test_Instruct", [(n, "test", f"{n}/test-*") for n in names])
    for n, rows in (("ImageNet-1K", cls_rows), ("MSCOCO_t2i", t2i_rows), ("RefCOCO-Matching", vg_rows)):
        repo.parquet(f"{n}/test-00000-of-00001.parquet", rows, schema)
    return repo


def _video_cls(media: Path) -> list[Repo]:
    cls = media / "video-tasks/frames/video_cls"
    for vid in ("archery_001", "parkour_002"):
        frames(cls / "K700" / vid)
    k700 = Repo("VLM2Vec/Kinetics-700").jsonl(
        "test.jsonl",
        [
            {"video_id": "archery_001", "pos_text": "archery"},
            {"video_id": "parkour_002", "pos_text": "breakdancing"},
        ],
    )
    for vid in (101, 202):
        frames(cls / "SSv2" / str(vid), name="{i:05d}.jpg")
    ssv2 = Repo("VLM2Vec/SmthSmthV2").json(
        "test.json",
        [
            {"video_id": 101, "pos_text": "Closing something", "neg_text": ["Opening something", "Closing something", "Folding something"]},
            {"video_id": 202, "pos_text": "Opening something", "neg_text": ["Opening something", "Tearing something"]},
        ],
    )  # fmt: skip
    return [k700, ssv2]


RET_VIDEOS = ("guitar01", "dance02", "cook03")
# (caption, video): guitar -> guitar01 hit; cooking -> cook03 for dance02's row: miss; cooking -> cook03 hit;
# a second row on guitar01 (rows sharing a video collapse to one corpus entry): hit. hit@1 = 3/4.
RET_ROWS = (("a man plays the guitar", "guitar01"), ("people dance while cooking", "dance02"),
            ("a chef is cooking", "cook03"), ("someone strums a guitar", "guitar01"))  # fmt: skip


def _video_ret(media: Path) -> list[Repo]:
    ret = media / "video-tasks/frames/video_ret"
    # MSR-VTT as the Qwen3-VL-Embedding yaml finds it (the archive's long prefix); the others as VLM2Vec's yaml
    folders = {"MSR-VTT": ret / "data/ziyan/video_retrieval/MSR-VTT/frames"}
    for n in ("MSVD", "DiDeMo", "VATEX", "YouCook2"):
        folders[n] = ret / n
    for folder in folders.values():
        for v in RET_VIDEOS:
            frames(folder / v)
    msr = Repo("VLM2Vec/MSR-VTT", [("test_1k", "test", "msrvtt_test_1k.json"), ("train_9k", "train", "msrvtt_train_9k.json")])  # fmt: skip
    msr.json("msrvtt_test_1k.json", [{"video_id": v, "video": f"{v}.mp4", "caption": c} for c, v in RET_ROWS])
    msr.json("msrvtt_train_9k.json", [{"video_id": "video0", "video": "video0.mp4", "caption": ["x"]}])
    msvd = Repo("VLM2Vec/MSVD").json(
        "test.json",
        [{"video_id": v, "video": f"{v}.avi", "caption": [c, "another caption"]} for c, v in RET_ROWS],
    )
    didemo = Repo("VLM2Vec/DiDeMo").json(
        "test.json", [{"video": f"videos/{v}.mp4", "caption": c, "source": "DiDeMo"} for c, v in RET_ROWS]
    )
    vatex = Repo("VLM2Vec/VATEX").jsonl(
        "test.jsonl", [{"videoID": v, "enCap": [c, "x"], "chCap": ["一"]} for c, v in RET_ROWS]
    )
    yc = Repo("lmms-lab/YouCook2").parquet(
        "data/val-00000-of-00001.parquet",
        [
            {"id": v, "video_path": f"validation/{v}.mp4", "sentence": c, "youtube_id": v[:4]}
            for c, v in RET_ROWS
        ],
        _schema(id="str", video_path="str", sentence="str", youtube_id="str"),
    )
    return [msr, msvd, didemo, vatex, yc]


def _mret(media: Path) -> list[Repo]:
    mret = media / "video-tasks/frames/video_mret"
    rows = [("a person opens the door positive", "vidA.mp4"), ("then sits down negative_2", "vidB.mp4")]
    out = []
    for name, folder in (("QVHighlight", "QVHighlight"), ("Charades-STA", "Charades_STA")):
        for _, video in rows:
            base = mret / folder / Path(video).stem
            frames(base / "query", n=12, name="frame_{i:04d}.jpg")
            for clip in ("positive_1", "negative_1", "negative_2"):
                frames(base / clip, n=8, name="frame_{i:04d}.jpg")
        out.append(
            Repo(f"VLM2Vec/{name}").jsonl(
                "test.jsonl", [{"query": q, "video_path": f"videos/{v}", "duration": 150} for q, v in rows]
            )
        )
    ms = mret / "MomentSeeker"
    clip = ms / "video_frames"
    for name in ("clips_a_pos1", "clips_a_neg1", "clips_b_pos1", "clips_b_pos2", "clips_b_neg1", "clips_c_pos1",
                 "clips_c_pos2", "clips_c_neg1", "movie_q3"):  # fmt: skip
        frames(clip / name, n=10 if name == "clips_c_pos2" else 8, name="frame_{i:04d}.jpg")
    image(ms / "query_img1.jpg")

    def entries(*names):
        return [
            {"output_path": f"clips/{n.split('_')[1]}/{n.split('_')[2]}.mp4", "start": 0.0} for n in names
        ]

    ms_rows = [  # text query -> hit; image query whose text names a negative -> miss; video query -> 2nd positive: hit
        {"query": "find clips_a_pos1", "input_frames": "", "positive_frames": entries("clips_a_pos1"),
         "negative_frames": entries("clips_a_neg1")},
        {"query": "find clips_b_neg1", "input_frames": "img1.jpg", "positive_frames": entries("clips_b_pos1", "clips_b_pos2"),
         "negative_frames": entries("clips_b_neg1")},
        {"query": "find clips_c_pos2", "input_frames": "movie/q3.mp4", "positive_frames": entries("clips_c_pos1", "clips_c_pos2"),
         "negative_frames": entries("clips_c_neg1")},
    ]  # fmt: skip
    out.append(Repo("VLM2Vec/MomentSeeker").json("test.json", ms_rows))
    return out


def _qa(media: Path) -> list[Repo]:
    """Query text ends with the last option, so the word embedder picks the last option: hit iff it is gold."""
    qa = media / "video-tasks/frames/video_qa"
    for folder in ("Video-MME/vmme1", "Video-MME/vmme2", "NExTQA/4010069381", "NExTQA/4010069382",
                   "EgoSchema/ego-1", "EgoSchema/ego-2", "MVBench/action_antonym/clip1.mp4",
                   "MVBench/episodic_reasoning/s01e01_seg02", "ActivityNetQA/v_abc", "ActivityNetQA/v_def"):  # fmt: skip
        frames(qa / folder, n=16, name="{i:04d}.jpeg", start=0)
    vmme = Repo("VLM2Vec/Video-MME").parquet(
        "videomme/test-00000-of-00001.parquet",
        [
            {"videoID": "vmme1", "question_id": "001-1", "domain": "Sports", "sub_category": "x", "question": "What sport is shown?",
             "options": ["A. tennis", "B. golf", "C. rugby", "D. swimming"], "answer": "D"},
            {"videoID": "vmme2", "question_id": "002-1", "domain": "Sports", "sub_category": "x", "question": "What colour is the car?",
             "options": ["A. red", "B. blue", "C. green", "D. yellow"], "answer": "A"},
        ],
        _schema(videoID="str", question_id="str", domain="str", sub_category="str", question="str", options="strs", answer="str"),
    )  # fmt: skip
    nq_schema = _schema(video="str", question="str", answer="int", qid="int", type="str", a0="str", a1="str", a2="str", a3="str", a4="str")  # fmt: skip
    nextqa = Repo("VLM2Vec/NExTQA", [("MC", "test", "MC/test-*"), ("OE", "test", "OE/test-*")]).parquet(
        "MC/test-00000-of-00001.parquet",
        [
            {"video": "4010069381", "question": "why did the boy run", "answer": 4, "qid": 1, "type": "CW",
             "a0": "to eat", "a1": "to hide", "a2": "to play", "a3": "to sleep", "a4": "to catch the ball"},
            {"video": "4010069382", "question": "what is the girl holding", "answer": 0, "qid": 2, "type": "DO",
             "a0": "a cup", "a1": "a book", "a2": "a pen", "a3": "a hat", "a4": "a phone"},
        ],
        nq_schema,
    ).parquet("OE/test-00000-of-00001.parquet", [], _schema(video="str", question="str", answer="str"))  # fmt: skip
    ego = Repo("VLM2Vec/EgoSchema", [("Subset", "test", "Subset/test-*"), ("MC", "test", "MC/test-*")]).parquet(
        "Subset/test-00000-of-00001.parquet",
        [
            {"video_idx": "ego-1", "question_idx": "q1", "question": "What is C doing?", "answer": "0",
             "option": ["A. cooking", "B. cleaning", "C. reading", "D. writing", "E. painting"]},
            {"video_idx": "ego-2", "question_idx": "q2", "question": "Where is C?", "answer": "4",
             "option": ["A. kitchen", "B. garden", "C. office", "D. garage", "E. library"]},
        ],
        _schema(video_idx="str", question_idx="str", question="str", answer="str", option="strs"),
    ).parquet("MC/test-00000-of-00001.parquet", [], _schema(video_idx="str"))  # fmt: skip
    from ..data.mmeb_v2 import MVBENCH_SUBSETS

    mvb = Repo("VLM2Vec/MVBench", [(s, "train", f"json/{s}.json") for s in MVBENCH_SUBSETS])
    mv_rows = {
        "action_antonym": [{"video": "clip1.mp4", "question": "What is the action?", "candidates": ["pushing", "pulling", "not sure"], "answer": "pulling"}],
        "episodic_reasoning": [{"video": "s01e01_seg02", "question": "Who speaks first?", "candidates": ["Ross", "Rachel"], "answer": "Rachel", "start": 1.0, "end": 5.0}],
    }  # fmt: skip
    for s in MVBENCH_SUBSETS:  # every subset has rows (datasets refuses an empty split); fillers: gold last
        filler = [
            {"video": f"{s}_0.mp4", "question": "Is it so?", "candidates": ["yes", "no"], "answer": "no"}
        ]
        rows = mv_rows.get(s, filler)
        for r in rows:
            if not (qa / "MVBench" / s / r["video"]).is_dir():
                frames(qa / "MVBench" / s / r["video"], n=16, name="{i:04d}.jpeg", start=0)
        mvb.json(f"json/{s}.json", rows)
    anet = Repo("VLM2Vec/ActivityNetQA").jsonl(
        "test.jsonl",
        [{"video_name": "abc", "question": "is the man outdoors", "answer": "no", "question_id": "v_abc_1", "type": 3},
         {"video_name": "def", "question": "is it raining", "answer": "yes", "question_id": "v_def_1", "type": 3}],
    )  # fmt: skip
    return [vmme, nextqa, ego, mvb, anet]


VISRAG_LONG = "arxiv_2310.01234_figure_3_a_rather_long_file_name_from_the_corpus_p7.png"  # > 50 characters


def _visdoc(media: Path) -> list[Repo]:
    """BEIR configs queries / qrels / corpus, page images embedded in the corpus parquet."""
    beir = [("corpus", "test", "corpus/test-*"), ("queries", "test", "queries/test-*"), ("qrels", "test", "qrels/test-*")]  # fmt: skip
    corpus_schema = _schema(**{"corpus-id": "int", "image": "image", "doc-id": "str"})
    q_schema = _schema(**{"query-id": "int", "query": "str", "language": "str"})
    qrel_schema = _schema(**{"query-id": "int", "corpus-id": "int", "score": "int"})
    pages = [1, 12, 123, 5, 7]

    def corpus(ids, seed):
        return [
            {"corpus-id": i, "image": {"bytes": _png_bytes(f"{seed}-{i}"), "path": f"{i}.png"}, "doc-id": "d"}
            for i in ids
        ]

    def beir_repo(repo, ids, seed, queries, qrels):
        """queries: (query, language) by query-id; qrels: (query-id, corpus-id, score)."""
        r = Repo(repo, beir)
        r.parquet("corpus/test-00000-of-00001.parquet", corpus(ids, seed), corpus_schema)
        rows = [{"query-id": i, "query": q, "language": lang} for i, (q, lang) in enumerate(queries)]
        r.parquet("queries/test-00000-of-00001.parquet", rows, q_schema)
        rows = [{"query-id": q, "corpus-id": c, "score": g} for q, c, g in qrels]
        return r.parquet("qrels/test-00000-of-00001.parquet", rows, qrel_schema)

    # q0 "... 12": ranks 12 (grade 1), 123 (grade 2), 1; q1 "... 5": 5 first (grade 1); a 0-grade row is dropped
    v1 = beir_repo("vidore/arxivqa_test_subsampled_beir", pages, "arxiv",
                   [("what is on page 12", "english"), ("what is on page 5", "english")],
                   [(0, 123, 2), (0, 12, 1), (0, 7, 0), (1, 5, 1)])  # fmt: skip
    # OOD (MMLongBench-doc, VLM2Vec's own BEIR copy, read by the vidore parser): the pages of one document
    ood = beir_repo("VLM2Vec/MMLongBench-doc", [33, 34, 5], "mmlb", [("which page says 33", "english")],
                    [(0, 33, 1), (0, 5, 1)])  # fmt: skip
    # ViDoRe v2, multilingual (no language filter), folder without the ViDoRe_ prefix; pages already written there
    v2 = beir_repo("vidore/esg_reports_v2", pages, "esg", [("show page 7", "english"), ("la page 1", "french")],
                   [(0, 7, 1), (1, 12, 1)])  # fmt: skip
    folder = media / "visdoc-tasks" / "esg_reports_v2_multilingual"
    folder.mkdir(parents=True, exist_ok=True)
    for row in corpus(pages, "esg"):
        (folder / f"{row['corpus-id']}.png").write_bytes(row["image"]["bytes"])
    # VisRAG: split train, string ids; the long one is on disk under its shortened name, the other is not
    vr = Repo(
        "openbmb/VisRAG-Ret-Test-ArxivQA",
        [(c, "train", f"{c}/train-*") for c in ("corpus", "queries", "qrels")],
    )
    s_corpus = _schema(**{"corpus-id": "str", "image": "image"})
    ids = [VISRAG_LONG, "chart_b.png"]
    vr.parquet(
        "corpus/train-00000-of-00001.parquet",
        [{"corpus-id": i, "image": {"bytes": _png_bytes(i), "path": None}} for i in ids],
        s_corpus,
    )
    vr.parquet(
        "queries/train-00000-of-00001.parquet",
        [
            {"query-id": "q-long", "query": f"show {VISRAG_LONG[:50]}"},
            {"query-id": "q-b", "query": "show chart_b"},
        ],
        _schema(**{"query-id": "str", "query": "str"}),
    )
    vr.parquet("qrels/train-00000-of-00001.parquet",
               [{"query-id": "q-long", "corpus-id": VISRAG_LONG, "score": 1}, {"query-id": "q-b", "corpus-id": VISRAG_LONG, "score": 1}],
               _schema(**{"query-id": "str", "corpus-id": "str", "score": "int"}))  # fmt: skip
    from ..data.mmeb_v2 import SOURCES, page_file

    on_disk = media / "visdoc-tasks" / "VisRAG_ArxivQA" / page_file(SOURCES["VisRAG_ArxivQA"], VISRAG_LONG)
    on_disk.parent.mkdir(parents=True, exist_ok=True)
    on_disk.write_bytes(_png_bytes(VISRAG_LONG))
    return [v1, ood, v2, vr]


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m mmemb.testing.mmeb_v2_fixture OUT")
    m, c = build(Path(sys.argv[1]))
    print(f"media root {m}\nhub cache  {c}")
