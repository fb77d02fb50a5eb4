"""Pictures derived from the real sources: fitted clip art, 2×2 composites, frame clips, glossary pages.

Every function is deterministic: the same inputs (and the same `rng` seed) give the same pixels, and
the files written carry no timestamp, so a rebuild reproduces the bytes.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .sources import font_path

WHITE = (255, 255, 255)
LANCZOS = Image.Resampling.LANCZOS


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (no decoding, and no bomb check that could refuse)."""
    with open(path, "rb") as f:
        head = f.read(24)
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise ValueError(f"{path}: not a PNG file")
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def load_rgba(path: Path, max_side: int = 256) -> Image.Image:
    """An image as RGBA, cropped to its opaque part, shrunk so its longer side is <= max_side."""
    with Image.open(path) as im:
        im = im.convert("RGBA")
        bbox = im.getchannel("A").getbbox()
        if bbox:
            im = im.crop(bbox)
        im.thumbnail((max_side, max_side), LANCZOS, reducing_gap=3.0)
    return im


def load_on_white(path: Path, max_side: int = 256) -> Image.Image:
    """An image flattened onto white (transparency removed), shrunk so its longer side is <= max_side."""
    im = load_rgba(path, max_side)
    return Image.alpha_composite(Image.new("RGBA", im.size, WHITE + (255,)), im).convert("RGB")


def scale_to_fit(img: Image.Image, box: tuple[int, int]) -> Image.Image:
    """`img` scaled up or down, keeping its aspect ratio, to just fit inside `box`."""
    scale = min(box[0] / img.width, box[1] / img.height)
    return img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), LANCZOS)


def fit_into(img: Image.Image, size: tuple[int, int], margin: int = 4) -> Image.Image:
    """`img` scaled to fit inside `size` less a margin, centred on white."""
    fitted = scale_to_fit(img, (size[0] - 2 * margin, size[1] - 2 * margin))
    canvas = Image.new("RGB", size, WHITE)
    canvas.paste(fitted, ((size[0] - fitted.width) // 2, (size[1] - fitted.height) // 2))
    return canvas


def composite_2x2(images: list[Image.Image], tile: int = 128) -> tuple[Image.Image, list[Image.Image]]:
    """Four pictures in a 2×2 grid on white; returns the composite and its four tiles (row-major)."""
    if len(images) != 4:
        raise ValueError(f"composite_2x2 needs 4 images, got {len(images)}")
    grid = Image.new("RGB", (2 * tile, 2 * tile), WHITE)
    boxes = [(c * tile, r * tile, (c + 1) * tile, (r + 1) * tile) for r in range(2) for c in range(2)]
    for img, box in zip(images, boxes, strict=True):
        grid.paste(fit_into(img, (tile, tile), margin=6), box[:2])
    return grid, [grid.crop(box) for box in boxes]


MOTIONS = ("pan", "rise", "zoom", "diagonal")


def clip_frames(img: Image.Image, rng: random.Random, n: int = 8, size: int = 128) -> list[Image.Image]:
    """`n` frames of an RGBA picture moving over a plain pastel scene (pan, rise, zoom or diagonal)."""
    motion = rng.choice(MOTIONS)
    reverse = rng.random() < 0.5
    sky = tuple(rng.randint(200, 250) for _ in range(3))
    ground = tuple(c - 50 for c in sky)
    frames = []
    for i in range(n):
        t = i / (n - 1)
        t = 1 - t if reverse else t
        side = round(size * (0.35 + 0.4 * t if motion == "zoom" else 0.55))
        obj = scale_to_fit(img, (side, side))
        free_x, free_y = size - obj.width, size - obj.height
        x, y = {
            "pan": (t * free_x, free_y / 2),
            "rise": (free_x / 2, (1 - t) * free_y),
            "zoom": (free_x / 2, free_y / 2),
            "diagonal": (t * free_x, t * free_y),
        }[motion]
        frame = Image.new("RGB", (size, size), sky)
        ImageDraw.Draw(frame).rectangle((0, round(size * 0.75), size, size), fill=ground)
        frame.paste(obj, (round(x), round(y)), obj)
        frames.append(frame)
    return frames


def fashion_image(pixels: np.ndarray, size: int = 112) -> Image.Image:
    """A 28×28 Fashion-MNIST array as an RGB picture of `size` pixels (as stored: light on black)."""
    return Image.fromarray(pixels, mode="L").resize((size, size), Image.Resampling.BICUBIC).convert("RGB")


class Glossary:
    """Lays out and draws glossary pages: one paragraph per entry, "lemma: gloss", the lemma in bold."""

    def __init__(self, size: tuple[int, int] = (640, 800), font_size: int = 17, margin: int = 36):
        self.size, self.margin = size, margin
        self.regular = ImageFont.truetype(str(font_path("DejaVuSans.ttf")), font_size)
        self.bold = ImageFont.truetype(str(font_path("DejaVuSans-Bold.ttf")), font_size)
        self.line_h = round(font_size * 1.45)
        self.capacity = size[1] - 2 * margin  # height available for entries

    def lines(self, lemma: str, gloss: str) -> list[list[tuple[str, ImageFont.FreeTypeFont]]]:
        """Greedy word wrap of the entry into lines of (word, font) no wider than the text column."""
        tokens = [(w, self.bold) for w in f"{lemma}:".split()] + [(w, self.regular) for w in gloss.split()]
        width = self.size[0] - 2 * self.margin
        lines: list[list[tuple[str, ImageFont.FreeTypeFont]]] = [[]]
        x = 0.0
        for word, font in tokens:
            if lines[-1] and x + font.getlength(word) > width:
                lines.append([])
                x = 0.0
            lines[-1].append((word, font))
            x += font.getlength(word + " ")
        return lines

    def height(self, lemma: str, gloss: str) -> int:
        """Vertical space the entry takes, its gap below included."""
        return len(self.lines(lemma, gloss)) * self.line_h + self.line_h // 2

    def page(self, entries: list[tuple[str, str]]) -> Image.Image:
        """A white page with the entries from the top; raises if they do not fit."""
        if sum(self.height(*e) for e in entries) > self.capacity:
            raise ValueError(f"glossary page overflows with {len(entries)} entries")
        page = Image.new("RGB", self.size, WHITE)
        draw = ImageDraw.Draw(page)
        y = self.margin
        for entry in entries:
            for line in self.lines(*entry):
                x = float(self.margin)
                for word, font in line:
                    draw.text((x, y), word, font=font, fill=(0, 0, 0))
                    x += font.getlength(word + " ")
                y += self.line_h
            y += self.line_h // 2
        return page


def save_png(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")


def save_jpeg(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="JPEG", quality=90)
