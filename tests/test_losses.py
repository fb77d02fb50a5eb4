"""InfoNCE (golden values, gradients, two real gloo ranks) and GradCache (equals the full batch)."""

from __future__ import annotations

import math
import socket
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from mmemb.losses import full_batch_backward, gather_with_grad, gradcache_backward, info_nce
from mmemb.losses import gradcache as gradcache_module

# The docstring example of info_nce: q·tᵀ = [[0.8, 0], [0.6, 1]].
Q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
T = torch.tensor([[0.8, 0.6], [0.0, 1.0]])
HARD = torch.tensor([[[0.96, 0.28]], [[0.28, 0.96]]])  # (B=2, H=1, D=2)


def _xent(logits: list[float], label: int) -> float:
    """-log softmax(logits)[label], by hand."""
    return -logits[label] + math.log(sum(math.exp(x) for x in logits))


# ---------------------------------------------------------------------------------------------- info_nce


def test_info_nce_golden_value_both_directions():
    q_to_t = (_xent([0.8, 0.0], 0) + _xent([0.6, 1.0], 1)) / 2  # rows of q·tᵀ
    t_to_q = (_xent([0.8, 0.6], 0) + _xent([0.0, 1.0], 1)) / 2  # rows of t·qᵀ
    assert q_to_t == pytest.approx(0.44206, abs=1e-5)  # the numbers quoted in the docstring
    assert t_to_q == pytest.approx(0.45570, abs=1e-5)

    out = info_nce(Q, T, temperature=1.0)
    assert out["loss"].item() == pytest.approx((q_to_t + t_to_q) / 2, abs=1e-6)
    assert out["loss"].item() == pytest.approx(0.44888, abs=1e-5)
    assert out["accuracy"].item() == 1.0
    assert not out["accuracy"].requires_grad

    one_way = info_nce(Q, T, temperature=1.0, symmetric=False)
    assert one_way["loss"].item() == pytest.approx(q_to_t, abs=1e-6)

    # The temperature divides the logits.
    tau = 0.5
    scaled = (_xent([1.6, 0.0], 0) + _xent([1.2, 2.0], 1)) / 2
    assert info_nce(Q, T, temperature=tau, symmetric=False)["loss"].item() == pytest.approx(scaled, abs=1e-6)


def test_info_nce_golden_value_hard_negatives():
    # Candidates for every query: [t1, t2, h1, h2]; q1·h1 = 0.96 beats its positive 0.8.
    q_to_t = (_xent([0.8, 0.0, 0.96, 0.28], 0) + _xent([0.6, 1.0, 0.28, 0.96], 1)) / 2
    t_to_q = (_xent([0.8, 0.6], 0) + _xent([0.0, 1.0], 1)) / 2  # hard negatives are not queries
    out = info_nce(Q, T, HARD, temperature=1.0)
    assert out["loss"].item() == pytest.approx((q_to_t + t_to_q) / 2, abs=1e-6)
    assert out["accuracy"].item() == 0.5
    assert info_nce(Q, T, HARD, temperature=1.0, symmetric=False)["loss"].item() == pytest.approx(
        q_to_t, abs=1e-6
    )

    # One pair and one hard negative: logits [q1·t1, q1·h1] = [0.8, 0.96]; t→q has a single column (loss 0).
    one = info_nce(Q[:1], T[:1], HARD[:1], temperature=1.0)
    assert one["loss"].item() == pytest.approx((_xent([0.8, 0.96], 0) + 0.0) / 2, abs=1e-6)
    assert one["accuracy"].item() == 0.0

    empty = info_nce(Q, T, torch.zeros(2, 0, 2), temperature=1.0)
    assert empty["loss"].item() == pytest.approx(info_nce(Q, T, temperature=1.0)["loss"].item(), abs=1e-7)


