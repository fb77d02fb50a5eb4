"""Policy training: GRPO teaches the policy head when to reason (and how much). One plain loop.

    outcomes = every action's result for every training query, embedder frozen   (outcomes.py, cached)
    R[a, i]  = format + rank_term · gap − λ · cost                                 (rewards.py)
    cold start: cross-entropy of the head on `mmemb reason select`'s think / no-think labels
    reference  = the head after the cold start (frozen)
    for step in range(steps):
        queries = the next `batch` of a seeded order
        actions = G samples per query from softmax(head(features) / temperature)      (rollouts)
        A       = group-normalised rewards R[action, query]                           (losses.policy)
        for each of `updates` passes: clipped-ratio loss + β·k3 KL to the reference; Adam step
    save: the embedder with the trained head (final/), log.jsonl, summary.json

Departures from the published methods, and why:
  1. Only the decision is trained (a linear head on the disc state; policy_head.py), not the LM. MMEmb-R1's RL
     teaches "a binary policy"; UME-R1's RL also trains the reasoning text. Freezing the embedder keeps every
     embedding (and the index of targets) unchanged, makes the reward of each action a fixed property of the
     query, and makes RL cheap enough for two CPU cores: outcomes are computed once and cached.
  2. The decision is read by a head initialised from the LM head's rows of `<no_think>` and `<think>`, not
     from the LM head itself: the same choice before training, and training it cannot move the embeddings
     (nano ties its LM head to the input embeddings).
  3. Reasoning within a rollout is decoded as at inference (the model's generation settings; greedy by
     default), so the G rollouts of a query differ only in their action. UME-R1 samples the text at
     temperature 1 because it trains the text.
  4. A rollout is ranked against its own target and the pair's negatives (its own, then mined ones), not
     against the other targets of the batch: the batch mixes tasks, and other tasks' targets are easy.
  5. Optional budget actions (none / short / long token caps) beyond the paper's binary choice.
  6. The KL reference is the cold-started head (GRPO's reference is its SFT model); the loss divides by the
     number of rollouts (a single decision token each: UME-R1's constant max-length divisor is 1 here).
"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..config import PolicyConfig
from ..data.pairs import Pair
from ..embedder import Embedder, load_args
from ..io import atomic_json
from ..losses.policy import group_advantages, grpo_loss
from ..policy_head import PolicyHead
from ..runtime import check_tensorboard, tensorboard_writer
from ..types import InputError
from .config import PolicyTrainConfig, save_train_config
from .data import BatchOrder, read_selection, read_training_pairs
from .outcomes import Outcomes, compute_outcomes


def cold_start_labels(
    embedder: Embedder, pairs: list[Pair], selection: Path, budgets: list[int]
) -> np.ndarray:
    """(N,) action per pair from the selection: 0 for no-think; for think, the smallest budget that holds
    the chosen rationale's tokens (the largest when none does)."""
    chosen = read_selection(pairs, selection, embedder.config.tokens)
    tok = embedder.backbone.tokenizer
    labels = np.zeros(len(pairs), dtype=np.int64)
    for i, p in enumerate(pairs):
        if p.id in chosen:
            n = len(tok(chosen[p.id][0], add_special_tokens=False)["input_ids"])
            labels[i] = next((a for a, b in enumerate(budgets) if a and b >= n), len(budgets) - 1)
    return labels


