"""MMEB-V2 as a researcher downloads it: VLM2Vec's media folders plus the hub annotation snapshots.

Two inputs (docs/design/mmeb-v2-layouts.md has the whole map and how it was read):

- the media root (`--data-root`): the clone of the hub dataset TIGER-Lab/MMEB-V2 with its archives
  unpacked as VLM2Vec's experiments/public/data/download_data.sh unpacks them:
      image-tasks/<Task>/...                         (also accepted: image-tasks/MMEB/<Task>/, before `mv MMEB/* .`)
      video-tasks/frames/video_cls/{SSv2,HMDB51,UCF101,K700,Breakfast}/<video_id>/<frames>
      video-tasks/frames/video_ret/<MSR-VTT|...>/<video>/   (or video_ret/data/ziyan/video_retrieval/<X>/frames/)
      video-tasks/frames/video_mret/{QVHighlight,Charades_STA,MomentSeeker}/...
      video-tasks/frames/video_qa/{Video-MME,NExTQA,EgoSchema,MVBench,ActivityNetQA}/...
      visdoc-tasks/<folder>/<page>.png               (optional: pages are read from the hub corpus otherwise)
- the annotation datasets VLM2Vec's loaders fetch with `datasets.load_dataset` (its
  src/constant/dataset_hf_path.py), as local snapshots (`--hub-cache`, see `hub.py`).

`SOURCES` holds, per dataset, its VLM2Vec parser, hub (repo, config, split) and media folder. Each parser
below reads the columns VLM2Vec's parser of the same name reads and builds the same queries, candidates and
gold; where VLM2Vec would crash or silently score a row 0 (a missing frame folder, a gold outside the
candidates), the row is refused with its file, row and column named.

Source (pinned, registry.VLM2VEC_LAYOUT_SOURCE): TIGER-AI-Lab/VLM2Vec@6e1e1d4 (2026-01-27; registry.py's
instructions were read at 6ac33bb and are unchanged there, except the vidore ones it restores):
    hub ids            src/constant/dataset_hf_path.py
    media folders      experiments/public/eval/{image,video,visdoc}.yaml, experiments/public/data/download_data.sh
    parsers            src/data/eval_dataset/*.py
    label lists        src/data/eval_dataset/video_classification_utils.py -> mmeb_v2_labels.json
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from ..io import atomic_write
from ..media import frame_order, sample_frames
from ..types import InputError, Sample
from . import hub
from .registry import MMEB_V2, VLM2VEC_LAYOUT_SOURCE, DatasetInfo
from .tasks import Task, TaskError, clean_instruction

MEDIA_REPO = "TIGER-Lab/MMEB-V2"
FRAME_EXTS = (".jpg", ".jpeg", ".png")  # VLM2Vec's load_frames keeps these only
NUM_FRAMES = 8  # the eval yamls' num_frames / num_video_frames / num_clip_frames
RET_MIN_FRAMES = 8  # VLM2Vec builds RET candidates with bytes=[None] * num_frames: fewer frames crash it


@dataclass(frozen=True)
class Source:
    """Where one MMEB-V2 dataset comes from and which VLM2Vec parser reads it."""

    name: str  # mmemb / report name (registry.MMEB_V2)
    parser: str  # VLM2Vec's dataset_parser
    repo: str  # hub dataset holding the annotations
    config: str | None
    split: str
    media: tuple[str, ...]  # media folder relative to the data root; alternatives in order of preference
    label_set: str = ""  # VIDEOCLS_LABEL_MAPPING key (VLM2Vec's dataset_name) for the global label corpus
    language: str | None = None  # vidore's language filter (None: all languages)
    limit: int | None = None  # the yaml's num_sample_per_subset: the first N rows
    configs: tuple[str, ...] = ()  # several configs concatenated, a `subset` column added (MVBench)

    @property
    def family(self) -> str:
        return PARSER_FAMILY[self.parser]


PARSER_FAMILY = {
    **dict.fromkeys(("image_cls", "image_qa", "image_i2t", "image_t2i", "image_i2i_vg"), "image rows"),
    "video_classification": "video CLS",
    "ssv2": "video CLS (multiple choice)",
    **dict.fromkeys(("msrvtt", "msvd", "didemo", "vatex", "youcook2"), "video RET"),
    "moment_retrieval": "video MRET (clip folders)",
    "momentseeker": "video MRET (MomentSeeker)",
    **dict.fromkeys(("videomme", "nextqa", "egoschema", "mvbench", "activitynetqa"), "video QA"),
    "vidore": "visdoc BEIR",
    "visrag": "visdoc BEIR (VisRAG)",
}

# Columns each parser reads (a row without them is refused, naming the columns it does have).
COLUMNS: dict[str, tuple[str, ...]] = {
    "image_cls": ("qry_inst", "qry_text", "qry_img_path", "tgt_text"),
    "image_qa": ("qry_inst", "qry_text", "qry_img_path", "tgt_text"),
    "image_i2t": ("qry_inst", "qry_text", "qry_img_path", "tgt_text"),
    "image_t2i": ("qry_inst", "qry_text", "tgt_inst", "tgt_text", "tgt_img_path"),
    "image_i2i_vg": ("qry_inst", "qry_text", "qry_img_path", "tgt_inst", "tgt_text", "tgt_img_path"),
    "video_classification": ("video_id", "pos_text"),
    "ssv2": ("video_id", "pos_text", "neg_text"),
    "msrvtt": ("video_id", "video", "caption"),
    "msvd": ("video_id", "video", "caption"),
    "didemo": ("video", "caption"),
    "vatex": ("videoID", "enCap"),
    "youcook2": ("id", "video_path", "sentence"),
    "moment_retrieval": ("query", "video_path"),
    "momentseeker": ("query", "input_frames", "positive_frames", "negative_frames"),
    "videomme": ("question", "videoID", "options", "answer"),
    "nextqa": ("video", "question", "answer", "a0", "a1", "a2", "a3", "a4"),
    "egoschema": ("video_idx", "question", "answer", "option"),
    "mvbench": ("question", "video", "candidates", "answer"),
    "activitynetqa": ("video_name", "question", "answer"),
    "vidore": ("query-id", "query"),
    "visrag": ("query-id", "query"),
}
BEIR_COLUMNS = {"qrels": ("query-id", "corpus-id", "score"), "corpus": ("corpus-id", "image")}

MVBENCH_SUBSETS = (  # mvbench_dataset.py subset_meta, in its order
    "episodic_reasoning action_sequence action_prediction action_antonym fine_grained_action unexpected_action "
    "object_existence object_interaction object_shuffle moving_direction action_localization scene_transition "
    "action_count moving_count moving_attribute state_change fine_grained_pose character_order "
    "egocentric_navigation counterfactual_inference"
).split()

_IMAGE_PARSER = {
    "image_cls": "ImageNet-1K N24News HatefulMemes VOC2007 SUN397 Place365 ImageNet-A ImageNet-R ObjectNet "
    "Country211",
    "image_qa": "OK-VQA A-OKVQA DocVQA InfographicsVQA ChartQA Visual7W ScienceQA VizWiz GQA TextVQA",
    "image_i2t": "MSCOCO_i2t VisualNews_i2t",
    "image_t2i": "VisDial MSCOCO_t2i VisualNews_t2i WebQA EDIS Wiki-SS-NQ",
    "image_i2i_vg": "CIRR NIGHTS OVEN FashionIQ MSCOCO RefCOCO RefCOCO-Matching Visual7W-Pointing",
}
_V = "video-tasks/frames/"


def _sources() -> dict[str, Source]:
    out: list[Source] = []
    for parser, names in _IMAGE_PARSER.items():
        out += [
            Source(n, parser, "ziyjiang/MMEB_Test_Instruct", n, "test", ("image-tasks/MMEB", "image-tasks"))
            for n in names.split()
        ]
    cls = {"HMDB51": "HMDB51", "UCF101": "UCF101", "K700": "Kinetics-700", "Breakfast": "Breakfast"}
    out += [
        Source(n, "video_classification", f"VLM2Vec/{d}", None, "test", (f"{_V}video_cls/{n}",), label_set=d)
        for n, d in cls.items()
    ]
    out.append(
        Source("SmthSmthV2", "ssv2", "VLM2Vec/SmthSmthV2", None, "test", (f"{_V}video_cls/SSv2",), limit=1000)
    )
    ret = {
        "MSR-VTT": ("msrvtt", "VLM2Vec/MSR-VTT", "test_1k", "test"),
        "MSVD": ("msvd", "VLM2Vec/MSVD", None, "test"),
        "DiDeMo": ("didemo", "VLM2Vec/DiDeMo", None, "test"),
        "YouCook2": ("youcook2", "lmms-lab/YouCook2", None, "val"),
        "VATEX": ("vatex", "VLM2Vec/VATEX", None, "test"),
    }
    out += [
        Source(
            n,
            p,
            repo,
            cfg,
            split,
            (f"{_V}video_ret/{n}", f"{_V}video_ret/data/ziyan/video_retrieval/{n}/frames"),
        )
        for n, (p, repo, cfg, split) in ret.items()
    ]
    out += [
        Source("QVHighlight", "moment_retrieval", "VLM2Vec/QVHighlight", None, "test", (f"{_V}video_mret/QVHighlight",)),
        Source(
            "Charades-STA", "moment_retrieval", "VLM2Vec/Charades-STA", None, "test",
            (f"{_V}video_mret/Charades_STA", f"{_V}video_mret/Charades-STA"),
        ),
        Source("MomentSeeker", "momentseeker", "VLM2Vec/MomentSeeker", None, "test", (f"{_V}video_mret/MomentSeeker",)),
        Source("Video-MME", "videomme", "VLM2Vec/Video-MME", None, "test", (f"{_V}video_qa/Video-MME",)),
        Source("NExTQA", "nextqa", "VLM2Vec/NExTQA", "MC", "test", (f"{_V}video_qa/NExTQA",)),
        Source(
            "EgoSchema", "egoschema", "VLM2Vec/EgoSchema", "Subset", "test",
            (f"{_V}video_qa/EgoSchema", f"{_V}video_qa/egoschema"),
        ),
        Source("MVBench", "mvbench", "VLM2Vec/MVBench", None, "train", (f"{_V}video_qa/MVBench",),
               configs=tuple(MVBENCH_SUBSETS)),
        Source("ActivityNetQA", "activitynetqa", "VLM2Vec/ActivityNetQA", None, "test", (f"{_V}video_qa/ActivityNetQA",)),
    ]  # fmt: skip
    vidore_v1 = {
        "arxivqa": "arxivqa_test_subsampled_beir",
        "docvqa": "docvqa_test_subsampled_beir",
        "infovqa": "infovqa_test_subsampled_beir",
        "tabfquad": "tabfquad_test_subsampled_beir",
        "tatdqa": "tatdqa_test_beir",
        "shiftproject": "shiftproject_test_beir",
        **{
            f"syntheticDocQA_{t}": f"syntheticDocQA_{t}_test_beir"
            for t in ("artificial_intelligence", "energy", "government_reports", "healthcare_industry")
        },
    }
    for short, repo in vidore_v1.items():
        n = f"ViDoRe_{short}"
        out.append(
            Source(
                n, "vidore", f"vidore/{repo}", None, "test", (f"visdoc-tasks/{n}", f"visdoc-tasks/images/{n}")
            )
        )
    v2 = {
        "ViDoRe_esg_reports_human_labeled_v2": "esg_reports_human_labeled_v2",
        **{
            f"ViDoRe_{t}_v2_multilingual": f"{t}_v2"
            for t in ("biomedical_lectures", "economics_reports", "esg_reports")
        },
    }
    for n, repo in v2.items():
        folder = n.removeprefix("ViDoRe_")  # visdoc.yaml drops the prefix for v2
        out.append(
            Source(
                n,
                "vidore",
                f"vidore/{repo}",
                None,
                "test",
                (f"visdoc-tasks/{folder}", f"visdoc-tasks/images/{folder}"),
            )
        )
    for t in ("ArxivQA", "ChartQA", "MP-DocVQA", "SlideVQA", "InfoVQA", "PlotQA"):
        n = f"VisRAG_{t}"
        out.append(
            Source(
                n,
                "visrag",
                f"openbmb/VisRAG-Ret-Test-{t}",
                None,
                "train",
                (f"visdoc-tasks/{n}", f"visdoc-tasks/images/{n}"),
            )
        )
    ood = {
        "ViDoSeek-page": "ViDoSeek-page-fixed",
        "ViDoSeek-doc": "ViDoSeek",
        "MMLongBench-page": "MMLongBench-page-fixed",
        "MMLongBench-doc": "MMLongBench-doc",
    }
    for n, repo in ood.items():
        out.append(
            Source(
                n,
                "vidore",
                f"VLM2Vec/{repo}",
                None,
                "test",
                (f"visdoc-tasks/{n}", f"visdoc-tasks/images/{n}"),
            )
        )
    # fmt: on
    return {s.name: s for s in out}


SOURCES: dict[str, Source] = _sources()
assert set(SOURCES) == set(MMEB_V2), sorted(set(SOURCES) ^ set(MMEB_V2))


@cache
def video_labels() -> dict[str, list[str]]:
    """VLM2Vec's VIDEOCLS_LABEL_MAPPING (label lists in its order), keyed by its dataset_name."""
    data = json.loads((Path(__file__).parent / "mmeb_v2_labels.json").read_text(encoding="utf-8"))
    return {k: v for k, v in data.items() if k != "source"}


