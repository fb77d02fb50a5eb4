"""Training pairs (query, positive target, optional hard negatives) read from the supported layouts.

A `Pair` is what the reasoning pipeline works on: a teacher writes candidate rationales about the query,
and selection keeps those that bring the query closer to its positive. Sources `read_pairs` accepts:

- ``"mmeb-mini"`` (the mini under `mmemb.paths.mini_root()`, built if absent or older), or any
  folder with a mini-layout ``tasks.json`` (see `mmemb.data.mini`):
    row tasks   one pair per row of ``<Task>/<split>.jsonl|.parquet``; query from ``qry_*``, target = the
                first candidate (the gold one), negatives = the row's other candidates (none for
                global-ranking rows, which hold only the gold), hint = the row's ``qry_hint`` if present.
                Id ``"{task}/{split}/{row_index}"`` (0-based over the file's rows).
    BEIR tasks  (``"format": "beir"``) one pair per query with a relevant page; target = the page with the
                highest grade (ties: the first in qrels.tsv order), no negatives, hint = the optional
                ``"hint"`` of queries.jsonl. Id ``"{task}/{split}/{query_id}"``.
  Samples are built with the evaluation loader's helpers, so a query has the same `content_key` here as
  in evaluation.
- An MMEB-train file (VLM2Vec's training rows, ``.jsonl`` or ``.parquet``): ``qry``, ``qry_image_path``,
  ``pos_text``, ``pos_image_path``, optional ``neg_text``, ``neg_image_path`` (a string or a list each).
  The ``<|image_1|>`` placeholder is removed from texts; media paths are relative to ``media_root``
  (default: the file's folder). Task = the file's stem; id ``"{stem}/{row_index}"``.
- UME-R1's SFT data, as its loader (``src/sft-train/qwenvl/data/data_qwen.py``, read at the upstream
  commit 08891de via a fork that keeps its history; docs/design/published-profiles.md §UME-R1 4) reads it:
  a ``.json`` list or a ``.jsonl`` of records::

      {"qry": {"conversations": [{"from": "human", "value": V}, {"from": "gpt", "value": G}],
               "image": str | [str], "video": [frame paths]},
       "pos": {... the same ...},
       "dataset_name": str (optional: UME's loader does not read it)}

  Turns are ``from``/``value`` or ``role``/``content`` (human = user, gpt = assistant), as data_qwen.py
  accepts both. V holds ``<image>`` / ``<video>`` placeholders (each ``<image>`` takes the next image), the
  input text, then ``<disc_emb>`` and UME's fixed reasoning instruction. The Sample text is what precedes
  ``<disc_emb>``, without placeholders or "Picture N:" / "Video N:" prefixes. Several images make a
  multi-image Sample (its ``pages``, fed in order). A video is a list of frame paths, as upstream requires
  (a frame folder is also accepted here). Text-only sides in UME's data point at a 28x28 white ``blank.jpg``
  (upstream's loader cannot read a side without media), and that image is kept as the input it is.
  G is ``<think>T</think>`` then the answer (possibly in ``<answer>...</answer>``) and ``<gen_emb>``;
  `ume_rationales` returns the query side's as ``<think>T</think><answer>A</answer>``. Task =
  ``dataset_name`` when given, else the file's stem; id ``"{task}/{record_index}"``. A record that does not
  fit is refused with a message naming the record.

Negatives never include a copy of the target or a repeat of another negative (same text, instruction
and media). Record indices count records from 0.
File sources carry no hints. For the file sources `split` is ignored (a file is one split). Every problem raises `InputError` (or its
subclass `TaskError`) naming the file and line, row or record, and what to do.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..cache import content_key
from ..types import InputError, Sample
from .registry import DatasetInfo, suite_from_tasks
from .tasks import (
    TaskError,
    as_list,
    find_split_file,
    frame_folder,
    media_file,
    parse_row,
    read_beir,
    read_rows,
)

LAYOUTS = (
    "MMEB-train rows {qry, qry_image_path, pos_text, pos_image_path[, neg_text, neg_image_path]}",
    "UME-R1 SFT records {dataset_name, qry: {conversations, image|video}, pos: {...}}",
)


@dataclass(frozen=True)
class Pair:
    """One training pair; `hint` is privileged text about the query item, shown to teachers only."""

    id: str  # unique within its dataset (see the module docstring for the conventions)
    task: str  # dataset / task name
    query: Sample
    target: Sample  # the positive
    negatives: tuple[Sample, ...] = ()  # hard negatives given by the data (may be empty)
    hint: str = ""


# ---- entry points -------------------------------------------------------------------------------------


def read_pairs(
    spec: str | Path,
    split: str = "train",
    tasks: list[str] | None = None,
    limit_per_task: int = 0,
    seed: int = 0,
    media_root: Path | None = None,
    skip_per_task: int = 0,
) -> list[Pair]:
    """The pairs of `spec` ("mmeb-mini", a mini-layout folder, an MMEB-train or UME-R1 file).

    tasks:           keep only these task names (an unknown name is an error listing the known ones).
    limit_per_task:  keep at most N pairs per task (0 = all), chosen by a hash of (seed, pair id) and
                     returned in their original order; deterministic.
    skip_per_task:   first drop the pairs that limit_per_task=N would keep: the held-out pairs of a model
                     trained with --limit N (limits are nested: N pairs are the first N of N + M).
    media_root:      folder that media paths of a file source are relative to (default: its folder).
    """
    path = Path(spec)
    if str(spec) == "mmeb-mini" or path.is_dir():
        root = _mini_folder(spec)
        infos, formats = _mini_tasks(root)
        names = _check_tasks(tasks, list(infos), root / "tasks.json")
        pairs = []
        for name in names:
            read = _beir_pairs if formats[name] == "beir" else _row_pairs
            pairs += read(infos[name], root, split)
    else:
        pairs = _file_pairs(path, media_root)
        names = _check_tasks(tasks, list(dict.fromkeys(p.task for p in pairs)), path)
        pairs = [p for p in pairs if p.task in names]
    if skip_per_task > 0:
        seen = {p.id for p in _limit(pairs, skip_per_task, seed)}
        pairs = [p for p in pairs if p.id not in seen]
    return _limit(pairs, limit_per_task, seed)


def dataset_fingerprint(pairs: list[Pair]) -> str:
    """16 hex characters over (id, content_key(query), content_key(target)) of every pair, in order."""
    h = hashlib.sha256()
    for p in pairs:
        h.update(json.dumps([p.id, content_key(p.query), content_key(p.target)]).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def ume_rationales(path: Path) -> dict[str, str]:
    """Pair id -> the query side's rationale of UME-R1 SFT data, as ``<think>T</think><answer>A</answer>``.

    Records whose query has no gpt turn are left out; a gpt turn without ``<think>...</think>`` is an error.
    """
    path = Path(path)
    records = _records(path)
    if _layout(path, records) != "ume":
        raise InputError(f"{path}: not UME-R1 SFT data (expected {LAYOUTS[1]})")
    out = {}
    for i, (where, rec) in enumerate(records):
        name = _dataset_name(rec, where, path.stem)
        side = rec.get("qry")
        gpt = _turn(side, "gpt") if isinstance(side, dict) else None
        if gpt is not None:
            out[f"{name}/{i}"] = _normalise_rationale(gpt, f"{where} qry")
    return out


# ---- selection ----------------------------------------------------------------------------------------


def _check_tasks(tasks: list[str] | None, known: list[str], source: Path) -> list[str]:
    if tasks is None:
        return known
    unknown = [t for t in tasks if t not in known]
    if unknown:
        raise InputError(f"{source}: unknown task(s) {unknown}; known tasks: {', '.join(known)}")
    return [t for t in known if t in tasks]


def _rank(seed: int, pair_id: str) -> bytes:
    return hashlib.sha256(f"{seed}\x1f{pair_id}".encode()).digest()


def _limit(pairs: list[Pair], n: int, seed: int) -> list[Pair]:
    """At most `n` pairs per task (the n smallest seeded hashes of their ids), in the original order."""
    if n <= 0:
        return pairs
    by_task: dict[str, list[Pair]] = {}
    for p in pairs:
        by_task.setdefault(p.task, []).append(p)
    keep = {p.id for group in by_task.values() for p in sorted(group, key=lambda p: _rank(seed, p.id))[:n]}
    return [p for p in pairs if p.id in keep]


# ---- mini layout --------------------------------------------------------------------------------------


def _mini_folder(spec: str | Path) -> Path:
    """The folder holding tasks.json; "mmeb-mini" is the cached build, (re)built when missing or when its
    manifest names an older builder version (an older build lacks the train hints)."""
    if str(spec) == "mmeb-mini":
        from ..paths import MINI_SEED, mini_root
        from .mini import ensure_mini

        return ensure_mini(mini_root(), seed=MINI_SEED)
    root = Path(spec)
    if not (root / "tasks.json").is_file():
        raise InputError(
            f"{root}: no tasks.json, so not a mini-layout folder; build one with "
            f"`mmemb data build-mini --out {root}`, or give an MMEB-train or UME-R1 file"
        )
    return root


def _mini_tasks(root: Path) -> tuple[dict[str, DatasetInfo], dict[str, str]]:
    """(name -> DatasetInfo, name -> "beir" | "rows") from `root`/tasks.json."""
    path = root / "tasks.json"
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: cannot read tasks ({e}); rebuild the folder") from None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise InputError(f"{path}: expected a JSON list of task objects; rebuild the folder")
    try:
        infos = suite_from_tasks(entries, source=str(path))
    except ValueError as e:
        raise InputError(str(e)) from None
    formats = {e["name"]: "beir" if e.get("format") == "beir" else "rows" for e in entries}
    return infos, formats


def _row_pairs(info: DatasetInfo, root: Path, split: str) -> list[Pair]:
    """One pair per row, built exactly as `data.tasks.load_rows_task` builds its samples."""
    path = find_split_file(root / info.name, split)
    pairs = []
    for i, (where, row) in enumerate(read_rows(path)):
        query, cands = parse_row(info, root, where, row)
        hint = row.get("qry_hint") or ""
        if not isinstance(hint, str):
            raise TaskError(f'{where}: "qry_hint" must be a string, got {type(hint).__name__}')
        pairs.append(
            Pair(
                f"{info.name}/{split}/{i}", info.name, query, cands[0], _negatives(cands[0], cands[1:]), hint
            )
        )
    if not pairs:
        raise TaskError(f"{path}: no rows")
    return pairs


def _same(a: Sample, b: Sample) -> bool:
    return (a.text, a.instruction, a.media()) == (b.text, b.instruction, b.media())


def _negatives(target: Sample, others: list[Sample]) -> tuple[Sample, ...]:
    """`others` without copies of the target or of each other (a copy would be a false negative)."""
    kept: list[Sample] = []
    for s in others:
        if not _same(s, target) and not any(_same(s, k) for k in kept):
            kept.append(s)
    return tuple(kept)


def _beir_pairs(info: DatasetInfo, root: Path, split: str) -> list[Pair]:
    """One pair per query with a relevant page: the highest grade wins (ties: the first in qrels.tsv)."""
    beir = read_beir(info, root, split)
    pairs = []
    for qid, query in beir.queries.items():
        if qid not in beir.qrels:
            continue
        hint = beir.rows[qid].get("hint") or ""
        if not isinstance(hint, str):
            raise TaskError(f'{beir.rows[qid]["_where"]}: "hint" must be a string, got {type(hint).__name__}')
        grades = beir.qrels[qid]
        best = max(grades, key=lambda did: grades[did])  # max keeps the first of equal grades
        pairs.append(Pair(f"{info.name}/{split}/{qid}", info.name, query, beir.docs[best], (), hint))
    return pairs


# ---- files: MMEB-train and UME-R1 ---------------------------------------------------------------------


def _records(path: Path) -> list[tuple[str, dict]]:
    """(where, record) of a .json list, .jsonl or .parquet file; `where` names the file and line/row."""
    if not path.is_file():
        raise InputError(
            f"{path}: not found; give 'mmeb-mini', a mini-layout folder, or a file in one of: "
            + "; ".join(LAYOUTS)
        )
    if path.suffix in (".jsonl", ".parquet"):
        records = list(read_rows(path))
    elif path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(data, list):
            raise InputError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
        records = []
        for i, rec in enumerate(data):
            if not isinstance(rec, dict):
                raise InputError(f"{path} record {i}: expected a JSON object")
            records.append((f"{path} record {i}", rec))
    else:
        raise InputError(f"{path}: unknown file type {path.suffix!r}; expected .json, .jsonl or .parquet")
    if not records:
        raise InputError(f"{path}: no records")
    return records


def _layout(path: Path, records: list[tuple[str, dict]]) -> str:
    """ "ume" or "mmeb-train", sniffed from the first record."""
    where, first = records[0]
    qry = first.get("qry")
    if isinstance(qry, dict) and "conversations" in qry:
        return "ume"
    if isinstance(qry, str) and ("pos_text" in first or "pos_image_path" in first):
        return "mmeb-train"
    raise InputError(
        f"{where}: layout not recognised (keys {sorted(first)[:8]}); accepted layouts: {'; '.join(LAYOUTS)}"
    )


def _file_pairs(path: Path, media_root: Path | None) -> list[Pair]:
    records = _records(path)
    root = Path(media_root) if media_root is not None else path.parent
    if _layout(path, records) == "mmeb-train":
        return [_mmeb_train_pair(path.stem, i, where, rec, root) for i, (where, rec) in enumerate(records)]
    return [_ume_pair(i, where, rec, root, path.stem) for i, (where, rec) in enumerate(records)]


def _file(root: Path, rel: str, where: str) -> Path:
    """`root`/`rel`, which must exist (the error says how to point media_root elsewhere)."""
    try:
        return media_file(root, rel, where)
    except TaskError as e:
        raise TaskError(
            f"{e}; media paths are relative to media_root (default: the data file's folder)"
        ) from None


def _train_sample(root: Path, where: str, text: object, image: object) -> Sample | None:
    """A Sample from MMEB-train text and image path (the <|image_1|> placeholder removed); None if empty."""
    if text is not None and not isinstance(text, str):
        raise InputError(f"{where}: expected a text, got {type(text).__name__}")
    if image is not None and not isinstance(image, str):
        raise InputError(f"{where}: expected an image path, got {type(image).__name__}")
    clean = (text or "").replace("<|image_1|>", "").strip()
    if not clean and not image:
        return None
    return Sample(id=where, text=clean or None, image=_file(root, image, where) if image else None)


def _mmeb_train_pair(stem: str, i: int, where: str, rec: dict, root: Path) -> Pair:
    query = _train_sample(root, where, rec.get("qry"), rec.get("qry_image_path"))
    if query is None:
        raise InputError(f"{where}: no query (qry and qry_image_path are both empty); fix or drop the row")
    target = _train_sample(root, f"{where} positive", rec.get("pos_text"), rec.get("pos_image_path"))
    if target is None:
        raise InputError(
            f"{where}: no positive (pos_text and pos_image_path are both empty); fix or drop the row"
        )
    texts, images = as_list(rec.get("neg_text")), as_list(rec.get("neg_image_path"))
    if texts and images and len(texts) != len(images):
        raise InputError(f"{where}: neg_text has {len(texts)} entries but neg_image_path has {len(images)}")
    negs = []
    for j in range(max(len(texts), len(images))):
        neg = _train_sample(
            root, f"{where} negative {j}", texts[j] if texts else None, images[j] if images else None
        )
        if neg is not None:
            negs.append(neg)
    return Pair(f"{stem}/{i}", stem, query, target, _negatives(target, negs))


_PLACEHOLDER = re.compile(r"(?:(?:Picture|Video) \d+:\s*)?<(?:image|video)>")
_PREFIX = re.compile(r"(?:Picture|Video) \d+:")


def _ume_text(value: str) -> str:
    """The input text of a UME human turn: before <disc_emb>, without placeholders or "Picture N:"."""
    text = value.split("<disc_emb>", 1)[0]
    return _PREFIX.sub("", _PLACEHOLDER.sub("", text)).strip()


_ROLES = {"human": "human", "user": "human", "gpt": "gpt", "assistant": "gpt"}


def _turn(side: dict, who: str) -> str | None:
    """The first `who` ("human" or "gpt") turn's text; turns are from/value or role/content (data_qwen.py)."""
    turns = side.get("conversations")
    if not isinstance(turns, list):
        return None
    for t in turns:
        if not isinstance(t, dict):
            continue
        role, text = (t.get("from"), t.get("value")) if "from" in t else (t.get("role"), t.get("content"))
        if _ROLES.get(role) == who and isinstance(text, str):
            return text
    return None


