"""Policy training: GRPO of the head on reward tables (the price of reasoning moves the invocation ratio the
right way), and end to end on a tiny random Qwen2-VL with toy data (train policy, the saved model in
adaptive mode, the λ sweep against a real adaptive evaluation)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from mmemb import Embedder
from mmemb.cli import main
from mmemb.policy_head import PolicyHead
from mmemb.testing.tiny_hf import build_tiny_hf
from mmemb.train.config import load_policy_config
from mmemb.train.policy import train_head

from .test_reasoning import make_toy


def table(n=128, d=16, seed=0):
    """Features and a reward table where reasoning helps exactly the queries with x[0] > 0 (by 0.3)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    helps = x[:, 0] > 0
    reward = np.zeros((2, n))
    reward[0] = 1.0 + 0.05 * rng.normal(size=n)  # no-think: format 1 + ranking
    reward[1] = reward[0] + np.where(helps, 0.3, -0.3) + 0.05 * rng.normal(size=n)
    return x, reward, helps


def cfg(*extra):
    return load_policy_config(None, ["optim.cold_start_steps=0", "run.log_every=50", *extra])


def invocation(head, x, mask=None):
    with torch.no_grad():
        a = head(torch.from_numpy(x)).argmax(-1).numpy() > 0
    return float(a[mask].mean() if mask is not None else a.mean())


def fresh(d=16):
    head = PolicyHead(d, 2)
    torch.nn.init.zeros_(head.linear.weight)  # starts at 50/50 (ties -> no-think under argmax)
    torch.nn.init.zeros_(head.linear.bias)
    return head


def test_lambda_zero_learns_to_reason_where_it_helps():
    x, reward, helps = table()
    head = fresh()
    train_head(head, x, reward, cfg("optim.steps=300"))
    assert invocation(head, x, helps) > 0.9  # rises where reasoning pays...
    assert invocation(head, x, ~helps) < 0.1  # ...and not elsewhere: a per-query decision, not a rate


def test_a_high_price_drives_invocation_to_zero():
    x, reward, helps = table()
    head = fresh()
    lam = 10.0
    priced = reward.copy()
    priced[1] -= lam  # reward − λ·cost, 1 per call
    with torch.no_grad():
        head.linear.bias[1] = 2.0  # start from a policy that reasons nearly always
    assert invocation(head, x) > 0.9
    train_head(head, x, priced, cfg("optim.steps=150"))
    assert invocation(head, x) < 0.02


def test_one_rl_step_changes_the_head_and_the_kl_starts_at_zero():
    x, reward, _ = table()
    head = fresh()
    before = [p.detach().clone() for p in head.parameters()]
    hist = train_head(head, x, reward, cfg("optim.steps=1", "optim.updates=1"))
    assert any(not torch.equal(b, p) for b, p in zip(before, head.parameters(), strict=True))
    assert hist[0]["kl"] == pytest.approx(0.0, abs=1e-7)  # one pass: the head is still the reference


def test_format_weight_scales_only_the_format_term():
    from mmemb.train.outcomes import Outcomes

    o = Outcomes(["a", "b"], ["T", "T"], np.zeros((2, 4)), format=np.array([[1.0, 1.0], [0.0, 1.0]]),
                 ranking=np.array([[0.2, 0.1], [0.5, 0.3]]), tokens=np.array([[0, 0], [40, 10]]),
                 seconds=np.zeros((2, 2)))  # fmt: skip
    np.testing.assert_allclose(o.reward(0.1, "call"), [[1.2, 1.1], [0.4, 1.2]])
    np.testing.assert_allclose(o.reward(0.01, "token", format_weight=0), [[0.2, 0.1], [0.1, 0.2]])


def test_cold_start_fits_the_labels():
    x, reward, helps = table()
    head = fresh()
    train_head(head, x, reward, cfg("optim.cold_start_steps=200", "optim.steps=1", "optim.lr=0"),
               labels=(~helps).astype(np.int64))  # fmt: skip
    assert invocation(head, x, ~helps) > 0.9 and invocation(head, x, helps) < 0.1


