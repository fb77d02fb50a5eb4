"""Hugging Face dataset snapshots on local disk: find one, list a config's split files, stream its rows.

mmemb never downloads. A user downloads an annotation dataset with the `hf` CLI (huggingface_hub) and points
mmemb at where it landed (`--hub-cache`), in either of its two layouts:

    HF cache (default):  <cache>/datasets--<org>--<name>/snapshots/<revision>/...   (`hf download REPO
                         --repo-type dataset`; also what `datasets.load_dataset` fills)
    local folder:        <cache>/<org>/<name>/...                                    (`... --local-dir
                         <cache>/<org>/<name>`)

Which files make up (config, split) follows the `datasets` library's rules: the `configs:` list of the
snapshot's README.md YAML (`config_name`, `data_files` as a pattern, a list of patterns, or a list of
`{split, path}`), else its default split-name patterns (`test-00000-of-00001.parquet`, `data/test.jsonl`,
`<config>/test-*.parquet`, ...). Rows are read with pyarrow (parquet, batch by batch) or json (a JSON list,
or JSON Lines), so memory stays bounded by one batch for parquet.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..io import read_jsonl
from ..types import InputError

DATA_EXTS = (".parquet", ".jsonl", ".json")
# datasets' split keywords (datasets.data_files: SPLIT_KEYWORDS)
_SPLIT_WORDS = {
    "train": ("train", "training"),
    "test": ("test", "testing", "eval", "evaluation"),
    "validation": ("validation", "valid", "dev", "val"),
    "val": ("val", "validation", "valid", "dev"),
}


class TaskError(InputError):
    """A dataset's files are missing or malformed (names the file and row). Defined here, the lowest layer
    that reads dataset files; data/tasks.py re-exports it."""


class HubError(TaskError):
    """A snapshot is missing or its files are not what the dataset's loader expects."""


class HubIncomplete(HubError):
    """The snapshot's card lists files for a (config, split) that are not on disk: a partial download."""

    def __init__(self, message: str, patterns: list[str]):
        super().__init__(message)
        self.patterns = patterns


@dataclass(frozen=True)
class Snapshot:
    repo: str  # "org/name"
    path: Path  # the snapshot's root folder
    revision: str  # commit hash where the cache records one, else ""


def default_cache() -> Path:
    """Where `hf download` puts datasets by default (HF_HUB_CACHE, HF_HOME/hub, ~/.cache/huggingface/hub)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return Path(home) / "hub"


def find_snapshot(repo: str, cache: Path) -> Snapshot | None:
    """The local snapshot of dataset `repo` under `cache` (either layout, see the module doc), or None."""
    local = cache / repo
    if local.is_dir() and any(local.iterdir()):
        return Snapshot(repo, local, _local_revision(local))
    folder = cache / ("datasets--" + repo.replace("/", "--"))
    snaps = folder / "snapshots"
    if not snaps.is_dir():
        return None
    ref = folder / "refs" / "main"
    if ref.is_file() and (snaps / ref.read_text().strip()).is_dir():
        rev = ref.read_text().strip()
        return Snapshot(repo, snaps / rev, rev)
    found = sorted((p for p in snaps.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    return Snapshot(repo, found[-1], found[-1].name) if found else None


def _local_revision(folder: Path) -> str:
    """`hf download --local-dir` records the commit of each file in .cache/huggingface/download/*.metadata."""
    meta = folder / ".cache" / "huggingface" / "download"
    for f in sorted(meta.rglob("*.metadata")) if meta.is_dir() else []:
        first = f.read_text(errors="replace").splitlines()[:1]
        if first and re.fullmatch(r"[0-9a-f]{40}", first[0].strip()):
            return first[0].strip()
    return ""


def download_command(repo: str, cache: Path, include: list[str] | None = None) -> str:
    """The `hf` command that puts `repo` (or only the files matching `include`) where find_snapshot looks."""
    include = "".join(f' --include "{p}"' for p in include or [])
    where = "" if cache == default_cache() else f" --cache-dir {cache}"
    return f"hf download {repo} --repo-type dataset{include}{where}"


def _card_configs(snapshot: Path) -> list[dict] | None:
    readme = snapshot / "README.md"
    if not readme.is_file():
        return None
    text = readme.read_text(encoding="utf-8", errors="replace")
    m = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.S)
    if not m:
        return None
    import yaml  # pyyaml, a dependency of transformers and huggingface_hub

    try:
        meta = yaml.safe_load(m.group(1)) or {}
    except yaml.YAMLError as e:
        raise HubError(f"{readme}: its YAML header does not parse ({e})") from None
    configs = meta.get("configs") if isinstance(meta, dict) else None
    return configs if isinstance(configs, list) else None


def _patterns(data_files, split: str) -> list[str] | None:
    """A config's data_files -> the patterns of `split` (None when the config has no such split)."""
    if isinstance(data_files, str):
        return [data_files] if split == "train" else None
    if isinstance(data_files, list) and all(isinstance(x, str) for x in data_files):
        return list(data_files) if split == "train" else None
    if isinstance(data_files, list):
        for entry in data_files:
            if isinstance(entry, dict) and entry.get("split") == split:
                path = entry.get("path")
                return [path] if isinstance(path, str) else list(path or [])
        return None
    if isinstance(data_files, dict) and split in data_files:
        path = data_files[split]
        return [path] if isinstance(path, str) else list(path)
    return None


def _glob(root: Path, pattern: str) -> list[Path]:
    """Files under root matching an fsspec-style pattern (`*` and `?` within a folder, `**` across folders)."""
    rx = ""
    for tok in re.split(r"(\*\*/|\*\*|\*|\?)", pattern.lstrip("./")):
        rx += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(tok, re.escape(tok))
    full = re.compile(rx + r"\Z")
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and ".cache" not in p.parts and full.match(p.relative_to(root).as_posix())
    )


