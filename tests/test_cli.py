"""The real CLI: `mmemb embed` on nano, and every bad-input case gives one clear error and no output."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from mmemb import Embedder, Sample
from mmemb.cli import COMMANDS, handlers, main

from .conftest import PUBLISHED_SCORES, assert_same_vectors, needs_debian_data, needs_shared, write_image


@pytest.fixture
def use_nano(nano, monkeypatch):
    """The CLI loads its model by name; give it the session's nano instead of loading it again."""
    monkeypatch.setattr(Embedder, "from_pretrained", classmethod(lambda cls, name, **kw: nano))
    return nano


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_help_lists_every_command(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out
    assert set(handlers()) == set(COMMANDS)  # every listed command runs something
    for name in COMMANDS:  # and parses: its own help, its own usage line
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0 and f"usage: mmemb {name}" in capsys.readouterr().out


def test_embed_writes_vectors_and_ids(use_nano, tmp_path, capsys):
    (tmp_path / "media").mkdir()
    write_image(tmp_path / "media" / "a.png")
    frames = [
        str(write_image(tmp_path / "media" / f"f{i}.jpg", seed=i).relative_to(tmp_path)) for i in range(3)
    ]
    src = write_jsonl(
        tmp_path / "items.jsonl",
        [
            {"id": "q1", "text": "a red car", "instruction": "Find an image of"},
            {"id": 7, "image": "media/a.png"},
            {"id": "v", "frames": frames},
        ],
    )
    out = tmp_path / "out" / "vecs.npy"
    assert main(["embed", "--model", "nano", "--input", str(src), "--output", str(out), "--quiet"]) == 0
    assert "--output is deprecated and goes in the next release; use --out" in capsys.readouterr().err
    vecs = np.load(out, allow_pickle=False)
    assert vecs.shape == (3, 576) and vecs.dtype == np.float32
    assert json.loads((tmp_path / "out" / "vecs.ids.json").read_text()) == ["q1", "7", "v"]
    direct = use_nano.encode([Sample(id="q1", text="a red car", instruction="Find an image of")])
    assert_same_vectors(vecs[:1], direct.vectors, use_nano.dtype, atol=1e-6)


def test_embed_gen_writes_texts(use_nano, tmp_path):
    src = write_jsonl(tmp_path / "items.jsonl", [{"id": "a", "text": "a dog"}])
    out = tmp_path / "v.npy"
    assert main(["embed", "--input", str(src), "--out", str(out), "--mode", "gen", "--quiet"]) == 0
    rows = [json.loads(x) for x in (tmp_path / "v.gen.jsonl").read_text().splitlines()]
    assert rows[0]["id"] == "a" and rows[0]["gen_tokens"] > 0 and rows[0]["gen_emb_found"] in (True, False)


def _bad_cases(tmp_path):
    good = write_image(tmp_path / "good.png")
    (tmp_path / "notimage.png").write_text("this is text, not a PNG")
    data = good.read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    Image.new("1", (8000, 6000)).save(tmp_path / "bomb.png")  # 48 M pixels, a few KB on disk
    return {
        "missing file": ({"id": "m", "image": "nope.png"}, "not found", False),
        "not an image": ({"id": "n", "image": "notimage.png"}, "not an image", True),
        "truncated": ({"id": "t", "image": "truncated.png"}, "truncated", True),
        "pixel limit": ({"id": "b", "image": "bomb.png"}, "over the limit", True),
        "empty item": ({"id": "e"}, "empty item", False),
        "unknown field": ({"id": "u", "text": "x", "colour": "red"}, "unknown field", False),
        "too long": ({"id": "L", "text": "word " * 5000}, "over the context limit", True),
        "bad json": ('{"id": "j", "text": ', "not valid JSON", False),
        "no id": ({"text": "x"}, 'needs an "id"', False),
        "wrong type": ({"id": "w", "frames": "a.png"}, "must be a list", False),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing file",
        "not an image",
        "truncated",
        "pixel limit",
        "empty item",
        "unknown field",
        "too long",
        "bad json",
        "no id",
        "wrong type",
    ],
)
def test_bad_input_is_one_clear_error_and_no_output(case, use_nano, tmp_path, capsys):
    row, expected, names_id = _bad_cases(tmp_path)[case]
    src = write_jsonl(tmp_path / "items.jsonl", [{"id": "ok", "text": "fine"}, row])
    out = tmp_path / "out" / "vecs.npy"
    code = main(["embed", "--input", str(src), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert expected in err, err
    assert "items.jsonl" in err, err  # names the file ...
    if names_id:  # ... and the item, for errors found while embedding
        assert f"'{row['id']}'" in err, err
    else:  # ... and the line, for errors found while reading
        assert "items.jsonl:2" in err, err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_duplicate_ids_and_bad_output_name(tmp_path, capsys):
    src = write_jsonl(tmp_path / "i.jsonl", [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}])
    assert main(["embed", "--input", str(src), "--out", str(tmp_path / "o.npy")]) == 2
    assert "duplicate id 'a'" in capsys.readouterr().err
    assert main(["embed", "--input", str(src), "--out", str(tmp_path / "o.txt")]) == 2
    assert ".npy" in capsys.readouterr().err


def test_eval_nano_on_a_small_real_mini(use_nano, tmp_path, capsys):
    """The real CLI, the real nano, a small build of the real mmeb-mini: every task scored, outputs written."""
    from pathlib import Path

    from mmemb.data.mini import build_mini

    needs_debian_data(Path("/usr/share/openclipart/png"))
    root = build_mini(tmp_path / "mini", seed=0, scale=0.02)
    out = tmp_path / "run"
    args = [
        "eval",
        "--model",
        "nano",
        "--tasks",
        "mmeb-mini",
        "--data-root",
        str(root),
        "--out",
        str(out),
        "--limit",
        "2",
        "--cache",
        str(tmp_path / "cache"),
        "--quiet",
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "overall" in printed and "median latency" in printed
    scores = json.loads((out / "scores.disc-disc.json").read_text())
    tasks = json.loads((root / "tasks.json").read_text())
    assert sum(len(v) for v in scores["metrics"].values()) == len(tasks)
    for f in ("report.txt", "analysis.json", "plot.png", "per_query.disc-disc.jsonl"):
        assert (out / f).is_file()
    assert main(args) == 0  # second run: everything from the cache
    assert "embedded now 0" in capsys.readouterr().err
    # the resolved settings are saved beside the outputs, and rerun the same evaluation from them alone
    saved = out / "eval_config.yaml"
    assert "limit: 2" in saved.read_text() and f"root: {root}" in saved.read_text()
    before = (out / "scores.disc-disc.json").read_text()
    assert main(["eval", "--config", str(saved), "--quiet"]) == 0
    assert "embedded now 0" in capsys.readouterr().err
    assert json.loads((out / "scores.disc-disc.json").read_text())["metrics"] == json.loads(before)["metrics"]


def test_report_command_on_the_published_file(capsys):
    published = PUBLISHED_SCORES
    needs_shared(published)
    assert main(["report", str(published)]) == 0
    out = capsys.readouterr().out
    assert "64.9" in out and "34.7" in out and "69.2" in out and "partial" in out
    assert "ViDoSeek-doc" in out and "MomentSeeker_1k8" in out


def test_eval_mmeb_v2_without_data_explains_and_stops(capsys):
    assert main(["eval", "--tasks", "mmeb-v2"]) == 2
    err = capsys.readouterr().err
    assert "TIGER-Lab/MMEB-V2" in err and "--data-root" in err


def test_eval_settings_resolve_defaults_file_flags_overrides(tmp_path):
    """defaults < --config < flags < key=value; unknown keys and bad values name themselves."""
    import argparse

    from mmemb.cli import build_parser, eval_config
    from mmemb.types import InputError

    def resolve(argv):
        return eval_config(build_parser().parse_args(["eval", *argv]))

    cfg = resolve([])
    assert (cfg.model.name, cfg.data.tasks, cfg.run.batch_size, cfg.run.analysis) == (
        "nano",
        "mmeb-mini",
        16,
        [],
    )
    f = tmp_path / "e.yaml"
    f.write_text("model: {name: nano-r1}\nrun: {batch_size: 8, samples: 2}\ndata: {limit: 3}\n")
    cfg = resolve(["--config", str(f), "--batch-size", "4", "run.samples=5", "--analysis", "oracle,pass@k"])
    assert (cfg.model.name, cfg.run.batch_size, cfg.run.samples, cfg.data.limit) == ("nano-r1", 4, 5, 3)
    assert cfg.run.analysis == ["oracle", "pass@k"] and str(cfg.out_dir()) == "runs/eval/nano-r1-mmeb-mini"
    cases = {
        ("run.batchsize=3",): "unknown key 'run.batchsize'",
        ("--analysis", "nope"): r"run.analysis \['nope'\]",
        ("run.batch_size=0",): "run.batch_size must be >= 1",
        ("run.batch_size=x",): "run.batch_size: expected int",
    }
    for argv, message in cases.items():
        with pytest.raises(InputError, match=message):
            resolve(list(argv))
    assert isinstance(build_parser().parse_args(["eval"]), argparse.Namespace)


def test_embed_refuses_unwritable_outputs_and_its_own_input_before_the_model_loads(
    tmp_path, capsys, monkeypatch
):
    from mmemb.embedder import Embedder

    monkeypatch.setattr(Embedder, "from_pretrained", classmethod(lambda *a, **k: pytest.fail("model loaded")))
    src = write_jsonl(tmp_path / "items.jsonl", [{"id": "a", "text": "a dog"}])
    (tmp_path / "file").write_text("x")
    src_npy = tmp_path / "in.npy"  # an input named like an output: the .ids.json sibling is not the input,
    src_ids = write_jsonl(tmp_path / "in.ids.json", [{"id": "a", "text": "a dog"}])  # but this one is
    for out, mode, says in (
        (tmp_path / "file" / "v.npy", "disc", "is a file, not a folder"),
        (tmp_path / "file" / "deeper" / "v.npy", "disc", "is a file, not a folder"),
        ("/proc/mmemb/v.npy", "disc", "cannot write in /proc"),
        ("/sys/v.npy", "disc", "cannot write in /sys"),
        (tmp_path, "disc", "is not a shard folder"),  # a folder: sharded output, but this one is not
        ("/proc/mmemb/shards", "disc", "cannot write in /proc"),
        (tmp_path / "v.txt", "disc", "use a .npy file name, or a folder"),
        (tmp_path / "dir.npy", "disc", "is a folder"),
        (src_npy, "disc", "would overwrite the input"),
        (tmp_path / "items.npy", "gen", None),  # items.gen.jsonl is not items.jsonl: allowed
    ):
        if str(out).endswith("dir.npy"):
            out.mkdir()
        inp = src_ids if out == src_npy else src
        argv = ["embed", "--input", str(inp), "--out", str(out), "--mode", mode, "--quiet"]
        if says is None:
            with pytest.raises(pytest.fail.Exception, match="model loaded"):  # passed the checks
                main(argv)
            continue
        assert main(argv) == 2, out
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.npy", "file", "in.ids.json", "items.jsonl"]
