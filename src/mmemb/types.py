"""Typed inputs and outputs.

A `Sample` is one thing to embed: text, one image, a video (a list of frames) or a document (a list of
page images), each with an optional instruction. Media are held as *paths* until a backbone needs them,
so a Sample is cheap, hashable into a cache key, and can be written back to JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np

Mode = Literal["disc", "gen", "think", "nothink", "adaptive"]
MODES: tuple[str, ...] = ("disc", "gen", "think", "nothink", "adaptive")
# disc      the state at <disc_emb>: one forward, no generation
# gen       decode from the prefill as the model likes, embed at <gen_emb> (UME-R1's generative embedding)
# think     always reason: the first generated token is forced to <think>
# nothink   never reason: the completion <no_think><gen_emb>, teacher-forced (one forward)
# adaptive  the policy head reads the state at <disc_emb> and picks no-think or think (with a token budget)
REASONING_MODES = ("gen", "think", "adaptive")  # modes that may generate


def mode_space(mode: str) -> str:
    """The vector space a mode's embeddings live in: 'disc' for disc, 'gen' for every mode read at <gen_emb>.
    Valid query/target pairs (`EmbedderConfig.valid_mode_pairs`) are stated in spaces."""
    return "disc" if mode == "disc" else "gen"


class InputError(ValueError):
    """A user's input is wrong. `str(err)` names the input (file, line, id) and says what to do.

    The CLI prints these as one line and exits non-zero; anything else is a bug and keeps its traceback.
    """


@dataclass(frozen=True)
class Sample:
    """One input to embed. At least one of text / image / frames / pages is set.

    frames: video frames in time order (the backbone samples `num_frames` of them uniformly).
    pages:  document page images in reading order.
    """

    id: str = ""
    text: str | None = None
    image: Path | None = None
    frames: tuple[Path, ...] = ()
    pages: tuple[Path, ...] = ()
    instruction: str | None = None

    def __post_init__(self) -> None:
        if not (self.text or self.image or self.frames or self.pages):
            raise InputError(f"item {self.id!r}: empty item: give at least one of text, image, frames, pages")
        if sum(bool(x) for x in (self.image, self.frames, self.pages)) > 1:
            raise InputError(f"item {self.id!r}: give only one of image, frames, pages (got several)")

    @property
    def modality(self) -> str:
        if self.image:
            return "image"
        if self.frames:
            return "video"
        if self.pages:
            return "document"
        return "text"

    def media(self) -> tuple[Path, ...]:
        """All media paths in order (one image, the frames, or the pages)."""
        if self.image:
            return (self.image,)
        return self.frames or self.pages


@dataclass
class Embeddings:
    """What `Embedder.encode` returns, one row per input in input order. Every per-row list (ROW_FIELDS)
    has one entry per row, whatever the mode; nothing is "absent" by being empty.

    vectors:        (N, D) float32, L2-normalised.
    mode:           the mode used for every row.
    texts:          the completion per row (generated, or `<no_think><gen_emb>`); "" in disc mode.
    gen_tokens:     tokens generated per row (0 in disc and nothink mode, and for no-think rows).
    gen_emb_found:  False where generation stopped without emitting `<gen_emb>` and the vector was read at
                    the last generated position instead; True where the vector was read at its own token.
    seconds:        per row, its share of the wall time (amortised latency): one-forward modes split each
                    batch's time over its rows; the generating modes split each prefill over the rows it
                    prefilled and each decode step over the rows it fed, so the shares add up to the call.
    reasoned:       per row, whether reasoning ran (the completion opened with `<think>`).
    actions:        per row, the policy's action (`PolicyConfig.action_names`); None unless mode is adaptive.

    Only disc rows may leave texts, gen_tokens, gen_emb_found and reasoned out (they are "", 0, True, False
    by definition: nothing was generated); every gen-space mode gives them, adaptive gives actions too.
    """

    ROW_FIELDS: ClassVar[tuple[str, ...]] = (
        "texts", "gen_tokens", "gen_emb_found", "seconds", "reasoned", "actions"
    )  # fmt: skip

    vectors: np.ndarray
    mode: str
    texts: list[str] | None = None
    gen_tokens: list[int] | None = None
    gen_emb_found: list[bool] | None = None
    seconds: list[float] | None = None
    reasoned: list[bool] | None = None
    actions: list[str | None] | None = None

    def __post_init__(self) -> None:
        n = len(self.vectors)
        nothing_generated = {"texts": "", "gen_tokens": 0, "gen_emb_found": True, "reasoned": False}
        for name in self.ROW_FIELDS:
            value = getattr(self, name)
            if value is None:
                if n == 0:
                    value = []
                elif name == "actions" and self.mode != "adaptive":
                    value = [None] * n
                elif self.mode == "disc" and name in nothing_generated:
                    value = [nothing_generated[name]] * n
                else:
                    raise ValueError(f"Embeddings in {self.mode} mode: give {name}, one entry per row")
            value = list(value)
            if len(value) != n:
                raise ValueError(f"Embeddings: {name} has {len(value)} entries for {n} rows")
            setattr(self, name, value)
