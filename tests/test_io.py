"""The one writer and the one JSONL reader (io.py): all or nothing, durable, and every bad line named."""

from __future__ import annotations

import json
import os
import stat
import threading

import pytest

from mmemb import InputError
from mmemb.io import atomic_files, atomic_json, atomic_write, read_jsonl, replace_dir, staging_dir


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_atomic_write_kinds_mode_and_fsync(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    assert atomic_write(tmp_path / "a" / "b.bin", b"\x00\x01").read_bytes() == b"\x00\x01"
    assert len(synced) == 2  # the file, then its folder (the rename)
    assert atomic_write(tmp_path / "t.txt", "héllo\n").read_text(encoding="utf-8") == "héllo\n"
    assert atomic_write(tmp_path / "f.bin", lambda f: f.write(b"xyz")).read_bytes() == b"xyz"
    assert json.loads(atomic_json(tmp_path / "x.json", {"k": [1, 2]}).read_text()) == {"k": [1, 2]}
    assert stat.S_IMODE((tmp_path / "t.txt").stat().st_mode) == 0o644
    assert leftovers(tmp_path) == []


def test_a_failing_write_keeps_the_old_file_and_leaves_nothing(tmp_path):
    target = atomic_write(tmp_path / "out.json", "old")

    def boom(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, boom)
    assert target.read_text() == "old" and leftovers(tmp_path) == []


def test_concurrent_writers_never_tear_or_collide(tmp_path):
    target = tmp_path / "shared.txt"
    texts = [str(i) * 50_000 for i in range(8)]

    def write(text):
        for _ in range(10):
            atomic_write(target, text)

    threads = [threading.Thread(target=write, args=(t,)) for t in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert target.read_text() in texts and leftovers(tmp_path) == []


def test_atomic_files_all_or_none(tmp_path):
    def bad(f):
        raise ValueError("no")

    with pytest.raises(ValueError):
        atomic_files({tmp_path / "a.npy": b"1", tmp_path / "b.json": bad})
    assert list(tmp_path.iterdir()) == []
    atomic_files({tmp_path / "a.npy": b"1", tmp_path / "sub" / "b.json": "2"})
    assert (tmp_path / "a.npy").read_bytes() == b"1" and (tmp_path / "sub" / "b.json").read_text() == "2"


def test_staging_and_replacing_a_folder(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.txt").write_text("old")
    staged = staging_dir(target)
    assert staged.parent == tmp_path and staged.name.startswith(".model.") and staged != staging_dir(target)
    (staged / "new.txt").write_text("new")
    replace_dir(staged, target)
    assert [p.name for p in target.iterdir()] == ["new.txt"] and not staged.exists()


def test_read_jsonl_names_file_and_line(tmp_path):
    f = tmp_path / "items.jsonl"
    f.write_bytes('\ufeff{"a": 1}\n\n  \n{"b": 2}\n'.encode())  # a BOM and blank lines
    assert [(w.rsplit(":", 1)[1], o) for w, o in read_jsonl(f)] == [("1", {"a": 1}), ("4", {"b": 2})]
    cases = {
        '{"a": 1}\n{"a": \n': r"items.jsonl:2: not valid JSON",
        '{"a": 1}\n[1, 2]\n': r"items.jsonl:2: expected a JSON object, got list",
        "[" * 100_000
        + "]" * 100_000
        + "\n": r"items.jsonl:1: (JSON nested too deeply|expected a JSON object)",
    }
    for text, message in cases.items():
        f.write_text(text)
        with pytest.raises(InputError, match=message):
            list(read_jsonl(f))
    f.write_bytes(b'{"a": 1}\n{"b": "\xff"}\n')
    with pytest.raises(InputError, match=r"items.jsonl:2: not UTF-8"):
        list(read_jsonl(f))
    with pytest.raises(InputError, match=r"nope.jsonl: file not found"):
        list(read_jsonl(tmp_path / "nope.jsonl"))
    f.write_text('{"a": 1}\n{"a": 2')  # a writer killed mid-line
    assert [o for _, o in read_jsonl(f, torn_tail=True)] == [{"a": 1}]
    with pytest.raises(InputError, match=r"items.jsonl:2: not valid JSON"):
        list(read_jsonl(f))

    class Custom(Exception):
        pass

    with pytest.raises(Custom):
        list(read_jsonl(f, error=Custom))
