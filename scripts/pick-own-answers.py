"""What a model's own think-mode answers name on the WordNet-Pick test queries (docs/reasoning.md):
the gold word, another listed word, the asked category's word, or something else.

    python scripts/pick-own-answers.py runs/pick/stage1-selected/final [runs/pick-data]
"""

import collections
import json
import re
import sys
from pathlib import Path

from mmemb import Embedder
from mmemb.data.pairs import read_pairs

model, data = sys.argv[1], Path(sys.argv[2] if len(sys.argv) > 2 else "runs/pick-data")
rows = [json.loads(line) for line in (data / "WordNet-Pick" / "test.jsonl").read_text().splitlines()]
pairs = read_pairs(str(data), split="test")
texts = Embedder.from_pretrained(model).encode([p.query for p in pairs], mode="think", batch_size=16).texts
kinds: collections.Counter = collections.Counter()
for row, text in zip(rows, texts, strict=True):
    m = re.search(r"<answer>(.*?)</answer>", text)
    answer = (m.group(1) if m else "").strip().lower().rstrip(".")
    gold, listed = row["tgt_text"][0], row["qry_text"].split(", ")
    category = row["qry_inst"].removeprefix("Which of these words names ").rstrip("?").split(" ", 1)[-1]
    kinds[
        "gold"
        if answer == gold
        else "another listed word"
        if answer in listed
        else "the category word"
        if answer and (answer in category or category in answer)
        else "something else"
    ] += 1
print(dict(kinds), f"of {len(rows)} test queries")
