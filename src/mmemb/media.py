"""Safe media decoding: images with a pixel limit, uniform frame sampling for video.

Every failure is an `InputError` that names the item and the file and says what to do.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .types import InputError, Sample


def load_image(path: Path, *, max_pixels: int, who: str = "", rgba_on_white: bool = False) -> Image.Image:
    """Decode `path` fully into an RGB PIL image, refusing images over `max_pixels` pixels.

    The size is read from the header before any pixel is decoded, so a decompression bomb costs nothing.
    rgba_on_white: an RGBA image is composited onto white (qwen-vl-utils' `to_rgb`, which UME-R1 and
    Qwen3-VL-Embedding run); otherwise, and for every other mode, PIL's convert("RGB") (alpha dropped).
    """
    prefix = f"{who}: " if who else ""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{prefix}{path}: file not found (paths are relative to the input file)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise InputError(
                        f"{prefix}{path}: image is {w}x{h} = {w * h:,} pixels, over the limit of "
                        f"{max_pixels:,}; resize it or raise backbone.max_image_pixels"
                    )
                im.load()  # decode now: a truncated file fails here, not deep inside a batch
                if rgba_on_white and im.mode == "RGBA":
                    white = Image.new("RGB", im.size, (255, 255, 255))
                    white.paste(im, mask=im.split()[3])
                    return white
                return im.convert("RGB")
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InputError(f"{prefix}{path}: refused as a decompression bomb ({e})") from None
    except UnidentifiedImageError:
        raise InputError(f"{prefix}{path}: not an image PIL can read (is the file an image?)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(f"{prefix}{path}: cannot decode image ({e}); the file may be truncated") from None


def frame_order(name: str) -> list:
    """Natural sort key of a frame file name, as VLM2Vec's `load_frames` orders a folder: digit runs compare as
    numbers, the rest case-insensitively, so frame_9.jpg < frame_10.jpg (docs/design/mmeb-v2-layouts.md §4).

    >>> sorted(["frame_10.jpg", "frame_9.jpg", "Frame_100.jpg", "0002.jpeg"], key=frame_order)
    ['0002.jpeg', 'frame_9.jpg', 'frame_10.jpg', 'Frame_100.jpg']
    """
    return [
        (0, int(part), "") if part.isdigit() else (1, 0, part.lower()) for part in re.split(r"(\d+)", name)
    ]


def sample_frames(frames: Sequence[Path], n: int) -> list[Path]:
    """Pick `n` frames evenly from the first to the last, as VLM2Vec does (`np.linspace(0, len - 1, n,
    dtype=int)`: the indices are truncated, not rounded); all of them if there are <= n (VLM2Vec does not pad).

    >>> [p.name for p in sample_frames([Path(f"{i}.png") for i in range(10)], 8)]
    ['0.png', '1.png', '2.png', '3.png', '5.png', '6.png', '7.png', '9.png']
    """
    if len(frames) <= n:
        return list(frames)
    return [frames[int(i)] for i in np.linspace(0, len(frames) - 1, n, dtype=int)]


def sample_images(
    sample: Sample, *, num_frames: int, max_pixels: int, rgba_on_white: bool = False
) -> list[Image.Image]:
    """All images a sample contributes, in order: its image, its sampled frames, or its pages."""
    paths = sample_frames(sample.frames, num_frames) if sample.frames else list(sample.media())
    who = f"item {sample.id!r}"
    return [load_image(p, max_pixels=max_pixels, who=who, rgba_on_white=rgba_on_white) for p in paths]
