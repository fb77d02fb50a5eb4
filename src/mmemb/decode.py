"""Continuous-batching decoder for the generating modes (gen, think, adaptive).

    while rows remain:
        if free slots >= JOIN (or nothing runs): prefill the next rows; each row's `start` decides its
            first move from its prefill: finish at once (adaptive no-think: vector from the prefill) or
            join the running batch (its KV cache left-padded to the batch's length)
        sample one token per running row (greedy or nucleus; forced tokens applied)
        rows that stop (end-of-sequence, or their token cap) finish with their last state and leave
        feed the others one token (KV reuse); rows that fed <gen_emb> finish with that state and leave
        leaving rows are dropped from the KV cache (compaction), so a batch never waits for its longest row

Every row's tokens and vector equal its decode alone (tests/test_decode.py): positions come from each row's
own count, and padding is masked out of attention. Rows only ever sit beside other rows, never depend on
them. Wall time is split over the rows each piece of work served (a prefill over the rows it prefilled, a
step over the rows it fed), so `seconds` add up to the call's time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from .backbones.base import Backbone, DecodeState, Prompts, cache_layers


@dataclass
class Row:
    """One input's decode: what is forced, its cap, and (once finished) its result."""

    index: int  # the caller's row number
    cap: int  # most tokens to feed
    first: int | None = None  # token forced as the first one (think: <think>)
    action: int = 0  # adaptive: the policy's action (0 = no-think)
    guard: bool = False  # keep the reasoning format (see `_guard`); only for rows whose first is <think>
    tokens: list[int] = field(default_factory=list)
    vector: torch.Tensor | None = None  # (D,) once finished
    found: bool = False  # <gen_emb> was fed
    seconds: float = 0.0
    cancelled: Callable[[], bool] | None = None  # true once nobody waits for it: it stops at the next step


@dataclass
class Start:
    """What `start` says about each row of a prefill: rows to finish at once, and rows to decode."""

    finished: dict[int, torch.Tensor]  # batch row -> vector (D,)
    decode: list[int]  # batch rows that go on decoding
    crop: int = 0  # trailing prompt tokens to drop from the cache before decoding (see Embedder adaptive)


class Running:
    """The rows being decoded: one KV cache, mask and next position per row, the next-token logits."""

    def __init__(self, rows: list[Row], state: DecodeState, last: torch.Tensor, logits: torch.Tensor) -> None:
        self.rows, self.state = rows, state
        self.last = last  # (B, D) state of each row's last fed token
        self.logits = logits  # (B, V) next-token logits

    def __len__(self) -> int:
        return len(self.rows)

    def keep(self, keep: torch.Tensor) -> None:
        """Drop the rows where `keep` (B,) is False, then the cache columns that only padding uses."""
        if bool(keep.all()):
            return
        idx = torch.nonzero(keep).flatten()
        self.rows = [self.rows[i] for i in idx.tolist()]
        s = self.state
        s.attention_mask, s.next_pos = s.attention_mask[idx], s.next_pos[idx]
        self.last, self.logits = self.last[idx], self.logits[idx]
        used = torch.nonzero(s.attention_mask.any(0)).flatten()
        lead = int(used[0]) if len(used) else 0  # left columns that are padding in every remaining row
        s.attention_mask = s.attention_mask[:, lead:]
        for layer in cache_layers(s.cache):
            layer.keys, layer.values = layer.keys[idx, :, lead:], layer.values[idx, :, lead:]

    def merge(self, other: Running) -> None:
        """Append `other`'s rows: both caches left-padded to one length, then stacked."""
        a, b = self.state, other.state
        T = max(a.attention_mask.shape[1], b.attention_mask.shape[1])
        a.attention_mask = torch.cat([_left_pad(a.attention_mask, T), _left_pad(b.attention_mask, T)])
        a.next_pos = torch.cat([a.next_pos, b.next_pos])
        for la, lb in zip(cache_layers(a.cache), cache_layers(b.cache), strict=True):
            la.keys = torch.cat([_left_pad(la.keys, T, dim=2), _left_pad(lb.keys, T, dim=2)])
            la.values = torch.cat([_left_pad(la.values, T, dim=2), _left_pad(lb.values, T, dim=2)])
        self.rows += other.rows
        self.last = torch.cat([self.last, other.last])
        self.logits = torch.cat([self.logits, other.logits])


