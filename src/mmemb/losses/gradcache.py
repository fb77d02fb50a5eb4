"""GradCache: the gradient of a full-batch contrastive loss with the activation memory of one chunk.

Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup". A contrastive
loss L(e) couples every example of the batch, so it cannot be split into per-chunk losses; but it depends on
the parameters θ only through the embeddings e = f_θ(x). By the chain rule

    dL/dθ = Σ_chunks Σ_rows (∂L/∂e_row) · (∂e_row/∂θ)

so the gradient splits into two cheap parts:

1. Pass 1 (no graph): embed every chunk under ``torch.no_grad()`` and keep only the embeddings (B, D).
   Build them into leaf tensors, evaluate L on the full batch and backpropagate to the embeddings only:
   g = ∂L/∂e, a (B, D) "gradient cache". The encoder is not in this graph, so it costs only O(B·D).
2. Pass 2 (one chunk at a time): re-embed the chunk with a graph and backpropagate the surrogate
   Σ_rows e_row · g_row (g constant), whose gradient w.r.t. θ is exactly that chunk's share of dL/dθ.
   The graph is freed before the next chunk, so peak activation memory is that of *one chunk*, whatever
   the batch size; the price is a second forward of every chunk (about +1/3 compute).

A per-example loss that is additive over chunks (an LM loss on the reasoning, already scaled for the full
batch) needs no cache: ``encode`` returns it as ``extra`` and pass 2 simply adds it to the surrogate.

Why the RNG is restored: pass 2 must recompute the *same* embeddings that pass 1 fed to the loss, else g
belongs to a different function. Dropout draws from the RNG, so each chunk's CPU (and current CUDA
device's) RNG state is recorded before its pass-1 forward and restored before its pass-2 forward; the
dropout masks repeat exactly. Afterwards the RNG is left where ``full_batch_backward`` would leave it.

What ``encode`` must satisfy: it is a pure function of (chunk, parameters, RNG). Modules with running
statistics (BatchNorm in train mode) update twice per step; non-deterministic kernels make pass 2 differ
from pass 1 by rounding, which makes the gradient approximate to that order.

Neither function zeroes gradients or steps an optimiser, so the caller may accumulate over several calls.
``backward`` is called once per chunk (GradCache) or once (full batch); pass ``accelerator.backward`` under
accelerate. The gradient cache itself is computed with ``torch.autograd.grad``, never through
``backward``, so a loss scaling applied by ``backward`` (accumulation steps, fp16 loss scale) is applied
exactly once. Under DDP pass ``no_sync`` (e.g. ``lambda: accelerator.no_sync(model)``): every chunk but the
last then accumulates locally and DDP all-reduces once, at the last chunk's backward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["full_batch_backward", "gradcache_backward"]

Encode = Callable[[Any], tuple[dict[str, Tensor], Tensor]]
LossFn = Callable[[dict[str, Tensor]], dict[str, Tensor]]
Backward = Callable[[Tensor], None]

RESERVED = ("loss", "extra_loss")


def _default_backward(loss: Tensor) -> None:
    loss.backward()


@dataclass
class _RngState:
    cpu: Tensor
    cuda: Tensor | None  # the current CUDA device's generator; None without CUDA


def _get_rng_state() -> _RngState:
    cuda = torch.cuda.get_rng_state() if torch.cuda.is_available() else None
    return _RngState(cpu=torch.get_rng_state(), cuda=cuda)


def _set_rng_state(state: _RngState) -> None:
    torch.set_rng_state(state.cpu)
    if state.cuda is not None:
        torch.cuda.set_rng_state(state.cuda)


def _concat(per_chunk: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Concatenate each named embedding over chunks along dim 0, in chunk order: (b, ...) -> (B, ...)."""
    names = list(per_chunk[0])
    for i, embs in enumerate(per_chunk):
        if list(embs) != names:
            raise ValueError(f"encode returned names {list(embs)} for chunk {i} but {names} for chunk 0")
    return {name: torch.cat([embs[name] for embs in per_chunk], dim=0) for name in names}


def _contrastive(out: dict[str, Tensor]) -> Tensor:
    """Sum of the ``*_loss`` entries of ``loss_fn``'s output (a scalar)."""
    clash = [k for k in RESERVED if k in out]
    if clash:
        raise ValueError(
            f"loss_fn returned the reserved key(s) {clash}: name its terms '<name>_loss' (e.g. 'disc_loss');"
            " 'loss' and 'extra_loss' are filled in by gradcache"
        )
    terms = [v for k, v in out.items() if k.endswith("_loss")]
    if not terms:
        raise ValueError(f"loss_fn returned no '*_loss' entry (keys: {list(out)})")
    return sum(terms[1:], terms[0])


