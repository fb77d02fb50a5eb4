"""Evaluation tasks and their loaders for the released MMEB formats.

A `Task` holds each unique query and candidate once (keyed by content: MMEB reuses candidates heavily, and
a candidate seen by 1,000 queries is embedded once), the relevance of candidates per query, and for local
ranking each query's own candidate list.

Formats, under a data root (`<root>/<dataset>/...`):

- image_rows / video_rows: `<split>.jsonl` or `<split>.parquet`, one query a row:
  `qry_inst, qry_text, qry_img_path, tgt_inst, tgt_text (list), tgt_img_path (list)`; the first candidate is
  the gold one. Video rows use `qry_video_path` / `tgt_video_path`: folders of frames (the backbone samples
  `num_frames` of them). MMEB's `<|image_1|>` placeholder is dropped from instructions: the backbone puts
  the media before the instruction itself. Local ranking ranks each row's own candidates; global ranking
  ranks the union of all rows' candidates.
- beir (visual documents): `<split>/corpus.jsonl` {_id, image_path[, text]} (paths relative to the data
  root, as for rows), `<split>/queries.jsonl`
  {_id, text}, `<split>/qrels.tsv` (query-id, corpus-id, score; graded). Always global.

Every problem raises `TaskError` naming the file and row.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..cache import content_key
from ..media import frame_order
from ..types import InputError, Sample
from . import hub
from .hub import TaskError
from .registry import DatasetInfo

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"}


@dataclass
class Task:
    info: DatasetInfo
    queries: list[str] = field(default_factory=list)  # one key per query row (rows may share a key)
    items: dict[str, Sample] = field(default_factory=dict)  # key -> Sample, queries and candidates alike
    relevance: list[dict[str, float]] = field(default_factory=list)  # per query row: candidate key -> rel
    local: list[list[str]] | None = None  # per query row: its own candidates; None = global ranking
    corpus: list[str] = field(default_factory=list)  # global ranking: unique candidate keys

    @property
    def name(self) -> str:
        return self.info.name

    def candidate_keys(self) -> list[str]:
        if self.local is None:
            return self.corpus
        return list(dict.fromkeys(k for row in self.local for k in row))

    def limit(self, n: int) -> None:
        """Keep the first n queries (smoke runs); global corpora are kept whole so ranks stay comparable."""
        self.queries, self.relevance = self.queries[:n], self.relevance[:n]
        if self.local is not None:
            self.local = self.local[:n]

    def add(self, sample: Sample) -> str:
        key = content_key(sample)
        self.items.setdefault(key, sample)
        return key


# ---- reading rows -----------------------------------------------------------------------------------------
def read_rows(path: Path) -> Iterator[tuple[str, dict]]:
    """(where, row) for each row of a .jsonl or .parquet file; `where` is 'file:line' or 'file row N'
    (parquet is read one batch at a time: hub.read_rows)."""
    return hub.read_rows([path])


def find_split_file(folder: Path, split: str) -> Path:
    for ext in (".jsonl", ".parquet"):
        if (folder / f"{split}{ext}").is_file():
            return folder / f"{split}{ext}"
    raise TaskError(f"{folder}: no {split}.jsonl or {split}.parquet")


def clean_instruction(text: str | None) -> str | None:
    if not text:
        return None
    return text.replace("<|image_1|>", "").strip() or None


def frame_folder(root: Path, folder: str, where: str) -> tuple[Path, ...]:
    path = root / folder
    frames = [p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS] if path.is_dir() else []
    frames.sort(key=lambda p: frame_order(p.name))  # VLM2Vec's natural order: frame_9 before frame_10
    if not frames:
        raise TaskError(f"{where}: video folder {folder!r} is missing or has no frames (looked in {path})")
    return tuple(frames)


def media_file(root: Path, rel: str, where: str) -> Path:
    path = root / rel
    if not path.is_file():
        raise TaskError(f"{where}: file {rel!r} not found (looked for {path})")
    return path


def _sample(root: Path, where: str, text, inst, image="", video="") -> Sample:
    try:
        return Sample(
            id=where,
            text=text or None,
            instruction=clean_instruction(inst),
            image=media_file(root, image, where) if image else None,
            frames=frame_folder(root, video, where) if video else (),
        )
    except InputError as e:
        raise TaskError(f"{where}: {e}") from None


def parse_row(info: DatasetInfo, root: Path, where: str, row: dict) -> tuple[Sample, list[Sample]]:
    """A row's query and its candidates in order, the gold one first (image_rows / video_rows)."""
    query = _sample(
        root,
        where,
        row.get("qry_text"),
        row.get("qry_inst") or info.qry_instruction,
        row.get("qry_img_path") or "",
        row.get("qry_video_path") or "",
    )
    texts, images = as_list(row.get("tgt_text")), as_list(row.get("tgt_img_path"))
    videos = as_list(row.get("tgt_video_path"))
    n = max(len(texts), len(images), len(videos))
    if n == 0 or not ((texts[:1] and texts[0]) or (images[:1] and images[0]) or (videos[:1] and videos[0])):
        raise TaskError(
            f"{where}: no gold candidate (the first of tgt_text / tgt_img_path / tgt_video_path must be set)"
        )
    for name, lst in (("tgt_text", texts), ("tgt_img_path", images), ("tgt_video_path", videos)):
        if lst and len(lst) != n:
            raise TaskError(f"{where}: {name} has {len(lst)} entries, other candidate lists have {n}")
    inst = row.get("tgt_inst") or info.tgt_instruction
    candidates = [
        _sample(
            root,
            f"{where} candidate {j}",
            texts[j] if texts else None,
            inst,
            images[j] if images else "",
            videos[j] if videos else "",
        )
        for j in range(n)
    ]
    return query, candidates