# ---- end to end on a tiny model ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("policy")
    toy = make_toy(root / "toy", n=8)
    tasks = json.loads((toy / "tasks.json").read_text())
    for t in tasks:  # the same rows serve as a test split
        shutil.copy(toy / t["name"] / "train.jsonl", toy / t["name"] / "test.jsonl")
        t["splits"]["test"] = t["splits"]["train"]
    (toy / "tasks.json").write_text(json.dumps(tasks))
    return {"toy": toy, "tiny": build_tiny_hf("qwen2_vl", root / "tiny"), "root": root}


def overrides(world, out, *extra):
    return [f"model.init={world['tiny']}", f"data.source={world['toy']}", "policy.budgets=[0,6]",
            "optim.steps=20", "optim.cold_start_steps=0", "run.tensorboard=false", "run.log_every=10",
            f"run.output={out}", "run.batch_size=8", "data.negatives=4", *extra]  # fmt: skip


def test_train_policy_end_to_end(world, tmp_path, monkeypatch):
    monkeypatch.setenv("MMEMB_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    assert main(["train", "policy", *overrides(world, out, "policy.lam=0.5")]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pairs"] == 16 and summary["budgets"] == [0, 6]
    assert summary["train_reward_by_action"]["1"] < summary["train_reward_by_action"]["0"]
    model = Embedder.from_pretrained(out / "final")
    assert model.config.policy.budgets == [0, 6] and "lam=0.5" in model.config.policy.trained
    base = Embedder.from_pretrained(world["tiny"])
    assert model.fingerprint() == base.fingerprint()  # the embedder itself is untouched
    assert model.policy_fingerprint() != base.policy_fingerprint()
    assert not torch.equal(model.policy.linear.weight, base.policy.linear.weight)


def test_sweep_predicts_the_real_adaptive_evaluation(world, tmp_path, monkeypatch):
    monkeypatch.setenv("MMEMB_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "sweep"
    args = ["train", "policy-sweep", "--lams", "0,100", "--tasks", "mmeb-mini", "--data-root",
            str(world["toy"]), "--out", str(out), *overrides(world, tmp_path / "run")]  # fmt: skip
    assert main(args) == 0
    res = json.loads((out / "sweep.json").read_text())
    assert (out / "sweep.png").stat().st_size > 0 and "| adaptive λ=100 |" in (out / "sweep.md").read_text()
    never, priced = res["fixed"]["never (nothink)"], res["curve"][1]
    assert priced["invocation"] == 0.0 and priced["score"] == pytest.approx(never["score"])
    oracle = res["fixed"]["oracle (upper bound)"]
    assert oracle["score"] >= max(r["score"] for r in [never, *res["curve"]]) - 1e-9
    # the λ=0 head, put in the model, evaluated for real in adaptive mode: the sweep's numbers exactly
    model = Embedder.from_pretrained(world["tiny"])
    from mmemb.train.policy import fresh_head

    fresh_head(model, [0, 6])
    model.policy.load(out / res["curve"][0]["head"])
    model.save_pretrained(tmp_path / "adaptive")
    ev = tmp_path / "ev"
    assert main(["eval", "--model", str(tmp_path / "adaptive"), "--tasks", "mmeb-mini", "--data-root",
                 str(world["toy"]), "--qry-mode", "adaptive", "--out", str(ev), "--quiet"]) == 0  # fmt: skip
    analysis = json.loads((ev / "analysis.json").read_text())["adaptive-nothink"]
    assert analysis["ALL"]["invocation_ratio"] == pytest.approx(res["curve"][0]["invocation"])
    for task, score in res["curve"][0]["score_by_task"].items():
        assert analysis[task]["score"] == pytest.approx(score, abs=1e-6)


def test_bad_policy_config_is_refused_before_compute(world, tmp_path, capsys):
    from mmemb.types import InputError

    for bad, match in (("policy.budgets=[3,6]", "budgets"), ("policy.cost=minutes", "cost"),
                       ("policy.group=1", "group"), ("optim.lr=fast", "optim.lr"),
                       ("policy.format_weight=-1", "format_weight")):  # fmt: skip
        with pytest.raises(InputError, match=match):
            load_policy_config(None, [bad])
    missing = overrides(world, tmp_path / "r", f"data.selection={tmp_path / 'nope.jsonl'}")
    assert main(["train", "policy", *missing]) == 2
    assert "nope.jsonl: not found (make it with: mmemb reason select)" in capsys.readouterr().err
