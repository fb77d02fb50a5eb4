"""`mmemb reason generate` as users run it: killed with SIGKILL mid-run and rerun; against a stub
OpenAI-compatible server that fails some requests; importing rationales; bad teacher specs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from mmemb.cli import main
from mmemb.data.pairs import read_pairs
from mmemb.reasoning import candidates as cio
from mmemb.testing.tiny_hf import build_tiny_hf

from .conftest import write_image
from .test_openai_teacher import stub as stub  # noqa: F401  (the stub-server fixture)
from .test_reasoning import make_toy


def _cmd(*args: str) -> list[str]:
    return [
        sys.executable,
        "-c",
        "import sys; from mmemb.cli import main; sys.exit(main(sys.argv[1:]))",
        *args,
    ]


def test_generate_killed_mid_run_then_rerun_has_each_pair_k_exactly_once(tmp_path):
    toy = make_toy(tmp_path / "toy", n=12)
    model = build_tiny_hf("qwen2_vl", tmp_path / "tiny")
    out = tmp_path / "c.jsonl"
    args = _cmd(
        "reason", "generate", "--data", str(toy), "--teacher", f"local:{model}", "--samples", "4", "--out", str(out),
        "--batch-size", "1", "--max-think-tokens", "24", "--quiet",
    )  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if out.is_file() and out.read_bytes().count(b"\n") >= 10:
            break
        time.sleep(0.02)
    assert proc.poll() is None, f"finished before it could be killed: {proc.stderr.read().decode()[-500:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = out.read_bytes().count(b"\n")
    total = 2 * 12 * 4
    assert 10 <= written < total
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-1000:]
    rows = cio.read_candidates(out)
    keys = [(r["pair_id"], r["k"]) for r in rows]
    pairs = read_pairs(toy)
    assert sorted(keys) == sorted((p.id, k) for p in pairs for k in range(4))  # none lost, none twice
    assert f"{written} already there" in done.stderr
    assert out.read_bytes().endswith(b"\n")


def test_generate_against_a_stub_server_counts_failures_and_the_rerun_fills_them(stub, tmp_path, capsys):
    toy = make_toy(tmp_path / "toy", n=3)
    for path in (toy / "Toy-RET" / "train.jsonl",):  # make one query fail on the server, always
        rows = [json.loads(x) for x in path.read_text().splitlines()]
        rows[1]["qry_text"] = "FAIL500 picture"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "c.jsonl"
    args = ["reason", "generate", "--data", str(toy), "--teacher", "openai:stub-model", "--base-url", stub.url,
            "--samples", "2", "--out", str(out), "--retries", "2", "--quiet"]  # fmt: skip
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "2 failed" in err and "HTTP 500" in err and "rerun the same command" in err
    keys = {(r["pair_id"], r["k"]) for r in cio.read_candidates(out)}
    assert len(keys) == 2 * 3 * 2 - 2 and ("Toy-RET/train/1", 0) not in keys
    body = stub.requests[0]["body"]
    assert body["model"] == "stub-model" and body["temperature"] == 0.7
    # the same command again only retries the two missing requests
    before = len(stub.requests)
    assert main(args) == 1
    assert len(stub.requests) - before == 2 * 2  # two requests x two attempts
    assert len(cio.read_candidates(out)) == 10


def test_generate_imports_rationales_and_refuses_unknown_ids(tmp_path, capsys):
    toy = make_toy(tmp_path / "toy", n=2)
    pairs = read_pairs(toy)
    src = tmp_path / "teacher.jsonl"
    src.write_text(
        "".join(
            json.dumps({"pair_id": p.id, "k": 0, "text": f"<think>t {p.id}</think><answer>a</answer>"}) + "\n"
            for p in pairs
        )
    )

    def generate(out, *extra):
        return main(["reason", "generate", "--data", str(toy), "--teacher", f"file:{src}", "--k", "1",
                     "--out", str(out), *extra])  # fmt: skip

    out = tmp_path / "c.jsonl"
    assert generate(out, "--quiet") == 0
    rows = cio.read_candidates(out)
    assert len(rows) == len(pairs) and all(r["valid"] for r in rows)
    with open(src, "a") as f:
        f.write(json.dumps({"pair_id": "Other/train/0", "k": 0, "text": "x"}) + "\n")
    assert generate(tmp_path / "d.jsonl") == 2
    assert "not in --data" in capsys.readouterr().err and not (tmp_path / "d.jsonl").exists()


@pytest.mark.parametrize("spec", ["gpt", "openai:", "file:"])
def test_bad_teacher_spec_is_a_one_line_error(tmp_path, capsys, spec):
    toy = make_toy(tmp_path / "toy", n=1)
    assert (
        main(
            ["reason", "generate", "--data", str(toy), "--teacher", spec, "--out", str(tmp_path / "c.jsonl")]
        )
        == 2
    )
    assert "--teacher" in capsys.readouterr().err


def test_missing_candidates_file_is_a_clear_error(tmp_path, capsys):
    toy = make_toy(tmp_path / "toy", n=1)
    assert (
        main(
            [
                "reason",
                "select",
                "--data",
                str(toy),
                "--candidates",
                str(tmp_path / "none.jsonl"),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "candidates file not found" in capsys.readouterr().err


def test_generate_imports_ume_r1_sft_reasoning_as_candidate_zero(tmp_path, capsys):
    from .test_pairs import EXPECTED_RATIONALES, ume_records

    root = tmp_path / "m"
    (root / "images").mkdir(parents=True)
    write_image(root / "images" / "a.png", seed=1)
    write_image(root / "images" / "b.png", seed=2)
    ume = root / "ume.json"
    ume.write_text(json.dumps(ume_records(root)))
    out = tmp_path / "c.jsonl"
    code = main(
        [
            "reason",
            "generate",
            "--data",
            str(ume),
            "--teacher",
            f"file:{ume}",
            "--k",
            "1",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert (
        "1 skipped (not in the teacher's file)" in capsys.readouterr().err
    )  # the record without query reasoning
    rows = {r["pair_id"]: r for r in cio.read_candidates(out)}
    assert {pid: r["text"] for pid, r in rows.items()} == EXPECTED_RATIONALES
    assert all(r["valid"] for r in rows.values())


def test_reason_settings_resolve_defaults_file_flags_overrides_in_that_order(tmp_path, capsys):
    from mmemb.cli import build_parser
    from mmemb.reasoning.cli import reason_config
    from mmemb.types import InputError

    def resolve(command, *argv):
        return reason_config(build_parser().parse_args(["reason", command, *argv]))

    conf = tmp_path / "r.yaml"
    conf.write_text("data:\n  candidates: c.jsonl\nselect:\n  delta: 0.5\n  rule: soft\n")
    cfg = resolve("select", "--config", str(conf), "--out", "o", "--delta", "0.2", "select.rule=all")
    assert (cfg.data.candidates, cfg.select.out, cfg.select.delta, cfg.select.rule) == (
        "c.jsonl",
        "o",
        0.2,
        "all",
    )
    cfg = resolve("select", "--config", str(conf), "--out", "o", "select.delta=0.3", "--delta", "0.1")
    assert (cfg.select.delta, cfg.select.rule, cfg.score.model) == (0.3, "soft", "nano")  # key=value last
    capsys.readouterr()
    cfg = resolve("select", "--candidates", "c", "--out", "o", "--tau", "0.1", "--limit-per-task", "3")
    assert (cfg.select.loss_temperature, cfg.data.limit) == (0.1, 3)  # the old names, for one release
    assert "--tau is deprecated" in capsys.readouterr().err
    assert resolve("diagnose", "--candidates", "c").diagnose.own is True
    assert resolve("diagnose", "--candidates", "c", "--no-own").diagnose.own is False
    for argv, says in (
        (["--candidates", "c"], r"set select.out \(--out\)"),
        (["--out", "o"], r"set data.candidates \(--candidates\)"),
        (["--candidates", "c", "--out", "o", "--utility", "nope"], "select.utility 'nope': choose one of"),
        (["--candidates", "c", "--out", "o", "--rule", "best"], "select.rule 'best': choose one of"),
        (["--candidates", "c", "--out", "o", "--batch-size", "0"], r"score.batch_size must be >= 1"),
        (["--candidates", "c", "--out", "o", "select.dleta=1"], "unknown key 'select.dleta'"),
    ):
        with pytest.raises(InputError, match=says):
            resolve("select", *argv)
    assert (
        main(["reason", "select", "--candidates", "c", "--out", str(tmp_path / "o"), "--rule", "best"]) == 2
    )
    assert "select.rule 'best'" in capsys.readouterr().err and not (tmp_path / "o").exists()
