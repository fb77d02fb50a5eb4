"""Speed of the Embedder on nano, as ratios measured side by side in one run (run by hand, not in CI).

    python benchmarks/bench_embed.py [--repeats 3] [--out benchmarks/results/embed.json]

1. disc throughput: `Embedder.encode` from Samples (tokenise, decode images, batch, normalise) against a
   bare forward of the same model (vision encoder + projector + decoder) on the same, already prepared
   batches. Goal: ratio >= 0.95.
2. gen batching: generated tokens/s with 16 sequences at a time against one at a time. Goal: >= 4x.
4. shared prefix: disc encode with the system turn's KV cache shared against whole prompts, on the text
   items and on all items.
(Decoding always continues from the prefill's KV cache: `benchmarks/bench_generate.py` measures the decoder
against one row at a time, the old static-batch loop and transformers' generate().)
Runs alternate (A, B, A, B, ...) and the median of each is reported, so load on a shared machine hits both.
"""

from __future__ import annotations

import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import bench_parser, write_result
from PIL import Image

from mmemb import Embedder, Sample


def make_items(n: int, folder: Path) -> list[Sample]:
    rng = np.random.RandomState(0)
    words = "red blue small large dog cat car tree house river photo of a the with near under".split()
    items = []
    for i in range(n):
        text = " ".join(rng.choice(words, size=rng.randint(4, 24)))
        if i % 2:
            path = folder / f"{i}.png"
            Image.fromarray((rng.rand(160, 200, 3) * 255).astype("uint8")).save(path)
            items.append(Sample(id=str(i), image=path, text=text))
        else:
            items.append(Sample(id=str(i), text=text, instruction="Represent the text"))
    return items


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def alternate(a, b, repeats: int) -> tuple[float, float]:
    ta, tb = [], []
    for _ in range(repeats):
        ta.append(timed(a))
        tb.append(timed(b))
    return statistics.median(ta), statistics.median(tb)


def main() -> None:
    ap = bench_parser(__doc__, "embed")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--items", type=int, default=64)
    ap.add_argument("--gen-tokens", type=int, default=32)
    args = ap.parse_args()
    torch.manual_seed(0)
    emb = Embedder.from_pretrained("nano")
    bb = emb.backbone
    results: dict = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
        "command": "python benchmarks/bench_embed.py",
    }

    with tempfile.TemporaryDirectory() as tmp:
        items = make_items(args.items, Path(tmp))
        bs = 16
        # the batches encode() forms (length-sorted), prepared once for the bare forward
        order = sorted(range(len(items)), key=lambda i: emb._cost(items[i]))
        batches = [[items[i] for i in order[s : s + bs]] for s in range(0, len(order), bs)]
        prepared = [bb.prepare(b, [emb.prompt(s) for s in b]) for b in batches]

        @torch.no_grad()
        def bare() -> None:
            for p in prepared:
                embeds = bb.input_embeddings()(p.input_ids)  # (B, T, D)
                if "pixel_values" in p.extra:
                    visual = bb.encode_images(p.extra["pixel_values"])  # (N, g*g, D)
                    embeds = embeds.masked_scatter((p.input_ids == bb.image_token_id)[..., None], visual)
                bb.decoder(
                    inputs_embeds=embeds,
                    attention_mask=p.attention_mask,
                    position_ids=p.position_ids,
                    use_cache=False,
                )

        def ours() -> None:
            emb.encode(items, batch_size=bs)

        ours(), bare()  # warm-up
        t_ours, t_bare = alternate(ours, bare, args.repeats)
        results["disc"] = {
            "items": len(items),
            "batch_size": bs,
            "encode_s": t_ours,
            "bare_forward_s": t_bare,
            "encode_items_per_s": len(items) / t_ours,
            "ratio": t_bare / t_ours,
        }

        gen_items = [Sample(id=str(i), text=f"describe item number {i} in a few words") for i in range(16)]
        counts: dict = {}

        def gen(batch_size: int):
            def run() -> None:
                out = emb.encode(gen_items, mode="gen", batch_size=batch_size, max_new_tokens=args.gen_tokens)
                counts[batch_size] = sum(out.gen_tokens)

            return run

        t16, t1 = alternate(gen(16), gen(1), args.repeats)
        results["gen_batching"] = {
            "sequences": 16,
            "max_new_tokens": args.gen_tokens,
            "tokens_per_s_batch16": counts[16] / t16,
            "tokens_per_s_batch1": counts[1] / t1,
            "speedup": (counts[16] / t16) / (counts[1] / t1),
        }

        texts = [x for x in items if not x.media()]

        def prefix(on: bool, subset):
            def run() -> None:
                emb.share_prefix = on
                emb.encode(subset, batch_size=bs)
                emb.share_prefix = True

            return run

        results["shared_prefix"] = {"prefix_tokens": emb.shared_prefix().length}
        for name, subset in (("text_items", texts), ("all_items", items)):
            t_on, t_off = alternate(prefix(True, subset), prefix(False, subset), args.repeats)
            results["shared_prefix"][name] = {"items": len(subset), "cached_s": t_on, "whole_prompts_s": t_off,
                                              "speedup": t_off / t_on}  # fmt: skip

    write_result(results, args.out, show=False)
    d, g = results["disc"], results["gen_batching"]
    print(
        f"disc: encode {d['encode_items_per_s']:.1f} items/s; bare forward / encode time ratio "
        f"{d['ratio']:.3f} (goal >= 0.95)"
    )
    print(
        f"gen:  {g['tokens_per_s_batch16']:.1f} tok/s batched 16 vs {g['tokens_per_s_batch1']:.1f} tok/s one at "
        f"a time: {g['speedup']:.2f}x (goal >= 4)"
    )
    p = results["shared_prefix"]
    print(
        f"prefix: {p['prefix_tokens']} shared tokens cached: disc {p['text_items']['speedup']:.2f}x on text items, "
        f"{p['all_items']['speedup']:.2f}x on all"
    )
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
