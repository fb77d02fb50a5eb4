"""Typed inputs and outputs.

A `Sample` is one thing to embed: text, one image, a video (a list of frames) or a document (a list of
page images), each with an optional instruction. Media are held as *paths* until a backbone needs them,
so a Sample is cheap, hashable into a cache key, and can be written back to JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

Mode = Literal["disc", "gen"]
MODES: tuple[str, ...] = ("disc", "gen")


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
    """What `Embedder.encode` returns, one row per input in input order.

    vectors:        (N, D) float32, L2-normalised.
    mode:           the mode used for every row.
    texts:          gen only: the generated text (reasoning and answer) per row.
    gen_tokens:     gen only: number of generated tokens per row (0 for disc).
    gen_emb_found:  gen only: False where generation stopped without emitting `<gen_emb>` and the vector
                    was read at the last generated position instead.
    seconds:        per row, its batch's wall time divided by the batch size (amortised latency).
    """

    vectors: np.ndarray
    mode: str
    texts: list[str] = field(default_factory=list)
    gen_tokens: list[int] = field(default_factory=list)
    gen_emb_found: list[bool] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
