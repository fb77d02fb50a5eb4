"""Stage-1 training examples and their order.

An `Example` is a training pair plus what the model is taught to write after the query's `<disc_emb>`:

    variant none       every query: the no-think completion  <no_think><gen_emb>
    variant selected   think pairs: <think>r</think><answer>a</answer><gen_emb> with the selected rationale;
                       no-think pairs: the no-think completion             (selection.jsonl, `reason select`)
    variant all        one example per valid candidate (no selection); pairs without one: no-think
                                                                          (candidates file, `reason generate`)

Targets always take the no-think completion (they are indexed without reasoning). `BatchOrder` deals
indices from a seeded permutation per epoch; its state (epoch, position) is saved in checkpoints, so a
resumed run sees exactly the batches the uninterrupted run would have.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..cache import content_key
from ..config import TokensConfig
from ..data.pairs import Pair, read_pairs
from ..data.tasks import read_rows
from ..reasoning.format import no_think_completion, think_completion
from ..types import InputError, Sample
from .config import DataSection, PairsSection


@dataclass(frozen=True)
class Example:
    pair_id: str
    query: Sample
    target: Sample
    q_completion: str
    t_completion: str
    negatives: tuple[Sample, ...] = ()
    target_id: int = 0  # equal for examples whose targets have the same content (masked as negatives)


def build_examples(pairs: list[Pair], data: DataSection, tokens: TokensConfig) -> list[Example]:
    no_think = no_think_completion(tokens)
    completions: dict[str, list[str]] = {}
    if data.variant == "selected":
        completions = read_selection(pairs, Path(data.selection), tokens)
    elif data.variant == "all":
        from ..reasoning.candidates import load_for

        for pid, rows in load_for(pairs, Path(data.candidates)).items():
            completions[pid] = [think_completion(r["think"], r["answer"], tokens) for r in rows if r["valid"]]
    if data.hard_negatives:
        short = sorted({p.task for p in pairs if len(p.negatives) < data.hard_negatives})
        if short:
            raise InputError(
                f"data.hard_negatives={data.hard_negatives}: tasks {short} have fewer hard negatives per pair "
                "in the data; lower data.hard_negatives, or leave those tasks out with data.tasks"
            )
    ids: dict[str, int] = {}
    out = []
    for p in pairs:
        key = content_key(p.target)
        tid = ids.setdefault(key, len(ids))
        negs = p.negatives[: data.hard_negatives]
        for c in completions.get(p.id) or [no_think]:
            out.append(Example(p.id, p.query, p.target, c, no_think, negs, tid))
    return out


def read_selection(pairs: list[Pair], path: Path, tokens: TokensConfig) -> dict[str, list[str]]:
    if not path.is_file():
        raise InputError(f"data.selection {path}: not found (make it with: mmemb reason select)")
    known = {p.id for p in pairs}
    seen: set[str] = set()
    out: dict[str, list[str]] = {}
    for _, row in read_rows(path):
        pid = row.get("pair_id")
        if pid not in known:  # a selection over more pairs serves any subset (data.limit_per_task)
            continue
        seen.add(pid)
        r = row.get("rationale")
        if row.get("label") == "think" and r:
            out[pid] = [think_completion(r["think"], r["answer"], tokens)]
    missing = sorted(known - seen)
    if missing:
        raise InputError(
            f"{path}: {len(missing)} training pair(s) have no selection (first: {missing[:3]}); select with "
            "the same --data and --tasks as data.source and data.tasks, and a --limit at least "
            "data.limit_per_task"
        )
    return out


def read_training_pairs(d: PairsSection) -> list[Pair]:
    """The pairs a training config's `data` section names."""
    media_root = Path(d.media_root) if d.media_root else None
    tasks = list(d.tasks) or None
    return read_pairs(
        d.source, split=d.split, tasks=tasks, limit_per_task=d.limit_per_task, media_root=media_root
    )


class BatchOrder:
    """Seeded order over n examples: epoch e is permutation(seed, e); batches may span epochs."""

    def __init__(self, n: int, seed: int) -> None:
        if n == 0:
            raise InputError("no training examples")
        self.n, self.seed = n, seed
        self.epoch, self.position = 0, 0
        self._perm = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        digest = hashlib.sha256(f"{self.seed}|{epoch}".encode()).digest()
        return np.random.default_rng(int.from_bytes(digest[:8], "little")).permutation(self.n)

    def next(self, size: int) -> list[int]:
        out: list[int] = []
        while len(out) < size:
            take = min(size - len(out), self.n - self.position)
            out += self._perm[self.position : self.position + take].tolist()
            self.position += take
            if self.position == self.n:
                self.epoch, self.position = self.epoch + 1, 0
                self._perm = self._permutation(self.epoch)
        return out

    def state(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._perm = self._permutation(self.epoch)
