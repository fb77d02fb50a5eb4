"""Reasoning paths: format, scorers (golden values), selection rules, candidate files with resume,
teacher-forced gen embeddings, and select / inspect end to end on nano."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from mmemb.data.pairs import Pair, read_pairs
from mmemb.reasoning import candidates as cio
from mmemb.reasoning import scoring
from mmemb.reasoning.format import no_think_completion, parse_rationale, think_completion
from mmemb.reasoning.select import select
from mmemb.reasoning.teachers import FileTeacher, Reply, Request
from mmemb.types import InputError, Sample

from .conftest import assert_same_vectors, write_image


# ---- a tiny mini-layout dataset ------------------------------------------------------------------------
def make_toy(root, n=6):
    """Two tasks: Toy-CLS (image -> label, 3 local candidates, hints), Toy-RET (text -> image, global)."""
    (root / "media").mkdir(parents=True)
    labels = ["cat", "dog", "bird"]
    cls, ret = [], []
    for i in range(n):
        img = f"media/q{i}.png"
        write_image(root / img, size=(40, 32), seed=i)
        gold = labels[i % 3]
        cands = [gold] + [x for x in labels if x != gold]
        cls.append(
            {
                "qry_inst": "<|image_1|> Classify",
                "qry_text": "",
                "qry_img_path": img,
                "tgt_inst": "",
                "tgt_text": cands,
                "tgt_img_path": ["", "", ""],
                "qry_hint": f"title: a {gold} drawing",
            }
        )
        ret.append(
            {
                "qry_inst": "Find the picture:",
                "qry_text": f"picture number {i}",
                "qry_img_path": "",
                "tgt_inst": "<|image_1|> Represent the image.",
                "tgt_text": [""],
                "tgt_img_path": [img],
            }
        )
    tasks = []
    for name, rows, ranking in (("Toy-CLS", cls, "local"), ("Toy-RET", ret, "global")):
        (root / name).mkdir()
        (root / name / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        tasks.append(
            {
                "name": name,
                "modality": "image",
                "meta_task": "CLS",
                "metric": "hit@1",
                "ranking": ranking,
                "format": "image_rows",
                "splits": {"train": n},
            }
        )
    (root / "tasks.json").write_text(json.dumps(tasks))
    return root


@pytest.fixture
def toy(tmp_path):
    return make_toy(tmp_path / "toy")


class FakeTeacher:
    """Deterministic replies; every third is malformed; ids in `fail` fail in transport."""

    name = "fake"

    def __init__(self, fail=()):
        self.fail, self.calls = set(fail), []

    def generate(self, requests):
        self.calls.append([r.key for r in requests])
        out = []
        for r in requests:
            if r.key in self.fail:
                out.append(Reply(error="HTTP 500 (3 attempts)"))
            elif (len(r.pair_id) + r.k) % 3 == 0:
                out.append(Reply(text=f"no tags here {r.pair_id} {r.k}"))
            else:
                out.append(
                    Reply(text=f"<think>about {r.pair_id} #{r.k}</think><answer>{r.hint or 'x'}</answer>")
                )
        return out


# ---- format -----------------------------------------------------------------------------------------------
def test_parse_rationale_accepts_the_format_and_names_each_problem():
    ok = parse_rationale(" <think>A red fruit.</think>\n<answer>apple</answer> ")
    assert ok.valid and (ok.think, ok.answer) == ("A red fruit.", "apple")
    assert "structure" in parse_rationale("apple").problem
    assert "structure" in parse_rationale("<think>unterminated").problem
    assert parse_rationale("<think></think><answer>x</answer>").problem == "empty <think>"
    assert parse_rationale("<think>x</think><answer> </answer>").problem == "empty <answer>"
    assert "reserved" in parse_rationale("<think>x <gen_emb></think><answer>y</answer>").problem
    assert "too long" in parse_rationale(f"<think>{'a' * 3000}</think><answer>y</answer>").problem


# ---- scorers: golden values --------------------------------------------------------------------------------
def test_scorers_golden_values():
    t = np.array([[0.0, 1.0]])
    q = np.array([[1.0, 0.0]])
    q_r = np.array([[0.6, 0.8]])
    q_swap = np.array([[0.8, 0.6]])
    assert scoring.absolute(q_r, t) == pytest.approx([0.8])
    assert scoring.with_vs_without(q_r, q, t) == pytest.approx([0.8])
    assert scoring.swapped_control(q_r, q_swap, t) == pytest.approx([0.2])
    # contrastive, docstring example: tau 1, one negative n = [1, 0]
    negs = np.array([[[1.0, 0.0]]])
    gain = scoring.contrastive_gain(np.array([[0.0, 1.0]]), q, t, negs, tau=1.0)
    assert gain == pytest.approx([(1 - math.log(math.e + 1)) - (0 - math.log(1 + math.e))])  # = 1.0
    assert gain == pytest.approx([1.0])


def test_contrastive_gain_by_hand_with_a_masked_negative_and_tau():
    tau = 0.5
    t = np.array([[1.0, 0.0, 0.0]])
    q = np.array([[0.0, 1.0, 0.0]])
    q_r = np.array([[0.8, 0.6, 0.0]])
    negs = np.array([[[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [9.0, 9.0, 9.0]]])  # the third is padding
    mask = np.array([[True, True, False]])

    def log_p(x):  # by hand, over {t, n1, n2}
        s = [x @ t[0] / tau, x @ negs[0, 0] / tau, x @ negs[0, 1] / tau]
        return s[0] - math.log(sum(math.exp(v) for v in s))

    want = log_p(q_r[0]) - log_p(q[0])
    assert scoring.contrastive_gain(q_r, q, t, negs, mask, tau) == pytest.approx([want])
    # a rationale that pulls the target *and* the negatives equally closer gains nothing
    q_all = np.array([[1.0, 1.0, 1.0]]) / math.sqrt(3)
    same = scoring.contrastive_gain(q_all, q_all, t, negs, mask, tau)
    assert same == pytest.approx([0.0])


def test_scorers_propagate_missing_candidates_as_nan():
    t = np.array([[1.0, 0.0], [1.0, 0.0]])
    q_r = np.array([[1.0, 0.0], [np.nan, np.nan]])
    u = scoring.with_vs_without(q_r, t, t)
    assert u[0] == 0.0 and np.isnan(u[1])


# ---- selection rules -----------------------------------------------------------------------------------------
def test_selection_rules_on_hand_made_utilities():
    nan = np.nan
    u = np.array([[0.3, nan, 0.1], [-0.2, -0.1, nan], [nan, nan, nan], [0.05, 0.2, 0.2]])
    hard = select(u, "hard", delta=0.0)
    assert hard.chosen.tolist() == [0, -1, -1, 1]  # ties: the first best
    assert hard.think.tolist() == [True, False, False, True]
    assert hard.weights.tolist() == [[1, 0, 0], [0, 0, 0], [0, 0, 0], [0, 1, 0]]
    # threshold: delta 0.25 keeps only the first pair's reasoning
    assert select(u, "hard", delta=0.25).think.tolist() == [True, False, False, False]
    # a negative delta lets a mildly harmful best candidate through
    assert select(u, "hard", delta=-0.15).chosen.tolist() == [0, 1, -1, 1]
    soft = select(u, "soft", delta=0.0, temperature=0.1)
    e = np.exp(np.array([0.3, 0.1]) / 0.1)
    assert soft.weights[0, [0, 2]] == pytest.approx(e / e.sum())
    assert soft.weights[0, 1] == 0 and soft.weights[1].sum() == 0
    assert soft.weights[3].tolist() == pytest.approx(
        [math.exp(-1.5) / (math.exp(-1.5) + 2), 1 / (math.exp(-1.5) + 2), 1 / (math.exp(-1.5) + 2)]
    )
    allr = select(u, "all")
    assert allr.think.tolist() == [True, True, False, True]
    assert allr.weights[0].tolist() == [0.5, 0, 0.5] and allr.weights[2].sum() == 0
    with pytest.raises(ValueError):
        select(u, "best")


# ---- candidate files ----------------------------------------------------------------------------------------
def test_generate_writes_each_pair_k_once_marks_malformed_and_resumes_after_a_torn_line(toy, tmp_path):
    pairs = read_pairs(toy)
    out = tmp_path / "c.jsonl"
    rep = cio.generate_candidates(pairs, FakeTeacher(), 3, out, batch_size=4, progress=False)
    assert rep.complete and rep.written == len(pairs) * 3 and rep.malformed > 0
    rows = cio.read_candidates(out)
    assert sorted((r["pair_id"], r["k"]) for r in rows) == sorted((p.id, k) for p in pairs for k in range(3))
    bad = [r for r in rows if not r["valid"]]
    assert len(bad) == rep.malformed and all("structure" in r["problem"] for r in bad)
    hinted = next(r for r in rows if r["valid"] and r["task"] == "Toy-CLS")
    assert "drawing" in hinted["answer"]  # the hint reached the teacher
    # tear the file: drop the last 5 lines and cut the one before in half
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:-6]) + lines[-6][: len(lines[-6]) // 2])
    again = cio.generate_candidates(pairs, FakeTeacher(), 3, out, batch_size=4, progress=False)
    assert again.written == 6 and again.existing == len(pairs) * 3 - 6
    keys = [(r["pair_id"], r["k"]) for r in cio.read_candidates(out)]
    assert len(keys) == len(set(keys)) == len(pairs) * 3
    # nothing left to do: the teacher is not even called
    t = FakeTeacher()
    assert cio.generate_candidates(pairs, t, 3, out, progress=False).written == 0 and t.calls == []


def test_transport_failures_write_nothing_and_the_rerun_retries_them(toy, tmp_path):
    pairs = read_pairs(toy)
    out = tmp_path / "c.jsonl"
    failing = {(pairs[0].id, 1), (pairs[3].id, 0)}
    rep = cio.generate_candidates(pairs, FakeTeacher(fail=failing), 2, out, progress=False)
    assert rep.failed == 2 and not rep.complete and "HTTP 500" in rep.errors[0]
    assert not failing & {(r["pair_id"], r["k"]) for r in cio.read_candidates(out)}
    t = FakeTeacher()
    rep = cio.generate_candidates(pairs, t, 2, out, progress=False)
    assert rep.written == 2 and sorted(k for call in t.calls for k in call) == sorted(failing)


def test_candidates_from_another_dataset_or_teacher_are_refused(toy, tmp_path):
    pairs = read_pairs(toy)
    out = tmp_path / "c.jsonl"
    cio.generate_candidates(pairs, FakeTeacher(), 1, out, progress=False)
    other = FakeTeacher()
    other.name = "another"
    with pytest.raises(InputError, match="another teacher"):
        cio.generate_candidates(pairs, other, 1, out, progress=False)
    with pytest.raises(InputError, match="another dataset"):
        cio.generate_candidates(pairs[:3], FakeTeacher(), 1, out, progress=False)
    with pytest.raises(InputError, match="another dataset"):
        cio.load_for(pairs[:3], out)
    # a line naming a query the data lacks
    cio.meta_path(out).unlink()
    with open(out, "a") as f:
        f.write(json.dumps({"pair_id": "Nope/train/9", "k": 0, "text": ""}) + "\n")
    with pytest.raises(InputError, match=r"c\.jsonl:\d+: unknown query id 'Nope/train/9'"):
        cio.load_for(pairs, out)


def test_file_teacher_imports_a_candidates_file_and_reports_missing_ones(toy, tmp_path):
    pairs = read_pairs(toy)
    src = tmp_path / "src.jsonl"
    cio.generate_candidates(pairs, FakeTeacher(), 2, src, progress=False)
    teacher = FileTeacher(src)
    assert teacher.ids() == {p.id for p in pairs}
    reqs = [Request(pairs[0].id, 1, pairs[0].query), Request(pairs[0].id, 5, pairs[0].query)]
    got = teacher.generate(reqs)
    assert got[0].text == next(
        r["text"] for r in cio.read_candidates(src) if (r["pair_id"], r["k"]) == reqs[0].key
    )
    assert got[1].missing and not got[1].error


# ---- teacher-forced gen embeddings ---------------------------------------------------------------------------
@pytest.mark.slow
def test_forced_completion_equals_decoding_the_same_tokens_from_the_kv_cache(nano_dt, images):
    e, bb = nano_dt, nano_dt.backbone
    s = Sample(id="a", image=images[0], instruction="Classify")
    comp = think_completion("A small drawing of a cat.", "cat", e.config.tokens)
    forced = e.encode(
        [s, Sample(id="b", text="padding partner, longer text than the other one")],
        mode="gen",
        completions=[comp, no_think_completion(e.config.tokens)],
    ).vectors[0]
    prompts = bb.prepare([s], [e.prompt(s)])
    _, state = bb.prefill(prompts)
    ids = bb.tokenizer(comp, add_special_tokens=False)["input_ids"]
    assert ids[-1] == e.ids["gen_emb"] and ids[0] == e.ids["think_open"]
    for i in ids:
        h = bb.step(torch.tensor([i]), state, torch.tensor([True]))
    want = torch.nn.functional.normalize(h.float(), dim=-1)[0].numpy()
    assert_same_vectors(forced[None], want[None], e.dtype_name, atol=2e-5)
    with pytest.raises(InputError, match="one completion per input"):
        e.encode([s], mode="gen", completions=[])


# ---- select and inspect end to end (nano) --------------------------------------------------------------------
@pytest.mark.slow
def test_select_and_inspect_end_to_end_on_nano(nano, toy, tmp_path, capsys):
    from mmemb.cli import main

    pairs = read_pairs(toy)
    cands = tmp_path / "c.jsonl"
    cio.generate_candidates(pairs, FakeTeacher(), 3, cands, progress=False)
    out, cache = tmp_path / "sel", tmp_path / "cache"
    args = ["--data", str(toy), "--candidates", str(cands), "--cache", str(cache), "--quiet"]
    assert main(["reason", "select", *args, "--out", str(out), "--negatives", "4"]) == 0
    rows = [json.loads(x) for x in (out / "selection.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    assert [r["pair_id"] for r in rows] == [p.id for p in pairs]
    assert (out / "utilities.png").stat().st_size > 1000
    for r in rows:
        valid = {c["k"]: c for c in r["candidates"] if c["valid"]}
        pair_u = {k: c["utilities"]["pair"] for k, c in valid.items()}
        assert all(c["utilities"]["pair"] is None for c in r["candidates"] if not c["valid"])  # excluded
        if r["label"] == "think":
            assert r["chosen_k"] in valid and r["utility"] == max(pair_u.values()) > 0
            want = min(
                valid[r["chosen_k"]]["utilities"]["contrastive"],
                valid[r["chosen_k"]]["utilities"]["contrastive_swapped"],
            )
            assert r["utility"] == pytest.approx(want)
        else:
            assert r["chosen_k"] is None and all(u <= 0 for u in pair_u.values())
        assert r["donor"] is None or r["donor"].split("/")[0] == r["task"]
    assert summary["overall"]["pairs"] == len(pairs)
    assert summary["overall"]["think"] == sum(r["label"] == "think" for r in rows)
    assert summary["overall"]["malformed"] == sum(not c["valid"] for r in rows for c in r["candidates"])
    assert sum(summary["tasks"]["Toy-CLS"]["utility_hist"]["counts"]) == sum(
        c["utilities"]["pair"] is not None for r in rows if r["task"] == "Toy-CLS" for c in r["candidates"]
    )
    # a rerun with another rule embeds nothing new and labels monotonically in delta
    assert (
        main(["reason", "select", *args, "--out", str(tmp_path / "sel2"), "--negatives", "4", "--delta", "1"])
        == 0
    )
    s2 = json.loads((tmp_path / "sel2" / "summary.json").read_text())
    assert s2["embedded_now"] == 0 and s2["overall"]["think"] == 0
    # the saved settings rerun the first selection alone (into another folder)
    saved = out / "select_config.yaml"
    assert (
        main(["reason", "select", "--config", str(saved), f"select.out={tmp_path / 'sel4'}", "--quiet"]) == 0
    )
    assert (tmp_path / "sel4" / "selection.jsonl").read_bytes() == (out / "selection.jsonl").read_bytes()
    capsys.readouterr()
    assert (
        main(
            [
                "reason",
                "inspect",
                *args,
                "--selection",
                str(out / "selection.jsonl"),
                "--out",
                str(tmp_path / "ins"),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    rep = json.loads((tmp_path / "ins" / "inspect.json").read_text())
    assert "cos(true, swapped)" in text and rep["pairs"] > 0
    st = rep["sensitivity"]["cos(true, empty)"]
    assert -1 <= st["p10"] <= st["median"] <= st["p90"] <= 1.0001
    # a selection over candidates from other data is refused with a clear error
    assert main(["reason", "select", *args, "--out", str(tmp_path / "sel3"), "--tasks", "Toy-CLS"]) == 2
    assert "another dataset" in capsys.readouterr().err


def test_pair_fixture_reads_hints_and_negatives(toy):
    pairs = read_pairs(toy)
    cls = [p for p in pairs if p.task == "Toy-CLS"]
    assert isinstance(cls[0], Pair) and cls[0].hint == "title: a cat drawing" and len(cls[0].negatives) == 2


def test_held_out_pairs_are_the_complement_of_the_trained_ones(toy):
    full, trained = read_pairs(toy), read_pairs(toy, limit_per_task=2)
    held = read_pairs(toy, skip_per_task=2)
    assert {p.id for p in held} == {p.id for p in full} - {p.id for p in trained}
    assert len(read_pairs(toy, skip_per_task=2, limit_per_task=3)) == 6  # 3 of each task's 4 held out
    assert {p.id for p in read_pairs(toy, limit_per_task=4)} >= {p.id for p in trained}  # limits nest


def test_diagnose_on_nano_matches_a_hand_ranking(nano, toy, tmp_path, capsys):
    from mmemb.cli import main
    from mmemb.reasoning.format import no_think_completion

    pairs = read_pairs(toy, skip_per_task=2)
    cands = tmp_path / "c.jsonl"
    cio.generate_candidates(pairs, FakeTeacher(), 3, cands, progress=False)
    args = ["--data", str(toy), "--skip", "2", "--candidates", str(cands), "--quiet"]
    out = tmp_path / "diag"
    cmd = ["reason", "diagnose", *args, "--cache", str(tmp_path / "cache"), "--out", str(out)]
    assert main([*cmd, "--max-new-tokens", "6"]) == 0
    text = capsys.readouterr().out
    rep = json.loads((out / "diagnose.json").read_text())
    assert rep["pairs"] == len(pairs) == 8 and "teacher (best) - none" in text
    cls, ret = rep["tasks"]["Toy-CLS"], rep["tasks"]["Toy-RET"]
    assert cls["candidates"] == 3 and ret["candidates"] == 4  # own negatives; else the task's 4 targets
    # `none` by hand: nothink vectors of queries and targets, the target ranked first among its candidates
    nt = no_think_completion(nano.config.tokens)
    q = nano.encode([p.query for p in pairs], mode="gen", completions=[nt] * 8).vectors
    hits = {}
    for i, p in enumerate(pairs):
        if p.negatives:
            c = [p.target, *p.negatives]
        else:
            c = [p.target] + [o.target for o in pairs if o.task == p.task and o.id != p.id]
        sims = nano.encode(c, mode="gen", completions=[nt] * len(c)).vectors @ q[i]
        hits.setdefault(p.task, []).append(float(sims[0] > sims[1:].max()))
    for task, h in hits.items():
        assert rep["tasks"][task]["hit@1"]["none"] == pytest.approx(100 * np.mean(h), abs=0.05)
    for b in rep["tasks"].values():
        assert b["hit@1"]["teacher_best"] >= b["hit@1"]["teacher_mean"] - 1e-9
        assert 0 <= b["own_well_formed"] <= 100 and -1 <= b["cos(q+r, q+r')"] <= 1.0001
    d = rep["differences"]["teacher (best) - none"]
    assert d["diff"] == pytest.approx(
        rep["overall"]["hit@1"]["teacher_best"] - rep["overall"]["hit@1"]["none"], abs=0.11
    )
    assert d["ci95"][0] <= d["diff"] <= d["ci95"][1]
    # FakeTeacher writes every third reply malformed: the valid share is what the file holds
    rows = cio.read_candidates(cands)
    assert rep["overall"]["teacher_valid"] == pytest.approx(
        100 * np.mean([r["valid"] for r in rows]), abs=0.05
    )


def test_diagnose_measures_how_much_the_models_own_rationale_moves_its_vector(nano, toy, tmp_path):
    """cos(q+own, q+own'): the model's own rationale against another query's, both teacher-forced into q, over
    the pairs whose own rationale is well-formed (the format guard makes most of untrained nano's so)."""
    from mmemb.reasoning.diagnose import run_diagnose

    pairs = read_pairs(toy, skip_per_task=2)
    cands = tmp_path / "c.jsonl"
    cio.generate_candidates(pairs, FakeTeacher(), 2, cands, progress=False)
    nano.config.generation.guard = True
    try:
        rep = run_diagnose(nano, pairs, cands, tmp_path / "cache", max_new_tokens=16)
    finally:
        nano.config.generation.guard = False
    for b in rep["tasks"].values():
        assert b["own_well_formed"] >= 50
        assert -1 <= b["cos(q+own, q+own')"] < 0.99999  # the rationales differ, so the vectors do
    no_own = run_diagnose(nano, pairs, cands, tmp_path / "cache", own=False)
    assert no_own["overall"]["cos(q+own, q+own')"] is None


def test_hint_teacher_tells_each_hint_at_distinct_levels_and_skips_what_it_cannot_say():
    from mmemb.reasoning.teachers import HintTeacher, hint_rationales

    hint = "title: Cartoon cat; keywords: pet, kitten, mammal, fur; filed under: mammals / housecats"
    levels = hint_rationales(hint)
    assert len(levels) == len(set(levels)) == 4 and all(parse_rationale(r).valid for r in levels)
    assert levels[0] == (
        "<think>It shows Cartoon cat, with pet, kitten, mammal, fur. It is filed under mammals / housecats."
        "</think><answer>Cartoon cat</answer>"
    )
    assert parse_rationale(levels[2]).answer == "housecats" and "pet" not in levels[2]
    assert len(hint_rationales("keywords: rainbow")) == 2  # everything, and the keywords: no folder, no title
    assert hint_rationales("", "What is harborage?") == [
        "<think>It asks for What is harborage.</think><answer>What is harborage</answer>"
    ]
    assert hint_rationales("", "") == []
    assert hint_rationales("title: saint helena; description: HASH(0x861a740)") == [  # not a description
        "<think>It shows saint helena.</think><answer>saint helena</answer>",
        "<think>It is saint helena.</think><answer>saint helena</answer>",
    ]
    only_about = hint_rationales("description: county limits are a fair approximation")  # no name to answer
    assert only_about == ["<think>county limits are a fair approximation.</think><answer>county limits are a fair "
                          "approximation</answer>"]  # fmt: skip
    cat, text_only = Sample(id="c", image="cat.png"), Sample(id="t", text="man crystal")
    reqs = [Request("a", k, cat, hint) for k in range(5)] + [Request("b", k, text_only) for k in range(2)]
    replies = HintTeacher().generate(reqs)
    assert [r.text for r in replies[:4]] == levels and replies[4].missing  # no fifth level
    assert parse_rationale(replies[5].text).answer == "man crystal" and replies[6].missing


def test_generate_with_the_hint_teacher_on_the_cli(toy, tmp_path, capsys):
    from mmemb.cli import main

    out = tmp_path / "c.jsonl"
    assert main(["reason", "generate", "--teacher", "hints", "--data", str(toy), "--samples", "3", "--out", str(out),
                 "--quiet"]) == 0  # fmt: skip
    rows = cio.read_candidates(out)
    cls = [r for r in rows if r["task"] == "Toy-CLS"]  # hint "title: a cat drawing": two distinct levels
    assert {r["k"] for r in cls} == {0, 1} and all(r["valid"] for r in rows)
    assert {r["k"] for r in rows if r["task"] == "Toy-RET"} == {0}  # text queries: their text restated
    assert "skipped (the hints say nothing more)" in capsys.readouterr().err
