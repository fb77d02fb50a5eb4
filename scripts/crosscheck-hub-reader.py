"""Cross-check mmemb's hub reader against the `datasets` library on the MMEB-V2 fixture (a dev check, not CI).

For every (repo, config, split) the MMEB-V2 loaders read, it compares the rows `datasets.load_dataset(<snapshot
folder>, config, split=split)` returns with the rows of `mmemb.data.hub.data_files` + `read_rows`. `datasets`
is not an mmemb dependency; install it apart, e.g.

    pip install --target /tmp/dslib datasets
    PYTHONPATH=/tmp/dslib HF_DATASETS_OFFLINE=1 HF_DATASETS_CACHE=/tmp/dscache python scripts/crosscheck-hub-reader.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import datasets

from mmemb.data import hub
from mmemb.data.mmeb_v2 import SOURCES
from mmemb.testing.mmeb_v2_fixture import build


def norm(row: dict) -> dict:
    """datasets decodes an {bytes, path} struct the same as pyarrow does; compare plain values."""
    return {k: (dict(v) if isinstance(v, dict) else v) for k, v in row.items()}


def main() -> int:
    out = Path(tempfile.mkdtemp())
    _, cache = build(out)
    bad = checked = 0
    for src in SOURCES.values():
        snap = hub.find_snapshot(src.repo, cache)
        if snap is None:
            continue
        if src.family.startswith("visdoc"):
            parts = ["queries", "qrels", "corpus"]
        else:
            parts = list(src.configs) or [src.config]
        for config in parts:
            try:
                files = hub.data_files(snap, config, src.split)
            except hub.HubIncomplete:
                continue  # a config the fixture's card lists but does not ship (a partial download)
            ours = [norm(r) for _, r in hub.read_rows(files)]
            # a fresh cache per load: every fixture snapshot folder has the same (made-up) revision as its name,
            # and datasets names its cache after that folder
            theirs_ds = datasets.load_dataset(
                str(snap.path), config, split=src.split, cache_dir=tempfile.mkdtemp()
            )
            if "image" in theirs_ds.column_names:
                theirs_ds = theirs_ds.cast_column("image", datasets.Image(decode=False))
            theirs = [norm(r) for r in theirs_ds]
            ok = ours == theirs
            checked += 1
            bad += not ok
            print(
                f"{'ok ' if ok else 'DIFF'} {src.name:<36} {src.repo} {config or '-'} {src.split}: {len(ours)} rows"
            )
            if not ok:
                print("   mmemb:   ", ours[:1], "\n   datasets:", theirs[:1])
    print(
        f"{checked - bad} of {checked} (config, split) read identically by mmemb and datasets {datasets.__version__}"
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