def _dataset_name(rec: dict, where: str, default: str) -> str:
    """The record's task: its dataset_name when it has one (UME's loader ignores it), else the file's stem."""
    name = rec.get("dataset_name", default)
    if not isinstance(name, str) or not name:
        raise InputError(f'{where}: "dataset_name" should be a non-empty string, got {name!r}')
    return name


def _ume_sample(side: object, root: Path, where: str, role: str) -> Sample:
    """The query or positive of a UME record (`role` is "query" or "positive")."""
    if not isinstance(side, dict) or not isinstance(side.get("conversations"), list):
        raise InputError(f'{where}: no {role} (expected an object with "conversations")')
    human = _turn(side, "human")
    if human is None:
        raise InputError(f'{where}: the {role} has no "human" turn')
    images = [p for p in as_list(side.get("image")) if p]
    video = side.get("video")
    if isinstance(video, str) and video:
        frames = frame_folder(root, video, where)
    else:
        frames = tuple(_file(root, p, where) for p in as_list(video) if p)
    try:
        return Sample(
            id=f"{where} {role}",
            text=_ume_text(human) or None,
            image=_file(root, images[0], where) if len(images) == 1 else None,
            pages=tuple(_file(root, p, where) for p in images) if len(images) > 1 else (),
            frames=frames,
        )
    except InputError as e:
        raise InputError(f"{where}: no usable {role}: {e}") from None


def _ume_pair(i: int, where: str, rec: dict, root: Path, default: str) -> Pair:
    name = _dataset_name(rec, where, default)
    query = _ume_sample(rec.get("qry"), root, where, "query")
    target = _ume_sample(rec.get("pos"), root, where, "positive")
    return Pair(f"{name}/{i}", name, query, target)


_THINK = re.compile(r"<think>(.*?)</think>(.*)", re.DOTALL)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def _normalise_rationale(value: str, where: str) -> str:
    """``<think>T</think>A<gen_emb>`` (A maybe in <answer> tags) -> ``<think>T</think><answer>A</answer>``."""
    m = _THINK.search(value)
    if not m:
        raise InputError(f"{where}: the gpt turn has no <think>...</think> block")
    rest = m[2].replace("<gen_emb>", "")
    a = _ANSWER.search(rest)
    answer = (a[1] if a else rest).strip()
    return f"<think>{m[1].strip()}</think><answer>{answer}</answer>"
