"""Parse and check a `POST /v1/embeddings` body before any model work. Every problem is a `RequestError`
with the HTTP status and a message that names the item (`input[3].image`) and says what to do.

    {"model": "...", "input": "text" | ["text", ...] | [{"text"?, "image"?, "frames"?, "pages"?,
     "instruction"?}, ...], "mode"?: "disc" | "gen" | "think" | "nothink" | "adaptive",
     "encoding_format"?: "float" | "base64", "dimensions"?: D, "return_text"?: bool, "user"?: str}

Media are base64 strings or data URLs (`data:image/png;base64,...`). A server-local file is named as
`file:///abs/path.png` and is refused unless the server was started with an allowed root that contains it
(symlinks resolved). Decoded media are written to a per-request temporary folder (Samples hold paths) and
checked here without decoding their pixels (media.probe_image: the format, the limits, the file's structure
and checksums), so a truncated or oversized image is this request's 400 before it is queued; the lane
decodes each image once, and an image that fails there all the same fails its own request only.
"""

from __future__ import annotations

import base64
import binascii
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..media import probe_image
from ..types import MODES, InputError, Sample

ITEM_FIELDS = {"text", "image", "frames", "pages", "instruction"}
BODY_FIELDS = {
    "model",
    "input",
    "mode",
    "encoding_format",
    "dimensions",
    "return_text",
    "user",
    "max_new_tokens",
}


class RequestError(Exception):
    def __init__(self, status: int, message: str, code: str = "invalid_request") -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


@dataclass
class Limits:
    max_items: int = 256  # inputs per request
    max_text_chars: int = 20_000  # per text or instruction
    max_media: int = 32  # images per item (frames, pages)
    max_image_pixels: int = 4_000_000  # per decoded image
    allow_path_root: Path | None = None  # file:// media allowed under this folder only


@dataclass
class Request:
    samples: list[Sample]
    mode: str
    encoding_format: str
    return_text: bool
    max_new_tokens: int | None
    dimensions: int | None = None  # a Matryoshka width to truncate to (None: the full width)


def parse_request(
    body: object,
    default_mode: str,
    limits: Limits,
    media_dir: Path,
    dimensions: Callable[[int | None], int | None],
) -> Request:
    """`dimensions`: the model's check of a requested width (`Embedder.check_dimensions`)."""
    if not isinstance(body, dict):
        raise RequestError(400, f"the body must be a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - BODY_FIELDS)
    if unknown:
        raise RequestError(400, f"unknown field(s) {unknown}; allowed: {sorted(BODY_FIELDS)}")
    mode = body.get("mode", default_mode)
    if mode not in MODES:
        raise RequestError(400, f"mode {mode!r} is not one of {list(MODES)}")
    fmt = body.get("encoding_format", "float")
    if fmt not in ("float", "base64"):
        raise RequestError(400, f"encoding_format {fmt!r}: use 'float' or 'base64'")
    width = body.get("dimensions")
    if width is not None and (not isinstance(width, int) or isinstance(width, bool)):
        raise RequestError(400, f"dimensions={width!r}: give an integer width")
    try:
        width = dimensions(width)
    except InputError as e:
        raise RequestError(400, str(e)) from None
    cap = body.get("max_new_tokens")
    if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 1):
        raise RequestError(400, "max_new_tokens must be a positive integer")
    if "input" not in body:
        raise RequestError(400, 'missing "input": a string, a list of strings, or a list of items')
    raw = body["input"]
    items = [raw] if isinstance(raw, (str, dict)) else raw
    if not isinstance(items, list) or not items:
        raise RequestError(400, '"input" must be a non-empty string or list')
    if len(items) > limits.max_items:
        raise RequestError(
            413, f"{len(items)} inputs in one request; the limit is {limits.max_items}", "too_large"
        )
    samples = [parse_item(x, i, limits, media_dir) for i, x in enumerate(items)]
    return_text = body.get("return_text", False)
    if not isinstance(return_text, bool):
        raise RequestError(400, f"return_text must be true or false (JSON booleans), got {return_text!r}")
    return Request(samples, mode, fmt, return_text, cap, width)