def _result(out: dict[str, Tensor], contrastive: Tensor, extra: Tensor) -> dict[str, Tensor]:
    result = {k: v.detach() if isinstance(v, Tensor) else v for k, v in out.items()}
    result["extra_loss"] = extra.detach()
    result["loss"] = contrastive.detach() + extra.detach()
    return result


def _sum_extras(extras: Sequence[Tensor]) -> Tensor:
    return torch.stack([x.reshape(()) for x in extras]).sum()


def full_batch_backward(
    encode: Encode,
    chunks: Sequence[Any],
    loss_fn: LossFn,
    backward: Backward | None = None,
) -> dict[str, Tensor]:
    """Reference: encode every chunk with a graph, concatenate, backpropagate once.

    total = Σ loss_fn(concat embeddings)[*_loss] + Σ_chunks extra. Holds the activations of the whole batch;
    use it when memory is no issue. Returns ``loss_fn``'s output detached plus ``extra_loss`` and ``loss``.
    """
    backward = backward or _default_backward
    if len(chunks) == 0:
        raise ValueError("full_batch_backward: chunks is empty")
    encoded = [encode(chunk) for chunk in chunks]
    reps = _concat([embs for embs, _ in encoded])  # name -> (B, ...)
    out = loss_fn(reps)
    contrastive = _contrastive(out)
    extra = _sum_extras([x for _, x in encoded])
    backward(contrastive + extra)
    return _result(out, contrastive, extra)


def gradcache_backward(
    encode: Encode,
    chunks: Sequence[Any],
    loss_fn: LossFn,
    backward: Backward | None = None,
    no_sync: Callable[[], AbstractContextManager] | None = None,
) -> dict[str, Tensor]:
    """Accumulate into the parameters' ``.grad`` exactly the gradient ``full_batch_backward`` would.

    Args:
        encode: ``encode(chunk) -> (embeddings, extra)``; embeddings maps names to (b, ...) tensors (e.g.
            "q_disc", "t_disc", "q_gen", "t_gen"), extra is a scalar loss additive over examples and already
            scaled for the full batch (may be a zero tensor).
        chunks: the sub-batches, in order; the full batch is their concatenation.
        loss_fn: full-batch embeddings (name -> (B, ...)) to named outputs; the ``*_loss`` entries are summed.
        backward: how to backpropagate a scalar (default ``loss.backward()``; e.g. ``accelerator.backward``).
        no_sync: a context in which a pass-2 forward and backward do not synchronise gradients across
            processes (e.g. ``lambda: accelerator.no_sync(model)``); used for every chunk but the last, so
            DDP all-reduces once per batch instead of once per chunk.

    Returns:
        ``loss_fn``'s output detached, plus ``extra_loss`` (Σ extra) and ``loss`` (contrastive + extra).
    """
    backward = backward or _default_backward
    if len(chunks) == 0:
        raise ValueError("gradcache_backward: chunks is empty")

    # Pass 1: embeddings without a graph; remember each chunk's RNG state.
    states: list[_RngState] = []
    cached: list[dict[str, Tensor]] = []
    extras: list[Tensor] = []
    with torch.no_grad():
        for chunk in chunks:
            states.append(_get_rng_state())
            embs, extra = encode(chunk)
            cached.append({name: e.detach() for name, e in embs.items()})
            extras.append(extra.detach())

    # The gradient cache: g = ∂L/∂e for the full batch, the encoder not in the graph.
    reps = {name: e.requires_grad_() for name, e in _concat(cached).items()}  # leaves, (B, ...)
    out = loss_fn(reps)
    contrastive = _contrastive(out)
    names = list(reps)
    grads = torch.autograd.grad(contrastive, [reps[n] for n in names], allow_unused=True)
    cache = {n: g for n, g in zip(names, grads, strict=True) if g is not None}  # name -> (B, ...)
    end_state = _get_rng_state()

    # Pass 2: per chunk, same dropout masks, backpropagate Σ e·g (+ extra) and free the graph.
    start = dict.fromkeys(names, 0)
    for i, (chunk, state) in enumerate(zip(chunks, states, strict=True)):
        _set_rng_state(state)
        with no_sync() if no_sync and i < len(chunks) - 1 else nullcontext():
            embs, extra = encode(chunk)
            surrogate = extra.reshape(())
            for name in names:
                e = embs[name]  # (b, ...)
                if e.shape != cached[i][name].shape:
                    raise RuntimeError(
                        f"gradcache: chunk {i} '{name}' has shape {tuple(e.shape)} in pass 2 but "
                        f"{tuple(cached[i][name].shape)} in pass 1; encode must be deterministic"
                    )
                rows = e.shape[0]
                if name in cache:
                    surrogate = surrogate + (e * cache[name][start[name] : start[name] + rows]).sum()
                start[name] += rows
            backward(surrogate)
    _set_rng_state(end_state)

    return _result(out, contrastive, _sum_extras(extras))
