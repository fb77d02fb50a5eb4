"""The `Backbone` interface. The rest of mmemb never branches on the model family.

A backbone turns prompts (text with media placeholders) plus media into last-layer hidden states, and can
go on decoding from the prefill's KV cache one token at a time. Everything the embedder needs:

    prompts = bb.prepare(samples, texts)      # tokenise, decode media, left-pad   -> Prompts
    hidden, state = bb.prefill(prompts)       # one forward over the prompts      -> (B, T, D), DecodeState
    h = bb.step(tokens, state, active)        # feed one token per row (KV reuse) -> (B, D)
    logits = bb.logits(h)                     # next-token logits                 -> (B, V)

Left padding keeps every prompt's last token at position -1. Positions are computed from the attention
mask (never from the padded index), so an input embedded alone and inside a batch gives the same vector.
"""

from __future__ import annotations

import functools
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import BackboneConfig
from ..types import InputError, Sample


@dataclass
class Prefix:
    """The KV cache of the text every prompt starts with (template and system message, up to the first
    per-item field), computed once per model state. A batch of suffixes is prefilled on top of it."""

    length: int  # P tokens
    layers: list[tuple[torch.Tensor, torch.Tensor]]  # per layer (1, H, P, d) keys and values

    def cache(self, batch: int, keep: bool = True):
        """A fresh DynamicCache holding the prefix for `batch` rows (expanded views: no copy until the
        model appends to it, and the prefix itself is never written). keep=False: the batch attends to the
        prefix but its own keys and values are not kept (a disc prefill has nothing to decode from, and
        keeping them would hold every layer's keys and values of the whole batch until the forward ends)."""
        layers = [(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in self.layers]
        return _dynamic_cache(keep)(ddp_cache_data=layers)


@functools.cache
def _dynamic_cache(keep: bool) -> type:
    """transformers' DynamicCache, or (keep=False) one whose `update` returns the cached prefix joined to
    the new keys and values without storing them: the cache stays at the prefix."""
    from transformers.cache_utils import DynamicCache

    if keep:
        return DynamicCache

    class PrefixOnlyCache(DynamicCache):
        def update(self, key_states, value_states, layer_idx, *args, **kwargs):
            layer = self.layers[layer_idx]  # (B, H, P, d) each, never written
            return torch.cat([layer.keys, key_states], -2), torch.cat([layer.values, value_states], -2)

    return PrefixOnlyCache


@dataclass
class Prompts:
    """A prepared, left-padded batch; with `prefix`, only what follows the shared prefix."""

    input_ids: torch.Tensor  # (B, T) long
    attention_mask: torch.Tensor  # (B, T) long, 0 on left padding
    position_ids: torch.Tensor  # (B, T) for 1-D RoPE, (3, B, T) for multimodal RoPE (counted from 0)
    extra: dict[str, Any] = field(default_factory=dict)  # model-specific inputs (pixel values, ...)
    prefix: Prefix | None = None  # the shared prompt prefix these prompts continue


@dataclass
class DecodeState:
    """What decoding needs after the prefill: the KV cache, the growing mask, and each row's next position."""

    cache: Any
    attention_mask: torch.Tensor  # (B, T + steps)
    next_pos: torch.Tensor  # (B,) long


class Backbone(nn.Module):
    """Subclasses implement `media_prompt`, `prepare`, `forward_hidden`, `save` (and `load_weights` when
    construction does not load everything) and set `tokenizer`, `hf_model` (the transformers model whose
    embeddings and LM head are used) and `mrope` (True when positions are (3, B, T) multimodal RoPE)."""

    kind: str = ""
    family_name: str = ""  # "nano", or the hf model type (what profiles.Profile.families name)
    mrope: bool = False
    saves_frozen: bool = True  # `save` writes the frozen weights too (hf); nano saves only what it trains

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        self.config = config
        self.tokenizer: Any = None
        self.hf_model: Any = None

    # ---- subclass API -------------------------------------------------------------------------
    def media_prompt(self, sample: Sample) -> str:
        """Placeholder text for the sample's media, put before the instruction in the user turn."""
        raise NotImplementedError

    def prepare(
        self, samples: list[Sample], texts: list[str], lock: AbstractContextManager | None = None
    ) -> Prompts:
        """Tokenise `texts` (one rendered prompt per sample), decode media, left-pad. Only the tokenizer call
        holds `lock` (the tokenizer is not thread-safe): media are decoded outside it, so a page-heavy item
        never holds up another thread's prompts."""
        raise NotImplementedError

    def forward_hidden(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        cache: Any = None,
        extra: dict | None = None,
        use_cache: bool = True,
    ) -> tuple[torch.Tensor, Any]:
        """Last-layer hidden states (B, T, D) after the final norm, and the updated KV cache (None when
        use_cache is False)."""
        raise NotImplementedError

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        extra: dict | None = None,
        lm_mask: torch.Tensor | None = None,
        prefix_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The training forward: hidden states (B, T, D) and, where `lm_mask` (B, T-1) is set, next-token
        logits (n, V) from the positions it marks. Everything with a gradient happens in here, so a wrapper
        (DDP under accelerate) sees every use of every parameter (the LM head included).

        `prefix_ids` (1, P): the inputs are suffixes of a shared prefix (`Embedder.split_prefix`). The prefix
        is run once, with grad, and its keys and values are broadcast to the B rows (the backward of the
        broadcast sums their gradients), exactly as `prefill` continues a cached prefix: the same hidden
        states and gradients as running every row in full (tests/test_train.py), for B times fewer prefix
        tokens."""
        cache, mask, pos = None, attention_mask, position_ids
        if prefix_ids is not None:
            P, B = prefix_ids.shape[1], mask.shape[0]
            ones = torch.ones_like(prefix_ids)  # (1, P)
            _, pc = self.forward_hidden(
                prefix_ids, ones, self.text_positions(ones), None, None, use_cache=True
            )
            cache = Prefix(P, [(layer.keys, layer.values) for layer in cache_layers(pc)]).cache(B)
            mask = torch.cat(
                [torch.ones(B, P, dtype=mask.dtype, device=mask.device), mask], dim=1
            )  # (B, P+T)
            pos = pos + P
        hidden, _ = self.forward_hidden(input_ids, mask, pos, cache, extra, use_cache=cache is not None)
        logits = self.logits(hidden[:, :-1][lm_mask]) if lm_mask is not None else None
        return hidden, logits

    def configure_trainable(self) -> None:
        """Set `requires_grad` for stage-1 training (default: leave it as built)."""

    # ---- the wrapped transformers model (subclasses set `self.hf_model`) ------------------------
    @property
    def lm_head(self) -> nn.Module:
        return self.hf_model.lm_head

    def input_embeddings(self) -> nn.Embedding:
        return self.hf_model.get_input_embeddings()

    def resize_vocab(self, n: int) -> None:
        self.hf_model.resize_token_embeddings(n, mean_resizing=False)

    def num_images(self, sample: Sample) -> int:
        """Images the sample contributes: its sampled frames, its pages, or its one image."""
        return min(len(sample.frames), self.config.num_frames) if sample.frames else len(sample.media())

    def save(self, directory: Path) -> None:
        raise NotImplementedError

    def load_weights(self, directory: Path) -> None:
        """Load weights saved by `save` that construction did not already load (after tokens are added)."""

    # ---- shared -------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def token_id(self, token: str) -> int:
        """Id of a single-token string, looked up in the tokenizer (never hard-coded)."""
        ids = self.tokenizer.convert_tokens_to_ids([token])
        unk = getattr(self.tokenizer, "unk_token_id", None)
        if not ids or ids[0] is None or (ids[0] == unk and token != self.tokenizer.unk_token):
            raise KeyError(f"token {token!r} is not in the tokenizer")
        return int(ids[0])

    def has_token(self, token: str) -> bool:
        try:
            self.token_id(token)
        except KeyError:
            return False
        return True

    def use_profile(self, profile) -> None:
        """Embed media as `profile` (profiles.Profile) says. Only the hf backbone has published profiles."""
        self.profile = profile

    def add_special_tokens(self, tokens: list[str]) -> list[str]:
        """Add the tokens the tokenizer lacks, initialising each new row (input and output embeddings)
        from the mean of the rows of its plain-text spelling, e.g. `<think>` from '<', 'think', '>'.

        Returns the tokens that were added. Deterministic: the same tokens in the same order get the same
        ids and rows, so a saved model can be rebuilt exactly.
        """
        vocab = self.tokenizer.get_vocab()
        missing = [t for t in tokens if t not in vocab]
        if not missing:
            return []
        spelled = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in missing]
        self.tokenizer.add_tokens(missing, special_tokens=True)
        if len(self.tokenizer) > self.input_embeddings().weight.shape[0]:
            self.resize_vocab(len(self.tokenizer))
        emb_in = self.input_embeddings().weight
        out = self.lm_head.weight if hasattr(self.lm_head, "weight") else None
        with torch.no_grad():
            for tok, ids in zip(missing, spelled, strict=True):
                new = self.token_id(tok)
                emb_in[new] = emb_in[ids].mean(0)
                if out is not None and out.data_ptr() != emb_in.data_ptr():
                    out[new] = out[ids].mean(0)
        return missing

    def text_positions(self, attention_mask: torch.Tensor) -> torch.Tensor:
        """Positions that ignore left padding: 0, 1, ... from each row's first real token. (B, T)"""
        pos = attention_mask.long().cumsum(-1) - 1  # (B, T)
        pos = pos.masked_fill(attention_mask == 0, 0)
        return pos.unsqueeze(0).expand(3, -1, -1) if self.mrope else pos

    def check_reserved(self, samples: list[Sample], reserved: list[str]) -> None:
        """Media placeholders are ours: an item's own text must not contain them."""
        for s in samples:
            for field_text in (s.text, s.instruction):
                for token in reserved:
                    if field_text and token in field_text:
                        raise InputError(
                            f"item {s.id!r}: the text contains {token!r}, a token reserved for "
                            "media placeholders; remove it"
                        )

    def check_lengths(self, samples: list[Sample], lengths: list[int]) -> None:
        for s, n in zip(samples, lengths, strict=True):
            if n > self.config.max_length:
                raise InputError(
                    f"item {s.id!r}: prompt is {n} tokens (text + visual tokens), over the context limit of "
                    f"{self.config.max_length}; shorten the text, use fewer frames/pages, or raise "
                    "backbone.max_length"
                )

    @torch.no_grad()
    def prefill(self, prompts: Prompts, use_cache: bool = True) -> tuple[torch.Tensor, DecodeState]:
        """One forward over the prompts. Returns hidden states (B, T, D) and the state to decode from
        (use_cache=False: disc only, no KV cache kept, nothing to decode from).

        With `prompts.prefix`, the prompts are suffixes: they attend to the prefix's cached keys and values,
        and their positions continue after it (a shift of every position by P, as if the prefix were part of
        each prompt: positions of text and of multimodal RoPE are both counted from the sequence start)."""
        pre, mask, pos, cache = prompts.prefix, prompts.attention_mask, prompts.position_ids, None
        if pre is not None:
            B = mask.shape[0]
            mask = torch.cat([torch.ones(B, pre.length, dtype=mask.dtype, device=mask.device), mask], dim=1)
            pos, cache = pos + pre.length, pre.cache(B, keep=use_cache)  # (P+T) mask; positions after P
        hidden, cache = self.forward_hidden(
            prompts.input_ids, mask, pos, cache, prompts.extra, use_cache or pre is not None
        )
        pos = pos if self.mrope else pos.unsqueeze(0)  # (P, B, T)
        next_pos = pos.amax(dim=(0, 2)) + 1  # (B,): text after media continues from the largest position
        return hidden, DecodeState(cache, mask.clone(), next_pos.to(hidden.device))

    def prefix_cache(self, ids: torch.Tensor) -> Prefix:
        """The KV cache of one prefix, ids (1, P)."""
        P = ids.shape[1]
        mask = torch.ones_like(ids)
        with torch.no_grad():
            _, cache = self.forward_hidden(ids, mask, self.text_positions(mask), None, None, use_cache=True)
        return Prefix(P, [(layer.keys, layer.values) for layer in cache_layers(cache)])

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, state: DecodeState, active: torch.Tensor) -> torch.Tensor:
        """Feed one token per row (B,), reusing the KV cache. Inactive rows are masked out.
        Returns the last-layer hidden state of the fed tokens, (B, D)."""
        state.attention_mask = torch.cat([state.attention_mask, active.long()[:, None]], dim=1)  # (B, T+1)
        pos = state.next_pos[:, None]  # (B, 1)
        if self.mrope:
            pos = pos.unsqueeze(0).expand(3, -1, -1)  # (3, B, 1): text tokens share all three axes
        hidden, state.cache = self.forward_hidden(tokens[:, None], state.attention_mask, pos, state.cache)
        state.next_pos = state.next_pos + active.long()
        return hidden[:, -1]  # (B, D)

    def output_rows(self, ids: list[int]) -> torch.Tensor:
        """The LM head's rows (n, D) of these token ids (what `logits` multiplies the state by)."""
        return self.lm_head.weight[ids]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-token logits (B, V) from last-layer hidden states (B, D)."""
        return self.lm_head(hidden).float()


def cache_layers(cache) -> list:
    """The per-layer key/value holders of a transformers DynamicCache."""
    layers = getattr(cache, "layers", None)
    if layers is None or any(type(lay).__name__ != "DynamicLayer" for lay in layers):
        raise TypeError(
            f"continuous batching needs a DynamicCache of full-attention layers, got {type(cache)}"
        )
    return layers