def _has_split_word(rel: str, words) -> bool:
    return any(re.search(rf"(^|[-_./ ]){w}([-_./ 0-9]|$)", rel) for w in words)


def data_files(snap: Snapshot, config: str | None, split: str) -> list[Path]:
    """The files of (config, split) in a snapshot, in datasets' order (sorted). Raises HubError naming what
    was looked for when there are none."""
    configs = _card_configs(snap.path)
    name = config or "default"
    if configs is not None:
        entry = next((c for c in configs if isinstance(c, dict) and c.get("config_name") == name), None)
        if entry is None and config is None and len(configs) == 1:
            entry = configs[0]
        if entry is None:
            known = [c.get("config_name") for c in configs if isinstance(c, dict)]
            raise HubError(f"{snap.path}/README.md: no config {name!r} (its configs: {known})")
        patterns = _patterns(entry.get("data_files"), split)
        if patterns is None:
            raise HubError(f"{snap.path}/README.md: config {name!r} has no split {split!r}")
        files = [f for p in patterns for f in _glob(snap.path, p)]
        if not files:
            raise HubIncomplete(
                f"{snap.path}: config {name!r} split {split!r} is {patterns} in README.md, and no file matches "
                f"(a partial download)",
                patterns,
            )
        return list(dict.fromkeys(files))
    base = snap.path / config if config and (snap.path / config).is_dir() else snap.path
    found = [
        p
        for p in sorted(base.rglob("*"))
        if p.is_file() and p.suffix in DATA_EXTS and ".cache" not in p.parts
    ]
    words = _SPLIT_WORDS.get(split, (split,))
    files = [p for p in found if _has_split_word(p.relative_to(base).as_posix(), words)]
    if (
        not files
        and split == "train"
        and not any(
            _has_split_word(p.relative_to(base).as_posix(), ws) for p in found for ws in _SPLIT_WORDS.values()
        )
    ):
        files = found  # datasets: files without any split word form the train split
    if not files:
        raise HubError(
            f"{base}: no {split} data file (looked for {'/'.join(words)} in the names of "
            f"{', '.join(DATA_EXTS)} files; found {[p.name for p in found][:5]})"
        )
    return files


def read_rows(files: list[Path], columns: list[str] | None = None) -> Iterator[tuple[str, dict]]:
    """(where, row) over the files in order; `where` is 'file row N' (0-based). Parquet is read one batch at
    a time; JSON as a list of objects or as JSON Lines."""
    for path in files:
        if path.suffix == ".parquet":
            yield from _parquet_rows(path, columns)
        else:
            yield from _json_rows(path)


def _parquet_rows(path: Path, columns: list[str] | None) -> Iterator[tuple[str, dict]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        have = set(pf.schema_arrow.names)
        cols = [c for c in columns if c in have] if columns else None
        i = 0
        for batch in pf.iter_batches(batch_size=256, columns=cols):
            for row in batch.to_pylist():
                yield f"{path} row {i}", row
                i += 1
    except (OSError, ValueError) as e:  # pyarrow.ArrowInvalid is a ValueError
        raise HubError(
            f"{path}: cannot read parquet ({e}); the file may be truncated: download it again"
        ) from None


def _json_rows(path: Path) -> Iterator[tuple[str, dict]]:
    with open(path, encoding="utf-8") as f:
        head = f.read(1024).lstrip()
    if head.startswith("["):
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise HubError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise HubError(f"{path} row {i}: expected a JSON object, got {type(row).__name__}")
            yield f"{path} row {i}", row
        return
    yield from read_jsonl(path, error=HubError)


def columns_of(files: list[Path]) -> set[str] | None:
    """The column names of the first file: the parquet schema (footer only), or the first row's keys of a
    JSON Lines file or JSON list (a list is parsed whole); None for an empty JSON file."""
    path = files[0]
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return set(pq.read_schema(path).names)
        except (OSError, ValueError) as e:
            raise HubError(f"{path}: cannot read parquet ({e}); download it again") from None
    for _, row in _json_rows(path):
        return set(row)
    return None