# ---- where things are ------------------------------------------------------------------------------------
@dataclass
class Where:
    """The two roots, plus the folder that receives page images extracted from hub corpora."""

    data_root: Path
    hub_cache: Path
    pages_cache: Path

    def media_dir(self, src: Source) -> Path | None:
        for rel in src.media:
            if (self.data_root / rel).is_dir():
                return self.data_root / rel
        return None

    def expected_media(self, src: Source) -> str:
        return " or ".join(str(self.data_root / rel) for rel in src.media)


def media_command(src: Source, root: Path) -> str:
    """How to get a dataset's media into the data root (download_data.sh's steps for its archive)."""
    get = f"hf download {MEDIA_REPO} --repo-type dataset --local-dir {root} --include"
    if src.family == "image rows":
        return f'{get} "image-tasks/*" && tar -xzf {root}/image-tasks/mmeb_v1.tar.gz -C {root}/image-tasks'
    frames = f"{root}/{_V}".rstrip("/")
    kind = src.media[0][len(_V) :].split("/")[0] if src.media[0].startswith(_V) else ""
    if kind in ("video_cls", "video_ret"):
        return (
            f'{get} "{_V}{kind}.tar.gz" && mkdir -p {frames}/{kind} && '
            f"tar -xzf {frames}/{kind}.tar.gz -C {frames}/{kind}"
        )
    if kind == "video_mret":
        return f'{get} "{_V}video_mret.tar.gz" && tar -xzf {frames}/video_mret.tar.gz -C {frames}'
    if kind == "video_qa":
        return f'{get} "{_V}video_qa.tar.gz-0*" && cat {frames}/video_qa.tar.gz-0* | tar -xz -C {frames}'
    return ""  # visdoc: pages come with the hub corpus