def _reference_info_nce(
    q: Tensor, t: Tensor, hard: Tensor | None, temperature: float, symmetric: bool, rows: range | None = None
) -> Tensor:
    """The same formula written row by row with logsumexp (no matrix product, no cross_entropy).

    q, t: (N, D) the global batch; hard: (N, H, D); rows: the query rows averaged (default all).
    """
    n = q.shape[0]
    rows = range(n) if rows is None else rows
    cands = [t[j] for j in range(n)]
    if hard is not None:
        cands += [h for j in range(n) for h in hard[j]]
    q_terms, t_terms = [], []
    for i in rows:
        scores = torch.stack([q[i] @ c for c in cands]) / temperature
        q_terms.append(torch.logsumexp(scores, 0) - scores[i])
        scores_t = torch.stack([t[i] @ q[j] for j in range(n)]) / temperature
        t_terms.append(torch.logsumexp(scores_t, 0) - scores_t[i])
    loss = torch.stack(q_terms).mean()
    if symmetric:
        loss = 0.5 * (loss + torch.stack(t_terms).mean())
    return loss


def _random_batch(n: int, h: int, d: int, seed: int, dtype=torch.float64) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=-1)  # (N, D)
    t = F.normalize(q + 0.8 * torch.randn(n, d, generator=g, dtype=dtype), dim=-1)  # (N, D)
    hard = F.normalize(t[:, None] + 0.8 * torch.randn(n, h, d, generator=g, dtype=dtype), dim=-1)  # (N, H, D)
    return q, t, hard


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("with_hard", [True, False])
def test_info_nce_matches_reference_values_and_gradients(symmetric: bool, with_hard: bool):
    q, t, hard = _random_batch(5, 2, 4, seed=1)
    args = [x.clone().requires_grad_() for x in (q, t, hard)]
    ref_args = [x.clone().requires_grad_() for x in (q, t, hard)]
    out = info_nce(args[0], args[1], args[2] if with_hard else None, temperature=0.1, symmetric=symmetric)
    ref = _reference_info_nce(ref_args[0], ref_args[1], ref_args[2] if with_hard else None, 0.1, symmetric)
    torch.testing.assert_close(out["loss"], ref, rtol=0, atol=1e-12)
    out["loss"].backward()
    ref.backward()
    for name, a, b in zip(("q", "t", "hard"), args, ref_args, strict=True):
        if b.grad is None:  # hard without hard negatives
            assert a.grad is None, name
            continue
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-12, msg=f"gradient of {name}")


def test_info_nce_gradcheck():
    q, t, hard = _random_batch(3, 2, 3, seed=2)
    inputs = tuple(x.clone().requires_grad_() for x in (q, t, hard))
    assert torch.autograd.gradcheck(lambda a, b, c: info_nce(a, b, c, temperature=0.3)["loss"], inputs)


def test_info_nce_rejects_bad_shapes():
    with pytest.raises(ValueError, match="q and t"):
        info_nce(Q, T[:1])
    with pytest.raises(ValueError, match="hard"):
        info_nce(Q, T, HARD[:, 0])
    with pytest.raises(ValueError, match="temperature"):
        info_nce(Q, T, temperature=0.0)


# ---------------------------------------------------------------------------------------------- gather


def test_gather_is_identity_without_distributed():
    assert not (dist.is_available() and dist.is_initialized())
    x = torch.randn(3, 4, requires_grad=True)
    assert gather_with_grad(x) is x


WORLD, LOCAL_B, HARD_H, DIM_G, TAU_G = 2, 3, 2, 4, 0.1


