"""Model profiles: how a published family embeds, as data (profiles.json), so its checkpoints give its vectors.

A profile says how the prompt is built (template, where the instruction goes, how it joins the text), which
tokens it needs, where the vector is read (a token, or the last real token), its media rules (a blank image
for text-only inputs, a pre-resize, pixel bounds, 1-D or multimodal positions, frames per video) and its
generation settings. `mmemb` is our own: its prompt comes from the saved `PromptConfig` (it is trained).

    ume-r1               UME-R1: ChatML, <disc_emb> in the user turn + the generation prompt; disc and gen
    vlm2vec-v2           VLM2Vec-V2.0: no chat template, `<|image_pad|> {instruction} {text}`, last token
    qwen3-vl-embedding   Qwen3-VL-Embedding: the instruction as the system message, last token

Every upstream string is cited (repo@commit:path#lines) in profiles.json; the reading behind each field is
docs/design/published-profiles.md. The profile is chosen with `profile=` / `--profile`, detected where the
checkpoint says it unambiguously (`detect`), and saved in embedder_config.json.
"""

from __future__ import annotations

import io
import json
import math
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from .types import InputError, Sample

DEFAULT = "mmemb"


@dataclass(frozen=True)
class Profile:
    name: str
    title: str
    reproduces: str
    checkpoints: list
    families: list  # backbone families (model types) it applies to
    modes: list  # the embedding modes it defines
    tokens: object  # "mmemb" (add mmemb's special tokens) or the tokens the checkpoint must already have
    pooling: str  # "last" (last real token) or a token (its last occurrence in the prompt)
    template: str = ""  # fields: {system} {media} {body} {generation_prompt}
    system: str = ""  # fixed system message (instruction_in == "user")
    generation_prompt: str = ""
    default_instruction: str = ""
    instruction_in: str = "user"  # "user": joined with the text in {body}; "system": it is {system}
    join: str = " "  # between instruction and text
    join_always: bool = False  # join even when the instruction is empty (VLM2Vec: `prompt + " " + text`)
    strip: bool = False  # strip {body}
    end_punctuation: bool = False  # add "." to an instruction that does not end in punctuation
    image: str = ""  # placeholder per image; fields: the family's {image_pad} {video_pad} {vision_start} ...
    video: str = ""  # placeholder per video
    positions: str = "mrope"  # "mrope" (the model's get_rope_index) or "text" (plain 1-D, all axes equal)
    blank_image: bool = False  # text-only inputs get a white 28x28 JPEG image before the text
    # qwen-vl-utils fetch_image: {factor, min_pixels, max_pixels}
    pre_resize: dict = field(default_factory=dict)
    small_image: dict = field(default_factory=dict)  # {"below": b, "to": s}: a side < b -> resized to s x s
    no_processor_resize: bool = False  # the image processor gets do_resize=False
    # qwen-vl-utils 0.0.14 fetch_video for a frame list (see video_frames)
    video_resize: dict = field(default_factory=dict)
    rgba_on_white: bool = False  # an RGBA image is composited onto white (qwen-vl-utils' to_rgb)
    max_images: int = 0  # images an item keeps (0: all; UME-R1's harness embeds only the first)
    min_pixels: int = 0
    max_pixels: int = 0
    num_frames: int = 0
    gen_token: str = ""
    max_new_tokens: int = 0
    temperature: float = 0.0
    dtype: str = ""
    sources: dict = field(default_factory=dict)

    @property
    def published(self) -> bool:
        return self.name != DEFAULT

    def check_mode(self, mode: str) -> None:
        if mode not in self.modes:
            raise InputError(
                f"mode {mode!r} is not defined for profile {self.name!r} ({self.title}); it embeds in "
                f"{', '.join(self.modes)}"
            )

    def render(self, sample: Sample, media: str) -> str:
        """The prompt text of a published profile (mmemb's own is `Embedder.prompt`), media placeholders
        included (the backbone expands each to its visual tokens)."""
        given = sample.instruction if sample.instruction is not None else ""
        text = sample.text or ""
        if self.instruction_in == "system":
            system = _punctuate(given) if self.end_punctuation else given.strip()
            return self.template.format(
                system=system or self.default_instruction, media=media, body=text, generation_prompt=""
            )
        body = given or self.default_instruction
        if text and (body or self.join_always):
            body += self.join
        body += text
        if self.strip:
            body = body.strip()
        return self.template.format(
            system=self.system, media=media, body=body, generation_prompt=self.generation_prompt
        )

    def prefix(self) -> str:
        """The text every prompt starts with (the template up to its first per-item field)."""
        fields = ["{media}", "{body}"] + (["{system}"] if self.instruction_in == "system" else [])
        t = self.template
        cut = min([t.find(f) for f in fields if f in t] + [len(t)])
        return t[:cut].format(system=self.system)

    def media_images(self, sample: Sample, images: list[Image.Image]) -> list[Image.Image]:
        """The images as the profile feeds them: the blank image for a text-only input, then the resize
        rules, in upstream order."""
        if sample.frames and self.video_resize:
            return self.video_frames(images)
        if self.blank_image and sample.modality == "text":
            images = [blank_image()]
        if self.max_images and not sample.frames:
            images = images[: self.max_images]
        out = []
        for im in images:
            if self.small_image and min(im.size) < self.small_image["below"]:
                im = im.resize((self.small_image["to"], self.small_image["to"]))
            if self.pre_resize:
                r = self.pre_resize
                h, w = smart_resize(im.height, im.width, r["factor"], r["min_pixels"], r["max_pixels"])
                im = im.resize((w, h))  # PIL's default filter (bicubic), as fetch_image
            out.append(im)
        return out

    def video_frames(self, frames: list[Image.Image]) -> list[Image.Image]:
        """qwen-vl-utils 0.0.14 fetch_video for a frame list: each frame through fetch_image (its own factor
        and bounds), padded to an even count with the last, then every frame resized to one size within the
        per-frame budget that the video's total pixels leave (bicubic: upstream uses torchvision's
        antialiased bicubic on the tensor, which PIL's matches to a level or two)."""
        r = self.video_resize
        out = []
        for im in frames:
            h, w = smart_resize(
                im.height, im.width, r["frame_factor"], r["frame_min_pixels"], r["frame_max_pixels"]
            )
            out.append(im.resize((w, h)))
        out += out[-1:] * (len(out) % 2)
        budget = max(min(r["max_pixels"], r["total_pixels"] / len(out) * 2), int(r["min_pixels"] * 1.05))
        h, w = smart_resize(out[0].height, out[0].width, r["factor"], r["min_pixels"], budget)
        return [im.resize((w, h), Image.Resampling.BICUBIC) for im in out]