def _annotation_files(src: Source, where: Where) -> tuple[hub.Snapshot, dict[str, list[Path]]]:
    """The dataset's annotation snapshot, and per part ("rows", or a config name) its files."""
    snap = hub.find_snapshot(src.repo, where.hub_cache)
    if snap is None:
        raise Missing(
            f"annotations not found: looked for {where.hub_cache}/datasets--{src.repo.replace('/', '--')}/"
            f"snapshots/ and {where.hub_cache}/{src.repo}/",
            hub.download_command(src.repo, where.hub_cache),
        )
    if src.family.startswith("visdoc"):
        parts = {p: p for p in ("queries", "qrels", "corpus")}
    elif src.configs:
        parts = {c: c for c in src.configs}
    else:
        parts = {"rows": src.config}
    try:
        return snap, {part: hub.data_files(snap, config, src.split) for part, config in parts.items()}
    except hub.HubIncomplete as e:
        raise Missing(str(e), hub.download_command(src.repo, where.hub_cache, e.patterns)) from None


class Missing(TaskError):
    """A dataset's annotations or media are not on disk (`command` fetches them)."""

    def __init__(self, message: str, command: str):
        super().__init__(message + (f"; get it with: {command}" if command else ""))
        self.detail, self.command = message, command


class MediaMissing(TaskError):
    """A file or frame folder a row names is not in the media root."""


