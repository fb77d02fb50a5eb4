"""Rewards and GRPO pieces for the adaptive policy (issue 6 groundwork): hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mmemb.losses.policy import group_advantages, grpo_loss, kl_k3
from mmemb.train.rewards import format_reward, ranking_reward, reasoning_cost, total_reward


def test_format_reward_accepts_both_forms_and_nothing_else():
    assert format_reward("<no_think><gen_emb>") == 1.0
    assert format_reward("<think>a red fruit</think><answer>apple</answer><gen_emb>") == 1.0
    for bad in ("<think>x</think><answer>y</answer>", "<think></think><answer>y</answer><gen_emb>",
                "<no_think>", "apple<gen_emb>", "<think>x</think><gen_emb>", ""):  # fmt: skip
        assert format_reward(bad) == 0.0, bad


def test_ranking_reward_by_hand():
    t = np.array([[1.0, 0.0], [0.0, 1.0]])  # pair 0's target, pair 1's target
    q = np.array([[0.8, 0.6], [0.6, 0.8], [0.0, 1.0]])
    got = ranking_reward(q, np.array([0, 0, 1]), t, np.array([0, 1]))
    assert got == pytest.approx([0.8 - 0.6, 0.0, 1.0 - 0.0])
    # two targets per pair (G target rollouts): rank_term counts own targets in the top-2
    t2 = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [0.8, 0.6]])
    owner_t = np.array([0, 0, 1, 1])
    q2 = np.array([[1.0, 0.0]])  # sims [1, 0.6, 0, 0.8]: top-2 = t0 (own), t3 (other) -> 1/2
    want = 0.5 * ((1 + 0.6) / 2 - (0 + 0.8) / 2)
    assert ranking_reward(q2, np.array([0]), t2, owner_t) == pytest.approx([want])


def test_cost_and_total():
    inv, tok = np.array([True, False, True]), np.array([12, 0, 40])
    assert reasoning_cost(inv, tok, "call").tolist() == [1, 0, 1]
    assert reasoning_cost(inv, tok, "token").tolist() == [12, 0, 40]
    with pytest.raises(ValueError):
        reasoning_cost(inv, tok, "word")
    r = total_reward(np.array([1.0, 1.0, 0.0]), np.array([0.3, 0.1, 0.2]), reasoning_cost(inv, tok), lam=0.25)
    assert r == pytest.approx([1.05, 1.1, -0.05])


def test_group_advantages_by_hand():
    a = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 2.0]), group=2)
    s = math.sqrt(0.5)  # unbiased std of (1, 0)
    assert a.tolist() == pytest.approx([0.5 / (s + 1e-4), -0.5 / (s + 1e-4), 0.0, 0.0, 0.0, 0.0])
    one = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), group=4)
    assert one.tolist() == pytest.approx([0.75 / (0.5 + 1e-4)] + [-0.25 / (0.5 + 1e-4)] * 3)
    with pytest.raises(ValueError):
        group_advantages(torch.zeros(5), group=2)


def test_kl_k3_is_zero_at_equality_and_matches_the_formula():
    lp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.0, -1.5])
    assert kl_k3(lp, ref).tolist() == pytest.approx([0.0, math.exp(0.5) - 0.5 - 1])


def test_grpo_loss_clips_and_masks_by_hand():
    logp = torch.tensor(
        [[math.log(1.5), 0.0], [math.log(0.5), 0.0]], requires_grad=True
    )  # ratios 1.5, 1 / 0.5, 1
    old = torch.zeros(2, 2)
    ref = logp.detach().clone()  # KL 0
    adv = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])  # the last token is padding
    out = grpo_loss(logp, old, ref, adv, mask, max_len=4)
    # row 0: A=+1, ratio 1.5 clipped to 1.28 -> -1.28; ratio 1 -> -1.  row 1: A=-1, ratio 0.5 -> -min(-0.5, -0.8) = 0.8
    assert float(out["policy_loss"].detach()) == pytest.approx((-1.28 - 1.0 + 0.8) / (2 * 4))
    assert float(out["clip_fraction"]) == pytest.approx(2 / 3)
    out["policy_loss"].backward()
    # clipped tokens carry no gradient; the unclipped ratio-1 token has d/dlogp (-ratio*A) = -1 / 8
    assert logp.grad.flatten().tolist() == pytest.approx([0.0, -1 / 8, 0.0, 0.0])