def train_head(
    head: PolicyHead,
    features: np.ndarray,
    reward: np.ndarray,
    cfg: PolicyTrainConfig,
    labels: np.ndarray | None = None,
    log=None,
) -> list[dict]:
    """Cold start (when labels are given) then GRPO on a reward table. features (N, D), reward (A, N),
    labels (N,). Returns one record per logged step; `log(record)` is called with each."""
    o, p = cfg.optim, cfg.policy
    torch.manual_seed(cfg.run.seed)
    X = torch.from_numpy(features).float()  # (N, D)
    R = torch.from_numpy(reward).float()  # (A, N)
    N = X.shape[0]
    if labels is not None and o.cold_start_steps:
        y = torch.from_numpy(labels)
        opt = torch.optim.Adam(head.parameters(), lr=o.cold_start_lr)
        for _ in range(o.cold_start_steps):
            loss = F.cross_entropy(head(X), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    ref = copy.deepcopy(head).requires_grad_(False)
    opt = torch.optim.Adam(head.parameters(), lr=o.lr)
    gen = torch.Generator().manual_seed(cfg.run.seed)
    order = BatchOrder(N, cfg.run.seed)
    G, T = p.group, p.temperature
    history = []
    for step in range(1, o.steps + 1):
        idx = torch.tensor(order.next(min(o.batch, N)))  # (n,)
        x = X[idx]  # (n, D)
        with torch.no_grad():
            logits = head(x) / T  # (n, A)
            actions = torch.multinomial(
                torch.softmax(logits, -1), G, replacement=True, generator=gen
            )  # (n, G)
            old = torch.log_softmax(logits, -1).gather(1, actions)  # (n, G)
            ref_logp = torch.log_softmax(ref(x) / T, -1).gather(1, actions)
            rewards = R[actions, idx[:, None]]  # (n, G)
            adv = group_advantages(rewards.reshape(-1), G)  # (n·G,)
        for _ in range(o.updates):
            logp = torch.log_softmax(head(x) / T, -1).gather(1, actions)  # (n, G)
            parts = grpo_loss(
                logp.reshape(-1, 1), old.reshape(-1, 1), ref_logp.reshape(-1, 1), adv,
                torch.ones(logp.numel(), 1), max_len=1, eps_low=o.eps_low, eps_high=o.eps_high, beta=o.beta,
            )  # fmt: skip
            opt.zero_grad()
            parts["policy_loss"].backward()
            opt.step()
        if step % cfg.run.log_every == 0 or step == o.steps or step == 1:
            with torch.no_grad():
                greedy = head(X).argmax(-1)  # (N,)
            record = {
                "step": step,
                "reward": float(rewards.mean()),
                "sampled_invocation": float((actions > 0).float().mean()),
                "invocation": float((greedy > 0).float().mean()),
                "greedy_reward": float(R[greedy, torch.arange(N)].mean()),
                "kl": float(parts["kl"]),
                "clip_fraction": float(parts["clip_fraction"]),
                "policy_loss": float(parts["policy_loss"].detach()),
            }
            history.append(record)
            if log:
                log(record)
    return history


def fresh_head(embedder: Embedder, budgets: list[int]) -> None:
    """Give the embedder an untrained head for these budgets (the LM's own preference; policy_head.py)."""
    embedder.config.policy = PolicyConfig(budgets=list(budgets))
    width = embedder.backbone.input_embeddings().weight.shape[1]
    embedder.policy = PolicyHead(width, len(budgets)).to(embedder.backbone.device)
    embedder.reset_policy()


def load_inputs(
    cfg: PolicyTrainConfig, cache_root: Path | None = None, progress: bool = True
) -> tuple[Embedder, list[Pair], Outcomes, np.ndarray | None]:
    """The embedder (with a fresh head), the training pairs, their outcomes and the cold-start labels."""
    from ..paths import embeddings_dir

    d = cfg.data
    if d.selection and not Path(d.selection).is_file():
        raise InputError(f"data.selection {d.selection}: not found (make it with: mmemb reason select)")
    pairs = read_training_pairs(d)
    if len(pairs) < 2:
        raise InputError(f"data.source {d.source}: {len(pairs)} pair(s); the policy needs at least 2")
    embedder = Embedder.from_pretrained(cfg.model.init, **load_args(cfg.model))  # backbone: fresh models only
    fresh_head(embedder, cfg.policy.budgets)
    outcomes = compute_outcomes(
        embedder, pairs, cfg.policy.budgets, cache_root or embeddings_dir(),
        d.negatives, cfg.run.batch_size, progress,
    )  # fmt: skip
    labels = (
        cold_start_labels(embedder, pairs, Path(d.selection), cfg.policy.budgets) if d.selection else None
    )
    return embedder, pairs, outcomes, labels


def train_policy(cfg: PolicyTrainConfig, log: bool = True, cache_root: Path | None = None) -> Path:
    """Train the policy head; write `run.output`/final (the embedder with its head) and return it."""
    t0 = time.perf_counter()
    check_tensorboard(cfg.run.tensorboard)  # before the outcomes, which cost minutes
    embedder, pairs, outcomes, labels = load_inputs(cfg, cache_root, progress=log)
    out = Path(cfg.run.output)
    out.mkdir(parents=True, exist_ok=True)
    save_train_config(cfg, out / "config.yaml")
    writer = tensorboard_writer(cfg.run.tensorboard, out)
    reward = outcomes.reward(cfg.policy.lam, cfg.policy.cost, cfg.policy.format_weight)

    def show(r: dict) -> None:
        if writer:
            for k, v in r.items():
                if k != "step":
                    writer.add_scalar(f"policy/{k}", v, r["step"])
        if log:
            print(f"step {r['step']}/{cfg.optim.steps} reward {r['reward']:.4f} invocation "
                  f"{r['invocation']:.2f} (sampled {r['sampled_invocation']:.2f}) kl {r['kl']:.4f} "
                  f"clip {r['clip_fraction']:.2f}", file=sys.stderr, flush=True)  # fmt: skip

    history = train_head(embedder.policy, outcomes.features, reward, cfg, labels, show)
    if writer:
        writer.close()
    with torch.no_grad():
        actions = embedder.policy(torch.from_numpy(outcomes.features)).argmax(-1).numpy()
    summary = {
        "lam": cfg.policy.lam,
        "cost": cfg.policy.cost,
        "budgets": cfg.policy.budgets,
        "pairs": len(pairs),
        "train_invocation": float((actions > 0).mean()),
        "train_invocation_by_task": per_task_invocation(outcomes.tasks, actions),
        "train_reward_by_action": {str(a): float(reward[a].mean()) for a in range(len(reward))},
        "cold_start_think_ratio": None if labels is None else float((labels > 0).mean()),
        "history": history,
        "seconds": time.perf_counter() - t0,
    }
    atomic_json(out / "summary.json", summary)
    final = out / "final"
    embedder.config.policy.trained = (
        f"mmemb train policy: lam={cfg.policy.lam} cost={cfg.policy.cost} steps={cfg.optim.steps} "
        f"cold_start={cfg.optim.cold_start_steps} data={cfg.data.source} pairs={len(pairs)}"
    )
    embedder.save_pretrained(final)
    if log:
        print(f"mmemb train policy: λ={cfg.policy.lam}, reasons on {summary['train_invocation']:.0%} of the "
              f"training queries -> {final} ({summary['seconds']:.0f}s)", file=sys.stderr)  # fmt: skip
    return final


def per_task_invocation(tasks: list[str], actions: np.ndarray) -> dict[str, float]:
    by: dict[str, list[bool]] = {}
    for t, a in zip(tasks, actions, strict=True):
        by.setdefault(t, []).append(bool(a > 0))
    return {t: float(np.mean(v)) for t, v in sorted(by.items())}
