"""Teachers write candidate rationales. One interface, four kinds:

    LocalTeacher    any Backbone (nano or hf) run here, batched sampling       (this module)
    OpenAITeacher   an OpenAI-compatible chat-completions server (vLLM, SGLang) (openai_teacher.py)
    FileTeacher     rationales imported from a file (ours, or UME-R1's SFT JSON) (this module)
    HintTeacher     rationales written from the privileged hints alone, no model (this module)

A teacher takes a list of `Request`s and returns one `Reply` per request, in order. A reply carries the
raw text (checked later by `format.parse_rationale`: malformed text is kept and marked, not dropped) or a
transport `error` (timeout, HTTP error, ...): a failed request writes nothing, so rerunning the same
`mmemb reason generate` command retries it.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from ..data.tasks import read_rows
from ..embedder import sample_tokens
from ..types import InputError, Sample


@dataclass(frozen=True)
class Request:
    pair_id: str  # the training pair whose query this is
    k: int  # which of the K candidates (0..K-1)
    query: Sample
    hint: str = ""  # privileged text about the query item (see format.teacher_user_text)
    seed: int = 0  # per-request sampling seed (servers that accept `seed` get it)

    @property
    def key(self) -> tuple[str, int]:
        return (self.pair_id, self.k)


@dataclass
class Reply:
    text: str = ""  # the teacher's raw reply
    error: str = ""  # transport failure after retries; "" when the teacher answered
    missing: bool = False  # the teacher has no rationale for this request (imports): skipped, not retried
    seconds: float = 0.0  # wall time spent on this request (amortised over a batch for local teachers)
    tokens: int = 0  # generated tokens when the teacher reports them


class Teacher(Protocol):
    name: str  # recorded in the candidates file; a rerun with another teacher is refused

    def generate(self, requests: list[Request]) -> list[Reply]: ...


# ---- a local model ------------------------------------------------------------------------------------
class LocalTeacher:
    """Sample rationales from a local model (nano or any hf backbone), `batch_size` queries at a time.

    The teacher prompt is the embedder's own chat template with a plain instruction, the query (media,
    instruction, text) and the privileged hint. The model writes plain text (a small model asked for tags
    copies the instruction instead); the decoder imposes the format, in two phases from one KV cache:

        REASONING   sampled until `max_sentences` sentences end (or a newline, a '<', a special token);
                    at most max_think_tokens
        BRIDGE      fed by us ("\nIn short, it is")
        SUMMARY     sampled until a sentence ends (or a newline, '<', ...); at most max_answer_tokens

    and returns `<think>REASONING</think><answer>SUMMARY</answer>`. A row that runs out of budget or ends
    its turn early comes back unterminated, so the format check marks it malformed (kept and counted,
    never silently repaired). Sampling is seeded per batch (from the first request's seed), so a rerun of
    the same batches repeats itself.
    """

    def __init__(
        self,
        embedder,
        *,
        name: str = "",
        temperature: float = 0.7,
        top_p: float = 0.9,
        max_think_tokens: int = 48,
        max_answer_tokens: int = 24,
        max_sentences: int = 1,
        bridge: str = "\nIn short, it is",
        batch_size: int = 16,
    ) -> None:
        self.embedder = embedder
        bb = embedder.backbone
        self.name = name or f"local:{bb.config.source or bb.kind}"
        self.temperature, self.top_p = temperature, top_p
        self.max_think, self.max_answer = max_think_tokens, max_answer_tokens
        self.max_sentences = max_sentences
        self.bridge_ids = bb.tokenizer(bridge, add_special_tokens=False)["input_ids"]
        self.batch_size = batch_size
        self.template = embedder.config.prompt.template[: -len("{disc_emb}")]
        tok = bb.tokenizer
        ends = {tok.eos_token_id, tok.pad_token_id, tok.convert_tokens_to_ids("<|im_end|>")}
        self.end_ids = {i for i in ends if isinstance(i, int) and i >= 0 and i != tok.unk_token_id}
        self._stop_ids: set[int] | None = None
        self._sentence_ids: set[int] = set()

    def stop_ids(self) -> set[int]:
        """Ids that end a phase without being kept: every special token, and every token whose text holds
        a newline or '<' (a small model that starts spelling a tag in plain text is stopped before it).
        Also fills `_sentence_ids`: tokens that end a sentence (kept, then they end the phase)."""
        if self._stop_ids is None:
            tok = self.embedder.backbone.tokenizer
            pieces = tok.convert_ids_to_tokens(list(range(len(tok))))
            texts = [tok.convert_tokens_to_string([p]) if p is not None else "" for p in pieces]
            special = set(tok.all_special_ids) | set(self.embedder.ids.values())
            self._stop_ids = special | {i for i, t in enumerate(texts) if "\n" in t or "<" in t}
            self._sentence_ids = {i for i, t in enumerate(texts) if t.rstrip().endswith((".", "!", "?"))}
        return self._stop_ids

    def generate(self, requests: list[Request]) -> list[Reply]:
        out: list[Reply] = []
        for start in range(0, len(requests), self.batch_size):
            out.extend(self._batch(requests[start : start + self.batch_size]))
        return out

    @torch.no_grad()
    def _batch(self, requests: list[Request]) -> list[Reply]:
        emb, bb = self.embedder, self.embedder.backbone
        t0 = time.perf_counter()
        samples = [r.query for r in requests]
        texts = [self._prompt(r) for r in requests]
        try:
            prompts = bb.prepare(samples, texts)
        except InputError as e:  # one bad item: fail the requests one by one so the others survive
            if len(requests) == 1:
                return [Reply(error=str(e))]
            return [reply for r in requests for reply in self._batch([r])]
        bb.eval()
        hidden, state = bb.prefill(prompts)
        gen = torch.Generator().manual_seed(requests[0].seed)
        B = len(requests)
        alive = torch.ones(B, dtype=torch.bool)
        think, ended_t = self._phase(
            bb.logits(hidden[:, -1]), state, alive, self.max_think, self.max_sentences, gen
        )
        # feed the bridge to rows whose reasoning closed cleanly
        closed = torch.tensor([e == "stop" and bool(think[b]) for b, e in enumerate(ended_t)])
        h = None
        for i in self.bridge_ids:
            h = bb.step(torch.full((B,), i, dtype=torch.long), state, closed)
        answer, ended_a = (
            self._phase(bb.logits(h), state, closed, self.max_answer, 1, gen) if closed.any() else ([], [])
        )
        t = emb.config.tokens
        seconds = (time.perf_counter() - t0) / B
        replies = []
        for b in range(B):
            text = t.think_open + self._decode(think[b])
            if closed[b]:
                text += t.think_close + t.answer_open + self._decode(answer[b])
                if ended_a[b] == "stop":
                    text += t.answer_close
            replies.append(
                Reply(text=text, seconds=seconds, tokens=len(think[b]) + len(answer[b] if answer else []))
            )
        return replies

    def _prompt(self, r: Request) -> str:
        from .format import LOCAL_TEACHER_SYSTEM, teacher_user_text

        return self.template.format(
            system=LOCAL_TEACHER_SYSTEM,
            media=self.embedder.backbone.media_prompt(r.query),
            instruction="",
            text=teacher_user_text(r.query, r.hint),
        )

    def _phase(
        self,
        logits: torch.Tensor,
        state,
        active: torch.Tensor,
        budget: int,
        sentences: int,
        gen: torch.Generator,
    ) -> tuple[list[list[int]], list[str]]:
        """Sample up to `budget` tokens per active row. A stop token ends a row *without* being kept or
        fed; the `sentences`-th sentence end is kept and fed, then ends the row. Returns the kept ids per
        row and how each row ended: 'stop', 'end' (end of turn), 'budget', or 'skip' (row not active)."""
        bb = self.embedder.backbone
        B = logits.shape[0]
        ids: list[list[int]] = [[] for _ in range(B)]
        ended = ["" if a else "skip" for a in active.tolist()]
        left = [sentences] * B
        stops = self.stop_ids()
        running = active.clone()
        for _ in range(budget):
            tok = sample_tokens(logits, self.temperature, self.top_p, gen)  # (B,)
            feed = running.clone()  # rows whose token is fed to the model
            for b in torch.nonzero(running).flatten().tolist():
                i = int(tok[b])
                if i in self.end_ids or i in stops:
                    ended[b] = "end" if i in self.end_ids else "stop"
                    running[b] = feed[b] = False
                    continue
                ids[b].append(i)
                if i in self._sentence_ids:
                    left[b] -= 1
                    if left[b] == 0:
                        ended[b], running[b] = "stop", False
            if not feed.any():
                break
            h = bb.step(torch.where(feed, tok, torch.zeros_like(tok)), state, feed)
            if not running.any():
                break
            logits = bb.logits(h)
        return ids, [e or "budget" for e in ended]

    def _decode(self, ids: list[int]) -> str:
        return self.embedder.backbone.tokenizer.decode(ids, skip_special_tokens=True).strip()


# ---- rationales from the hints -------------------------------------------------------------------------
class HintTeacher:
    """Rationales written from the privileged hint alone (real human annotations of the query item: the clip
    art's title, keywords, folders, description; see data/mini_image.clip_hint), with no model: the
    candidates of a pair are its hint told at different levels of detail, most informative first,

        k = 0  everything:    "It shows TITLE, with KEYWORDS. It is filed under FOLDERS."  -> TITLE
        k = 1  the keywords:  "It shows KW1, KW2 and KW3."                                   -> KW1
        k = 2  the folders:   "It is a picture filed under FOLDERS."                         -> last folder
        k = 3  the description, or the title alone                                         -> TITLE / KW1

    so selection has real work: some levels name what the target needs, others do not. A level whose
    pieces the hint lacks is skipped, and the same text is never written twice for one pair, so a pair
    gets at most as many candidates as its hint has distinct levels. A query with no hint but text (a
    title to find, a definition) gets one candidate that restates its text; one with neither (a
    Fashion-MNIST image) gets none (`missing`: counted as skipped). Why a template: the hints are what a
    strong multimodal teacher would see in the picture; SmolLM2-135M given them adds hallucinated detail
    and writes about 100 rationales a minute here (docs/reasoning.md, the diagnosis).
    """

    name = "hints"

    def generate(self, requests: list[Request]) -> list[Reply]:
        out = []
        for r in requests:
            levels = hint_rationales(r.hint, r.query.text or "")
            out.append(Reply(text=levels[r.k]) if r.k < len(levels) else Reply(missing=True))
        return out


def hint_rationales(hint: str, text: str = "") -> list[str]:
    """The distinct rationales (`<think>…</think><answer>…</answer>`) `HintTeacher` writes for a hint.

    >>> hint_rationales("title: Cartoon cat; keywords: pet, kitten; filed under: mammals / housecats")[1]
    '<think>It shows pet and kitten.</think><answer>pet</answer>'
    >>> hint_rationales("", "man crystal")
    ['<think>It asks for man crystal.</think><answer>man crystal</answer>']
    """
    pieces: dict[str, str] = {}
    for part in (p.strip() for p in hint.split("; ")):
        label, sep, value = part.partition(": ")
        if sep and label in ("title", "keywords", "filed under", "description"):
            pieces[label] = value.strip()
        elif part:
            pieces.setdefault("keywords", part)  # an unlabelled hint (clip_hint's fallback join)
    title, about = pieces.get("title", ""), pieces.get("description", "")
    if re.fullmatch(r"HASH\(0x[0-9a-f]+\)", about):  # a Perl artefact in some Open Clip Art metadata
        about = ""
    words = [w.strip() for w in pieces.get("keywords", "").split(",") if w.strip()]
    folders = [f.strip() for f in pieces.get("filed under", "").split("/") if f.strip()]
    name = title or (words[0] if words else "") or (folders[-1] if folders else "")
    levels: list[tuple[str, str]] = []
    if name:
        if title:
            said = f"It shows {title}" + (f", with {', '.join(words[:5])}" if words else "")
        else:
            said = "It is about " + ", ".join(words[:5] or [name])
        said += f". It is filed under {' / '.join(folders)}." if folders else "."
        levels.append((said, name))
    if words:
        levels.append((f"It shows {_and(words[:3])}.", words[0]))
    if folders:
        levels.append((f"It is a picture filed under {' / '.join(folders)}.", folders[-1]))
    if about:
        levels.append((about.rstrip(".") + ".", name or " ".join(about.rstrip(".").split()[:6])))
    elif title:
        levels.append((f"It is {title}.", title))
    asked = text.strip().rstrip(".!? ")
    if not levels and asked:
        levels.append((f"It asks for {asked}.", asked))
    out: list[str] = []
    for think, answer in levels:
        r = f"<think>{think}</think><answer>{answer}</answer>"
        if r not in out:
            out.append(r)
    return out


def _and(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


# ---- imported rationales --------------------------------------------------------------------------------
class FileTeacher:
    """Rationales read from a file instead of generated:

    - a candidates file written by `mmemb reason generate` (one JSON line per (pair_id, k) with "text"),
    - UME-R1's SFT JSON / JSONL (its query-side reasoning becomes candidate k = 0; see data.pairs).

    A request the file has no rationale for gets a `missing` reply (counted as skipped); `ids()` lets the
    caller refuse a file that names queries the dataset does not have.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.name = f"file:{self.path.name}"
        self.texts: dict[tuple[str, int], str] = {}
        if not self.path.is_file():
            raise InputError(f"{self.path}: rationale file not found")
        if self._is_candidates_file():
            for where, row in read_rows(self.path):
                if not isinstance(row.get("pair_id"), str) or not isinstance(row.get("k"), int):
                    raise InputError(f"{where}: a candidate line needs a string 'pair_id' and an integer 'k'")
                self.texts.setdefault((row["pair_id"], row["k"]), str(row.get("text", "")))
        else:
            from ..data.pairs import ume_rationales

            self.texts = {(pid, 0): text for pid, text in ume_rationales(self.path).items()}

    def _is_candidates_file(self) -> bool:
        with open(self.path, encoding="utf-8") as f:
            first = f.readline()
        try:
            row = json.loads(first)
        except json.JSONDecodeError:
            return False
        return isinstance(row, dict) and "pair_id" in row

    def ids(self) -> set[str]:
        return {pid for pid, _ in self.texts}

    def generate(self, requests: list[Request]) -> list[Reply]:
        return [
            Reply(text=self.texts[r.key]) if r.key in self.texts else Reply(missing=True) for r in requests
        ]