def provenance(names, where: Where) -> dict:
    """What a score file records about its inputs: the layout commit, and per dataset repo@revision."""
    out = {}
    for name in names:
        src = SOURCES[name]
        snap = hub.find_snapshot(src.repo, where.hub_cache)
        out[name] = f"{src.repo}@{snap.revision or 'unknown revision'}" if snap else "absent"
    return {"layout": VLM2VEC_LAYOUT_SOURCE, "media_root": str(where.data_root), "annotations": out}


# ---- the check -------------------------------------------------------------------------------------------
@dataclass
class Status:
    name: str
    state: str  # "present" | "missing" | "malformed"
    detail: str = ""
    command: str = ""
    revision: str = ""


def check(names: list[str], where: Where) -> list[Status]:
    """Per dataset: present, missing (with the command that fetches it) or malformed (with what is wrong).

    Reads little: parquet schemas or the first JSON row, and the media of the first row (parsed as for
    evaluation, so a wrong folder layout shows here)."""
    out = []
    for name in names:
        src = SOURCES[name]
        try:
            snap, files = _annotation_files(src, where)
            for part, fs in files.items():
                need = BEIR_COLUMNS.get(part, COLUMNS[src.parser])
                have = hub.columns_of(fs)
                lacking = [c for c in need if have is not None and c not in have]
                if lacking:
                    raise TaskError(
                        f"{fs[0]}: column(s) {lacking} missing; {src.parser} reads {list(need)}, the file has "
                        f"{sorted(have)}"
                    )
            if not src.family.startswith("visdoc"):
                _first_row_ok(src, files, where)
            out.append(
                Status(name, "present", f"{src.repo} {src.config or ''}".strip(), revision=snap.revision)
            )
        except Missing as e:
            out.append(Status(name, "missing", e.detail, e.command))
        except InputError as e:
            out.append(Status(name, "malformed", str(e)))
    return out


def _first_row_ok(src: Source, files: dict[str, list[Path]], where: Where) -> None:
    media = where.media_dir(src)
    if media is None:
        raise Missing(f"media not found: {where.expected_media(src)}", media_command(src, where.data_root))
    for w, row in _rows(src, files):
        try:
            PARSERS[src.parser](src, MMEB_V2[src.name], media, w, row)
        except MediaMissing as e:
            raise Missing(str(e), media_command(src, where.data_root)) from None
        return
    raise TaskError(f"{src.name}: the annotation files have no rows")


# ---- loading ---------------------------------------------------------------------------------------------
Row = tuple[Sample, list[Sample], list[int]]  # query, candidates in order, indices of the gold ones


