"""The benchmarks as data: MMEB-V2's 78 datasets, and suites read from a `tasks.json` (mmeb-mini).

Each dataset has a modality, a meta-task, a main metric (hit@1 for image and video, ndcg_linear@5 for
visual documents), a ranking rule and, where the released rows do not carry their own, the query and
target instructions.

Ranking: ``local`` ranks each query against its own candidate list; ``global`` ranks it against the whole
de-duplicated candidate corpus of the dataset.

Meta-task labels (short, used as keys and table rows):
    image   CLS, QA, RET, GD            (classification, VQA, retrieval, visual grounding)
    video   CLS, QA, RET, MRET          (classification, QA, retrieval, moment retrieval)
    visdoc  ViDoRe-V1, ViDoRe-V2, VisRAG, OOD

Source (pinned): TIGER-AI-Lab/VLM2Vec at commit 6ac33bb7e3049a0054a5952090f02ee5348fc4ed
    ranking rules      experiments/public/eval/{image,video,visdoc}.yaml  (`eval_type`)
                       (video.yaml read at 787a7636266635ffa9f368a6e6177b32ba1055e8: same eval_type values)
    dataset lists      experiments/report_score_v2.py (`modality2dataset`, `modality2metric`)
    instructions       src/data/eval_dataset/<parser>.py (`TASK_INST_QRY` / `TASK_INST_TGT`, `TASK_PROMPT`,
                       video_classification_utils.py `DATASET_INSTRUCTION`)
Notes on what was read there:
    - Image rows carry `qry_inst` / `tgt_inst` themselves, so image entries leave both instructions "".
    - Video CLS and QA targets are bare label / answer texts (no target instruction): "".
    - Video QA: the query is ``"<video> " + TASK_PROMPT + " " + question-with-options``.
    - MomentSeeker: the parser has three query instructions (text / text+image / text+video queries). The
      pinned commit keeps only text queries (``input_frames == ""``); the layout commit (6e1e1d4), whose
      hub repo VLM2Vec/MomentSeeker mmemb reads, keeps all rows and picks the instruction per row
      (data/mmeb_v2.py does the same). The text one is recorded here. ``MomentSeeker_1k8`` is not one of
      the 78.
    - vidore parser (ViDoRe v1/v2, ViDoSeek, MMLongBench): at the pinned commit its two instructions are
      commented out ("ColPali models use no prompts") and set to ""; the same file's later version and the
      visrag parser at the pinned commit use the VLM2Vec instructions recorded here. We use those, since
      they are the ones VLM2Vec models are evaluated with.
    - Instructions are stored without surrounding whitespace (Breakfast's and TASK_PROMPT's trailing spaces
      dropped); VLM2Vec joins ``[media token + " "] + instruction + " " + text``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VLM2VEC_SOURCE = "TIGER-AI-Lab/VLM2Vec@6ac33bb7e3049a0054a5952090f02ee5348fc4ed"
# Hub ids, media folders, parsers and label lists of the real download (data/mmeb_v2.py) were read at:
VLM2VEC_LAYOUT_SOURCE = "TIGER-AI-Lab/VLM2Vec@6e1e1d42d4cba85ae4db4d3f7a25cba2465d1e16"

MODALITIES: tuple[str, ...] = ("image", "video", "visdoc")
META_TASKS: dict[str, tuple[str, ...]] = {
    "image": ("CLS", "QA", "RET", "GD"),
    "video": ("CLS", "QA", "RET", "MRET"),
    "visdoc": ("ViDoRe-V1", "ViDoRe-V2", "VisRAG", "OOD"),
}
MAIN_METRIC: dict[str, str] = {"image": "hit@1", "video": "hit@1", "visdoc": "ndcg_linear@5"}
METRICS: tuple[str, ...] = ("hit@1", "ndcg_linear@5")
RANKINGS: tuple[str, ...] = ("local", "global")
SUITES: tuple[str, ...] = ("mmeb-v2", "mmeb-mini")


@dataclass(frozen=True)
class DatasetInfo:
    """One dataset of a suite: where it sits in the report, how it is scored and ranked, its instructions."""

    name: str
    modality: str  # "image" | "video" | "visdoc"
    meta_task: str  # a META_TASKS label for MMEB-V2; free text for other suites
    metric: str  # "hit@1" or "ndcg_linear@5"
    ranking: str  # "local" | "global"
    qry_instruction: str = ""  # "" where the released rows carry their own (image)
    tgt_instruction: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("dataset name is empty")
        if self.modality not in MODALITIES:
            raise ValueError(f"{self.name}: modality {self.modality!r} is not one of {MODALITIES}")
        if self.metric not in METRICS:
            raise ValueError(f"{self.name}: metric {self.metric!r} is not one of {METRICS}")
        if self.ranking not in RANKINGS:
            raise ValueError(f"{self.name}: ranking {self.ranking!r} is not one of {RANKINGS}")
        if not self.meta_task:
            raise ValueError(f"{self.name}: meta_task is empty")


# --- instructions (VLM2Vec, pinned above) --------------------------------------------------------------
_VIDEO_TGT = "Understand the content of the provided video."
_VIDEO_CLS = {
    "K700": "Recognize the category of the video content.",  # VLM2Vec's dataset_name "Kinetics-700"
    "SmthSmthV2": "What actions or object interactions are being performed by the person in the video?",
    "HMDB51": "What actions or objects interactions are the person in the video doing?",
    "UCF101": "What activities or sports are being performed by the person in the video?",
    "Breakfast": "Recognize the breakfast type that the person is cooking in the video.",
}
_VIDEO_QA = (
    "Given a video and a question, select the most accurate answer from the provided candidates. "
    "Return only the exact text of your chosen answer. Question:"
)
_VIDEO_RET = {
    "DiDeMo": "Find a video that includes the following described scenes:",
    "MSR-VTT": "Find a video that contains the following visual content:",
    "MSVD": "Find the video snippet that corresponds to the given summary:",
    "VATEX": "Select a video that fits the description provided:",
    "YouCook2": "Find a video that demonstrates the following action while making a recipe:",
}
_MRET = ("Find the clip that corresponds to the described scene in the given video:", _VIDEO_TGT)
_MRET_MOMENTSEEKER = (
    "Find the clip that corresponds to the given text:",
    "Understand the content of the provided video clip.",
)
_DOC = (
    "Find a document image that matches the given query:",
    "Understand the content of the provided document image.",
)

# --- dataset lists (FACTS §3 order) ---------------------------------------------------------------------
# Names are space-separated (none contains a space).
_IMAGE: dict[str, tuple[str, ...]] = {
    mt: tuple(names.split())
    for mt, names in {
        "CLS": "ImageNet-1K N24News HatefulMemes VOC2007 SUN397 Place365 ImageNet-A ImageNet-R ObjectNet Country211",
        "QA": "OK-VQA A-OKVQA DocVQA InfographicsVQA ChartQA Visual7W ScienceQA VizWiz GQA TextVQA",
        "RET": "VisDial CIRR VisualNews_t2i VisualNews_i2t MSCOCO_t2i MSCOCO_i2t NIGHTS WebQA FashionIQ Wiki-SS-NQ "
        "OVEN EDIS",
        "GD": "MSCOCO RefCOCO RefCOCO-Matching Visual7W-Pointing",
    }.items()
}
_VISDOC: dict[str, tuple[str, ...]] = {
    mt: tuple(names.split())
    for mt, names in {
        "ViDoRe-V1": "ViDoRe_arxivqa ViDoRe_docvqa ViDoRe_infovqa ViDoRe_tabfquad ViDoRe_tatdqa ViDoRe_shiftproject "
        "ViDoRe_syntheticDocQA_artificial_intelligence ViDoRe_syntheticDocQA_energy "
        "ViDoRe_syntheticDocQA_government_reports ViDoRe_syntheticDocQA_healthcare_industry",
        "ViDoRe-V2": "ViDoRe_esg_reports_human_labeled_v2 ViDoRe_biomedical_lectures_v2_multilingual "
        "ViDoRe_economics_reports_v2_multilingual ViDoRe_esg_reports_v2_multilingual",
        "VisRAG": "VisRAG_ArxivQA VisRAG_ChartQA VisRAG_MP-DocVQA VisRAG_SlideVQA VisRAG_InfoVQA VisRAG_PlotQA",
        "OOD": "ViDoSeek-page ViDoSeek-doc MMLongBench-page MMLongBench-doc",
    }.items()
}


def _image() -> list[DatasetInfo]:
    """Image: local ranking, hit@1, instructions come with the rows."""
    return [DatasetInfo(n, "image", mt, "hit@1", "local") for mt, names in _IMAGE.items() for n in names]


def _video() -> list[DatasetInfo]:
    """Video: hit@1; CLS global except SmthSmthV2 (multiple choice), QA local, RET global, MRET local."""
    out = [
        DatasetInfo(n, "video", "CLS", "hit@1", "local" if n == "SmthSmthV2" else "global", inst)
        for n, inst in _VIDEO_CLS.items()
    ]
    qa = ("MVBench", "Video-MME", "NExTQA", "EgoSchema", "ActivityNetQA")
    out += [DatasetInfo(n, "video", "QA", "hit@1", "local", _VIDEO_QA) for n in qa]
    out += [
        DatasetInfo(n, "video", "RET", "hit@1", "global", inst, _VIDEO_TGT) for n, inst in _VIDEO_RET.items()
    ]
    out += [
        DatasetInfo(n, "video", "MRET", "hit@1", "local", *_MRET) for n in ("QVHighlight", "Charades-STA")
    ]
    out.append(DatasetInfo("MomentSeeker", "video", "MRET", "hit@1", "local", *_MRET_MOMENTSEEKER))
    return out


def _visdoc() -> list[DatasetInfo]:
    """Visual documents: ndcg_linear@5 over graded qrels, global ranking over each corpus."""
    return [
        DatasetInfo(n, "visdoc", mt, "ndcg_linear@5", "global", *_DOC)
        for mt, names in _VISDOC.items()
        for n in names
    ]


MMEB_V2: dict[str, DatasetInfo] = {d.name: d for d in _image() + _video() + _visdoc()}


def suite_from_tasks(tasks: Iterable[Mapping[str, Any]], source: str = "tasks") -> dict[str, DatasetInfo]:
    """A suite from tasks.json entries ``{"name","modality","meta_task","metric","ranking", ...}``.

    Optional ``qry_instruction`` / ``tgt_instruction`` keys are kept; other extra keys are ignored.
    Errors are ValueErrors naming ``source`` and the entry.
    """
    out: dict[str, DatasetInfo] = {}
    for i, task in enumerate(tasks):
        where = f"{source}[{i}]"
        if not isinstance(task, Mapping):
            raise ValueError(f"{where}: expected an object, got {type(task).__name__}")
        info = _task_info(task, where)
        if info.name in out:
            raise ValueError(f"{where}: dataset {info.name!r} is listed twice")
        out[info.name] = info
    if not out:
        raise ValueError(f"{source}: no tasks")
    return out


def _task_info(task: Mapping[str, Any], where: str) -> DatasetInfo:
    """One DatasetInfo from one tasks.json entry."""
    fields = {}
    for key in ("name", "modality", "meta_task", "metric", "ranking"):
        value = task.get(key)
        if not isinstance(value, str):
            raise ValueError(f"{where}.{key}: expected a string, got {value!r}")
        fields[key] = value
    for key in ("qry_instruction", "tgt_instruction"):
        value = task.get(key, "")
        if not isinstance(value, str):
            raise ValueError(f"{where}.{key}: expected a string, got {value!r}")
        fields[key] = value
    try:
        return DatasetInfo(**fields)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from err


def suite(name: str, tasks_json: Path | None = None) -> dict[str, DatasetInfo]:
    """The datasets of suite ``name``: "mmeb-v2" (built in) or "mmeb-mini" (read from ``tasks_json``)."""
    if name == "mmeb-v2":
        return dict(MMEB_V2)
    if name == "mmeb-mini":
        if tasks_json is None:
            raise ValueError("suite 'mmeb-mini' needs its tasks.json (the mini benchmark's folder holds one)")
        path = Path(tasks_json)
        try:
            tasks = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: cannot read tasks: {err}") from err
        if not isinstance(tasks, list):
            raise ValueError(f"{path}: expected a JSON list of tasks, got {type(tasks).__name__}")
        return suite_from_tasks(tasks, source=str(path))
    raise ValueError(f"unknown suite {name!r}: expected one of {SUITES}")


def meta_task_order(datasets: Mapping[str, DatasetInfo]) -> dict[str, tuple[str, ...]]:
    """Per modality (MODALITIES order, only those present), its meta-tasks in display order.

    Known labels (META_TASKS) come first in their order; others follow in order of first appearance.
    """
    out: dict[str, tuple[str, ...]] = {}
    for modality in MODALITIES:
        seen = list(dict.fromkeys(d.meta_task for d in datasets.values() if d.modality == modality))
        if seen:
            known = [m for m in META_TASKS[modality] if m in seen]
            out[modality] = tuple(known + [m for m in seen if m not in known])
    return out
