"""Stage-1 training on a tiny random Qwen2-VL and a toy dataset: learning, GradCache equivalence on the real
backbone, accumulation, exact resume after SIGKILL, the saved embedder, and errors before compute."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mmemb import Embedder
from mmemb.cli import main
from mmemb.data.pairs import read_pairs
from mmemb.precision import autocast
from mmemb.testing.tiny_hf import build_tiny_hf
from mmemb.train.config import load_train_config, mixed_precision
from mmemb.train.data import BatchOrder, build_examples
from mmemb.train.stage1 import batch_backward, build_embedder, train_stage1
from mmemb.types import InputError

from .test_reasoning import make_toy


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    return {"toy": make_toy(root / "toy", n=8), "tiny": build_tiny_hf("qwen2_vl", root / "tiny")}


def cfg_for(world, tmp_path, *extra):
    """float32 unless `extra` says run.mixed_precision=bf16 (the equivalence tests run in both)."""
    base = [f"model.init={world['tiny']}", f"data.source={world['toy']}", "run.mixed_precision=no", "data.variant=none", "batch.size=4",
            "batch.chunk=2", "run.log_every=1", "run.tensorboard=false", f"run.output={tmp_path / 'out'}",
            "run.mixed_precision=no"]  # fmt: skip
    return load_train_config(None, [*base, *extra])


def setup(world, cfg):
    """The model as stage 1 builds it (float32 masters, frozen tensors cast), the examples, and the forward's
    autocast context (what accelerate wraps the forward in)."""
    emb = build_embedder(cfg, cast_frozen=True)
    pairs = read_pairs(cfg.data.source, tasks=list(cfg.data.tasks) or None)
    low = {"bf16": torch.bfloat16}.get(mixed_precision(cfg), torch.float32)

    def forward(*args):  # as accelerate wraps the model: only the forward runs under autocast, not the losses
        with autocast(low):
            return emb.backbone(*args)

    return emb, build_examples(pairs, cfg.data, emb.config.tokens), forward


# GradCache / accumulation tolerances per precision: float32 agrees to rounding; bf16 autocast rounds every
# matmul to 8 bits of mantissa, and a chunk of 2 rounds differently from a batch of 4 (docs/precision.md)
GRAD_TOL = {"no": (1e-4, 1e-5), "bf16": (5e-2, 5e-2)}  # (rtol, atol relative to the tensor's largest value)


def grads(emb) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in emb.backbone.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_gradcache_equals_the_full_batch_on_the_real_backbone(world, tmp_path, precision):
    results = []
    for chunk in (0, 2, 1):
        cfg = cfg_for(
            world, tmp_path, f"batch.chunk={chunk}", "loss.cross_mode=0.5", "data.hard_negatives=2",
            "data.tasks=[Toy-CLS]", f"run.mixed_precision={precision}",
        )  # fmt: skip
        emb, examples, forward = setup(world, cfg)
        emb.backbone.train()
        out = batch_backward(forward, emb, examples[:4], cfg, lambda x: x.backward())
        results.append((out, grads(emb)))
    rtol, atol = GRAD_TOL[precision]
    (full, g_full), *others = results
    assert set(g_full) and all(n.find(".visual.blocks") < 0 for n in g_full)  # vision tower frozen
    for out, g in others:
        for k in ("loss", "disc_loss", "gen_loss", "cross_loss", "lm_loss"):
            assert float(out[k]) == pytest.approx(float(full[k]), rel=rtol / 10, abs=atol / 10), k
        assert set(g) == set(g_full)
        for n in g_full:
            assert g[n].dtype == torch.float32  # float32 master weights get float32 gradients
            scale = g_full[n].abs().max().item()  # agree to rounding relative to the tensor's size
            torch.testing.assert_close(g[n], g_full[n], rtol=rtol, atol=atol * scale, msg=n)


@pytest.mark.parametrize("model", ["tiny", "nano"])
def test_the_shared_prefix_runs_once_and_changes_no_loss_or_gradient(world, tmp_path, model):
    """Backbone.forward with `prefix_ids`: the template's prefix (system message) runs once per forward and is
    broadcast to the rows; losses and gradients equal those of running every row in full (float32), on the
    tiny Qwen2-VL (multimodal RoPE, hf attention) and on nano (LoRA, the Llama decoder)."""
    init = world["tiny"] if model == "tiny" else "nano"
    results = []
    for share in (False, True):
        cfg = cfg_for(world, tmp_path, f"model.init={init}", "batch.chunk=0", "data.variant=none",
                      "data.tasks=[Toy-CLS]")  # fmt: skip
        emb, examples, forward = setup(world, cfg)
        emb.share_prefix = share
        seen = []

        def spy(*args, seen=seen, forward=forward):
            seen.append(args[5] is not None and args[0].shape[1])  # prefix_ids given: the suffix length
            return forward(*args)

        emb.backbone.train()
        out = batch_backward(spy, emb, examples[:4], cfg, lambda x: x.backward())
        results.append((out, grads(emb), seen))
    (full, g_full, seen_full), (shared, g_shared, seen_shared) = results
    assert seen_full == [False] and seen_shared[0]  # the sharing path really ran, on suffixes only
    for k in ("loss", "disc_loss", "gen_loss", "lm_loss"):
        assert float(shared[k]) == pytest.approx(float(full[k]), rel=1e-5, abs=1e-6), k
    assert set(g_shared) == set(g_full) and g_full
    for n in g_full:
        torch.testing.assert_close(g_shared[n], g_full[n], rtol=1e-4, atol=1e-5 * g_full[n].abs().max().item(),
                                   msg=n)  # fmt: skip


def test_a_few_steps_change_the_trainable_weights_and_lower_the_loss_on_a_fixed_batch(world, tmp_path):
    cfg = cfg_for(world, tmp_path)
    emb, examples, _ = setup(world, cfg)
    bb = emb.backbone
    bb.train()
    before = {n: p.detach().clone() for n, p in bb.named_parameters()}
    params = [p for p in bb.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=3e-3)
    losses = []
    for _ in range(8):
        out = batch_backward(bb, emb, examples[:4], cfg, lambda x: x.backward())
        losses.append(float(out["loss"]))
        opt.step()
        opt.zero_grad()
    assert losses[-1] < losses[0] * 0.8, losses
    changed = {n for n, p in bb.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {n for n, p in bb.named_parameters() if p.requires_grad}
    assert not any(".visual.blocks" in n for n in changed)


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_accumulation_averages_the_gradients_of_consecutive_batches(world, tmp_path, precision):
    """One optimizer step with accumulation 2 equals AdamW on the mean gradient of the next two batches."""
    cfg = cfg_for(world, tmp_path, "batch.accumulation=2", "run.max_steps=1", "optim.max_grad_norm=0",
                  "optim.warmup_ratio=0", "optim.scheduler=constant", "optim.lr=1e-3",
                  f"run.mixed_precision={precision}")  # fmt: skip
    final = train_stage1(cfg, log=False)
    trained = dict(Embedder.from_pretrained(final, train=True).backbone.named_parameters())
    emb, examples, forward = setup(world, cfg)
    emb.backbone.train()
    order = BatchOrder(len(examples), cfg.run.seed)
    torch.manual_seed(cfg.run.seed)
    params = [p for p in emb.backbone.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    for _ in range(2):
        batch = [examples[i] for i in order.next(4)]
        batch_backward(forward, emb, batch, cfg, lambda x: (x / 2).backward())
    opt.step()
    mine = dict(emb.backbone.named_parameters())
    assert set(trained) == set(mine)
    for n, v in trained.items():
        torch.testing.assert_close(v.detach().float(), mine[n].detach().float(), rtol=1e-5, atol=1e-7, msg=n)
    start = dict(Embedder.from_pretrained(world["tiny"], train=True).backbone.named_parameters())
    assert not all(torch.equal(v, start[n]) for n, v in trained.items())  # the step did something


def test_killed_with_sigkill_then_resumed_reaches_the_same_weights(world, tmp_path):
    common = [f"model.init={world['tiny']}", f"data.source={world['toy']}", "run.mixed_precision=no", "data.variant=none", "batch.size=4",
              "batch.chunk=2", "run.max_steps=60", "run.save_every=5", "run.log_every=10"]  # fmt: skip
    ref = cfg_for(world, tmp_path, *common, f"run.output={tmp_path / 'ref'}")
    ref_final = train_stage1(ref, log=False)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-c", "import sys; from mmemb.cli import main; sys.exit(main(sys.argv[1:]))",
           "train", "stage1", *common, "run.tensorboard=false", f"run.output={out}"]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while (
        time.time() < deadline and proc.poll() is None and not (out / "checkpoints" / "step-000010").is_dir()
    ):
        time.sleep(0.005)
    assert proc.poll() is None, f"finished before it could be killed: {proc.stderr.read().decode()[-800:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "final").exists()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-1500:]
    assert "resuming from" in done.stdout + done.stderr
    a = load_file(str(ref_final / "backbone" / "model.safetensors"))
    b = load_file(str(out / "final" / "backbone" / "model.safetensors"))
    assert set(a) == set(b)
    assert all(torch.equal(a[n], b[n]) for n in a), [n for n in a if not torch.equal(a[n], b[n])][:3]


def test_the_saved_embedder_loads_and_embeds_with_its_config(world, tmp_path):
    cfg = cfg_for(world, tmp_path, "run.max_steps=2", "loss.cross_mode=0.2", "run.tensorboard=true")
    final = train_stage1(cfg, log=False)
    emb = Embedder.from_pretrained(final)
    assert ["gen", "disc"] in emb.config.valid_mode_pairs
    out = emb.encode(["a red circle", "a blue square"])
    assert out.vectors.shape[0] == 2 and np.allclose(np.linalg.norm(out.vectors, axis=1), 1, atol=1e-5)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "out" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"disc/loss", "gen/loss", "cross/loss", "lm/loss", "lr", "grad_norm", "disc/accuracy"} <= tags
    assert [e.step for e in events.Scalars("lr")] == [1, 2]
    saved = load_train_config(tmp_path / "out" / "checkpoints" / "step-000002" / "config.yaml")
    assert saved == cfg


def test_selected_variant_trains_the_selected_rationales(world, tmp_path):
    pairs = read_pairs(world["toy"])
    sel = tmp_path / "selection.jsonl"
    rows = [{"pair_id": p.id, "label": "think" if i % 2 else "no_think",
             "rationale": {"think": f"about {p.id}", "answer": "x"} if i % 2 else None}
            for i, p in enumerate(pairs)]  # fmt: skip
    sel.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = cfg_for(world, tmp_path, "data.variant=selected", f"data.selection={sel}")
    emb = Embedder.from_pretrained(world["tiny"])
    examples = build_examples(pairs, cfg.data, emb.config.tokens)
    assert [e.q_completion.startswith("<think>about ") for e in examples] == [
        bool(i % 2) for i in range(len(pairs))
    ]
    assert all(e.t_completion == "<no_think><gen_emb>" for e in examples)
    sel.write_text("".join(json.dumps(r) + "\n" for r in rows[:-1]))  # one pair missing
    with pytest.raises(InputError, match="have no selection"):
        build_examples(pairs, cfg.data, emb.config.tokens)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["optim.lrr=1"], "unknown key 'optim.lrr'"),
        (["batch.size=big"], "expected int"),
        (
            ["data.variant=selected", "data.selection=nowhere.jsonl"],
            "data.selection 'nowhere.jsonl': not found",
        ),
        (["data.variant=none", "data.source=no/such/folder"], "no/such/folder: not found"),
    ],
)
def test_bad_input_fails_before_any_compute(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    code = main(["train", "stage1", f"run.output={out}", "run.tensorboard=false", *args])
    assert code == 2 and message in capsys.readouterr().err
    assert not out.exists()


def test_hard_negatives_need_enough_per_pair(world, tmp_path):
    cfg = cfg_for(world, tmp_path, "data.hard_negatives=2")  # Toy-RET (global) has none
    emb = Embedder.from_pretrained(world["tiny"])
    with pytest.raises(InputError, match=r"tasks \['Toy-RET'\] have fewer hard negatives"):
        build_examples(read_pairs(world["toy"]), cfg.data, emb.config.tokens)


DDP_RANK = """
import os, sys
rank, port, out = sys.argv[1], sys.argv[2], sys.argv[3]
os.environ.update(RANK=rank, LOCAL_RANK=rank, WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                  MASTER_PORT=port, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")
from mmemb.train.config import load_train_config
from mmemb.train.stage1 import train_stage1
train_stage1(load_train_config(None, sys.argv[4:] + [f"run.output={out}"]), log=False)
"""


def launch_two(world_args: list[str], out: Path) -> None:
    """Train with 2 CPU processes (gloo); skip the test where this machine cannot open the sockets."""
    from .test_losses import _free_port

    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    port = str(_free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", DDP_RANK, str(r), port, str(out), *world_args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        for r in range(2)
    ]
    errs = [p.communicate(timeout=300)[1].decode() for p in procs]
    joined = "".join(errs).lower()
    if any(p.returncode for p in procs) and "gloo" in joined and "connect" in joined:
        pytest.skip(f"could not start 2 gloo processes here: {errs[0][-300:]}")
    assert all(p.returncode == 0 for p in procs), errs[0][-1500:] + errs[1][-1500:]


def test_two_process_ddp_equals_one_process_with_the_global_batch(world, tmp_path):
    """2 CPU processes (gloo) x batch 4 == 1 process x batch 8: the same global batches, negatives gathered
    across processes, gradients averaged by DDP, the LM term a token mean over the global batch."""
    common = [f"model.init={world['tiny']}", f"data.source={world['toy']}", "run.mixed_precision=no", "data.variant=none",
              "batch.chunk=2", "run.max_steps=3", "run.save_every=3", "run.tensorboard=false",
              "loss.cross_mode=0.3", "batch.accumulation=2"]  # fmt: skip
    launch_two([*common, "batch.size=4"], tmp_path / "ddp")
    single = train_stage1(
        load_train_config(None, [*common, "batch.size=8", f"run.output={tmp_path / 'one'}"])
    )
    a = load_file(str(tmp_path / "ddp" / "final" / "backbone" / "model.safetensors"))
    b = load_file(str(single / "backbone" / "model.safetensors"))
    start = load_file(str(Path(world["tiny"]) / "model.safetensors"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    assert max((a[k] - start[k]).abs().max().item() for k in a if k in start) > 1e-2  # training moved them


SHARDED = ["data.variant=none", "batch.chunk=2", "run.max_steps=3", "run.save_every=2", "run.keep_checkpoints=3",
           "run.tensorboard=false", "loss.cross_mode=0.3", "batch.accumulation=2"]  # fmt: skip


@pytest.fixture(scope="module")
def one_process(world, tmp_path_factory):
    """The reference: 1 process, global batch 8, checkpoints at steps 2 and 3."""
    out = tmp_path_factory.mktemp("one") / "run"
    args = [
        f"model.init={world['tiny']}",
        f"data.source={world['toy']}",
        "run.mixed_precision=no",
        *SHARDED,
        "batch.size=8",
    ]
    train_stage1(load_train_config(None, [*args, f"run.output={out}"]), log=False)
    return out


def assert_same_checkpoint(a: Path, b: Path) -> None:
    """Whole trainable weights equal; AdamW moments equal relative to their size; the same keys in both."""
    for name, rel in (("trainable", False), ("optimizer", True)):
        x, y = load_file(str(a / f"{name}.safetensors")), load_file(str(b / f"{name}.safetensors"))
        assert set(x) == set(y), f"{name}: {sorted(set(x) ^ set(y))[:4]}"
        for k in x:
            assert x[k].shape == y[k].shape, k
            scale = y[k].float().abs().max().item() if rel else 1.0
            assert (x[k].float() - y[k].float()).abs().max().item() <= 1e-5 * max(scale, 1e-12), (name, k)


def test_a_resume_keeps_the_config_but_may_split_the_batch_otherwise(world, one_process):
    from mmemb.train.stage1 import check_resumable

    ckpt = one_process / "checkpoints" / "step-000002"
    args = [f"model.init={world['tiny']}", f"data.source={world['toy']}", "run.mixed_precision=no", *SHARDED]
    check_resumable(
        ckpt, load_train_config(None, [*args, "batch.size=8", "batch.chunk=4"]), 1
    )  # chunk: memory only
    check_resumable(
        ckpt, load_train_config(None, [*args, "batch.size=2"]), 4
    )  # 2 x 4 processes: the same batch
    with pytest.raises(
        InputError, match=r"batch.size 8 x 1 process\(es\) x accumulation 2; here batch.size 8 x 2"
    ):
        check_resumable(ckpt, load_train_config(None, [*args, "batch.size=8"]), 2)
    with pytest.raises(InputError, match="another 'optim' config"):
        check_resumable(ckpt, load_train_config(None, [*args, "batch.size=8", "optim.lr=1e-3"]), 1)


@pytest.mark.parametrize("strategy", ["fsdp", "deepspeed"])
def test_sharded_training_equals_one_process_and_checkpoints_move_between_strategies(
    world, tmp_path, one_process, strategy
):
    """2 processes sharding the model (FSDP2, or ZeRO-2) x batch 4 == 1 process x batch 8: the gathered
    checkpoints (weights and AdamW moments) and the final model. Then a sharded run resumed from the 1-process
    step-2 checkpoint reaches the same step-3 checkpoint: checkpoints do not depend on the strategy."""
    pytest.importorskip("deepspeed") if strategy == "deepspeed" else None
    args = [f"model.init={world['tiny']}", f"data.source={world['toy']}", "run.mixed_precision=no", *SHARDED, "batch.size=4",
            f"run.strategy={strategy}"]  # fmt: skip
    if strategy == "deepspeed":  # the shipped config
        args.append(f"run.deepspeed_config={Path(__file__).parents[1] / 'configs' / 'deepspeed-zero2.json'}")
    fresh, resumed = tmp_path / "fresh", tmp_path / "resumed"
    launch_two(args, fresh)
    for step in ("step-000002", "step-000003"):
        assert_same_checkpoint(fresh / "checkpoints" / step, one_process / "checkpoints" / step)
    a = load_file(str(fresh / "final" / "backbone" / "model.safetensors"))
    b = load_file(str(one_process / "final" / "backbone" / "model.safetensors"))
    assert set(a) == set(b) and max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5

    shutil.copytree(one_process / "checkpoints" / "step-000002", resumed / "checkpoints" / "step-000002")
    launch_two(args, resumed)
    assert_same_checkpoint(
        resumed / "checkpoints" / "step-000003", one_process / "checkpoints" / "step-000003"
    )


@pytest.fixture(scope="module")
def nano_world(world, tmp_path_factory):
    """nano (peft LoRA in each decoder block, tied embeddings, a frozen channels_last vision tower): 1 process,
    global batch 8, 2 steps."""
    out = tmp_path_factory.mktemp("nano-one") / "run"
    args = ["model.init=nano", f"data.source={world['toy']}", "run.mixed_precision=no", "data.variant=none", "run.max_steps=2",
            "run.save_every=2", "run.tensorboard=false", "batch.chunk=2", "loss.cross_mode=0.3"]  # fmt: skip
    train_stage1(load_train_config(None, [*args, "batch.size=8", f"run.output={out}"]), log=False)
    return args, out


@pytest.mark.parametrize("strategy", ["fsdp", "deepspeed"])
def test_nano_trains_sharded_like_one_process(nano_world, tmp_path, strategy):
    """On nano, 2 processes agree with 1 process as DDP does: all but ~0.01% of the 2M trainable values within
    1e-6 (measured: DDP, FSDP and ZeRO-2 each leave 240 values off, where Adam divides a near-zero gradient by
    its near-zero root mean square, so summation order shows)."""
    pytest.importorskip("deepspeed") if strategy == "deepspeed" else None
    args, one = nano_world
    launch_two([*args, "batch.size=4", f"run.strategy={strategy}"], tmp_path / "two")
    name = "checkpoints/step-000002/trainable.safetensors"
    a, b = load_file(str(one / name)), load_file(str(tmp_path / "two" / name))
    assert set(a) == set(b)
    total = sum(t.numel() for t in a.values())
    off = sum(int(((a[k] - b[k]).abs() > 1e-6).sum()) for k in a)
    assert off < 1e-3 * total, f"{off} of {total} values differ"
    # the final model (trained tensors gathered into a fresh unsharded nano) embeds like the 1-process one
    texts = ["a red circle", "a blue square"]
    x = (
        Embedder.from_pretrained(tmp_path / "two" / "final", dtype="float32")
        .encode(texts, mode="disc")
        .vectors
    )
    y = Embedder.from_pretrained(one / "final", dtype="float32").encode(texts, mode="disc").vectors
    assert np.allclose(x, y, atol=1e-5)  # 2 steps move the init model 1.4e-3 away


def test_one_process_has_nothing_to_shard_and_trains_as_ddp(world, tmp_path, capsys):
    cfg = cfg_for(world, tmp_path, "run.strategy=fsdp", "run.max_steps=1")
    final = train_stage1(cfg, log=False)
    assert "nothing to shard: run.strategy=fsdp trains as ddp" in capsys.readouterr().err
    assert (final / "embedder_config.json").is_file()


def test_nano_trains_in_bf16_with_float32_masters(world, tmp_path):
    """bf16 training as the default runs it on this hardware: autocast forward, frozen weights (the vision
    tower with its BatchNorm statistics, the base LM) in bf16, trainable ones and AdamW state in float32."""
    cfg = load_train_config(None, ["model.init=nano", f"data.source={world['toy']}", "data.variant=none",
                                   "batch.size=4", "batch.chunk=2", "run.max_steps=2", "run.save_every=2",
                                   "run.tensorboard=false", "run.mixed_precision=bf16", f"run.output={tmp_path}"])  # fmt: skip
    emb, examples, forward = setup(world, cfg)
    bb = emb.backbone
    assert {p.dtype for p in bb.parameters() if p.requires_grad} == {torch.float32}
    assert {p.dtype for p in bb.parameters() if not p.requires_grad} == {torch.bfloat16}
    assert bb.vision._bn0.running_mean.dtype == torch.bfloat16
    bb.train()
    out = batch_backward(forward, emb, examples[:4], cfg, lambda x: x.backward())  # images included
    assert np.isfinite(float(out["loss"])) and all(
        p.grad is not None and p.grad.dtype == torch.float32 for p in bb.parameters() if p.requires_grad
    )
    final = train_stage1(cfg, log=False)
    moments = load_file(str(tmp_path / "checkpoints" / "step-000002" / "optimizer.safetensors"))
    assert {v.dtype for k, v in moments.items() if k.endswith("exp_avg")} == {torch.float32}
    vecs = Embedder.from_pretrained(final, dtype="float32").encode(["a red circle"]).vectors
    assert np.isfinite(vecs).all()


def test_a_selection_over_more_pairs_serves_a_subset_but_every_pair_needs_one(tmp_path):
    """The reproduce policy stage trains on 40 pairs per task with the selection made over all of them."""
    from mmemb.config import TokensConfig
    from mmemb.data.pairs import Pair
    from mmemb.train.data import read_selection
    from mmemb.types import InputError, Sample

    def pair(i):
        return Pair(f"T/train/{i}", "T", Sample(text=f"q{i}"), Sample(text=f"t{i}"))

    rows = [{"pair_id": f"T/train/{i}", "label": "think" if i % 2 else "no_think",
             "rationale": {"think": f"r{i}", "answer": f"a{i}"} if i % 2 else None} for i in range(4)]  # fmt: skip
    path = tmp_path / "selection.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    chosen = read_selection([pair(0), pair(1)], path, TokensConfig())
    assert list(chosen) == ["T/train/1"] and "r1" in chosen["T/train/1"][0]
    with pytest.raises(InputError, match="1 training pair\\(s\\) have no selection.*T/train/7"):
        read_selection([pair(1), pair(7)], path, TokensConfig())