def _guard(tok: torch.Tensor, rows: list[Row], ids: dict[str, int], stop_ids: torch.Tensor) -> torch.Tensor:
    """Structured decoding of `<think>REASONING</think><answer>SUMMARY</answer><gen_emb>` for guarded rows,
    (B,) -> (B,). In the reasoning, a stop token, another tag, or reaching cap - reserve (reserve =
    max(5, cap // 4): room for `</think><answer>`, a summary and `</answer><gen_emb>`) becomes `</think>`,
    which is followed by `<answer>`; in the summary, a stop token, another tag, or reaching cap - 2 becomes
    `</answer>`, after which the decoder forces `<gen_emb>` as always. A guarded row with cap >= 6 thus ends
    at `<gen_emb>` within its cap."""
    close_think, open_answer, close_answer = ids["think_close"], ids["answer_open"], ids["answer_close"]
    tags = {
        ids[k] for k in ("think_open", "think_close", "answer_open", "answer_close", "gen_emb", "no_think")
    }
    ends = set(stop_ids.tolist()) | tags  # what may not stand inside a part
    out = tok.clone()
    for b, r in enumerate(rows):
        if not r.guard or not r.tokens or close_answer in r.tokens:  # <gen_emb> follows </answer> anyway
            continue
        t, n = int(tok[b]), len(r.tokens)
        if r.tokens[-1] == close_think:
            out[b] = open_answer
        elif open_answer in r.tokens:  # in the summary
            if (t in ends and t != close_answer) or n >= r.cap - 2:
                out[b] = close_answer
        elif (t in ends and t != close_think) or n >= r.cap - max(5, r.cap // 4):  # in the reasoning
            out[b] = close_think
    return out


def _left_pad(t: torch.Tensor, length: int, dim: int = 1) -> torch.Tensor:
    """Zeros on the left of `dim` up to `length` (the mask's zeros hide them from attention)."""
    missing = length - t.shape[dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


def _crop(state: DecodeState, n: int) -> None:
    """Forget the last `n` fed tokens of every row (they sit in the same right-aligned columns)."""
    if n == 0:
        return
    state.attention_mask = state.attention_mask[:, :-n]
    state.next_pos = state.next_pos - n
    for layer in cache_layers(state.cache):
        layer.keys, layer.values = layer.keys[:, :, :-n], layer.values[:, :, :-n]


@torch.no_grad()  # on a generator, torch sets no-grad only while the generator runs, not between yields
def decode(
    backbone: Backbone,
    rows: list[Row],
    prepare: Callable[[list[int]], Prompts],
    start: Callable[[torch.Tensor, list[Row]], Start],
    sample: Callable[[torch.Tensor], torch.Tensor],
    ids: dict[str, int],
    stop_ids: torch.Tensor,
    batch_size: int,
    more: Callable[[int], list[Row]] | None = None,
    fit: Callable[[list[int]], int] | None = None,
) -> Iterator[Row]:
    """Decode `rows` (in the order given) with at most `batch_size` running at once; yields each finished row.

    prepare(indices) -> Prompts for those caller rows. start(hidden (b, T, D), rows) -> Start: which rows
    finish at the prefill and which decode (and the cache crop). sample(logits (B, V)) -> tokens (B,).
    `<gen_emb>` is forced after `</answer>` and `<no_think>`; a row ends at `<gen_emb>` (found), at an
    end-of-sequence token or at its cap (not found: the vector is its last fed state). more(n): up to n
    further rows, asked for whenever `rows` are used up and slots are free ([] when there are none now).
    fit(indices): how many of these rows, from the first, one prefill takes (the memory budget; default all);
    the rest wait for the next.
    """
    join = max(1, batch_size // 4)  # fill free slots once this many are free (or nothing runs)
    queue = list(rows)
    running: Running | None = None
    gen_emb = ids["gen_emb"]
    force_after = torch.tensor([ids[k] for k in ("answer_close", "no_think") if k in ids], dtype=torch.long)
    while True:
        free = batch_size - (len(running) if running else 0)
        if not queue and more is not None and (running is None or free >= join):
            queue = more(free)
        if not queue and running is None:
            return
        if queue and (running is None or free >= join):
            t0 = time.perf_counter()
            n = fit([r.index for r in queue[:free]]) if fit else free
            group, queue = queue[:n], queue[n:]
            prompts = prepare([r.index for r in group])
            hidden, state = backbone.prefill(prompts)  # (b, T, D)
            plan = start(hidden, group)
            share = (time.perf_counter() - t0) / len(group)
            for b, r in enumerate(group):
                r.seconds = share
                if b in plan.finished:
                    r.vector, r.found = plan.finished[b], True
                    yield r
            if plan.decode:
                _crop(state, plan.crop)
                last = hidden[:, -1 - plan.crop]  # (b, D) state of each row's last kept token
                new = Running(group, state, last, backbone.logits(last))
                keep = torch.zeros(len(group), dtype=torch.bool, device=last.device)
                keep[plan.decode] = True
                new.keep(keep)
                if running is None:
                    running = new
                else:
                    running.merge(new)
            continue  # fill every free slot before the next step
        t0 = time.perf_counter()
        B = len(running)
        tok = sample(running.logits)  # (B,)
        dev = tok.device
        n_out = torch.tensor([len(r.tokens) for r in running.rows], device=dev)
        first = torch.tensor([-1 if r.first is None else r.first for r in running.rows], device=dev)
        tok = torch.where((n_out == 0) & (first >= 0), first, tok)
        prev = torch.tensor([r.tokens[-1] if r.tokens else -1 for r in running.rows], device=dev)
        tok = torch.where(torch.isin(prev, force_after.to(dev)), torch.full_like(tok, gen_emb), tok)
        if any(r.guard for r in running.rows):
            tok = _guard(tok, running.rows, ids, stop_ids)
        cap = torch.tensor([r.cap for r in running.rows], device=dev)
        stop = torch.isin(tok, stop_ids.to(dev)) | (n_out >= cap)  # (B,): end here, without <gen_emb>
        if any(r.cancelled is not None for r in running.rows):  # a request that went away ends its rows
            stop |= torch.tensor([bool(r.cancelled and r.cancelled()) for r in running.rows], device=dev)
        if bool(stop.any()):
            share = (time.perf_counter() - t0) / B
            for b in torch.nonzero(stop).flatten().tolist():
                r = running.rows[b]
                r.vector, r.seconds = running.last[b], r.seconds + share
                yield r
            t0 = time.perf_counter()
            tok = tok[~stop]
            running.keep(~stop)
            if not len(running):
                running = None
                continue
        h = backbone.step(tok, running.state, torch.ones_like(tok, dtype=torch.bool))  # (B', D)
        done = tok == gen_emb
        share = (time.perf_counter() - t0) / len(running)
        for b, r in enumerate(running.rows):
            r.tokens.append(int(tok[b]))
            r.seconds += share
            if done[b]:
                r.vector, r.found = h[b], True
                yield r
        running.last = h
        running.keep(~done)
        if not len(running):
            running = None
            continue
        running.logits = backbone.logits(running.last)