def load_task(name: str, where: Where) -> Task:
    """One MMEB-V2 dataset, read from the real layout (module doc). Raises Missing or TaskError."""
    src, info = SOURCES[name], MMEB_V2[name]
    try:
        _, files = _annotation_files(src, where)
        if src.family.startswith("visdoc"):
            return _load_beir(src, info, files, where)
        media = where.media_dir(src)
        if media is None:
            raise Missing(
                f"media not found: {where.expected_media(src)}", media_command(src, where.data_root)
            )
        rows = _rows(src, files)
        parse = PARSERS[src.parser]
        extra = []
        if src.parser == "video_classification":
            extra = [Sample(id=f"{name} label {lab}", text=lab) for lab in video_labels()[src.label_set]]
        return _assemble(info, (parse(src, info, media, w, r) for w, r in rows), extra, name)
    except MediaMissing as e:
        raise Missing(f"{name}: {e}", media_command(src, where.data_root)) from None
    except Missing:
        raise
    except InputError as e:  # name the dataset once, whatever raised
        msg = str(e)
        raise TaskError(msg if msg.startswith(f"{name}: ") else f"{name}: {msg}") from None


def _rows(src: Source, files: dict[str, list[Path]]) -> Iterator[tuple[str, dict]]:
    n = 0
    for part, fs in files.items():
        for w, row in hub.read_rows(fs):
            if src.limit is not None and n >= src.limit:
                return
            if src.configs:
                row = row | {"subset": part}  # load_hf_dataset_multiple_subset adds the config name
            _need(src, w, row)
            yield w, row
            n += 1


def _need(src: Source, where: str, row: dict) -> None:
    lacking = [c for c in COLUMNS[src.parser] if c not in row]
    if lacking:
        raise TaskError(
            f"{where}: column(s) {lacking} missing; VLM2Vec's {src.parser} parser reads "
            f"{list(COLUMNS[src.parser])}, this row has {sorted(row)}"
        )


def _assemble(info: DatasetInfo, rows: Iterator[Row], extra: list[Sample], name: str) -> Task:
    """Task from parsed rows: local ranking keeps each row's list; global ranks the union (+ extra), first
    occurrence first, as VLM2Vec's generate_cand_dataset does."""
    task = Task(info, local=None if info.ranking == "global" else [])
    corpus: dict[str, None] = {}
    for query, cands, gold in rows:
        keys = [task.add(c) for c in cands]
        task.queries.append(task.add(query))
        task.relevance.append({keys[i]: 1.0 for i in gold})
        if task.local is not None:
            task.local.append(keys)
        corpus.update(dict.fromkeys(keys))
    if not task.queries:
        raise TaskError(f"{name}: the annotation files have no rows")
    if task.local is None:
        corpus.update(dict.fromkeys(task.add(s) for s in extra))
        task.corpus = list(corpus)
    return task


def _sample(where: str, **kw) -> Sample:
    try:
        return Sample(id=where, **kw)
    except InputError as e:
        raise TaskError(f"{where}: {e}") from None


def _file(folder: Path, rel: str, where: str, column: str) -> Path:
    path = folder / rel
    if not path.is_file():
        raise MediaMissing(f"{where}: {column} {rel!r}: no such file (looked for {path})")
    return path


def _frames(
    folder: Path, where: str, column: str, at_least: int = 1, sample: int | None = NUM_FRAMES
) -> tuple[Path, ...]:
    """A folder's frames in VLM2Vec's natural order, sampled as its process_video_frames samples them (the
    yamls' num_frames: 8; None keeps them all, as MomentSeeker's load_frames does). Only the frames the
    model sees are kept, so only those are hashed for the embedding cache."""
    frames = sorted(
        (p for p in folder.iterdir() if p.suffix.lower() in FRAME_EXTS) if folder.is_dir() else [],
        key=lambda p: frame_order(p.name),
    )
    if not folder.is_dir():
        raise MediaMissing(f"{where}: {column}: frame folder {folder}: no such folder")
    if len(frames) < at_least:
        raise TaskError(f"{where}: {column}: frame folder {folder}: {len(frames)} frame(s), needs {at_least}")
    return tuple(frames if sample is None else sample_frames(frames, sample))


def _text_list(value, where: str, column: str) -> list[str]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(x, str) for x in value):
        raise TaskError(f"{where}: column {column!r} should be a list of strings, got {value!r:.80}")
    return list(value)


def _str(row: dict, column: str, where: str) -> str:
    value = row[column]
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # ids stored as integers (SSv2's video_id)
    if not isinstance(value, str):
        raise TaskError(f"{where}: column {column!r} should be a string, got {value!r:.80}")
    return value


# ---- image rows (ziyjiang/MMEB_Test_Instruct) ------------------------------------------------------------
def parse_image(src: Source, info: DatasetInfo, media: Path, where: str, row: dict) -> Row:
    texts = _text_list(row["tgt_text"], where, "tgt_text")
    if not texts:
        raise TaskError(f"{where}: tgt_text is empty (the first entry is the gold candidate)")
    qimg = row.get("qry_img_path") or ""
    query = _sample(
        where,
        text=row["qry_text"] or None,
        instruction=clean_instruction(row["qry_inst"]),
        image=_file(media, qimg, where, "qry_img_path") if qimg and src.parser != "image_t2i" else None,
    )
    if src.parser in ("image_cls", "image_qa", "image_i2t"):  # text candidates; tgt_inst is not used
        return query, [_sample(f"{where} tgt_text[{j}]", text=t) for j, t in enumerate(texts)], [0]
    paths = _text_list(row["tgt_img_path"], where, "tgt_img_path")
    if len(paths) != len(texts):
        raise TaskError(f"{where}: tgt_img_path has {len(paths)} entries, tgt_text has {len(texts)}")
    captions = texts[0].strip() != ""  # WebQA, EDIS, RefCOCO-Matching pair each image with a caption
    cands = [
        _sample(
            f"{where} tgt_img_path[{j}]",
            text=texts[j] if captions else None,
            instruction=clean_instruction(row["tgt_inst"]),
            image=_file(media, p, f"{where} tgt_img_path[{j}]", "tgt_img_path"),
        )
        for j, p in enumerate(paths)
    ]
    return query, cands, [0]