def load_rows_task(info: DatasetInfo, root: Path, split: str = "test") -> Task:
    """image_rows / video_rows format (see module docstring)."""
    path = find_split_file(root / info.name, split)
    task = Task(info, local=None if info.ranking == "global" else [])
    corpus: dict[str, None] = {}
    for where, row in read_rows(path):
        query, candidates = parse_row(info, root, where, row)
        keys = [task.add(c) for c in candidates]
        task.queries.append(task.add(query))
        task.relevance.append({keys[0]: 1.0})  # labels de-duplicated: the gold key once
        if task.local is not None:
            task.local.append(keys)  # duplicates kept: VLM2Vec ranks them twice (it shows in published MAP)
        corpus.update(dict.fromkeys(keys))
    if not task.queries:
        raise TaskError(f"{path}: no rows")
    task.corpus = list(corpus) if task.local is None else []
    return task


def as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


@dataclass
class Beir:
    """A BEIR split as read from disk: documents and queries by id (with each query row's extra fields) and
    graded qrels (query id -> {document id: grade > 0}), in file order."""

    docs: dict[str, Sample]
    queries: dict[str, Sample]
    rows: dict[str, dict]  # query id -> its queries.jsonl row (extra fields such as a teacher hint)
    qrels: dict[str, dict[str, float]]


def read_beir(info: DatasetInfo, root: Path, split: str) -> Beir:
    """Read `<root>/<dataset>/<split>/{corpus.jsonl, queries.jsonl, qrels.tsv}` (module docstring)."""
    folder = root / info.name / split
    for name in ("corpus.jsonl", "queries.jsonl", "qrels.tsv"):
        if not (folder / name).is_file():
            raise TaskError(
                f"{folder / name}: missing (a BEIR task needs corpus.jsonl, queries.jsonl, qrels.tsv)"
            )
    docs: dict[str, Sample] = {}
    for where, row in read_rows(folder / "corpus.jsonl"):
        doc_id = _id(row, where, docs)
        page = row.get("image_path")
        if not page and not row.get("text"):
            raise TaskError(f"{where}: corpus item {doc_id!r} has neither image_path nor text")
        docs[doc_id] = Sample(
            id=doc_id,
            text=row.get("text") or None,
            instruction=clean_instruction(info.tgt_instruction),
            pages=(media_file(root, page, where),) if page else (),
        )
    queries: dict[str, Sample] = {}
    rows: dict[str, dict] = {}
    for where, row in read_rows(folder / "queries.jsonl"):
        qid = _id(row, where, queries)
        if not row.get("text"):
            raise TaskError(f"{where}: query {qid!r} has no text")
        queries[qid] = Sample(id=qid, text=row["text"], instruction=clean_instruction(info.qry_instruction))
        rows[qid] = row | {"_where": where}
    qrels: dict[str, dict[str, float]] = {}
    with open(folder / "qrels.tsv", encoding="utf-8") as f:
        for n, rec in enumerate(csv.reader(f, delimiter="\t"), start=1):
            if n == 1 and rec and not rec[-1].replace(".", "").isdigit():
                continue  # header
            where = f"{folder / 'qrels.tsv'}:{n}"
            if len(rec) < 3:
                raise TaskError(f"{where}: expected query-id, corpus-id, score")
            qid, did, score = rec[0], rec[1], rec[-1]
            if qid not in queries or did not in docs:
                raise TaskError(
                    f"{where}: unknown {'query' if qid not in queries else 'corpus'} id "
                    f"{qid if qid not in queries else did!r}"
                )
            try:
                rel = float(score)
            except ValueError:
                raise TaskError(f"{where}: score {score!r} is not a number") from None
            if rel > 0:
                qrels.setdefault(qid, {})[did] = rel
    if not qrels:
        raise TaskError(f"{folder}: no query has a relevant page in qrels.tsv")
    return Beir(docs, queries, rows, qrels)


def load_beir_task(info: DatasetInfo, root: Path, split: str = "test") -> Task:
    """BEIR-style visual-document retrieval: corpus of page images, text queries, graded qrels."""
    beir = read_beir(info, root, split)
    task = Task(info, local=None)
    keys = {doc_id: task.add(doc) for doc_id, doc in beir.docs.items()}
    for qid, sample in beir.queries.items():
        if qid not in beir.qrels:
            continue  # BEIR convention: queries without a relevant page are not scored
        task.queries.append(task.add(sample))
        task.relevance.append({keys[did]: rel for did, rel in beir.qrels[qid].items()})
    task.corpus = list(dict.fromkeys(keys.values()))
    return task


def _id(row: dict, where: str, seen: dict) -> str:
    if "_id" not in row:
        raise TaskError(f'{where}: missing "_id"')
    key = str(row["_id"])
    if key in seen:
        raise TaskError(f"{where}: duplicate id {key!r}")
    return key


def load_task(info: DatasetInfo, root: Path, split: str = "test", fmt: str = "") -> Task:
    fmt = fmt or ("beir" if info.modality == "visdoc" else "rows")
    if fmt == "beir":
        return load_beir_task(info, root, split)
    return load_rows_task(info, root, split)
