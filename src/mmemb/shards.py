"""`mmemb embed` at corpus scale: streamed input, fixed-size output shards, a manifest, resume, ranks.

    OUT/manifest.json            what made the vectors (model fingerprint, mode, settings, input) and the layout
    OUT/shard-00000.npy          (n, D) float32: the vectors of input items [0, n), in input order
    OUT/shard-00000.ids.json     their ids, a JSON list
    OUT/shard-00000.gen.jsonl    generating modes: per item reasoned, gen_tokens, [action,] gen_emb_found, text
    OUT/shard-00000.done.json    written last: the shard's rows and each file's sha256

Shard k holds input items [k*S, (k+1)*S). Plain `.npy` + JSON, not Parquet: numpy opens (and memory-maps)
a shard with no extra dependency, vectors stay one contiguous float32 block as FAISS and numpy want them,
and the ids and texts stay readable with `json`. A shard counts as written only when its done file exists
and every hash matches; after a kill -9 the finished shards are kept and a torn one is redone. Under torchrun
the ranks take pending shards as they free up: a rank claims shard k by creating OUT/.claim-k exclusively
(atomic, on a shared filesystem too), so a fast rank does more shards than a slow one and no shard is done
twice. A shard's content depends only on k, so one process and N processes write the same files.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .distributed import ONE, Ranks
from .io import atomic_files, atomic_json, file_sha256
from .items import iter_items
from .types import InputError, Sample

FORMAT = "mmemb-embed-shards/1"
MANIFEST = "manifest.json"


def shard_files(out: Path, k: int, generating: bool) -> dict[str, Path]:
    stem = out / f"shard-{k:05d}"
    files = {"vectors": stem.with_suffix(".npy"), "ids": stem.with_suffix(".ids.json")}
    if generating:
        files["gen"] = stem.with_suffix(".gen.jsonl")
    return files


def done_file(out: Path, k: int) -> Path:
    return out / f"shard-{k:05d}.done.json"


def shard_ok(out: Path, k: int, generating: bool) -> bool:
    """Shard k is complete: its done file names every file with the hash it has now."""
    try:
        done = json.loads(done_file(out, k).read_text())
        files = shard_files(out, k, generating)
        return set(done["sha256"]) == set(files) and all(
            file_sha256(path) == done["sha256"][name] for name, path in files.items()
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def scan_input(path: Path) -> tuple[int, str]:
    """Validate every line (streamed: only the ids are held, for the duplicate check) and hash the file.
    Returns (items, sha256). A bad line is an InputError naming it, raised before any output exists."""
    n = sum(1 for _ in iter_items(path))
    if not n:
        raise InputError(f"{path}: no items (expected one JSON object per line)")
    return n, file_sha256(path)


def check_folder(out: Path) -> None:
    """A folder --out must be new, empty, or a shard folder (one with a manifest): refuse anything else.
    Rank 0's manifest being staged (io.atomic_json's .manifest.json.*.tmp) or just written counts as empty."""

    def ours(name: str) -> bool:
        return name == MANIFEST or name.startswith(f".{MANIFEST}.")

    if (
        out.exists()
        and not (out / MANIFEST).exists()
        and (not out.is_dir() or any(not ours(p.name) for p in out.iterdir()))
    ):
        raise InputError(
            f"--out {out}: exists and is not a shard folder of `mmemb embed`; give another --out"
        )


def open_output(out: Path, manifest: dict, rank: int) -> None:
    """Create OUT with its manifest (rank 0), or check that the one there is this run's (resume). Another
    run's folder is refused, naming what differs; so is a folder that is not a shard folder."""
    path = out / MANIFEST
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise InputError(
                f"--out {out}: cannot read {MANIFEST} ({e}); remove the folder or give another --out"
            ) from None
        differ = sorted(
            k for k in manifest.keys() | old.keys() if manifest.get(k) != old.get(k) and k != "input_path"
        )
        if differ:
            raise InputError(
                f"--out {out} holds embeddings of another run (it differs in {', '.join(differ)}); give "
                "another --out, or remove that folder to start over"
            )
        if rank == 0:  # a killed run left staging files (io.atomic_files) and claims: not output
            remove_claims(out)
            for tmp in out.glob(".shard-*.tmp"):
                tmp.unlink(missing_ok=True)
        return
    check_folder(out)
    if rank == 0:
        atomic_json(path, manifest)