def _gloo_worker(rank: int, world: int, port: int, folder: str) -> None:
    """One rank: its shard of the global batch, info_nce with gathered candidates, save loss and grads."""
    import os

    from safetensors.torch import save_file

    if sys.platform.startswith("linux"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=30),
    )
    try:
        Path(folder, f"ready{rank}").write_text("ok")
        q, t, hard = _random_batch(world * LOCAL_B, HARD_H, DIM_G, seed=3)
        rows = slice(rank * LOCAL_B, (rank + 1) * LOCAL_B)
        lq, lt, lh = (x[rows].clone().requires_grad_() for x in (q, t, hard))
        out = info_nce(lq, lt, lh, temperature=TAU_G)
        out["loss"].backward()
        tensors = {"loss": out["loss"].detach(), "accuracy": out["accuracy"]}
        tensors.update({"q_grad": lq.grad, "t_grad": lt.grad, "hard_grad": lh.grad})
        save_file(
            {k: v.contiguous() for k, v in tensors.items()}, str(Path(folder, f"rank{rank}.safetensors"))
        )
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_info_nce_two_gloo_ranks_equal_single_process(tmp_path):
    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this torch build")
    import torch.multiprocessing as mp
    from safetensors.torch import load_file

    for attempt in range(3):  # a free port can be taken between probing and binding: try another
        try:
            mp.spawn(_gloo_worker, args=(WORLD, _free_port(), str(tmp_path)), nprocs=WORLD, join=True)
            break
        except Exception as exc:
            if attempt < 2:
                continue
            if all((tmp_path / f"ready{r}").exists() for r in range(WORLD)):
                raise  # the ranks started: the failure is ours
            pytest.skip(f"could not start {WORLD} gloo processes on 127.0.0.1 in this sandbox: {exc}")
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(WORLD)]

    q, t, hard = _random_batch(WORLD * LOCAL_B, HARD_H, DIM_G, seed=3)
    gq, gt, gh = (x.clone().requires_grad_() for x in (q, t, hard))
    full = info_nce(gq, gt, gh, temperature=TAU_G)  # single process, the whole global batch
    full["loss"].backward()

    for r, res in enumerate(ranks):
        # Rank r's loss is the global-batch loss averaged over rank r's own queries and targets.
        view = _reference_info_nce(q, t, hard, TAU_G, True, rows=range(r * LOCAL_B, (r + 1) * LOCAL_B))
        torch.testing.assert_close(res["loss"], view, rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.stack([r["loss"] for r in ranks]).mean(), full["loss"].detach())
    torch.testing.assert_close(torch.stack([r["accuracy"] for r in ranks]).mean(), full["accuracy"])
    # all_gather's backward sums every rank's contribution into the local shard, so each rank holds
    # d(Σ_ranks loss)/d(local) = W · dL_global/d(local); DDP's mean over ranks removes the W.
    for name, leaf in (("q_grad", gq), ("t_grad", gt), ("hard_grad", gh)):
        gathered = torch.cat([r[name] for r in ranks]) / WORLD
        torch.testing.assert_close(gathered, leaf.grad, rtol=0, atol=1e-12, msg=name)


# ---------------------------------------------------------------------------------------------- GradCache

VOCAB, DIM, SEQ, BATCH = 13, 8, 5, 8


class _Tiny(nn.Module):
    """Embedding + one transformer layer (dropout in train mode) + an LM head, in float64."""

    def __init__(self, dropout: float) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(VOCAB, DIM)
        self.layer = nn.TransformerEncoderLayer(
            DIM, nhead=2, dim_feedforward=16, dropout=dropout, batch_first=True
        )
        self.head = nn.Linear(DIM, VOCAB)
        self.double().train()

    def forward(self, tokens: Tensor) -> Tensor:  # (b, T) -> (b, T, D)
        return self.layer(self.embed(tokens))


def _make_encode(model: _Tiny, total: int):
    def encode(chunk: tuple[Tensor, Tensor]) -> tuple[dict[str, Tensor], Tensor]:
        q_tok, t_tok = chunk  # (b, T) each
        hq, ht = model(q_tok), model(t_tok)  # (b, T, D)
        embs = {
            "q_disc": F.normalize(hq.mean(dim=1), dim=-1),  # (b, D)
            "t_disc": F.normalize(ht.mean(dim=1), dim=-1),
            "q_gen": F.normalize(hq[:, -1], dim=-1),
            "t_gen": F.normalize(ht[:, -1], dim=-1),
        }
        logits = model.head(ht[:, :-1])  # (b, T-1, V): next-token prediction on the target view
        lm = F.cross_entropy(logits.reshape(-1, VOCAB), t_tok[:, 1:].reshape(-1)) * (q_tok.shape[0] / total)
        return embs, lm

    return encode


def _loss_fn(reps: dict[str, Tensor]) -> dict[str, Tensor]:
    disc = info_nce(reps["q_disc"], reps["t_disc"])
    gen = info_nce(reps["q_gen"], reps["t_gen"])
    return {"disc_loss": disc["loss"], "gen_loss": gen["loss"], "disc_accuracy": disc["accuracy"]}


