"""Stage-1 training: joint contrastive + reasoning SFT on the selected rationales. One plain loop.

    for step in range(start, max_steps):
        set the learning rate (warm-up, then cosine / linear / constant)
        for each of `accumulation` contrastive batches (this rank's share of a seeded global order):
            encode chunk by chunk (GradCache) or all at once:
                query  + its completion (rationale or no-think)  -> disc at <disc_emb>, gen at <gen_emb>, LM
                target + no-think completion                     -> disc, gen, LM
            loss = disc·InfoNCE(q_disc, t_disc) + gen·InfoNCE(q_gen, t_gen) [+ cross·InfoNCE(q_gen, t_disc)]
                   + lm·(token-mean next-token loss on the completions)
        clip, AdamW step; log (console, TensorBoard); checkpoint every save_every steps

Run through accelerate, so the same code runs on CPU, one GPU or several (`accelerate launch --multi_gpu`,
several nodes too); `run.strategy` picks DDP, FSDP2 or DeepSpeed ZeRO 1/2 (train/parallel.py), and a
checkpoint resumes under any of them. InfoNCE takes its negatives from the whole global batch, gathered with gradient.
In-batch targets with the same content as the positive are masked (they are not negatives). A killed run
resumes from its newest checkpoint to exactly the weights an uninterrupted run reaches (tested).
"""

from __future__ import annotations

import json
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..embedder import Embedder, load_args
from ..losses import full_batch_backward, gradcache_backward, info_nce
from ..runtime import check_tensorboard, tensorboard_writer
from ..types import InputError
from .config import TrainConfig, load_train_config, mixed_precision, save_train_config
from .data import BatchOrder, Example, build_examples, read_training_pairs
from .parallel import check_strategy, make_strategy, trainable
from .state import latest_checkpoint, load_checkpoint, save_checkpoint

