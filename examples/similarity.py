"""Print the text-to-media cosine similarities of the example items for each embedding file given.

python examples/similarity.py out/examples.disc.npy [out/examples.gen.npy]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def main(paths: list[str]) -> None:
    for path in map(Path, paths):
        vecs = np.load(path, allow_pickle=False)
        ids = json.loads(path.with_suffix(".ids.json").read_text())
        texts = [i for i, x in enumerate(ids) if x.startswith("t-")]
        media = [i for i, x in enumerate(ids) if not x.startswith("t-")]
        sims = vecs[texts] @ vecs[media].T  # (texts, media): cosine, vectors are unit length
        print(f"\n{path.name}: cosine(text, media); * marks each text's best match")
        print(" " * 12 + "".join(f"{ids[j]:>12}" for j in media))
        for r, i in enumerate(texts):
            best = int(sims[r].argmax())
            cells = "".join(f"{s:>11.3f}{'*' if c == best else ' '}" for c, s in enumerate(sims[r]))
            print(f"{ids[i]:>12}{cells}")
        hits = sum(int(sims[r].argmax()) == r for r in range(len(texts)))
        print(f"matched {hits}/{len(texts)} (the untrained nano projector is not expected to match yet)")


if __name__ == "__main__":
    main(sys.argv[1:])
