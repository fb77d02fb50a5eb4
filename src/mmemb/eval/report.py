"""Score files in VLM2Vec's published layout, their summaries, and side-by-side plain-text reports.

A score file is JSON::

    {"metadata": {"model_name": ..., "suite": "mmeb-v2", ...},
     "metrics": {modality: {dataset: {metric: value, ...}, ...}, ...}}

with metric values in [0, 1] (counts such as ``num_pred`` are plain numbers). For a suite other than
"mmeb-v2" (e.g. "mmeb-mini") ``metadata.tasks`` holds the suite's tasks.json list, so a file can be
reported on its own. VLM2Vec's own report script writes a status string (``"FILE_N/A"``, ...) in place of
a dataset's metrics when its score file was absent; such a dataset is read as missing.

Averaging follows VLM2Vec / MMEB-V2: a dataset's score is its main metric ×100; a meta-task, a modality
and the overall score are each the plain mean over the datasets present in that group (so overall is the
count-weighted mean of the modalities, not the mean of the three modality means). A mean over fewer
datasets than the suite expects is always shown with its counts, and "overall" is then labelled partial.

Worked example: image datasets a=0.5, b=0.7 and video c=0.3 (of two expected video datasets) give image
60.0 (2/2), video 30.0 (1/2) and "overall (partial: 3/4)" = (50 + 70 + 30) / 3 = 50.0.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from ..data.registry import MODALITIES, DatasetInfo, meta_task_order, suite_from_tasks
from ..data.registry import suite as registry_suite
from ..io import atomic_write
from ..types import InputError

DEFAULT_SUITE = "mmeb-v2"
STATUS_MARKERS = frozenset({"FILE_N/A", "DIR_N/A", "JSON_ERROR", "READ_ERROR"})  # VLM2Vec report_score_v2.py

Metrics = dict[str, dict[str, dict[str, float]]]  # modality -> dataset -> metric -> value


class ScoreFileError(InputError):
    """A score file cannot be read or does not follow the layout; names the file and the key path."""

    def __init__(self, path: Path | str, key: str, problem: str) -> None:
        self.path, self.key = str(path), key
        super().__init__(f"{path}: {key}: {problem}" if key else f"{path}: {problem}")


# --- reading ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoreFile:
    """A validated score file. ``status`` holds VLM2Vec status strings given in place of metrics."""

    path: Path | None
    model_name: str
    suite: str
    metadata: dict[str, Any]
    metrics: Metrics
    status: dict[str, dict[str, str]]
    tasks: list[dict[str, Any]] | None = None

    def expected(self) -> dict[str, DatasetInfo]:
        """The suite's datasets: from ``metadata.tasks`` when given, else the built-in registry."""
        if self.tasks is not None:
            return suite_from_tasks(self.tasks, source=f"{self.path}: metadata.tasks")
        return registry_suite(self.suite)


def load_scores(path: str | Path) -> ScoreFile:
    """Read and validate a score file (see module docstring). Raises ScoreFileError (a ValueError)."""
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, dict):
        raise ScoreFileError(path, "(top level)", f"expected an object, got {type(data).__name__}")
    metadata = data.get("metadata", {})
    if not isinstance(metadata, dict):
        raise ScoreFileError(path, "metadata", f"expected an object, got {type(metadata).__name__}")
    if "metrics" not in data:
        raise ScoreFileError(path, "metrics", "missing (expected {modality: {dataset: {metric: value}}})")
    metrics, status = _parse_metrics(path, data["metrics"])
    suite_name = _meta_str(path, metadata, "suite", DEFAULT_SUITE)
    score_file = ScoreFile(
        path=path,
        model_name=_meta_str(path, metadata, "model_name", path.stem),
        suite=suite_name,
        metadata=metadata,
        metrics=metrics,
        status=status,
        tasks=_meta_tasks(path, metadata, suite_name),
    )
    try:
        score_file.expected()  # validates the tasks / the suite name now, not at report time
    except ValueError as err:
        raise ScoreFileError(
            path, "metadata.tasks" if score_file.tasks else "metadata.suite", str(err)
        ) from err
    return score_file