LOSS_TERMS = ("disc", "gen", "cross", "lm")


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warm-up, then the schedule."""
    o, total = cfg.optim, cfg.run.max_steps
    warm = round(o.warmup_ratio * total)
    if step < warm:
        return o.lr * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    if o.scheduler == "cosine":
        return o.lr * 0.5 * (1 + math.cos(math.pi * progress))
    if o.scheduler == "linear":
        return o.lr * (1 - progress)
    return o.lr


def check_inputs(cfg: TrainConfig) -> None:
    """What can be checked before any model is loaded: files the config names, extras it needs."""
    d = cfg.data
    if d.variant == "selected" and not Path(d.selection).is_file():
        raise InputError(
            f"data.selection {d.selection!r}: not found (variant 'selected' needs `mmemb reason select`)"
        )
    if d.variant == "all" and not Path(d.candidates).is_file():
        raise InputError(
            f"data.candidates {d.candidates!r}: not found (variant 'all' needs `mmemb reason generate`)"
        )
    check_strategy(cfg)
    check_tensorboard(cfg.run.tensorboard)


def embed_with_completions(
    model: torch.nn.Module,
    embedder: Embedder,
    samples: list,
    completions: list[str],
    lm_rows: int | None = None,
    share_prefix: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """One forward with grad over prompt + completion. Returns disc (b, D) at <disc_emb>, gen (b, D) at the
    last token (<gen_emb>), both L2-normalised, the summed next-token loss over the completion tokens of the
    first `lm_rows` rows (default all), and how many tokens that sum covers. `share_prefix`: run the prompts'
    shared prefix once per forward (Backbone.forward: the same result; off where the strategy cannot)."""
    bb = embedder.backbone
    texts = [embedder.prompt(s) + c for s, c in zip(samples, completions, strict=True)]
    split = embedder.split_prefix(texts) if share_prefix else None
    p = bb.prepare(samples, texts if split is None else split[1])
    device = bb.device
    prefix = None if split is None else torch.tensor([split[0]], device=device)  # (1, P)
    if prefix is not None:
        bb.check_lengths(samples, (p.attention_mask.sum(1) + prefix.shape[1]).tolist())
    ids = p.input_ids.to(device)  # (b, T)
    b, T = ids.shape
    is_disc = ids == embedder.ids["disc_emb"]  # (b, T)
    disc_pos = (T - 1) - is_disc.flip(1).float().argmax(1)  # (b,) last <disc_emb>: the prompt's end
    predicts = (torch.arange(T, device=device)[None, :] > disc_pos[:, None])[:, 1:]  # (b, T-1): next is ours
    predicts[(b if lm_rows is None else lm_rows) :] = False
    extra = {k: v.to(device) for k, v in p.extra.items()}
    hidden, logits = model(
        ids, p.attention_mask.to(device), p.position_ids.to(device), extra, predicts, prefix
    )
    rows = torch.arange(b, device=device)
    disc = F.normalize(hidden[rows, disc_pos].float(), dim=-1)  # (b, D)
    gen = F.normalize(hidden[:, -1].float(), dim=-1)  # (b, D)
    lm_sum = F.cross_entropy(logits, ids[:, 1:][predicts], reduction="sum")  # logits (n, V): completions only
    return disc, gen, lm_sum, int(predicts.sum())


def completion_tokens(embedder: Embedder, batch: list[Example]) -> int:
    tok = embedder.backbone.tokenizer
    return sum(len(tok(e.q_completion, add_special_tokens=False)["input_ids"]) +
               len(tok(e.t_completion, add_special_tokens=False)["input_ids"]) for e in batch)  # fmt: skip


def batch_backward(
    model,
    embedder: Embedder,
    batch: list[Example],
    cfg: TrainConfig,
    backward,
    no_sync=None,
    share_prefix=True,
) -> dict:
    """Forward + backward of one contrastive batch (GradCache when batch.chunk < batch.size). `no_sync`:
    a context that stops DDP from synchronising (all chunks but the last accumulate locally); `share_prefix`:
    see embed_with_completions."""
    L = cfg.loss
    # the LM term is a token mean over the global batch: every process divides by the tokens of all of them and
    # multiplies by their number, which the gradient averaging (DDP, FSDP, ZeRO) divides out again
    total, world = completion_tokens(embedder, batch), 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        counts = torch.tensor([total], device=embedder.backbone.device)
        torch.distributed.all_reduce(counts)
        total, world = int(counts), torch.distributed.get_world_size()
    target_ids = torch.tensor([e.target_id for e in batch], device=embedder.backbone.device)

    H = cfg.data.hard_negatives

    def encode(chunk: list[Example]):
        # one forward for queries, targets and hard negatives: one graph per chunk (what DDP expects)
        b = len(chunk)
        negs = [n for e in chunk for n in e.negatives] if H else []
        samples = [e.query for e in chunk] + [e.target for e in chunk] + negs
        comps = (
            [e.q_completion for e in chunk]
            + [e.t_completion for e in chunk]
            + [chunk[0].t_completion] * len(negs)
        )
        disc, gen, lm_sum, _ = embed_with_completions(
            model, embedder, samples, comps, lm_rows=2 * b, share_prefix=share_prefix
        )
        embs = {"q_disc": disc[:b], "t_disc": disc[b : 2 * b], "q_gen": gen[:b], "t_gen": gen[b : 2 * b]}
        if H:  # hard negatives from the data, embedded like targets (no-think); no LM loss on them
            embs |= {
                "n_disc": disc[2 * b :].view(b, H, -1),
                "n_gen": gen[2 * b :].view(b, H, -1),
            }  # (b, H, D)
        return embs, L.lm * lm_sum * world / total  # fmt: skip

    widths = [None, *L.matryoshka_dims]  # None: the full width; then each Matryoshka prefix

    def prefix(x: torch.Tensor | None, d: int | None) -> torch.Tensor | None:
        return x if x is None or d is None else F.normalize(x[..., :d], dim=-1)  # (..., d), unit length

    def loss_fn(r: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for name, q, t, hard, w in (("disc", r["q_disc"], r["t_disc"], r.get("n_disc"), L.disc),
                                    ("gen", r["q_gen"], r["t_gen"], r.get("n_gen"), L.gen),
                                    ("cross", r["q_gen"], r["t_disc"], r.get("n_disc"), L.cross_mode)):  # fmt: skip
            if w > 0:
                res = [info_nce(prefix(q, d), prefix(t, d), prefix(hard, d), L.temperature, L.symmetric,
                                target_ids=target_ids) for d in widths]  # fmt: skip
                out[f"{name}_loss"] = w * sum(x["loss"] for x in res) / len(res)
                out[f"{name}_accuracy"] = res[0]["accuracy"]  # at the full width
        return out

    size = cfg.batch.chunk or len(batch)
    chunks = [batch[i : i + size] for i in range(0, len(batch), size)]
    if len(chunks) > 1:
        out = gradcache_backward(encode, chunks, loss_fn, backward=backward, no_sync=no_sync)
    else:
        out = full_batch_backward(encode, chunks, loss_fn, backward=backward)
    out["lm_loss"] = out.pop("extra_loss")
    return out


def check_resumable(ckpt: Path, cfg: TrainConfig, processes: int) -> None:
    """A run resumes with the config it was started with. The batch may be split over another number of
    processes (and chunked differently): the global batch and the accumulation must stay."""
    saved = load_train_config(ckpt / "config.yaml")
    for section in ("model", "data", "loss", "optim"):
        if getattr(saved, section) != getattr(cfg, section):
            raise InputError(f"{ckpt.parent.parent}: holds a run with another {section!r} config "
                             f"({ckpt}/config.yaml); use a new run.output, or the same config to resume")  # fmt: skip
    was = json.loads((ckpt / "state.json").read_text()).get("processes", processes)
    if (saved.batch.size * was, saved.batch.accumulation) != (
        cfg.batch.size * processes,
        cfg.batch.accumulation,
    ):
        raise InputError(
            f"{ckpt}: trained with batch.size {saved.batch.size} x {was} process(es) x accumulation "
            f"{saved.batch.accumulation}; here batch.size {cfg.batch.size} x {processes} x "
            f"{cfg.batch.accumulation}: keep the global batch (size x processes) and the accumulation to resume"
        )


def build_embedder(cfg: TrainConfig, cast_frozen: bool = False) -> Embedder:
    """The model training starts from (the same on every rank: built after seeding), in float32.
    cast_frozen: frozen tensors in the autocast dtype (bf16 / fp16). They need no float32 master copy, and
    autocast would otherwise cast them again at every use; the trainable ones stay float32 (AdamW's masters).
    FSDP2 and ZeRO keep one dtype per flat group and apply their own precision, so only ddp casts; and only
    backbones that never save their frozen tensors (nano), so a saved model holds them as they were loaded."""
    embedder = Embedder.from_pretrained(cfg.model.init, train=True, **load_args(cfg.model))
    dims, width = list(cfg.loss.matryoshka_dims), embedder.width
    if dims != sorted(set(dims)) or not all(isinstance(d, int) and 0 < d < width for d in dims):
        raise InputError(
            f"loss.matryoshka_dims={dims}: give increasing widths between 1 and {width - 1} (the full width "
            f"{width} is always trained), e.g. [64, 128, 256]"
        )
    embedder.config.matryoshka_dims = dims  # the output model's config: `dimensions` accepts them
    if cfg.loss.cross_mode > 0 and ["gen", "disc"] not in embedder.config.valid_mode_pairs:
        embedder.config.valid_mode_pairs.append(["gen", "disc"])  # the output model's config: spaces shared
    embedder.backbone.configure_trainable()
    low = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision(cfg))
    if low is not None and not torch.cuda.is_available():
        # on CPU, torch's bf16 flash-attention backward is 4x slower than its float32 one (measured on nano:
        # 692 vs 173 ms a step, benchmarks/bench_precision.py); eager attention's bf16 matmuls are fast
        embedder.backbone.hf_model.set_attn_implementation("eager")
    if cast_frozen and low is not None and not embedder.backbone.saves_frozen:
        with torch.no_grad():
            for module in embedder.backbone.modules():
                own = list(module.parameters(recurse=False))
                for p in own:
                    if not p.requires_grad:
                        p.data = p.data.to(low)
                if own and not any(p.requires_grad for p in own):  # a frozen module's float buffers too
                    for name, b in module.named_buffers(recurse=False):  # (BatchNorm statistics)
                        if b.is_floating_point():
                            setattr(module, name, b.to(low))
    return embedder


@dataclass
class Run:
    """One stage-1 run as `setup` leaves it for `train_loop` and `save_final`."""

    accelerator: object
    embedder: Embedder
    examples: list[Example]
    strategy: object  # parallel.Strategy: the prepared model, its trainable params and optimizer
    order: BatchOrder
    start: int  # the step it starts from (a resumed checkpoint's)
    out: Path
    writer: object | None  # TensorBoard, on the main process only


def train_stage1(cfg: TrainConfig, log: bool = True) -> Path:
    """Train and write `run.output`/final (loads with Embedder.from_pretrained). Returns that folder.
    `log`: print a line every `run.log_every` steps (TensorBoard is written either way)."""
    run = setup(cfg)
    t0 = time.perf_counter()
    train_loop(run, cfg, log)
    final = save_final(run, cfg)
    if run.accelerator.is_main_process:
        run.accelerator.print(
            f"mmemb train: {cfg.run.max_steps - run.start} steps in {time.perf_counter() - t0:.0f}s -> {final}",
            file=sys.stderr,
        )
    run.accelerator.wait_for_everyone()
    # destroy the process group: a process exiting with gloo's worker threads alive sometimes aborts (seen
    # after FSDP2 and ZeRO runs: "terminate called without an active exception", exit -6)
    run.accelerator.end_training()
    return final


def setup(cfg: TrainConfig) -> Run:
    """Inputs checked, the accelerator, the embedder and its examples, the strategy (DDP, FSDP2, ZeRO) with
    its optimizer, and the state of a checkpoint to resume from."""
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from accelerate.state import AcceleratorState

    check_inputs(cfg)
    d = cfg.data
    pairs = read_training_pairs(d)
    out = Path(cfg.run.output)
    ckpt = latest_checkpoint(out)
    # find_unused_parameters: a text-only chunk leaves the vision merger without a gradient
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    # FSDP2 and ZeRO set their own precision: accelerate's acts on what it prepares (ddp)
    precision = mixed_precision(cfg)  # auto: the model's dtype setting on this hardware
    if AcceleratorState._shared_state.get("_mixed_precision", precision) != precision:
        # accelerate keeps one precision per process; a second run in this process (tests, notebooks) may
        # ask for another. Its process group (PartialState) is kept.
        AcceleratorState._reset_state()
    accelerator = Accelerator(mixed_precision=precision, kwargs_handlers=[ddp])
    kind = str(accelerator.distributed_type)
    if "FSDP" in kind or "DEEPSPEED" in kind:
        raise InputError(
            f"accelerate is set up for {kind}: mmemb shards the model itself; launch with `accelerate launch "
            "--multi_gpu` (or torchrun) and set run.strategy=fsdp, or run.strategy=deepspeed with "
            "run.deepspeed_config=ds.json"
        )
    if ckpt is not None:
        check_resumable(ckpt, cfg, accelerator.num_processes)
    torch.manual_seed(cfg.run.seed)
    name = cfg.run.strategy
    if name != "ddp" and accelerator.num_processes == 1:
        accelerator.print(f"mmemb train: 1 process, nothing to shard: run.strategy={name} trains as ddp",
                          file=sys.stderr)  # fmt: skip
        name = "ddp"  # the same updates and checkpoints, without a process group to shard over
    embedder = build_embedder(cfg, cast_frozen=name == "ddp")
    examples = build_examples(pairs, d, embedder.config.tokens)
    strategy = make_strategy(name, accelerator, cfg)
    strategy.prepare(embedder.backbone)
    order = BatchOrder(len(examples), cfg.run.seed)
    start = 0
    if ckpt is not None:
        weights, moments, state = load_checkpoint(ckpt, set(strategy.params))
        strategy.scatter(weights, moments)
        for group, hyper in zip(strategy.optimizer.param_groups, state["param_groups"], strict=True):
            group.update(hyper)
        order.load(state["order"])
        start = state["step"]
        accelerator.print(f"mmemb train: resuming from {ckpt} (step {start})", file=sys.stderr)
    main = accelerator.is_main_process
    if main:
        out.mkdir(parents=True, exist_ok=True)
        save_train_config(cfg, out / "config.yaml")
    writer = tensorboard_writer(cfg.run.tensorboard and main, out, purge_step=start + 1)
    params, world = strategy.params, accelerator.num_processes
    accelerator.print(f"mmemb train: {len(examples)} examples ({len(pairs)} pairs, variant {d.variant}), "
                      f"{len(params)} trainable tensors ({sum(p.numel() for p in params.values()):,} values), "
                      f"batch {cfg.batch.size} x {world} process(es) x {cfg.batch.accumulation} accumulation, "
                      f"strategy {name}, precision {precision} (float32 weights and AdamW state)",
                      file=sys.stderr)  # fmt: skip
    return Run(accelerator, embedder, examples, strategy, order, start, out, writer)


def train_loop(run: Run, cfg: TrainConfig, log: bool) -> None:
    """The optimizer steps from `run.start` to run.max_steps: accumulated micro-batches (each rank its slice
    of the global batch), logs, and a checkpoint every save_every steps."""
    accelerator, strategy, embedder, examples = run.accelerator, run.strategy, run.embedder, run.examples
    model, optimizer = strategy.model, strategy.optimizer
    world, rank, B, accum = (
        accelerator.num_processes,
        accelerator.process_index,
        cfg.batch.size,
        cfg.batch.accumulation,
    )
    main = accelerator.is_main_process
    model.train()
    t0 = time.perf_counter()
    for step in range(run.start, cfg.run.max_steps):
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        logs: dict[str, float] = {}
        for micro in range(accum):
            batch = [examples[i] for i in run.order.next(B * world)[rank * B : (rank + 1) * B]]
            last = micro == accum - 1  # DDP all-reduces once per optimizer step, at the very last backward
            hold = strategy.no_sync  # a context keeping gradients local; None: reduced at every backward
            with nullcontext() if last or hold is None else hold():
                res = batch_backward(model, embedder, batch, cfg, lambda x: strategy.backward(x / accum),
                                     no_sync=hold if last else None, share_prefix=strategy.shares_prefix)  # fmt: skip
            for k, v in res.items():
                logs[k] = logs.get(k, 0.0) + float(v) / accum
        logs |= {"lr": lr, "grad_norm": strategy.step(cfg.optim.max_grad_norm)}
        done = step + 1
        if main and (done % cfg.run.log_every == 0 or done == cfg.run.max_steps or done == run.start + 1):
            if run.writer:
                for k, v in logs.items():
                    run.writer.add_scalar(
                        k.replace("_", "/", 1) if k.endswith(("_loss", "_accuracy")) else k, v, done
                    )
            if log:
                secs = (time.perf_counter() - t0) / (done - run.start)
                terms = " ".join(
                    f"{k[:-5]} {logs[k]:.4f}" for k in sorted(logs) if k.endswith("_loss") and k != "loss"
                )
                print(f"step {done}/{cfg.run.max_steps} loss {logs['loss']:.4f} ({terms}) "
                      f"acc {logs.get('disc_accuracy', 0):.2f}/{logs.get('gen_accuracy', 0):.2f} lr {lr:.2e} "
                      f"grad {logs['grad_norm']:.2f} {secs:.1f}s/step", file=sys.stderr, flush=True)  # fmt: skip
        if done % cfg.run.save_every == 0 or done == cfg.run.max_steps:
            weights, moments = strategy.gather()  # every rank: gathering shards is a collective
            if main:
                save_checkpoint(run.out, done, weights, moments, optimizer.param_groups, run.order.state(), cfg,
                                cfg.run.keep_checkpoints, processes=world)  # fmt: skip
            accelerator.wait_for_everyone()
    if run.writer:
        run.writer.close()


def save_final(run: Run, cfg: TrainConfig) -> Path:
    """run.output/final: the trained embedder, whole (a sharded model's tensors gathered into an unsharded
    copy built like the first)."""
    accelerator, embedder = run.accelerator, run.embedder
    accelerator.wait_for_everyone()
    final = run.out / "final"
    if run.strategy.sharded:
        weights, _ = run.strategy.gather()
        if accelerator.is_main_process:
            embedder = build_embedder(cfg)  # float32 throughout: it only receives the trained tensors
            with torch.no_grad():
                for n, p in trainable(embedder.backbone).items():
                    p.copy_(weights[n])
    if accelerator.is_main_process:
        embedder.save_pretrained(final)
    return final
