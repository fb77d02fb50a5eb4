"""Draw the bundled example media (our own drawings, public domain) and write examples/items.jsonl.

python examples/make_examples.py
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

HERE = Path(__file__).parent


def font(size: int) -> ImageFont.ImageFont:
    for path in ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",):
        if Path(path).is_file():
            return ImageFont.truetype(path, size)
    return ImageFont.load_default(size)


def main() -> None:
    media = HERE / "media"
    media.mkdir(exist_ok=True)
    im = Image.new("RGB", (224, 224), "white")
    ImageDraw.Draw(im).ellipse((40, 40, 184, 184), fill=(220, 30, 30))
    im.save(media / "red_circle.png")
    im = Image.new("RGB", (224, 224), "white")
    ImageDraw.Draw(im).rectangle((50, 50, 174, 174), fill=(30, 60, 220))
    im.save(media / "blue_square.png")
    for i in range(4):  # a green ball rolling left to right
        im = Image.new("RGB", (224, 160), (235, 235, 220))
        x = 20 + 50 * i
        ImageDraw.Draw(im).ellipse((x, 60, x + 50, 110), fill=(30, 160, 60))
        im.save(media / f"ball_{i}.png")
    page = Image.new("RGB", (400, 500), "white")
    d = ImageDraw.Draw(page)
    d.text((30, 30), "Invoice", font=font(32), fill="black")
    for k, line in enumerate(["Item: 3 bicycles", "Price: 450 EUR", "Due: 30 days"]):
        d.text((30, 100 + 40 * k), line, font=font(20), fill="black")
    page.save(media / "invoice.png")
    items = [
        {"id": "t-circle", "text": "a red circle", "instruction": "Find an image that matches the text:"},
        {"id": "t-square", "text": "a blue square", "instruction": "Find an image that matches the text:"},
        {"id": "t-ball", "text": "a ball rolling to the right", "instruction": "Find a video of:"},
        {
            "id": "t-invoice",
            "text": "how much do the bicycles cost?",
            "instruction": "Find the document page:",
        },
        {"id": "i-circle", "image": "media/red_circle.png"},
        {"id": "i-square", "image": "media/blue_square.png"},
        {"id": "v-ball", "frames": [f"media/ball_{i}.png" for i in range(4)]},
        {"id": "d-invoice", "pages": ["media/invoice.png"]},
    ]
    (HERE / "items.jsonl").write_text("".join(json.dumps(x) + "\n" for x in items))


if __name__ == "__main__":
    main()