def _tokens(seed: int, n: int = BATCH) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (n, SEQ), generator=g), torch.randint(0, VOCAB, (n, SEQ), generator=g)


def _chunks(tokens: tuple[Tensor, Tensor], size: int) -> list[tuple[Tensor, Tensor]]:
    q, t = tokens
    return [(q[i : i + size], t[i : i + size]) for i in range(0, q.shape[0], size)]


def _run(fn, model: _Tiny, chunks, seed: int = 7, zero: bool = True, **kw):
    """Run one backward function from a fixed RNG state; return (outputs, grads, next random draw)."""
    if zero:
        model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    total = sum(c[0].shape[0] for c in chunks)
    out = fn(_make_encode(model, total), chunks, _loss_fn, **kw)
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return out, grads, torch.rand(3)


def _assert_same(out_a, grads_a, out_b, grads_b):
    assert set(out_a) == set(out_b) == {"disc_loss", "gen_loss", "disc_accuracy", "extra_loss", "loss"}
    for k in out_a:
        torch.testing.assert_close(out_a[k], out_b[k], rtol=0, atol=1e-10, msg=k)
    assert set(grads_a) == set(grads_b)
    for n in grads_a:
        torch.testing.assert_close(grads_a[n], grads_b[n], rtol=1e-8, atol=1e-10, msg=f"gradient of {n}")


@pytest.mark.parametrize(
    ("dropout", "cache_chunk", "full_chunk"),
    [
        (0.1, 2, 2),  # dropout: the reference must draw its masks chunk by chunk too
        (0.1, 8, 8),
        (0.0, 2, 8),  # no dropout: four chunks of 2 equal one forward of 8
        (0.0, 8, 8),
    ],
)
def test_gradcache_equals_full_batch(dropout: float, cache_chunk: int, full_chunk: int):
    model = _Tiny(dropout)
    tokens = _tokens(seed=1)
    out_c, grads_c, rng_c = _run(gradcache_backward, model, _chunks(tokens, cache_chunk))
    out_f, grads_f, rng_f = _run(full_batch_backward, model, _chunks(tokens, full_chunk))
    _assert_same(out_c, grads_c, out_f, grads_f)
    assert out_c["extra_loss"] > 0 and out_c["loss"] > out_c["disc_loss"] + out_c["gen_loss"]
    torch.testing.assert_close(
        out_c["loss"], out_c["disc_loss"] + out_c["gen_loss"] + out_c["extra_loss"], rtol=0, atol=1e-12
    )
    if cache_chunk == full_chunk:  # same draws in the same order: the RNG ends where the reference's does
        torch.testing.assert_close(rng_c, rng_f, rtol=0, atol=0)


def test_gradcache_needs_the_rng_restore(monkeypatch):
    model = _Tiny(0.1)
    chunks = _chunks(_tokens(seed=1), 2)
    out_f, grads_f, _ = _run(full_batch_backward, model, chunks)
    out_c, grads_c, _ = _run(gradcache_backward, model, chunks)
    _assert_same(out_c, grads_c, out_f, grads_f)

    monkeypatch.setattr(gradcache_module, "_set_rng_state", lambda state: None)
    out_n, grads_n, _ = _run(gradcache_backward, model, chunks)
    torch.testing.assert_close(out_n["loss"], out_f["loss"], rtol=0, atol=1e-10)  # pass 1 is unchanged
    worst = max((grads_n[n] - grads_f[n]).abs().max().item() for n in grads_f)
    assert worst > 1e-3, (
        "without restoring the RNG, pass 2 draws other dropout masks and the gradient changes"
    )


def test_gradcache_accumulates_over_calls():
    model = _Tiny(0.1)
    first, second = _chunks(_tokens(seed=1), 2), _chunks(_tokens(seed=2), 2)
    _, g_first, _ = _run(gradcache_backward, model, first, seed=11)
    _, g_second, _ = _run(gradcache_backward, model, second, seed=12)

    _run(gradcache_backward, model, first, seed=11)
    _, g_both, _ = _run(gradcache_backward, model, second, seed=12, zero=False)
    for n in g_both:
        torch.testing.assert_close(g_both[n], g_first[n] + g_second[n], rtol=1e-8, atol=1e-10, msg=n)
    assert max((g_both[n] - g_second[n]).abs().max().item() for n in g_both) > 1e-3  # not zeroed in between