def parse_item(x: object, i: int, limits: Limits, media_dir: Path) -> Sample:
    who = f"input[{i}]"
    if isinstance(x, str):
        x = {"text": x}
    if not isinstance(x, dict):
        kind = "token ids" if isinstance(x, (int, list)) else type(x).__name__
        raise RequestError(400, f"{who}: expected a string or an item object, got {kind}")
    unknown = sorted(set(x) - ITEM_FIELDS)
    if unknown:
        raise RequestError(400, f"{who}: unknown field(s) {unknown}; allowed: {sorted(ITEM_FIELDS)}")
    for key in ("text", "instruction"):
        v = x.get(key)
        if v is not None and not isinstance(v, str):
            raise RequestError(400, f"{who}.{key}: must be a string")
        if v and not valid_unicode(v):
            raise RequestError(400, f"{who}.{key}: not valid Unicode (a lone surrogate such as \\ud800)")
        if v and len(v) > limits.max_text_chars:
            raise RequestError(
                413, f"{who}.{key}: {len(v)} characters; the limit is {limits.max_text_chars}", "too_large"
            )
    media: dict[str, list[Path]] = {}
    for key in ("image", "frames", "pages"):
        if x.get(key) is None:
            continue
        values = [x[key]] if key == "image" else x[key]
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise RequestError(
                400, f"{who}.{key}: must be " + ("a string" if key == "image" else "a list of strings")
            )
        if len(values) > limits.max_media:
            raise RequestError(
                413, f"{who}.{key}: {len(values)} images; the limit is {limits.max_media}", "too_large"
            )
        media[key] = [media_file(v, f"{who}.{key}" + ("" if key == "image" else f"[{j}]"), limits, media_dir)
                      for j, v in enumerate(values)]  # fmt: skip
    try:
        return Sample(
            id=str(i),
            text=x.get("text") or None,
            image=media["image"][0] if "image" in media else None,
            frames=tuple(media.get("frames", ())),
            pages=tuple(media.get("pages", ())),
            instruction=x.get("instruction"),
        )
    except InputError as e:
        raise RequestError(400, f"{who}: {str(e).split(': ', 1)[-1]}") from None


def valid_unicode(text: str) -> bool:
    """False for a string JSON can carry but UTF-8 cannot (a lone surrogate such as "\\ud800")."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def media_file(value: str, who: str, limits: Limits, media_dir: Path) -> Path:
    """A base64 / data-URL image written to `media_dir`, or an allowed server-local file; checked to decode."""
    if value.startswith("file://"):
        root = limits.allow_path_root
        if root is None:
            raise RequestError(400, f"{who}: server-local file paths are refused by this server; send the image as "
                               "base64 or a data URL (or start the server with --allow-path-root)")  # fmt: skip
        if "\x00" in value or not valid_unicode(value):
            raise RequestError(400, f"{who}: a file path with a NUL character or a lone surrogate")
        path = Path(value.removeprefix("file://"))
        real = path.resolve()
        if not path.is_absolute() or not real.is_relative_to(root.resolve()):  # the root is not told
            raise RequestError(400, f"{who}: {value} is not under the folder this server may read")
        if not real.is_file():
            raise RequestError(400, f"{who}: {value}: no such file under the allowed root")
    elif value.startswith(("http://", "https://")):
        raise RequestError(400, f"{who}: URLs are not fetched; send the image as base64 or a data URL")
    else:
        data = value
        if value.startswith("data:"):
            head, sep, data = value.partition(",")
            if not sep or not head.endswith(";base64"):
                raise RequestError(400, f"{who}: a data URL must look like data:image/png;base64,<data>")
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(
                400, f"{who}: not valid base64 (send base64 image bytes or a data URL)"
            ) from None
        with tempfile.NamedTemporaryFile(dir=media_dir, suffix=".img", delete=False) as f:
            f.write(raw)
        real = Path(f.name)
    try:  # checked whole and within the limits here, without decoding: the lane decodes it, once
        probe_image(real, max_pixels=limits.max_image_pixels)
    except InputError as e:
        msg = str(e).split(": ", 1)[-1].replace("raise backbone.max_image_pixels", "send a smaller image")
        raise RequestError(400, f"{who}: {msg}") from None
    return real
