"""Feasibility of a WordNet gloss -> clip-art picture task (issue 17): how many clip-art titles are WordNet
noun lemmas, and can nano's language model (SmolLM2-135M-Instruct, zero-shot, greedy) name the word a gloss
defines? Run by hand, not in CI:

    python benchmarks/probe_gloss_task.py
"""

import collections
import random
import re
import time

import torch

from mmemb import Embedder
from mmemb.data.sources import read_openclipart, read_wordnet_nouns

syn = read_wordnet_nouns()
by_lemma = collections.defaultdict(list)
for s in syn:
    for lemma in s.lemmas:
        by_lemma[lemma.lower().replace("_", " ")].append(s)
clips = read_openclipart()
print("clips", len(clips), "synsets", len(syn))
titles = collections.Counter()
hits = []
for c in clips:
    t = re.sub(r"[_\-]+", " ", getattr(c, "title", "") or "").strip().lower()
    t = re.sub(r"\s+\d+$", "", t)
    if t in by_lemma and len(by_lemma[t]) <= 3:
        hits.append((t, c))
print(
    "clips whose title is a WordNet noun lemma with <= 3 senses:",
    len(hits),
    "distinct lemmas:",
    len({t for t, _ in hits}),
)
print(random.Random(0).sample(sorted({t for t, _ in hits}), 30))
# can SmolLM2 name the defined word?
m = Embedder.from_pretrained("nano", quiet=True)
bb = m.backbone
tok = bb.tokenizer
lemmas = random.Random(1).sample(sorted({t for t, _ in hits}), 80)
ok = 0
t0 = time.time()
for lem in lemmas:
    gloss = by_lemma[lem][0].gloss.split(";")[0]
    msgs = [{"role": "user", "content": f'Which word has this definition: "{gloss}"? Answer with one word.'}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt")
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    with torch.no_grad():
        out = bb.lm.generate(input_ids=ids, max_new_tokens=6, do_sample=False)
    ans = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip().lower()
    good = lem in ans or ans.rstrip(".").endswith(lem)
    ok += good
    if lemmas.index(lem) < 12:
        print(f"{lem!r:16} <- {gloss[:60]!r:64} -> {ans!r} {'OK' if good else ''}")
print(f"SmolLM2 names the defined word: {ok}/{len(lemmas)} ({time.time() - t0:.0f}s)")