def test_gradcache_backward_hook_is_applied_once():
    """A loss-scaling ``backward`` (accelerate: 1/accumulation steps, fp16 scale) must scale the whole
    gradient once; the gradient cache itself must not go through it."""
    model = _Tiny(0.1)
    chunks = _chunks(_tokens(seed=1), 2)
    calls: list[Tensor] = []

    def half_backward(loss: Tensor) -> None:
        calls.append(loss)
        (0.5 * loss).backward()

    _, grads, _ = _run(gradcache_backward, model, chunks)
    _, halved, _ = _run(gradcache_backward, model, chunks, backward=half_backward)
    assert len(calls) == len(chunks)
    for n in grads:
        torch.testing.assert_close(halved[n], 0.5 * grads[n], rtol=1e-8, atol=1e-12, msg=n)
    _, halved_full, _ = _run(full_batch_backward, model, chunks, backward=half_backward)
    for n in grads:
        torch.testing.assert_close(halved_full[n], halved[n], rtol=1e-8, atol=1e-10, msg=n)


def test_gradcache_rejects_reserved_or_missing_loss_names():
    model = _Tiny(0.0)
    chunks = _chunks(_tokens(seed=1), 4)
    encode = _make_encode(model, BATCH)
    for fn in (gradcache_backward, full_batch_backward):
        with pytest.raises(ValueError, match="reserved"):
            fn(encode, chunks, lambda reps: info_nce(reps["q_disc"], reps["t_disc"]))
        with pytest.raises(ValueError, match="no '\\*_loss'"):
            fn(
                encode,
                chunks,
                lambda reps: {"accuracy": info_nce(reps["q_disc"], reps["t_disc"])["accuracy"]},
            )
        with pytest.raises(ValueError, match="empty"):
            fn(encode, [], _loss_fn)


def test_gradcache_leaves_the_rng_where_full_batch_does():
    """Even when loss_fn itself draws random numbers, the next step sees the reference's RNG state."""

    def noisy_loss_fn(reps: dict[str, Tensor]) -> dict[str, Tensor]:
        torch.rand(5)  # e.g. a random subsample of negatives
        return _loss_fn(reps)

    model = _Tiny(0.1)
    chunks = _chunks(_tokens(seed=1), 2)
    after = []
    for fn in (gradcache_backward, full_batch_backward):
        torch.manual_seed(3)
        fn(_make_encode(model, BATCH), chunks, noisy_loss_fn)
        after.append(torch.rand(3))
    torch.testing.assert_close(after[0], after[1], rtol=0, atol=0)


def test_duplicate_targets_are_not_negatives():
    """Rows 0 and 1 share a target: each must not be pushed away from the other's (identical) target."""
    torch.manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(3, 4, dtype=torch.float64), dim=-1)
    t = torch.nn.functional.normalize(torch.randn(3, 4, dtype=torch.float64), dim=-1)
    ids = torch.tensor([7, 7, 9])
    got = info_nce(q, t, temperature=0.5, target_ids=ids)["loss"]
    s = q @ t.T / 0.5  # (3, 3)
    keep = torch.tensor([[1, 0, 1], [0, 1, 1], [1, 1, 1]], dtype=torch.bool)  # drop the duplicate column
    lq = [-(s[i, i] - torch.logsumexp(s[i][keep[i]], 0)) for i in range(3)]
    st = t @ q.T / 0.5
    lt = [-(st[i, i] - torch.logsumexp(st[i][keep[i]], 0)) for i in range(3)]
    want = 0.5 * (torch.stack(lq).mean() + torch.stack(lt).mean())
    assert torch.allclose(got, want)
    assert not torch.allclose(got, info_nce(q, t, temperature=0.5)["loss"])  # the mask changes the loss
    distinct = torch.tensor([1, 2, 3])
    assert torch.allclose(
        info_nce(q, t, temperature=0.5, target_ids=distinct)["loss"], info_nce(q, t, temperature=0.5)["loss"]
    )
