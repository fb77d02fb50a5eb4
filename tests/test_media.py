"""Media decoding against the inputs that broke it (issue 21): 16-bit PNGs, EXIF orientation, extreme aspect
ratios, a folder given as an image, and many large pages at once."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mmemb.media import MAX_ASPECT, load_image
from mmemb.types import InputError, Sample

from .conftest import write_image

BIG = 40_000_000


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    eight = (np.random.RandomState(0).rand(32, 48) * 255).astype(np.uint8)
    Image.fromarray(eight, "L").save(tmp_path / "8.png")
    Image.fromarray(eight.astype(np.uint16) * 257).save(tmp_path / "16.png")  # the same picture in 16 bits
    assert Image.open(tmp_path / "16.png").mode.startswith("I")
    want = np.asarray(load_image(tmp_path / "8.png", max_pixels=BIG))
    got = np.asarray(load_image(tmp_path / "16.png", max_pixels=BIG))
    np.testing.assert_array_equal(got, want)
    assert got.std() > 40  # not all white, as convert("RGB") made it


def test_exif_orientation_is_applied(tmp_path):
    upright = write_image(tmp_path / "up.png", size=(40, 24), seed=3)
    pixels = Image.open(upright).convert("RGB")
    stored = pixels.transpose(Image.Transpose.ROTATE_90)  # what a camera writes: the sensor's orientation
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    stored.save(tmp_path / "phone.png", exif=exif)
    got = load_image(tmp_path / "phone.png", max_pixels=BIG)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(pixels))


@pytest.mark.parametrize("size", [(5000, 1), (1, 12000), (1, 100_000), (40_200, 200)])
def test_strips_longer_than_the_aspect_limit_are_refused_before_decoding(tmp_path, size):
    Image.new("RGB", size, (9, 9, 9)).save(tmp_path / "strip.png")
    with pytest.raises(InputError, match=f"more than {MAX_ASPECT} times longer than wide"):
        load_image(tmp_path / "strip.png", max_pixels=BIG, who="item 'q1'")


def test_a_folder_given_as_an_image_says_so(tmp_path):
    with pytest.raises(InputError, match="is a folder, not an image file"):
        load_image(tmp_path, max_pixels=BIG)


def test_nano_embeds_a_16_bit_and_an_exif_image_like_their_upright_8_bit_twins(nano, tmp_path):
    eight = (np.random.RandomState(1).rand(64, 64, 3) * 255).astype(np.uint8)
    gray = eight[..., 0]
    Image.fromarray(gray, "L").save(tmp_path / "g8.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    Image.fromarray(eight).save(tmp_path / "up.png")
    exif = Image.Exif()
    exif[0x0112] = 8  # rotate 90 degrees counter-clockwise to display
    Image.fromarray(eight).transpose(Image.Transpose.ROTATE_270).save(tmp_path / "side.png", exif=exif)
    v = nano.encode([Sample(image=tmp_path / n) for n in ("g8.png", "g16.png", "up.png", "side.png")]).vectors
    np.testing.assert_allclose(v[1], v[0], atol=1e-6)
    np.testing.assert_allclose(v[3], v[2], atol=1e-6)


PEAK = """
import json, resource, sys
from pathlib import Path
from mmemb import Embedder, Sample
e = Embedder.from_pretrained("nano", quiet=True)
pages = tuple(Path(sys.argv[1]) for _ in range(32))
samples = [Sample(id=str(i), pages=pages) for i in range(4)]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
prompts = e.prepare(samples, [e.prompt(s) for s in samples])
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"grew_mb": (after - before) / 1024, "images": int(prompts.extra["pixel_values"].shape[0])}))
"""


def test_many_large_pages_are_reduced_one_at_a_time(tmp_path):
    """4 items x 32 pages of one 2000x2000 PNG (a few KB on disk, 12 MB decoded): held all at once they
    took 1.5 GB; reduced as each is decoded, the peak grows by far less than one decoded page per page."""
    page = tmp_path / "page.png"
    Image.new("RGB", (2000, 2000), (250, 250, 250)).save(page)
    run = subprocess.run([sys.executable, "-c", PEAK, str(page)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["images"] == 128
    assert got["grew_mb"] < 300, got


@pytest.mark.parametrize("backbone", ["nano", "hf"])
def test_media_are_decoded_outside_the_tokenizer_lock(nano, tmp_path, monkeypatch, backbone):
    """The server's threads share one tokenizer lock: an item's pages must not be decoded while holding it."""
    import mmemb.media as media
    from mmemb import Embedder
    from mmemb.testing.tiny_hf import build_tiny_hf

    model = (
        nano if backbone == "nano" else Embedder.from_pretrained(build_tiny_hf("qwen2_vl", tmp_path / "m"))
    )
    held, real = [], media.load_image

    def spy(*args, **kwargs):
        held.append(model.tokenizer_lock.locked())
        return real(*args, **kwargs)

    monkeypatch.setattr(media, "load_image", spy)
    page = write_image(tmp_path / "p.png", size=(64, 64))
    model.encode([Sample(pages=(page, page)), Sample(text="x")])
    assert held == [False, False]
