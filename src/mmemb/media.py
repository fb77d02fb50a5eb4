"""Safe media decoding: images with a pixel limit, uniform frame sampling for video.

Every failure is an `InputError` that names the item and the file and says what to do.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .types import InputError, Sample

MAX_ASPECT = (
    200  # the longest side over the shortest: Qwen-VL's smart_resize refuses more, and nothing needs it
)


def load_image(path: Path, *, max_pixels: int, who: str = "", rgba_on_white: bool = False) -> Image.Image:
    """Decode `path` fully into an RGB PIL image, upright, refusing images over `max_pixels` pixels or
    more than MAX_ASPECT times longer than wide.

    The size is read from the header before any pixel is decoded, so a decompression bomb costs nothing.
    EXIF orientation is applied (a phone photo stored sideways embeds upright). 16-bit and 32-bit integer
    images (16-bit PNG) are scaled to 8 bits, not clipped. rgba_on_white: an RGBA image is composited onto
    white (qwen-vl-utils' `to_rgb`, which UME-R1 and Qwen3-VL-Embedding run); otherwise, and for every other
    mode, PIL's convert("RGB") (alpha dropped).
    """
    with _opened(path, max_pixels, who) as im:
        im.load()  # decode now: a truncated file fails here, not deep inside a batch
        im = ImageOps.exif_transpose(im)
        if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
            im = eight_bit(im)
        if rgba_on_white and im.mode == "RGBA":
            white = Image.new("RGB", im.size, (255, 255, 255))
            white.paste(im, mask=im.split()[3])
            return white
        return im.convert("RGB")


def probe_image(path: Path, *, max_pixels: int, who: str = "") -> tuple[int, int]:
    """The checks of `load_image` without decoding the pixels: the file is an image PIL reads, within the
    pixel and aspect limits, and whole (its structure and checksums verified, e.g. PNG CRCs and IEND).
    Cheap enough for a server to run on every image of a request before queueing it; returns (w, h)."""
    with _opened(path, max_pixels, who) as im:
        size = im.size
        im.verify()
        return size


@contextlib.contextmanager
def _opened(path: Path, max_pixels: int, who: str) -> Iterator[Image.Image]:
    """The image at `path`, opened (header read, nothing decoded) and checked against the limits; any failure
    inside the block is an InputError naming the item and the file."""
    prefix = f"{who}: " if who else ""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{prefix}{path}: is a folder, not an image file (a video is a list of frames)")
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
                if max(w, h) > MAX_ASPECT * max(1, min(w, h)):
                    raise InputError(f"{prefix}{path}: image is {w}x{h}, more than {MAX_ASPECT} times longer than "
                                     "wide; crop it into pieces (or pages)")  # fmt: skip
                yield im
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InputError(f"{prefix}{path}: refused as a decompression bomb ({e})") from None
    except UnidentifiedImageError:
        raise InputError(f"{prefix}{path}: not an image PIL can read (is the file an image?)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(f"{prefix}{path}: cannot decode image ({e}); the file may be truncated") from None


def eight_bit(im: Image.Image) -> Image.Image:
    """A 16-bit (or 32-bit integer) grayscale image as 8-bit "L", scaled by its bit depth: PIL's convert()
    would clip every value above 255 to white. Mode "I" holds 16-bit PNG data in older Pillow: 0..65535."""
    a = np.asarray(im)
    top = 65535 if im.mode.startswith("I;16") or a.max(initial=0) <= 65535 else 2**31 - 1
    return Image.fromarray((np.clip(a.astype(np.float64), 0, top) * (255 / top) + 0.5).astype(np.uint8), "L")


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


def iter_images(
    sample: Sample, *, num_frames: int, max_pixels: int, rgba_on_white: bool = False
) -> Iterator[Image.Image]:
    """The images a sample contributes, in order (its image, its sampled frames, or its pages), decoded one
    at a time: a caller that reduces each before asking for the next holds one full-size image at most."""
    paths = sample_frames(sample.frames, num_frames) if sample.frames else list(sample.media())
    who = f"item {sample.id!r}"
    for p in paths:
        yield load_image(p, max_pixels=max_pixels, who=who, rgba_on_white=rgba_on_white)


def sample_images(
    sample: Sample, *, num_frames: int, max_pixels: int, rgba_on_white: bool = False
) -> list[Image.Image]:
    """All images a sample contributes, in order, decoded (`iter_images` as a list)."""
    return list(
        iter_images(sample, num_frames=num_frames, max_pixels=max_pixels, rgba_on_white=rgba_on_white)
    )