def claim(out: Path, k: int) -> bool:
    """Take shard k for this rank: True for the one rank whose exclusive create of its claim file succeeds."""
    try:
        os.close(os.open(out / f".claim-{k:05d}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


def remove_claims(out: Path) -> None:
    for path in out.glob(".claim-*"):
        path.unlink(missing_ok=True)


@dataclass
class Progress:
    """Items/s of this rank and the run's ETA, on stderr: one line a finished shard (unless quiet).
    `total` is what the run embeds (all ranks); the ETA assumes the other ranks go as fast as this one."""

    total: int
    rank: int
    world: int
    quiet: bool
    done: int = 0
    started: float = field(default_factory=time.perf_counter)

    def update(self, n: int, claimed: int) -> None:
        """This rank finished n more items; `claimed`: items of the shards all ranks have taken so far."""
        self.done += n
        if self.quiet:
            return
        seconds = time.perf_counter() - self.started
        rate = self.done / seconds if seconds > 0 else 0.0
        left = max(self.total - claimed, 0)  # what no rank has taken yet (shards in flight not counted)
        eta = left / (rate * self.world) if rate > 0 else float("nan")
        print(
            f"mmemb embed [rank {self.rank}/{self.world}]: {self.done} items, {rate:.1f} items/s; "
            f"all ranks: {min(claimed, self.total)}/{self.total} items taken, ETA ~{eta:.0f} s",
            file=sys.stderr,
            flush=True,
        )


def chunks(path: Path, size: int) -> Iterator[tuple[int, list[Sample]]]:
    """(k, the items of shard k), streamed from the input."""
    k, batch = 0, []
    for sample in iter_items(path):
        batch.append(sample)
        if len(batch) == size:
            yield k, batch
            k, batch = k + 1, []
    if batch:
        yield k, batch


def write_shard(out: Path, k: int, samples: list[Sample], result, mode: str) -> None:
    """The shard's files, then its done file (hashes of what was written)."""
    generating = mode != "disc"
    npy = io.BytesIO()
    np.save(npy, result.vectors.astype(np.float32), allow_pickle=False)
    data = {"vectors": npy.getvalue(), "ids": json.dumps([s.id for s in samples]).encode()}
    if generating:
        data["gen"] = "".join(json.dumps(row) + "\n" for row in gen_rows(samples, result, mode)).encode()
    files = shard_files(out, k, generating)
    atomic_files({files[name]: blob for name, blob in data.items()})
    hashes = {name: hashlib.sha256(blob).hexdigest() for name, blob in data.items()}
    atomic_json(done_file(out, k), {"rows": len(samples), "sha256": hashes})


def gen_rows(samples: list[Sample], result, mode: str) -> Iterator[dict]:
    """What a generating mode writes per item beside its vector (`mmemb embed`'s .gen.jsonl rows)."""
    for i, s in enumerate(samples):
        yield (
            {"id": s.id, "reasoned": result.reasoned[i], "gen_tokens": result.gen_tokens[i]}
            | ({"action": result.actions[i]} if mode == "adaptive" else {})
            | {"gen_emb_found": result.gen_emb_found[i], "text": result.texts[i]}
        )


def embed_shards(
    embedder,
    input_path: Path,
    out: Path,
    manifest: dict,
    mode: str,
    batch_size: int,
    ranks: Ranks = ONE,
    quiet: bool = False,
    dimensions: int | None = None,
) -> dict:
    """Embed the shards that are not yet complete, sharing them with the other ranks (each takes the next
    pending shard it can claim). `manifest` (from `run_manifest`) is written or checked first. Returns this
    rank's counts (shards and items embedded, seconds) and the shards kept from an earlier run (all ranks)."""
    size, total = manifest["shard_size"], manifest["items"]
    generating, rank, world = mode != "disc", ranks.rank, ranks.world
    open_output(out, manifest, rank)
    todo = {k for k in range(manifest["shards"]) if not shard_ok(out, k, generating)}
    ranks.barrier()  # every rank sees the manifest, no stale claim and the same todo before it claims

    def rows(k: int) -> int:
        return min(size, total - k * size)

    progress = Progress(sum(rows(k) for k in todo), rank, world, quiet)
    t0, written, items = time.perf_counter(), 0, 0
    for k, samples in chunks(input_path, size):
        if k not in todo or not claim(out, k):
            continue
        try:
            result = embedder.encode(samples, mode=mode, batch_size=batch_size, dimensions=dimensions)
        except InputError as e:
            raise InputError(f"{input_path}: {e}") from None
        write_shard(out, k, samples, result, mode)
        written, items = written + 1, items + len(samples)
        progress.update(
            len(samples), sum(rows(int(p.name.removeprefix(".claim-"))) for p in out.glob(".claim-*"))
        )
    seconds = time.perf_counter() - t0
    ranks.barrier()  # every rank is done claiming
    if rank == 0:
        remove_claims(out)
    return {"rank": rank, "shards_embedded": written, "shards_kept": manifest["shards"] - len(todo),
            "items_embedded": items, "seconds": round(seconds, 2)}  # fmt: skip


def run_manifest(
    embedder,
    model: str,
    mode: str,
    input_path: Path,
    scanned: tuple[int, str],
    shard_size: int,
    dimensions: int | None = None,
) -> dict:
    """What makes the output what it is (`scanned` = `scan_input`'s answer): a resume must match every field.
    `dim` is the vectors' width: a Matryoshka width (`dimensions`, checked here) or the model's full one."""
    items, digest = scanned
    manifest = {
        "format": FORMAT,
        "model": str(model),
        "fingerprint": embedder.fingerprint(),
        "mode": mode,
        "dim": embedder.check_dimensions(dimensions) or embedder.width,
        "dtype": str(embedder.dtype).removeprefix("torch."),
        "input_sha256": digest,
        "input_path": str(Path(input_path).resolve()),  # where it was read: not compared on resume
        "items": items,
        "shard_size": shard_size,
        "shards": math.ceil(items / shard_size),
    }
    if mode == "adaptive":
        manifest["policy_fingerprint"] = embedder.policy_fingerprint()
    return manifest


def read_shards(out: Path) -> tuple[np.ndarray, list[str], dict]:
    """(vectors (N, D) float32, ids, manifest) of a finished shard folder, in input order. Refuses a folder
    with a shard missing or changed since it was written, naming it."""
    out = Path(out)
    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{out}: not a shard folder of `mmemb embed` ({MANIFEST}: {e})") from None
    generating = manifest["mode"] != "disc"
    vectors, ids = [], []
    for k in range(manifest["shards"]):
        if not shard_ok(out, k, generating):
            raise InputError(
                f"{out}: shard {k} is missing or was changed since it was written; rerun the same `mmemb embed` to redo it"
            )
        files = shard_files(out, k, generating)
        vectors.append(np.load(files["vectors"], allow_pickle=False))
        ids.extend(json.loads(files["ids"].read_text()))
    return np.concatenate(vectors), ids, manifest
