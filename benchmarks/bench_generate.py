"""Generation throughput with mixed completion lengths, side by side in one run (run by hand, not in CI).

    python benchmarks/bench_generate.py [--model nano-r1] [--rows 48] [--repeats 2]
                                        [--out benchmarks/results/generate.json]

Real mmeb-mini text queries; each row gets its own token cap, drawn from 4..64 (what mixed rationale lengths
cost), greedy decoding from the `<disc_emb>` prefill with mmemb's forcing (`<gen_emb>` after `</answer>` and
`<no_think>`). Four ways to decode the same rows, alternated in each repeat, median kept:
- mmemb: the continuous-batching decoder (decode.py), batch 16: rows leave as they end, new rows join;
- one row at a time (the same decoder, batch 1);
- the old loop: static batches of 16 that run until their longest row ends (finished rows masked, still
  computed), as mmemb decoded before continuous batching (kept here as the baseline, `old_loop`);
- transformers' `generate()` on the same weights (LoRA merged, added-token rows written into the tied
  matrix) with a per-row cap as a StoppingCriteria and the forcing as a LogitsProcessor, batches of 16
  left-padded: the baseline a user would write.
Reported: generated tokens/s of each and the ratios, and per way how many rows got exactly mmemb's tokens
(all of them in float32; in bf16 another batch shape rounds differently and greedy tokens may part ways).
"""

from __future__ import annotations

import copy
import platform
import statistics
import time

import numpy as np
import torch
from common import bench_parser, write_result

from mmemb import Embedder
from mmemb.data.tasks import load_task
from mmemb.decode import Row, Start, decode
from mmemb.embedder import sample_tokens
from mmemb.eval.evaluate import resolve


def text_queries(n: int) -> list:
    st = resolve("mmeb-mini", None)
    out = []
    for name, info in st.datasets.items():
        task = load_task(info, st.root, "test", st.formats[name])
        out += [task.items[q] for q in task.queries if not task.items[q].media()]
    return out[:n]


def ours(model: Embedder, items, caps, batch_size: int) -> list[list[int]]:
    bb = model.backbone
    rows = [Row(i, c) for i, c in enumerate(caps)]

    def prepare(idx):
        return bb.prepare([items[i] for i in idx], [model.prompt(items[i]) for i in idx])

    start = lambda hidden, group: Start({}, list(range(len(group))))  # noqa: E731
    done = decode(bb, rows, prepare, start, lambda lg: sample_tokens(lg, 0.0, 1.0), model.ids, model.stop_ids,
                  batch_size)  # fmt: skip
    return [r.tokens for r in sorted(done, key=lambda r: r.index)]


@torch.no_grad()
def old_loop(model: Embedder, items, caps, batch_size: int) -> list[list[int]]:
    """mmemb's decoding before continuous batching: a static batch steps until its longest row is done."""
    bb, out = model.backbone, []
    gen_emb = model.ids["gen_emb"]
    force_after = torch.tensor([model.ids["answer_close"], model.ids["no_think"]])
    for s in range(0, len(items), batch_size):
        chunk, cap = items[s : s + batch_size], torch.tensor(caps[s : s + batch_size])
        hidden, state = bb.prefill(bb.prepare(chunk, [model.prompt(x) for x in chunk]))
        B = len(chunk)
        done = torch.zeros(B, dtype=torch.bool)
        toks: list[list[int]] = [[] for _ in range(B)]
        prev = torch.full((B,), -1)
        logits = bb.logits(hidden[:, -1])
        for step in range(int(cap.max())):
            tok = logits.argmax(-1)
            tok = torch.where(torch.isin(prev, force_after), torch.full_like(tok, gen_emb), tok)
            done |= torch.isin(tok, model.stop_ids) | (cap <= step)
            active = ~done
            if not active.any():
                break
            tok = torch.where(active, tok, torch.full_like(tok, model.pad_id))
            h = bb.step(tok, state, active)
            for b in torch.nonzero(active).flatten().tolist():
                toks[b].append(int(tok[b]))
            done |= tok == gen_emb
            prev = tok
            logits = bb.logits(h)
        out += toks
    return out


