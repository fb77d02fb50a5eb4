"""Candidate rationales on disk: generate K per query, append as each finishes, resume after any kill.

    cands.jsonl            one line per (pair_id, k):
                           {"pair_id", "task", "k", "text", "valid", "problem", "think", "answer",
                            "seconds", "tokens"}
    cands.jsonl.meta.json  {"format", "data", "pairs", "teacher", "seed"}: what the file was made from

Resume: lines are written whole and fsync'ed after each batch. A kill can only tear the last line; the
next run drops that torn tail, skips every (pair_id, k) already present and generates the rest, so the
finished file has each (pair_id, k) exactly once whatever the number of interruptions. A rerun with
another dataset or another teacher is refused (use a new --out). Malformed teacher output is written with
`valid: false` and the problem (excluded later, and counted); a request that failed in transport (timeout,
HTTP error) writes nothing and is counted, so the same command retries it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..config import TokensConfig
from ..data.pairs import Pair, dataset_fingerprint
from ..io import atomic_write, read_jsonl
from ..types import InputError
from .format import parse_rationale
from .teachers import Reply, Request, Teacher

FORMAT = "mmemb-candidates/1"


def meta_path(out: Path) -> Path:
    return out.with_name(out.name + ".meta.json")


@dataclass
class GenerateReport:
    total: int = 0  # (pair, k) slots asked for
    existing: int = 0  # already in the file when the run started
    written: int = 0  # written by this run
    malformed: int = 0  # written by this run with valid = false
    failed: int = 0  # transport failures: nothing written, retried by the next run
    skipped: int = 0  # the teacher has no rationale for them (imports): nothing written
    errors: list[str] = field(default_factory=list)  # the first few failure messages
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        return self.existing + self.written == self.total


def read_candidates(path: Path, repair: bool = False) -> list[dict]:
    """Every complete line of a candidates file. A torn last line (no newline: the writer was killed) is
    ignored, and cut off when `repair` is set; a broken line anywhere else is an error naming it."""
    path = Path(path)
    if not path.is_file():
        return []
    if repair:
        data = path.read_bytes()
        end = data.rfind(b"\n") + 1  # everything after the last newline is a torn write
        if end < len(data):
            with open(path, "r+b") as f:
                f.truncate(end)
    rows = []
    for where, row in read_jsonl(path, torn_tail=True):
        if not isinstance(row.get("pair_id"), str) or not isinstance(row.get("k"), int):
            raise InputError(f"{where}: expected an object with a string 'pair_id' and an integer 'k'")
        row["_where"] = where
        rows.append(row)
    return rows


def check_meta(out: Path, meta: dict) -> None:
    """Refuse to extend a file that was made from another dataset or by another teacher."""
    path = meta_path(out)
    if not path.is_file():
        if out.is_file() and out.stat().st_size > 0:
            raise InputError(
                f"{out}: exists without {path.name}; it was not written by mmemb: use a new --out"
            )
        return
    old = json.loads(path.read_text())
    for key, what in (("format", "format"), ("data", "dataset"), ("teacher", "teacher")):
        if old.get(key) != meta[key]:
            raise InputError(
                f"{out}: was made with another {what} ({old.get(key)!r}, now {meta[key]!r}); "
                "use a new --out (or delete the file to start over)"
            )


def request_seed(seed: int, pair_id: str, k: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}|{pair_id}|{k}".encode()).digest()[:4], "little")


def generate_candidates(
    pairs: list[Pair],
    teacher: Teacher,
    k: int,
    out: Path,
    *,
    batch_size: int = 16,
    seed: int = 0,
    tokens: TokensConfig | None = None,
    progress: bool = True,
) -> GenerateReport:
    """Ask `teacher` for rationales (pair, 0..k-1) missing from `out` and append them (see module doc)."""
    if k < 1:
        raise InputError(f"--samples must be at least 1 (got {k})")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": FORMAT,
        "data": dataset_fingerprint(pairs),
        "pairs": len(pairs),
        "teacher": teacher.name,
        "seed": seed,
    }
    check_meta(out, meta)
    by_id = {p.id: p for p in pairs}
    done: set[tuple[str, int]] = set()
    for row in read_candidates(out, repair=True):
        if row["pair_id"] not in by_id:
            raise InputError(f"{row['_where']}: unknown query id {row['pair_id']!r} (not in this dataset)")
        done.add((row["pair_id"], row["k"]))
    if not meta_path(out).is_file():
        atomic_write(meta_path(out), json.dumps(meta, indent=2) + "\n")
    todo = [
        Request(p.id, j, p.query, p.hint, request_seed(seed, p.id, j))
        for p in pairs
        for j in range(k)
        if (p.id, j) not in done
    ]
    report = GenerateReport(total=len(pairs) * k, existing=len(pairs) * k - len(todo))
    t0 = time.perf_counter()
    from tqdm import tqdm

    bar = tqdm(
        total=report.total,
        initial=report.existing,
        disable=not progress,
        desc="rationales",
        unit="rat",
        dynamic_ncols=True,
        file=sys.stderr,
    )
    with open(out, "a", encoding="utf-8") as f:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            replies = teacher.generate(batch)
            if len(replies) != len(batch):
                raise RuntimeError(f"teacher {teacher.name} returned {len(replies)} replies for {len(batch)}")
            lines = []
            for req, rep in zip(batch, replies, strict=True):
                if rep.missing:
                    report.skipped += 1
                    continue
                if rep.error:
                    report.failed += 1
                    if len(report.errors) < 5:
                        report.errors.append(f"{req.pair_id} k={req.k}: {rep.error}")
                    continue
                row = candidate_row(by_id[req.pair_id], req.k, rep, tokens)
                report.malformed += not row["valid"]
                lines.append(json.dumps(row, ensure_ascii=False) + "\n")
            f.write("".join(lines))
            f.flush()
            os.fsync(f.fileno())
            report.written += len(lines)
            bar.update(len(batch))
    bar.close()
    report.seconds = time.perf_counter() - t0
    return report


def candidate_row(pair: Pair, k: int, reply: Reply, tokens: TokensConfig | None = None) -> dict:
    parsed = parse_rationale(reply.text, tokens)
    return {
        "pair_id": pair.id,
        "task": pair.task,
        "k": k,
        "text": reply.text,
        "valid": parsed.valid,
        "problem": parsed.problem,
        "think": parsed.think,
        "answer": parsed.answer,
        "seconds": round(reply.seconds, 4),
        "tokens": reply.tokens,
    }


def load_for(pairs: list[Pair], path: Path) -> dict[str, list[dict]]:
    """Candidates of a finished file grouped by pair id (sorted by k), checked against the dataset: a file
    made from other data, or naming a query the data lacks, is an error that says so."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: candidates file not found (make one with: mmemb reason generate)")
    mp = meta_path(path)
    if mp.is_file():
        fp = json.loads(mp.read_text()).get("data")
        if fp != dataset_fingerprint(pairs):
            raise InputError(
                f"{path}: these candidates were generated for another dataset (fingerprint {fp}, this "
                f"data {dataset_fingerprint(pairs)}); pass the same --data, --split, --tasks and "
                "--limit as for `reason generate`"
            )
    ids = {p.id for p in pairs}
    grouped: dict[str, list[dict]] = {}
    seen: set[tuple[str, int]] = set()
    for row in read_candidates(path):
        if row["pair_id"] not in ids:
            raise InputError(f"{row['_where']}: unknown query id {row['pair_id']!r} (not in this dataset)")
        key = (row["pair_id"], row["k"])
        if key in seen:
            raise InputError(f"{row['_where']}: duplicate candidate {key}")
        seen.add(key)
        grouped.setdefault(row["pair_id"], []).append(row)
    for rows in grouped.values():
        rows.sort(key=lambda r: r["k"])
    return grouped
