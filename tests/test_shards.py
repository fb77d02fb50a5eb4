"""`mmemb embed --out FOLDER`: streamed, sharded, resumable output, and the same files from torchrun ranks."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from mmemb import Embedder, InputError
from mmemb.cli import main
from mmemb.distributed import Ranks
from mmemb.items import read_items
from mmemb.shards import embed_shards, read_shards

from .conftest import assert_same_vectors, write_image


@pytest.fixture
def use_nano(nano, monkeypatch):
    monkeypatch.setattr(Embedder, "from_pretrained", classmethod(lambda cls, name, **kw: nano))
    return nano


def write_items(path: Path, n: int, images: list[Path] = ()) -> Path:
    rows = [{"id": f"q{i}", "text": f"item {i} about " + "cats " * (i % 7)} for i in range(n)]
    for i, image in enumerate(images):
        rows[3 * i + 1]["image"] = str(image)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_shards_hold_the_vectors_of_one_encode_in_input_order(use_nano, tmp_path):
    src = write_items(
        tmp_path / "items.jsonl",
        11,
        [write_image(tmp_path / "a.png"), write_image(tmp_path / "b.png", seed=1)],
    )
    out = tmp_path / "out"
    assert main(["embed", "--input", str(src), "--out", str(out), "--shard-size", "4", "--quiet"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["manifest.json"] + [
        f"shard-{k:05d}.{e}" for k in range(3) for e in ("done.json", "ids.json", "npy")
    ]
    vectors, ids, manifest = read_shards(out)
    samples = read_items(src)
    assert ids == [s.id for s in samples] and manifest["items"] == 11 and manifest["shards"] == 3
    assert manifest["fingerprint"] == use_nano.fingerprint() and manifest["mode"] == "disc"
    assert_same_vectors(
        vectors,
        use_nano.encode(samples).vectors,
        str(use_nano.dtype).removeprefix("torch."),
    )
    assert np.load(out / "shard-00002.npy").shape == (3, 576)


def test_a_generating_mode_writes_its_texts_and_resume_keeps_finished_shards(use_nano, tmp_path):
    src = write_items(tmp_path / "items.jsonl", 6)
    out = tmp_path / "out"
    args = [
        "embed",
        "--input",
        str(src),
        "--out",
        str(out),
        "--shard-size",
        "4",
        "--mode",
        "nothink",
        "--quiet",
    ]
    assert main(args) == 0
    rows = [json.loads(x) for x in (out / "shard-00001.gen.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["q4", "q5"] and all(r["text"] == use_nano.no_think for r in rows)
    first = files(out)
    stamp = (out / "shard-00000.npy").stat().st_mtime_ns
    (out / "shard-00001.gen.jsonl").write_text("torn")  # changed after it was written: redone
    (out / ".shard-00001.npy.x.tmp").write_text("a killed writer's staging file")
    assert main(args) == 0
    assert files(out) == first  # the same files, the staging file gone
    assert (out / "shard-00000.npy").stat().st_mtime_ns == stamp  # the finished shard was kept


def test_bad_input_leaves_no_output_and_another_run_is_refused(use_nano, tmp_path, capsys):
    def refused(args: list[str], pattern: str) -> None:
        assert main(["embed", "--input", str(src), *args, "--quiet"]) == 2
        err = capsys.readouterr().err
        assert re.search(pattern, err) and "Traceback" not in err, err

    src = write_items(tmp_path / "items.jsonl", 5)
    with open(src, "a") as f:
        f.write('{"id": "q9", "image": "missing.png"}\n')
    out = tmp_path / "out"
    refused(["--out", str(out)], r"items.jsonl:6 .*missing.png")
    assert not out.exists()
    write_items(src, 5)
    assert main(["embed", "--input", str(src), "--out", str(out), "--quiet"]) == 0
    refused(["--out", str(out), "--mode", "nothink"], "another run .*differs in mode")
    write_items(src, 6)
    refused(["--out", str(out)], "differs in input_sha256, items")
    (out / "shard-00000.npy").write_bytes(b"")
    with pytest.raises(InputError, match="shard 0 is missing or was changed"):
        read_shards(out)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    refused(["--out", str(tmp_path / "other")], "not a shard folder")
    refused(["--out", str(tmp_path / "vecs.txt")], "vecs.txt: use a .npy file name, or a folder")


def embed_cmd(src: Path, out: Path, shard_size: int, procs: int = 1) -> list[str]:
    args = [
        "embed",
        "--model",
        "nano",
        "--input",
        str(src),
        "--out",
        str(out),
        "--shard-size",
        str(shard_size),
    ]
    if procs == 1:
        return [sys.executable, "-m", "mmemb.cli", *args]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs)]
    return [*torchrun, "--standalone", "-m", "mmemb.cli", *args, "--quiet"]


def run_ok(cmd: list[str]) -> str:
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env=os.environ | {"OMP_NUM_THREADS": "1"}
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


def test_two_torchrun_ranks_write_the_files_of_one_process(tmp_path):
    """gloo on CPU: the ranks share the shards (each claims the next free one); the folder equals a
    1-process run's, and no claim is left behind."""
    src = write_items(tmp_path / "items.jsonl", 40)
    run_ok(embed_cmd(src, tmp_path / "one", 8))
    err = run_ok(embed_cmd(src, tmp_path / "two", 8, procs=2))
    per_rank = {int(r): int(n) for r, n in re.findall(r"\[rank (\d)/2\]: (\d+) items in", err)}
    assert per_rank.keys() == {0, 1} and sum(per_rank.values()) == 40, err
    assert files(tmp_path / "one").keys() == files(tmp_path / "two").keys()
    a, b = read_shards(tmp_path / "one"), read_shards(tmp_path / "two")
    assert a[1] == b[1] and len(set(b[1])) == 40
    assert_same_vectors(a[0], b[0], "bfloat16")
    assert a[2] | {"input_path": ""} == b[2] | {"input_path": ""}