def hf_model(model: Embedder):
    """A plain transformers causal LM with nano's trained parts folded in: LoRA merged, added rows in the
    (tied) embedding matrix, so `generate` computes what mmemb computes."""
    bb = model.backbone
    lm = copy.deepcopy(bb.lm).merge_and_unload()
    with torch.no_grad():
        lm.get_input_embeddings().weight[bb.base_vocab :] = bb.added_rows
    return lm.eval()


@torch.no_grad()
def hf_generate(model: Embedder, lm, items, caps, batch_size: int) -> list[list[int]]:
    from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

    gen_emb, force = model.ids["gen_emb"], [model.ids["answer_close"], model.ids["no_think"]]
    tok, out = model.backbone.tokenizer, []

    class Force(LogitsProcessor):
        def __call__(self, input_ids, scores):
            hit = torch.isin(input_ids[:, -1], torch.tensor(force))
            scores[hit] = -float("inf")
            scores[hit, gen_emb] = 0.0
            return scores

    for s in range(0, len(items), batch_size):
        chunk, cap = items[s : s + batch_size], torch.tensor(caps[s : s + batch_size])
        enc = tok(
            [model.prompt(x) for x in chunk], padding=True, add_special_tokens=False, return_tensors="pt"
        )
        T = enc["input_ids"].shape[1]

        class Cap(StoppingCriteria):
            def __init__(self, prompt_len: int, cap: torch.Tensor) -> None:
                self.prompt_len, self.cap = prompt_len, cap

            def __call__(self, input_ids, scores, **kw):
                return (input_ids.shape[1] - self.prompt_len) >= self.cap

        ids = lm.generate(**enc, max_new_tokens=int(cap.max()), do_sample=False,
                          eos_token_id=[gen_emb, *model.stop_ids.tolist()], pad_token_id=model.pad_id,
                          logits_processor=LogitsProcessorList([Force()]),
                          stopping_criteria=StoppingCriteriaList([Cap(T, cap)]))  # fmt: skip
        for row in ids[:, T:].tolist():
            keep = []
            for t in row:
                if t in model.stop_ids.tolist() and t != gen_emb:
                    break
                keep.append(t)
                if t == gen_emb:
                    break
            out.append(keep)
    return out


def main() -> None:
    ap = bench_parser(__doc__, "generate", model="nano-r1", dtype_help="; float32 shows equal tokens")
    ap.add_argument("--rows", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    model = Embedder.from_pretrained(args.model, dtype=args.dtype)
    model.backbone.eval()
    items = text_queries(args.rows)
    caps = np.random.RandomState(0).randint(4, 65, size=len(items)).tolist()
    lm = hf_model(model)
    ways = {
        "mmemb (continuous, batch 16)": lambda: ours(model, items, caps, 16),
        "one row at a time": lambda: ours(model, items, caps, 1),
        "old loop (static batch 16)": lambda: old_loop(model, items, caps, 16),
        "transformers generate() (batch 16)": lambda: hf_generate(model, lm, items, caps, 16),
    }
    times: dict[str, list[float]] = {k: [] for k in ways}
    tokens: dict = {}
    for _ in range(args.repeats):
        for k, fn in ways.items():
            t = time.perf_counter()
            tokens[k] = fn()
            times[k].append(time.perf_counter() - t)
    ref = tokens["mmemb (continuous, batch 16)"]
    n = sum(len(t) for t in ref)
    res: dict = {"command": "python benchmarks/bench_generate.py", "model": args.model,
                 "dtype": str(model.dtype).removeprefix("torch."), "rows": len(items),
                 "caps": {"min": min(caps), "max": max(caps), "mean": round(float(np.mean(caps)), 1)},
                 "generated_tokens": n, "ways": {}}  # fmt: skip
    for k, v in times.items():
        same = sum(a == b for a, b in zip(tokens[k], ref, strict=True))
        sec = statistics.median(v)
        res["ways"][k] = {"seconds": round(sec, 2), "tokens_per_s": round(n / sec, 1),
                          "rows_with_mmemb_tokens": f"{same}/{len(ref)}"}  # fmt: skip
    base = res["ways"]["mmemb (continuous, batch 16)"]["tokens_per_s"]
    for k in res["ways"]:
        res["ways"][k]["mmemb_speedup"] = round(base / res["ways"][k]["tokens_per_s"], 2)
    res["machine"] = (
        f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    )
    write_result(res, args.out)


if __name__ == "__main__":
    main()