def blank_image() -> Image.Image:
    """UME-R1's placeholder for text-only inputs: white 28x28 RGB, through JPEG as the harness sends it."""
    buf = io.BytesIO()
    Image.new("RGB", (28, 28), (255, 255, 255)).save(buf, format="JPEG")
    buf.seek(0)
    with Image.open(buf) as im:
        return im.convert("RGB")


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """qwen-vl-utils' smart_resize (0.0.11 and 0.0.14 agree): sides multiples of `factor`, area in bounds,
    aspect kept. (h, w) -> (h', w'). Not transformers' function of the same name: that one floors to
    max(factor, ...) in the shrinking branch and does not round up to one factor first, so tiny or thin images
    get other sizes."""
    if max(height, width) / min(height, width) > 200:
        raise InputError(
            f"image is {width}x{height}: aspect ratio over 200, which the model's resize refuses"
        )
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = math.floor(height / beta / factor) * factor
        w = math.floor(width / beta / factor) * factor
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def _punctuate(instruction: str) -> str:
    """Qwen3-VL-Embedding's rule: strip, then add '.' unless it ends in Unicode punctuation."""
    s = instruction.strip()
    if s and not unicodedata.category(s[-1]).startswith("P"):
        s += "."
    return s


def _load() -> dict[str, Profile]:
    data = json.loads((Path(__file__).parent / "profiles.json").read_text())
    return {name: Profile(name=name, **fields) for name, fields in data.items() if not name.startswith("_")}


PROFILES: dict[str, Profile] = _load()


def get(name: str) -> Profile:
    if name not in PROFILES:
        raise InputError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")
    return PROFILES[name]


def detect(source: str) -> str:
    """The profile a checkpoint names unambiguously, else "": a known hub id (or a hub-cache snapshot of one),
    or UME-R1's tokens in the tokenizer files. A plain Qwen-VL folder says nothing, so it gets none."""
    s = str(source).replace("\\", "/")
    for p in PROFILES.values():
        for hub_id in p.checkpoints:
            if s == hub_id or f"models--{hub_id.replace('/', '--')}/" in s + "/":
                return p.name
    folder = Path(source)
    if folder.is_dir():
        names = ("tokenizer_config.json", "added_tokens.json", "tokenizer.json")
        found = [f for f in names if (folder / f).is_file()]
        wanted = PROFILES["ume-r1"].tokens
        for f in found:
            text = (folder / f).read_text(errors="replace")
            if all(f'"{t}"' in text for t in wanted):
                return "ume-r1"
    return ""