class ThreadRanks(Ranks):
    """Two ranks as threads of one process (a threading barrier): enough to race the claims."""

    def barrier(self) -> None:
        self.sync.wait()


class FakeEmbedder:
    """Vectors that depend only on the item; `delay` seconds a shard makes a slow rank."""

    def __init__(self, delay: float):
        self.delay = delay

    def encode(self, samples, mode, batch_size, dimensions=None):
        time.sleep(self.delay)
        vectors = np.array([[float(s.id[1:]), 1.0] for s in samples], np.float32)
        return type("Result", (), {"vectors": vectors})


def test_a_slow_rank_takes_fewer_shards_and_every_shard_is_written_once(tmp_path):
    """The ranks claim shards as they free up (not k % world): a rank 50x slower than the other does
    few of the 12 shards, none is done twice, and the folder equals one process's."""
    src = write_items(tmp_path / "items.jsonl", 24)
    manifest = {"format": "test", "mode": "disc", "items": 24, "shard_size": 2, "shards": 12}
    embed_shards(FakeEmbedder(0.0), src, tmp_path / "one", manifest, "disc", 2)
    sync = threading.Barrier(2, timeout=60)
    stats = [None, None]

    def rank(r: int, delay: float) -> None:
        ranks = ThreadRanks(r, 2)
        object.__setattr__(ranks, "sync", sync)
        stats[r] = embed_shards(FakeEmbedder(delay), src, tmp_path / "two", manifest, "disc", 2, ranks, True)

    threads = [threading.Thread(target=rank, args=(r, d), daemon=True) for r, d in ((0, 0.01), (1, 0.5))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert [s["shards_embedded"] for s in stats][0] >= 9 and sum(s["shards_embedded"] for s in stats) == 12
    assert files(tmp_path / "one") == files(tmp_path / "two")  # no claim left, the same bytes


def descendants(pid: int) -> list[int]:
    try:
        kids = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    return kids + [g for k in kids for g in descendants(k)]


def test_a_torchrun_killed_mid_way_resumes_to_the_same_output(tmp_path):
    """kill -9 of a 2-rank torchrun and its workers after some shards: the rerun keeps them, redoes
    the rest, and equals an uninterrupted 1-process run: nothing lost, nothing duplicated."""
    src = write_items(tmp_path / "items.jsonl", 240)
    out = tmp_path / "out"
    cmd = embed_cmd(src, out, 4, procs=2)
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline = time.time() + 300
    while not (out / "shard-00005.done.json").exists():
        assert proc.poll() is None and time.time() < deadline, (
            proc.stderr.read()[-2000:] if proc.poll() else "slow"
        )
        time.sleep(0.01)
    for pid in [proc.pid, *descendants(proc.pid)]:  # torchrun and its workers (their own sessions)
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    kept = len(list(out.glob("shard-*.done.json")))
    assert 4 <= kept < 60, kept
    err = run_ok(cmd)
    written = sum(int(n) for n in re.findall(r"(\d+) shards written", err))
    assert written == 60 - kept and f"{kept} kept from an earlier run" in err, err
    run_ok(embed_cmd(src, tmp_path / "clean", 4))
    resumed, clean = read_shards(out), read_shards(tmp_path / "clean")
    assert resumed[1] == clean[1] and len(set(resumed[1])) == 240
    assert_same_vectors(resumed[0], clean[0], "bfloat16")
    assert not list(out.glob(".*.tmp"))
    shutil.rmtree(out)


def test_an_index_searches_the_shards_exactly_and_approximately_and_refuses_other_vectors(
    use_nano, tmp_path, capsys
):
    from mmemb.index import Index

    src = write_items(tmp_path / "items.jsonl", 30)
    shards, flat, hnsw = tmp_path / "shards", tmp_path / "flat", tmp_path / "hnsw"
    assert main(["embed", "--input", str(src), "--out", str(shards), "--shard-size", "8", "--quiet"]) == 0
    assert main(["index", "build", "--shards", str(shards), "--out", str(flat)]) == 0
    assert main(["index", "build", "--shards", str(shards), "--out", str(hnsw), "--kind", "hnsw"]) == 0
    vectors, ids, _ = read_shards(shards)
    exact, approx = Index.load(flat), Index.load(hnsw)
    assert exact.meta["rows"] == 30 and approx.meta["kind"] == "hnsw"
    top = exact.search(vectors[:5], k=3)
    scores = vectors[:5] @ vectors.T  # (5, 30): the truth
    for row, hits in enumerate(top):
        assert hits[0][0] == ids[row]  # each item finds itself first
        assert [i for i, _ in hits] == [ids[j] for j in np.argsort(-scores[row], kind="stable")[:3]]
        np.testing.assert_allclose([s for _, s in hits], np.sort(scores[row])[::-1][:3], atol=1e-5)
    assert [h[0][0] for h in approx.search(vectors, k=1)] == ids  # 30 vectors: HNSW is exact here
    capsys.readouterr()
    assert main(["search", "--index", str(flat), "--query", "item 3 about cats cats cats ", "--k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].split("\t")[2] == "q3" and lines[0].startswith("1\t")
    assert main(["search", "--index", str(flat), "--query", "x", "--mode", "nothink"]) == 2
    assert "nothink' (gen space) cannot search an index of 'disc'" in capsys.readouterr().err
    meta = json.loads((flat / "meta.json").read_text())
    (flat / "meta.json").write_text(json.dumps(meta | {"fingerprint": "0" * 16}))
    assert main(["search", "--index", str(flat), "--query", "x"]) == 2
    assert "holds vectors of model 'nano' (fingerprint 0000000000000000)" in capsys.readouterr().err


def test_text_queries_find_their_mmeb_mini_targets_in_the_top_5_with_nano_r1(tmp_path):
    """Clipart-T2I through the whole path: its candidate images embedded into shards, indexed, searched
    with each query's text (nano-r1, disc): the index ranks as brute force does, and queries find their
    targets in the top 5."""
    from mmemb.eval.evaluate import load, resolve
    from mmemb.index import Index, build

    from .conftest import needs_debian_data

    needs_debian_data(Path("/usr/share/openclipart/png"))
    task = load(resolve("mmeb-mini", None), "Clipart-T2I")
    emb = Embedder.from_pretrained("nano-r1")
    keys = task.candidate_keys()  # (C,) unique candidate images
    rows = [{"id": k, "image": str(task.items[k].image)} for k in keys]
    src = tmp_path / "corpus.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    from mmemb.shards import embed_shards, run_manifest, scan_input

    manifest = run_manifest(emb, "nano-r1", "disc", src, scan_input(src), 128)
    embed_shards(emb, src, tmp_path / "shards", manifest, "disc", 16, quiet=True)
    build(tmp_path / "shards", tmp_path / "index", "flat")
    index = Index.load(tmp_path / "index")
    index.check(emb, "disc")
    n = 40
    queries = emb.encode([task.items[k] for k in task.queries[:n]], mode="disc").vectors  # (n, D)
    found = [[item for item, _ in top] for top in index.search(queries, k=5)]
    vectors, ids, _ = read_shards(tmp_path / "shards")
    truth = [[ids[j] for j in np.argsort(-(vectors @ q), kind="stable")[:5]] for q in queries]  # brute force
    assert sum(a == b for a, b in zip(found, truth, strict=True)) >= n - 2  # bf16 near-ties may swap a pair
    hits = [i for i, top in enumerate(found) if any(task.relevance[i].get(item, 0) > 0 for item in top)]
    assert hits, "no query found its target in the top 5"
    # nano-r1 is weak here: 2 of 40 in the top 5 of 150 images when measured (chance: 1.3); README


def test_eval_scores_are_identical_with_one_and_two_torchrun_ranks(tmp_path):
    """mmeb-mini (4 queries a task): each rank embeds every other chunk of each task's missing items into
    its own cache folder's shards, rank 0 scores and writes; the scores and per-query ranks equal one
    process's, and the cache holds each item once."""
    from .conftest import needs_debian_data

    needs_debian_data(Path("/usr/share/openclipart/png"))
    args = ["eval", "--model", "nano-r1", "--tasks", "mmeb-mini", "--limit", "4", "--quiet"]
    runs = {}
    for procs in (1, 2):
        out, cache = tmp_path / f"out{procs}", tmp_path / f"cache{procs}"
        head = [sys.executable, "-m", "mmemb.cli"]
        if procs > 1:
            head = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc_per_node",
                "2",
                "-m",
                "mmemb.cli",
            ]
        run_ok([*head, *args, "--out", str(out), "--cache", str(cache)])
        scores = json.loads((out / "scores.disc-disc.json").read_text())
        rows = [json.loads(line) for line in (out / "per_query.disc-disc.jsonl").read_text().splitlines()]
        keys = [k for meta in cache.glob("*/*/shard-*.json") for k in json.loads(meta.read_text())["keys"]]
        runs[procs] = (
            scores["metrics"],
            [{k: v for k, v in r.items() if k != "latency_s"} for r in rows],
            keys,
        )
    assert runs[1][0] == runs[2][0] and runs[1][1] == runs[2][1]
    assert len(runs[2][2]) == len(set(runs[2][2])) == len(runs[1][2])  # each item embedded once


def test_an_index_of_a_media_folder_finds_each_image_by_itself(use_nano, tmp_path, capsys):
    media = tmp_path / "photos"
    (media / "trip").mkdir(parents=True)
    write_image(media / "a.png", seed=1)
    write_image(media / "trip" / "b.jpg", seed=2)
    write_image(media / "trip" / "c.png", size=(80, 30), seed=3)
    (media / "notes.txt").write_text("not an image")
    idx = tmp_path / "photos.index"
    args = ["index", "build", "--media", str(media), "--out", str(idx), "--shard-size", "2", "--quiet"]
    assert main(args) == 0
    assert main(args) == 0  # again: the shards are kept, the index rebuilt
    err = capsys.readouterr().err
    assert "0 shards written" in err and "2 kept from an earlier run" in err
    _, ids, manifest = read_shards(tmp_path / "photos.index.shards")
    assert ids == ["a.png", "trip/b.jpg", "trip/c.png"] and manifest["mode"] == "disc"
    assert main(["search", "--index", str(idx), "--image", str(media / "trip" / "c.png"), "--k", "1"]) == 0
    assert capsys.readouterr().out.split("\t")[2].strip() == "trip/c.png"
    assert main(["index", "build", "--media", str(tmp_path / "none"), "--out", str(idx)]) == 2
    assert "not a folder" in capsys.readouterr().err