# ---- video CLS --------------------------------------------------------------------------------------------
def parse_video_cls(src: Source, info: DatasetInfo, media: Path, where: str, row: dict) -> Row:
    vid = _str(row, "video_id", where)
    query = _sample(where, frames=_frames(media / vid, where, "video_id"), instruction=info.qry_instruction)
    label = _str(row, "pos_text", where)
    return query, [_sample(f"{where} pos_text", text=label)], [0]


def parse_ssv2(src: Source, info: DatasetInfo, media: Path, where: str, row: dict) -> Row:
    vid = _str(row, "video_id", where)
    query = _sample(where, frames=_frames(media / vid, where, "video_id"), instruction=info.qry_instruction)
    options = _text_list(row["neg_text"], where, "neg_text")
    gold = _str(row, "pos_text", where)
    if gold not in options:
        raise TaskError(
            f"{where}: pos_text {gold!r} is not among neg_text (VLM2Vec ranks neg_text, gold = pos_text)"
        )
    return (
        query,
        [_sample(f"{where} neg_text[{j}]", text=t) for j, t in enumerate(options)],
        [options.index(gold)],
    )


# ---- video RET --------------------------------------------------------------------------------------------
def _ret_row(info: DatasetInfo, media: Path, where: str, video: str, column: str, caption: str) -> Row:
    query = _sample(where, text=caption, instruction=info.qry_instruction)
    frames = _frames(media / video, where, column, at_least=RET_MIN_FRAMES)
    return query, [_sample(f"{where} video", frames=frames, instruction=info.tgt_instruction)], [0]


def _first(value, where: str, column: str) -> str:
    if isinstance(value, str):
        return value
    texts = _text_list(value, where, column)
    if not texts:
        raise TaskError(f"{where}: column {column!r} is an empty list")
    return texts[0]


def parse_msrvtt(src, info, media, where, row) -> Row:
    return _ret_row(info, media, where, _str(row, "video_id", where), "video_id", _str(row, "caption", where))


def parse_msvd(src, info, media, where, row) -> Row:
    return _ret_row(
        info, media, where, _str(row, "video_id", where), "video_id", _first(row["caption"], where, "caption")
    )


def parse_didemo(src, info, media, where, row) -> Row:
    name = Path(_str(row, "video", where)).stem  # splitext(basename(video))
    return _ret_row(info, media, where, name, "video", _str(row, "caption", where))


def parse_vatex(src, info, media, where, row) -> Row:
    return _ret_row(
        info, media, where, _str(row, "videoID", where), "videoID", _first(row["enCap"], where, "enCap")
    )


def parse_youcook2(src, info, media, where, row) -> Row:
    return _ret_row(info, media, where, _str(row, "id", where), "id", _str(row, "sentence", where))


# ---- video MRET -------------------------------------------------------------------------------------------
def parse_moment(src: Source, info: DatasetInfo, media: Path, where: str, row: dict) -> Row:
    """frames_dir = <frame root>/<video stem>/: `query/` holds the query's frames, every other sub-folder is a
    candidate clip; the one named positive* is the gold."""
    base = media / Path(_str(row, "video_path", where)).stem
    query = _sample(
        where,
        text=_str(row, "query", where),
        instruction=info.qry_instruction,
        frames=_frames(base / "query", where, "video_path (query/)"),
    )
    clips = sorted((p for p in base.iterdir() if p.is_dir() and p.name != "query"), key=lambda p: p.name)
    positives = [i for i, p in enumerate(clips) if p.name.startswith("positive")]
    if len(positives) != 1:
        raise TaskError(f"{where}: {base} has {len(positives)} positive* clip folders, expected 1")
    cands = [
        _sample(
            f"{where} clip {p.name}",
            frames=_frames(p, where, f"clip {p.name}"),
            instruction=info.tgt_instruction,
        )
        for p in clips
    ]
    return query, cands, positives


_MS_INST = {  # momentseeker_dataset.py: the query instruction by query type
    "text": "Find the clip that corresponds to the given text:",
    "image": "Select the video clip that aligns with the given text and image:",
    "video": "Find the clip that corresponds to the given sentence and video segment:",
}


def _ms_clip(media: Path, name: str) -> Path:
    """HEAD reads <frame root>/video_frames/<name> (after the re-upload, #99); the pinned commit <frame root>/<name>."""
    return media / "video_frames" / name if (media / "video_frames" / name).is_dir() else media / name