def _read_json(path: Path) -> Any:
    """The parsed JSON of ``path``; unreadable files and bad JSON raise ScoreFileError."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ScoreFileError(path, "", f"cannot read: {err}") from err
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ScoreFileError(path, "", f"not valid JSON: {err}") from err


def _meta_str(path: Path, metadata: Mapping[str, Any], key: str, default: str) -> str:
    """``metadata[key]`` as a non-empty string, or ``default`` when absent."""
    value = metadata.get(key, default)
    if not isinstance(value, str) or not value:
        raise ScoreFileError(path, f"metadata.{key}", f"expected a non-empty string, got {value!r}")
    return value


def _meta_tasks(path: Path, metadata: Mapping[str, Any], suite_name: str) -> list[dict[str, Any]] | None:
    """``metadata.tasks``: required for suites other than mmeb-v2, refused for mmeb-v2."""
    tasks = metadata.get("tasks")
    if suite_name == DEFAULT_SUITE:
        if tasks is not None:
            raise ScoreFileError(
                path, "metadata.tasks", f"suite {DEFAULT_SUITE!r} is built in; give no tasks"
            )
        return None
    if not isinstance(tasks, list):
        raise ScoreFileError(path, "metadata.tasks", f"suite {suite_name!r} needs its tasks.json list here")
    return tasks


def _parse_metrics(path: Path, metrics: Any) -> tuple[Metrics, dict[str, dict[str, str]]]:
    """Validate ``metrics``; return the numeric part and the status strings separately."""
    if not isinstance(metrics, dict):
        raise ScoreFileError(
            path, "metrics", f"expected an object of modalities, got {type(metrics).__name__}"
        )
    values: Metrics = {}
    status: dict[str, dict[str, str]] = {}
    for modality, datasets in metrics.items():
        if not isinstance(datasets, dict):
            raise ScoreFileError(
                path, f"metrics.{modality}", f"expected an object of datasets, got {datasets!r}"
            )
        values[modality], status[modality] = {}, {}
        for name, dataset_metrics in datasets.items():
            key = f"metrics.{modality}.{name}"
            if isinstance(dataset_metrics, str) and dataset_metrics in STATUS_MARKERS:
                status[modality][name] = dataset_metrics
                continue
            if not isinstance(dataset_metrics, dict):
                raise ScoreFileError(
                    path, key, f"expected an object of metric: number, got {dataset_metrics!r}"
                )
            for metric, value in dataset_metrics.items():
                problem = value_problem(metric, value)
                if problem:
                    raise ScoreFileError(path, f"{key}.{metric}", problem)
            values[modality][name] = dict(dataset_metrics)
    return values, status


def value_problem(metric: str, value: Any) -> str | None:
    """Why ``value`` is not a valid value of ``metric`` (None when valid).

    Numbers only (not booleans), finite; a rank metric (a name with "@k") must lie in [0, 1].
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"expected a number, got {value!r}"
    if not math.isfinite(value):
        return f"expected a finite number, got {value!r}"
    if "@" in metric and not 0.0 <= value <= 1.0:
        return f"expected a value in [0, 1], got {value!r} (scores are stored as fractions, not ×100)"
    return None


# --- summarising ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupScore:
    """The plain mean (×100) over the datasets of one group that are present, with the counts."""

    name: str
    score: float | None  # None when no dataset of the group is present
    present: int
    expected: int

    @property
    def complete(self) -> bool:
        return self.present == self.expected

    @property
    def counts(self) -> str:
        return f"{self.present}/{self.expected}"

    @property
    def label(self) -> str:
        """``name``, or ``name (partial: n/N)`` when datasets are missing; never a bare name for a partial mean."""
        return self.name if self.complete else f"{self.name} (partial: {self.counts})"


@dataclass(frozen=True)
class Summary:
    """One score file against one suite."""

    model_name: str
    source: str  # the score file's path
    suite: str
    main_metrics: dict[str, tuple[str, ...]]  # modality -> main metric(s) of its datasets
    scores: dict[str, float]  # dataset -> main metric ×100, suite order, present ones only
    meta_tasks: dict[str, dict[str, GroupScore]]  # modality -> meta-task -> group, display order
    modalities: dict[str, GroupScore]
    overall: GroupScore
    missing: dict[str, str]  # expected but not scored: dataset -> why ("" when simply absent)
    extra: tuple[str, ...]  # present but not in the suite (listed, ignored)


def summarize(score_file: ScoreFile, suite: Mapping[str, DatasetInfo] | None = None) -> Summary:
    """Summarise ``score_file`` against ``suite`` (default: the file's own suite)."""
    datasets = dict(suite) if suite is not None else score_file.expected()
    scores, missing = _main_scores(score_file, datasets)
    order = meta_task_order(datasets)
    by_modality = {m: [d for d in datasets.values() if d.modality == m] for m in order}
    return Summary(
        model_name=score_file.model_name,
        source=str(score_file.path),
        suite=score_file.suite,
        main_metrics={m: tuple(dict.fromkeys(d.metric for d in ds)) for m, ds in by_modality.items()},
        scores=scores,
        meta_tasks={
            m: {t: _group(t, [d for d in by_modality[m] if d.meta_task == t], scores) for t in tasks}
            for m, tasks in order.items()
        },
        modalities={m: _group(m, ds, scores) for m, ds in by_modality.items()},
        overall=_group("overall", list(datasets.values()), scores),
        missing=missing,
        extra=_extras(score_file, datasets),
    )


