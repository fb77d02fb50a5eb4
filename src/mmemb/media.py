"""Safe media decoding: images with a pixel limit, uniform frame sampling for video.

Every failure is an `InputError` that names the item and the file and says what to do.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from .types import InputError, Sample


def load_image(path: Path, *, max_pixels: int, who: str = "") -> Image.Image:
    """Decode `path` fully into an RGB PIL image, refusing images over `max_pixels` pixels.

    The size is read from the header before any pixel is decoded, so a decompression bomb costs nothing.
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
                return im.convert("RGB")
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InputError(f"{prefix}{path}: refused as a decompression bomb ({e})") from None
    except UnidentifiedImageError:
        raise InputError(f"{prefix}{path}: not an image PIL can read (is the file an image?)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(f"{prefix}{path}: cannot decode image ({e}); the file may be truncated") from None


def sample_frames(frames: Sequence[Path], n: int) -> list[Path]:
    """Pick `n` frames uniformly (the centre of each of n equal segments); all of them if there are <= n.

    >>> [p.name for p in sample_frames([Path(f"{i}.png") for i in range(10)], 4)]
    ['1.png', '3.png', '6.png', '8.png']
    """
    if len(frames) <= n:
        return list(frames)
    step = len(frames) / n
    return [frames[int(step * i + step / 2)] for i in range(n)]


def sample_images(sample: Sample, *, num_frames: int, max_pixels: int) -> list[Image.Image]:
    """All images a sample contributes, in order: its image, its sampled frames, or its pages."""
    paths = sample_frames(sample.frames, num_frames) if sample.frames else list(sample.media())
    return [load_image(p, max_pixels=max_pixels, who=f"item {sample.id!r}") for p in paths]