def parse_momentseeker(src: Source, info: DatasetInfo, media: Path, where: str, row: dict) -> Row:
    text, inp = _str(row, "query", where), _str(row, "input_frames", where)
    if inp.endswith(".mp4"):
        folder = _ms_clip(media, inp.split(".mp4")[0].replace("/", "_"))
        query = _sample(
            where,
            text=text,
            instruction=_MS_INST["video"],
            frames=_frames(folder, where, "input_frames", sample=None),
        )
    elif inp.endswith(".jpg"):
        image = _file(media, f"query_{inp}", where, "input_frames")
        query = _sample(where, text=text, instruction=_MS_INST["image"], image=image)
    else:
        query = _sample(where, text=text, instruction=_MS_INST["text"])
    cands, gold = [], []
    for column in ("positive_frames", "negative_frames"):
        entries = row[column]
        if not isinstance(entries, (list, tuple)):
            raise TaskError(
                f"{where}: column {column!r} should be a list of {{output_path: ...}}, got {entries!r:.80}"
            )
        for j, e in enumerate(entries):
            path = e.get("output_path") if isinstance(e, dict) else None
            if not isinstance(path, str):
                raise TaskError(f"{where}: {column}[{j}] has no output_path string: {e!r:.80}")
            folder = _ms_clip(media, path.replace("/", "_").split(".mp4")[0])
            if column == "positive_frames":
                gold.append(len(cands))
            cands.append(
                _sample(
                    f"{where} {column}[{j}]",
                    frames=_frames(folder, where, f"{column}[{j}]", sample=None),
                    instruction=info.tgt_instruction,
                )
            )
    if not gold:
        raise TaskError(f"{where}: positive_frames is empty")
    return query, cands, gold


# ---- video QA ---------------------------------------------------------------------------------------------
def qa_template(question: str, options: list[str]) -> tuple[str, list[str]]:
    """VLM2Vec's qa_template: the question, then 'Options:' and '(A) ...' lines; candidates '(A) ...'."""
    labelled = [f"({chr(ord('A') + i)}) {c}" for i, c in enumerate(options)]
    return f"{question}\nOptions:\n" + "\n".join(labelled), labelled


def _strip_letter(option: str) -> str:
    """Video-MME / EgoSchema candidate text: `o[o.find('. '):].strip('. ')`, verbatim (also when there is no
    '. ': then find is -1 and only the last character is kept, as VLM2Vec keeps it)."""
    return option[option.find(". ") :].strip(". ")


def _qa_row(src, info, media, where, folder: str, column: str, text: str, cands: list[str], gold: int) -> Row:
    query = _sample(
        where, text=text, instruction=info.qry_instruction, frames=_frames(media / folder, where, column)
    )
    return query, [_sample(f"{where} option {j}", text=c) for j, c in enumerate(cands)], [gold]


def _index(value, n: int, where: str, column: str) -> int:
    try:
        i = int(value)
    except (TypeError, ValueError):
        raise TaskError(f"{where}: column {column!r} should be an answer index, got {value!r:.40}") from None
    if not 0 <= i < n:
        raise TaskError(f"{where}: column {column!r} = {i} is outside the {n} options")
    return i


def parse_videomme(src, info, media, where, row) -> Row:
    options = _text_list(row["options"], where, "options")
    answer = _str(row, "answer", where)
    if answer not in "ABCD"[: len(options)] or not answer:
        raise TaskError(f"{where}: answer {answer!r} is not a letter of the {len(options)} options")
    text = _str(row, "question", where) + "\n" + "\n".join(options)
    cands = [_strip_letter(o) for o in options]
    return _qa_row(
        src, info, media, where, _str(row, "videoID", where), "videoID", text, cands, "ABCD".index(answer)
    )


def parse_nextqa(src, info, media, where, row) -> Row:
    options = [_str(row, f"a{i}", where) for i in range(5)]
    text, _ = qa_template(_str(row, "question", where), options)
    gold = _index(row["answer"], 5, where, "answer")
    return _qa_row(src, info, media, where, _str(row, "video", where), "video", text, options, gold)


def parse_egoschema(src, info, media, where, row) -> Row:
    options = _text_list(row["option"], where, "option")
    text = _str(row, "question", where) + " ".join(options)  # no separator, as VLM2Vec joins them
    gold = _index(row["answer"], len(options), where, "answer")
    cands = [_strip_letter(o) for o in options]
    return _qa_row(src, info, media, where, _str(row, "video_idx", where), "video_idx", text, cands, gold)


def parse_mvbench(src, info, media, where, row) -> Row:
    options = _text_list(row["candidates"], where, "candidates")
    answer = _str(row, "answer", where)
    if answer not in options:
        raise TaskError(f"{where}: answer {answer!r} is not among candidates {options}")
    text, labelled = qa_template(_str(row, "question", where), options)
    folder = f"{row['subset']}/{_str(row, 'video', where)}"
    return _qa_row(src, info, media, where, folder, "video", text, labelled, options.index(answer))