def _main_scores(
    score_file: ScoreFile, datasets: Mapping[str, DatasetInfo]
) -> tuple[dict[str, float], dict[str, str]]:
    """Each expected dataset's main metric ×100, and the expected datasets without one (with why)."""
    scores: dict[str, float] = {}
    missing: dict[str, str] = {}
    for info in datasets.values():
        values = score_file.metrics.get(info.modality, {}).get(info.name)
        if values is None:
            missing[info.name] = score_file.status.get(info.modality, {}).get(info.name, "")
        elif info.metric not in values:
            missing[info.name] = f"no {info.metric}"
        else:
            scores[info.name] = 100.0 * values[info.metric]
    return scores, missing


def _extras(score_file: ScoreFile, datasets: Mapping[str, DatasetInfo]) -> tuple[str, ...]:
    """Datasets in the file that the suite does not expect there (a known one under another modality says so)."""
    out = []
    for modality in list(score_file.metrics) + [m for m in score_file.status if m not in score_file.metrics]:
        names = list(score_file.metrics.get(modality, {})) + list(score_file.status.get(modality, {}))
        for name in names:
            info = datasets.get(name)
            if info is None:
                out.append(name)
            elif info.modality != modality:
                out.append(f"{name} (under {modality}, expected under {info.modality})")
    return tuple(out)


def _group(name: str, infos: Sequence[DatasetInfo], scores: Mapping[str, float]) -> GroupScore:
    """Plain mean of the present datasets' scores."""
    values = [scores[d.name] for d in infos if d.name in scores]
    mean = sum(values) / len(values) if values else None
    return GroupScore(name, mean, len(values), len(infos))


# --- formatting -------------------------------------------------------------------------------------------


def _num(score: float | None) -> str:
    return "-" if score is None else f"{score:.1f}"


def _cell(group: GroupScore | None, always_counts: bool) -> str:
    """A table cell: the score, with its counts when asked or when the group is partial."""
    if group is None:
        return ""
    return (
        f"{_num(group.score)} ({group.counts})" if always_counts or not group.complete else _num(group.score)
    )


def _headers(summaries: Sequence[Summary]) -> list[str]:
    """Column titles: model names, made unique with the file name (then a number) where they collide."""
    names = [s.model_name for s in summaries]
    titles = [
        n if names.count(n) == 1 else f"{n} [{Path(s.source).name}]"
        for n, s in zip(names, summaries, strict=True)
    ]
    if len(set(titles)) < len(titles):
        titles = [f"{t} [{i}]" for i, t in enumerate(titles, start=1)]
    return titles


def _rows(summaries: Sequence[Summary]) -> list[tuple[str, list[str]]]:
    """(label, cells) per table row: each modality with its meta-tasks below it, then overall."""
    modalities = [m for m in MODALITIES if any(m in s.modalities for s in summaries)]
    rows: list[tuple[str, list[str]]] = []
    for m in modalities:
        rows.append((m, [_cell(s.modalities.get(m), always_counts=True) for s in summaries]))
        tasks = dict.fromkeys(t for s in summaries for t in s.meta_tasks.get(m, {}))
        for t in tasks:
            rows.append(
                (f"  {t}", [_cell(s.meta_tasks.get(m, {}).get(t), always_counts=False) for s in summaries])
            )
    labels = {s.overall.label for s in summaries}
    if len(labels) == 1:
        rows.append((labels.pop(), [_num(s.overall.score) for s in summaries]))
    else:  # files differ in coverage: the counts go into each cell
        rows.append(
            ("overall (partial in some columns)", [_cell(s.overall, always_counts=True) for s in summaries])
        )
    return rows


def _metric_note(summaries: Sequence[Summary]) -> str:
    """One line naming the main metric per modality."""
    per_metric: dict[str, list[str]] = {}
    for s in summaries:
        for modality, metrics in s.main_metrics.items():
            for metric in metrics:
                per_metric.setdefault(metric, [])
                if modality not in per_metric[metric]:
                    per_metric[metric].append(modality)
    parts = [f"{metric} ({', '.join(mods)})" for metric, mods in per_metric.items()]
    return (
        f"score = each dataset's main metric x100: {'; '.join(parts)}. "
        "Every row is a plain mean over the datasets present; (n/N) = present/expected."
    )


