"""Stage-1 memory per process and step time under each run.strategy: ddp, fsdp (FSDP2), deepspeed (ZeRO-2).

    python benchmarks/bench_sharding.py [--width 1024] [--layers 12] [--steps 3] [--out benchmarks/results/sharding.json]

A random Qwen2-VL whose language model is scaled up (`width` x `layers`; hf stage 1 trains the whole LM and
the merger) is trained by 2 CPU processes (gloo) under each strategy in turn, the same batches each time
(real mmeb-mini train pairs, batch 4 per process in GradCache chunks of 2). Each process reports:
- the training state it holds after the last step, counted tensor by tensor: parameters (its shards under
  FSDP; the whole module plus its fp32 master slice under ZeRO) and AdamW moments;
- its peak resident memory (VmHWM), which also counts the full model every process loads before sharding;
- seconds per step after the first.
Goal: sharding halves the AdamW state per process at 2 processes (FSDP also the parameters); time is the
price in gathers and reduce-scatters. Ratios are measured side by side in one run on one machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import bench_parser, write_result

STRATEGIES = ("ddp", "fsdp", "deepspeed")


def status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def tensor_mb(tensors) -> float:
    from torch.distributed.tensor import DTensor

    total = 0
    for t in tensors:
        t = t.to_local() if isinstance(t, DTensor) else t
        total += t.numel() * t.element_size()
    return total / 2**20


def worker(model: str, strategy_name: str, steps: int, out: Path) -> dict:
    import torch
    from accelerate import Accelerator, DistributedDataParallelKwargs

    from mmemb.train.config import load_train_config
    from mmemb.train.data import BatchOrder, build_examples, read_training_pairs
    from mmemb.train.parallel import make_strategy
    from mmemb.train.stage1 import batch_backward, build_embedder

    cfg = load_train_config(None, [f"model.init={model}", "data.source=mmeb-mini", "data.limit_per_task=8",
                                   "data.variant=none", "batch.size=4", "batch.chunk=2", "loss.lm=0",
                                   f"run.strategy={strategy_name}", "run.tensorboard=false"])  # fmt: skip
    accelerator = Accelerator(kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    torch.manual_seed(0)
    embedder = build_embedder(cfg)
    examples = build_examples(read_training_pairs(cfg.data), cfg.data, embedder.config.tokens)
    strategy = make_strategy(strategy_name, accelerator, cfg)
    strategy.prepare(embedder.backbone)
    strategy.model.train()
    order, world, rank = BatchOrder(len(examples), 0), accelerator.num_processes, accelerator.process_index
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        batch = [examples[i] for i in order.next(4 * world)[rank * 4 : (rank + 1) * 4]]
        hold = strategy.no_sync
        batch_backward(
            strategy.model,
            embedder,
            batch,
            cfg,
            strategy.backward,
            no_sync=hold,
            share_prefix=strategy.shares_prefix,
        )
        strategy.step(1.0)
        times.append(time.perf_counter() - t)
    params = [p for p in strategy.model.parameters()]
    if strategy_name == "deepspeed":  # ZeRO's fp32 master copy of this process's slice
        params += list(strategy._zero.single_partition_of_fp32_groups)
    moments = [v for s in strategy.optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    row = {
        "strategy": strategy_name,
        "rank": rank,
        "trainable_params_m": round(sum(p.numel() for p in strategy.params.values()) / 1e6, 1),
        "param_mb": round(tensor_mb(params), 1),
        "adamw_mb": round(tensor_mb(moments), 1),
        "peak_rss_mb": round(status_mb("VmHWM"), 1),
        "seconds_per_step": round(sum(times[1:]) / max(1, len(times) - 1), 2),
    }
    (out / f"{strategy_name}-{rank}.json").write_text(json.dumps(row))
    return row


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = bench_parser(__doc__, "sharding")
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        model, name, steps, out = args.worker
        worker(model, name, int(steps), Path(out))
        return
    from mmemb.testing.tiny_hf import build_tiny_hf

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_hf("qwen2_vl", Path(tmp) / "model", width=args.width, layers=args.layers)
        for name in STRATEGIES:
            port, t = str(free_port()), time.perf_counter()
            procs = []
            for r in range(2):
                env = dict(os.environ, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                           MASTER_ADDR="127.0.0.1", MASTER_PORT=port, ACCELERATE_USE_CPU="true",
                           OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")  # fmt: skip
                cmd = [sys.executable, __file__, "--worker", str(model), name, str(args.steps), tmp]
                procs.append(
                    subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                )
            errs = [p.communicate()[1].decode() for p in procs]
            if any(p.returncode for p in procs):
                raise SystemExit(f"{name} failed:\n{errs[0][-2000:]}\n{errs[1][-2000:]}")
            for r in range(2):
                rows.append(json.loads((Path(tmp) / f"{name}-{r}.json").read_text()))
                print(rows[-1], flush=True)
            print(f"{name}: {time.perf_counter() - t:.0f} s", flush=True)
    base = {k: v for k, v in next(r for r in rows if r["strategy"] == "ddp" and r["rank"] == 0).items()}
    ratios = {}
    for name in STRATEGIES[1:]:
        row = next(r for r in rows if r["strategy"] == name and r["rank"] == 0)
        ratios[name] = {
            k: round(row[k] / base[k], 2) for k in ("param_mb", "adamw_mb", "peak_rss_mb", "seconds_per_step")
        }
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, 2 processes x 1 thread",
        "command": f"python benchmarks/bench_sharding.py --width {args.width} --layers {args.layers} --steps {args.steps}",
        "rows": rows,
        "rank0_vs_ddp": ratios,
    }
    print(json.dumps(ratios, indent=2))
    write_result(result, args.out, show=False)


if __name__ == "__main__":
    main()