def parse_activitynetqa(src, info, media, where, row) -> Row:
    answer = _str(row, "answer", where)
    if answer not in ("yes", "no"):
        raise TaskError(
            f"{where}: answer {answer!r} is not yes/no (VLM2Vec's ActivityNetQA is the yes/no subset)"
        )
    text = _str(row, "question", where) + "? (A) yes; (B) no."
    folder = "v_" + _str(row, "video_name", where)
    return _qa_row(
        src, info, media, where, folder, "video_name", text, ["yes", "no"], ["yes", "no"].index(answer)
    )


PARSERS: dict[str, Callable[..., Row]] = {
    **dict.fromkeys(_IMAGE_PARSER, parse_image),
    "video_classification": parse_video_cls,
    "ssv2": parse_ssv2,
    "msrvtt": parse_msrvtt,
    "msvd": parse_msvd,
    "didemo": parse_didemo,
    "vatex": parse_vatex,
    "youcook2": parse_youcook2,
    "moment_retrieval": parse_moment,
    "momentseeker": parse_momentseeker,
    "videomme": parse_videomme,
    "nextqa": parse_nextqa,
    "egoschema": parse_egoschema,
    "mvbench": parse_mvbench,
    "activitynetqa": parse_activitynetqa,
}


# ---- visual documents (BEIR configs: queries, qrels, corpus) ---------------------------------------------
def page_file(src: Source, corpus_id) -> str:
    """The page's file name under visdoc-tasks/<folder>/: `<id>.png` (vidore), or VisRAG's shortened name
    `<base[:50]>_<md5(id)[:8]><ext>`."""
    if src.parser == "visrag":
        base, ext = os.path.splitext(str(corpus_id))
        return f"{base[:50]}_{hashlib.md5(str(corpus_id).encode('utf-8')).hexdigest()[:8]}{ext}"
    return f"{corpus_id}.png"


def _page(src: Source, where: Where, folder: Path | None, w: str, row: dict) -> Path:
    """The page image: the data root's copy if there is one (VLM2Vec writes it there), else the corpus row's
    image bytes, written once (atomically) under the pages cache."""
    name = page_file(src, row["corpus-id"])
    if folder is not None and (folder / name).is_file():
        return folder / name
    image = row["image"]
    data = image.get("bytes") if isinstance(image, dict) else None
    if not data:
        raise TaskError(f"{w}: column 'image' has no bytes and {name} is not in the data root")
    out = where.pages_cache / src.name / name
    if not out.is_file():
        atomic_write(out, data)
    return out


def _load_beir(src: Source, info: DatasetInfo, files: dict[str, list[Path]], where: Where) -> Task:
    folder = where.media_dir(src)
    task = Task(info, local=None)
    pages: dict[str, str] = {}  # corpus-id (as str) -> item key
    for w, row in hub.read_rows(files["corpus"], columns=list(BEIR_COLUMNS["corpus"])):
        _need_beir(src, "corpus", w, row)
        cid = str(row["corpus-id"])
        if cid not in pages:
            page = _page(src, where, folder, w, row)
            pages[cid] = task.add(_sample(w, pages=(page,), instruction=info.tgt_instruction))
    qrels: dict[str, dict[str, float]] = {}
    for w, row in hub.read_rows(files["qrels"]):
        _need_beir(src, "qrels", w, row)
        qid, cid, score = str(row["query-id"]), str(row["corpus-id"]), row["score"]
        if not isinstance(score, (int, float)):
            raise TaskError(f"{w}: column 'score' should be a number, got {score!r:.40}")
        if score > 0:  # load_qrels_mapping: positives only, the max over duplicates
            if cid not in pages:
                raise TaskError(f"{w}: corpus-id {cid!r} is not in the corpus")
            qrels.setdefault(qid, {})
            qrels[qid][cid] = max(qrels[qid].get(cid, 0), float(score))
    for w, row in hub.read_rows(files["queries"]):
        _need(src, w, row)
        if src.language is not None and row.get("language") != src.language:
            continue
        qid = str(row["query-id"])
        if qid not in qrels:
            raise TaskError(f"{w}: query-id {qid!r} has no positive qrel (VLM2Vec fails on it too)")
        query = _sample(w, text=_str(row, "query", w), instruction=info.qry_instruction)
        task.queries.append(task.add(query))
        task.relevance.append({pages[cid]: rel for cid, rel in qrels[qid].items()})
    if not task.queries:
        raise TaskError(f"{files['queries'][0]}: no queries")
    task.corpus = list(dict.fromkeys(pages.values()))
    return task


def _need_beir(src: Source, part: str, where: str, row: dict) -> None:
    lacking = [c for c in BEIR_COLUMNS[part] if c not in row]
    if lacking:
        raise TaskError(
            f"{where}: column(s) {lacking} missing from {part}; it needs {list(BEIR_COLUMNS[part])}, "
            f"this row has {sorted(row)}"
        )