def _file_notes(index: int, title: str, s: Summary) -> list[str]:
    """Per file: its source, suite, and the missing and extra datasets by name."""
    missing = [f"{n} ({why})" if why else n for n, why in s.missing.items()]
    lines = [f"[{index}] {title}: {s.source} (suite {s.suite})"]
    lines.append(
        f"    missing ({len(missing)} of {s.overall.expected}): {', '.join(missing) if missing else 'none'}"
    )
    lines.append(f"    extra, ignored ({len(s.extra)}): {', '.join(s.extra) if s.extra else 'none'}")
    return lines


def format_report(summaries: Sequence[Summary]) -> str:
    """A plain-text table, one column per summary (side by side), then each file's missing and extra datasets."""
    if not summaries:
        raise ValueError("format_report: no summaries given")
    headers = _headers(summaries)
    rows = _rows(summaries)
    label_w = max(len(label) for label, _ in rows)
    widths = [max([len(h)] + [len(cells[i]) for _, cells in rows]) for i, h in enumerate(headers)]
    suites = ", ".join(dict.fromkeys(s.suite for s in summaries))
    lines = [f"suite: {suites}", _metric_note(summaries), ""]
    lines.append(
        "  ".join([" " * label_w] + [h.rjust(w) for h, w in zip(headers, widths, strict=True)]).rstrip()
    )
    for label, cells in rows:
        lines.append(
            "  ".join([label.ljust(label_w)] + [c.rjust(w) for c, w in zip(cells, widths, strict=True)])
        )
    lines.append("")
    for i, (title, s) in enumerate(zip(headers, summaries, strict=True), start=1):
        lines.extend(_file_notes(i, title, s))
    return "\n".join(lines) + "\n"


def report_files(paths: Sequence[str | Path]) -> str:
    """``format_report`` of the given score files, each summarised against its own suite."""
    return format_report([summarize(load_scores(p)) for p in paths])


# --- writing ----------------------------------------------------------------------------------------------


def write_scores(
    path: str | Path,
    model_name: str,
    suite: str,
    per_dataset: Mapping[str, Mapping[str, float]],
    tasks: list[dict[str, Any]] | None = None,
    extra_metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``per_dataset`` ({dataset: {metric: value in [0, 1]}}) in the published layout, atomically.

    Datasets are grouped by modality in suite order. ``tasks`` (the tasks.json list) is required for suites
    other than "mmeb-v2" and stored in the metadata, so the file can be reported alone.
    """
    path = Path(path)
    datasets = _writing_suite(suite, tasks)
    metrics = _group_metrics(per_dataset, datasets)
    reserved = {"model_name", "suite", "tasks"} & set(extra_metadata or {})
    if reserved:
        raise ValueError(f"extra_metadata may not set {sorted(reserved)}; pass them as arguments")
    metadata: dict[str, Any] = {"model_name": model_name, "suite": suite}
    metadata["report_generated_date"] = datetime.now().isoformat(timespec="seconds")
    metadata.update(extra_metadata or {})
    if tasks is not None:
        metadata["tasks"] = tasks
    text = json.dumps({"metadata": metadata, "metrics": metrics}, indent=2, allow_nan=False) + "\n"
    atomic_write(path, text)
    return path


def _writing_suite(suite: str, tasks: list[dict[str, Any]] | None) -> dict[str, DatasetInfo]:
    """The suite a file is written for; ``tasks`` go with every suite but mmeb-v2."""
    if suite == DEFAULT_SUITE:
        if tasks is not None:
            raise ValueError(f"suite {DEFAULT_SUITE!r} is built in; pass tasks=None")
        return registry_suite(suite)
    if tasks is None:
        raise ValueError(
            f"suite {suite!r}: pass its tasks.json list as tasks= so the file reports on its own"
        )
    return suite_from_tasks(tasks, source="tasks")


def _group_metrics(
    per_dataset: Mapping[str, Mapping[str, float]], datasets: Mapping[str, DatasetInfo]
) -> Metrics:
    """Validate and group per-dataset metrics by modality, in suite order."""
    unknown = [n for n in per_dataset if n not in datasets]
    if unknown:
        raise ValueError(f"datasets not in the suite (cannot place them under a modality): {unknown}")
    out: Metrics = {}
    for info in datasets.values():
        if info.name not in per_dataset:
            continue
        values = dict(per_dataset[info.name])
        if info.metric not in values:
            raise ValueError(f"per_dataset[{info.name!r}]: main metric {info.metric!r} missing")
        for metric, value in values.items():
            problem = value_problem(metric, value)
            if problem:
                raise ValueError(f"per_dataset[{info.name!r}][{metric!r}]: {problem}")
        out.setdefault(info.modality, {})[info.name] = values
    return out
