"""How far a published profile's vectors move with the numerics: bf16 against float32, and PyTorch's SDPA
against eager attention, on the tiny random checkpoints (run by hand, not in CI).

    python benchmarks/bench_profile_drift.py [--out benchmarks/results/profile_drift.json]

The authors run bf16 with flash-attention 2, which this machine cannot run. tests/test_profiles.py shows
that in float32 our vectors equal a plain transformers forward to 2e-5, so what is left is kernel and dtype
noise. This measures two such noises per profile: float32 -> bf16 (mmemb's default for published profiles),
and SDPA -> eager attention in bf16 (a stand-in for one attention kernel against another). It reports the
smallest cosine and the largest absolute difference over items of every kind: text, image, transparent
image, two pages, video. The tiny models are random, so these figures only give a scale. Real checkpoints
have other activation ranges, and their drift must be measured on the model itself.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from mmemb import Embedder, Sample
from mmemb.testing.tiny_hf import build_tiny_hf

PROFILES = {
    "ume-r1": ("qwen2_vl", True),
    "vlm2vec-v2": ("qwen2_vl", False),
    "qwen3-vl-embedding": ("qwen3_vl", False),
}


def items(root: Path) -> list[Sample]:
    rng = np.random.RandomState(0)
    paths = []
    for i, size in enumerate([(64, 48), (40, 90), (120, 100)]):
        paths.append(root / f"im{i}.png")
        Image.fromarray((rng.rand(size[1], size[0], 3) * 255).astype("uint8")).save(paths[-1])
    rgba = (rng.rand(64, 64, 4) * 255).astype("uint8")
    Image.fromarray(rgba, "RGBA").save(root / "rgba.png")
    frames = []
    for i in range(4):
        frames.append(root / f"f{i}.png")
        Image.new("RGB", (56, 56), (50 * i, 120, 200 - 40 * i)).save(frames[-1])
    return [
        Sample(
            id="text", text="a red bicycle leaning against a stone wall", instruction="Find an image of this:"
        ),
        Sample(id="plain", text="two people walking on the beach at sunset"),
        Sample(id="image", image=paths[0], text="what is shown?", instruction="Answer the question"),
        Sample(id="image_only", image=paths[1], instruction="Represent the given image"),
        Sample(id="rgba", image=root / "rgba.png", text="clip art"),
        Sample(
            id="pages", pages=(paths[1], paths[2]), instruction="Find the document", text="sales in March"
        ),
        Sample(id="video", frames=tuple(frames), instruction="Find the clip", text="a man cooking"),
    ]


def compare(a: np.ndarray, b: np.ndarray) -> dict:
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return {
        "min_cosine": float(cos.min()),
        "mean_cosine": float(cos.mean()),
        "max_abs": float(np.abs(a - b).max()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/profile_drift.json"))
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        batch = items(root)
        for profile, (family, ume) in PROFILES.items():
            folder = build_tiny_hf(family, root / profile, ume=ume)
            vec = {}
            for dtype in ("float32", "bfloat16"):
                e = Embedder.from_pretrained(folder, profile=profile, dtype=dtype, quiet=True)
                vec[dtype] = e.encode(batch, batch_size=len(batch)).vectors
            e.backbone.model.set_attn_implementation("eager")
            vec["bfloat16-eager"] = e.encode(batch, batch_size=len(batch)).vectors
            results[profile] = {
                "float32 vs bfloat16": compare(vec["float32"], vec["bfloat16"]),
                "bfloat16: sdpa vs eager": compare(vec["bfloat16"], vec["bfloat16-eager"]),
            }
            print(profile, json.dumps(results[profile]))
    out = {"machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "items": [s.id for s in batch],
           "results": results}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
