"""hf: transformers image-text-to-text models of the Qwen2-VL, Qwen2.5-VL and Qwen3-VL families.

The backbones of VLM2Vec, UME-R1 and MMEmb-R1, from a local folder or a hub id. What differs per family
lives in FAMILIES; the code below never branches on the family.

Media go through the family's own image processor (patches + grid). The prompt's image placeholder is
expanded here to (t*h*w / merge^2) pad tokens, which is all the family's `processor` adds for images; we do
not use the processor class itself because in transformers 5 it requires a video processor, which requires
torchvision, which cannot be installed beside the pinned torch. Under mmemb's own profile a video is fed as
its sampled frames, one image each (multi-image input). A published profile (profiles.py) that takes video as
video gets `<|video_pad|>` and `pixel_values_videos`, built from the image processor's per-frame patches
(`_video_patches`: the temporal patches are consecutive frame pairs); Qwen3-VL puts each pair in its own
marked block after a `<t seconds>` stamp.

Positions: multimodal RoPE, (3, B, T) from the model's own `get_rope_index` at prefill (left padding aware),
or plain 1-D positions on all three axes for a profile whose prompts lack the vision markers (VLM2Vec);
decoding continues from each row's largest position + 1 (base.Backbone.step). Explicit positions are always
passed, so the model's hidden `rope_deltas` state is never used.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch

from .. import profiles
from ..config import BackboneConfig
from ..media import sample_images
from ..types import InputError, Sample
from .base import Backbone, Prompts

# model_type -> per-family facts. All three share the Qwen2-VL vision-token layout today; a family that
# differs (another placeholder, extra get_rope_index arguments) gets its own row here, not an if-branch.
FAMILIES: dict[str, dict] = {
    "qwen2_vl": {
        "video": "pads",  # video as video: the <|video_pad|> expanded to the video's visual tokens
        "image_pad": "<|image_pad|>",
        "video_pad": "<|video_pad|>",
        "vision_start": "<|vision_start|>",
        "vision_end": "<|vision_end|>",
    },
    "qwen2_5_vl": {
        "image_pad": "<|image_pad|>",
        "video_pad": "<|video_pad|>",
        "vision_start": "<|vision_start|>",
        "vision_end": "<|vision_end|>",
    },
    "qwen3_vl": {
        # video as video: each pair of frames its own `<t seconds>` + marked block (processing_qwen3_vl.py)
        "video": "timestamps",
        "image_pad": "<|image_pad|>",
        "video_pad": "<|video_pad|>",
        "vision_start": "<|vision_start|>",
        "vision_end": "<|vision_end|>",
    },
}
SAVED_SUBDIR = "backbone"


class HFBackbone(Backbone):
    kind = "hf"
    mrope = True

    def __init__(
        self, config: BackboneConfig, saved: Path | None = None, dtype: torch.dtype | None = None
    ) -> None:
        super().__init__(config)
        from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

        source = str(Path(saved) / SAVED_SUBDIR) if saved else config.source
        if not source:
            raise InputError("backbone.source is empty: give a Qwen-VL hub id or local folder")
        adapter, source = _adapter_and_base(source, config.base)
        try:
            model_config = AutoConfig.from_pretrained(source)
        except OSError as e:
            hint = f" It is the base of the adapter {adapter}: give another with --base." if adapter else ""
            raise InputError(
                f"{source}: cannot load a model config ({e}). Give a local folder, or a hub id "
                f"on a machine that reaches the hub.{hint}"
            ) from None
        family = config.family or model_config.model_type
        if family not in FAMILIES or model_config.model_type not in FAMILIES:
            raise InputError(
                f"{source}: model type {model_config.model_type!r} is not supported; "
                f"supported: {sorted(FAMILIES)}"
            )
        self.family = FAMILIES[family]
        self.model = AutoModelForImageTextToText.from_pretrained(source, dtype=dtype or torch.float32)
        if adapter:
            self.model = _merge_adapter(self.model, adapter)
        self.hf_model = self.model
        # an adapter folder that ships its own tokenizer or image processor wins over the base's
        own = adapter if adapter and (Path(adapter) / "tokenizer_config.json").is_file() else source
        self.tokenizer = AutoTokenizer.from_pretrained(own)
        self.tokenizer.padding_side = "left"
        size = {}
        if config.min_pixels:
            size["shortest_edge"] = config.min_pixels
        if config.max_pixels:
            size["longest_edge"] = config.max_pixels
        own = adapter if adapter and (Path(adapter) / "preprocessor_config.json").is_file() else source
        self.image_processor = AutoImageProcessor.from_pretrained(own, **({"size": size} if size else {}))
        self.image_pad_id = self.token_id(self.family["image_pad"])
        self.video_pad_id = self.token_id(self.family["video_pad"])
        self.family_name = family
        self.use_profile(profiles.get(profiles.DEFAULT))  # until an Embedder chooses

    def use_profile(self, profile) -> None:
        """The placeholders `profile` puts per image and per video (mmemb's own: marked image blocks, video as
        frames)."""
        super().use_profile(profile)
        f = self.family
        self.image_block = (
            profile.image.format(**f)
            if profile.image
            else f["vision_start"] + f["image_pad"] + f["vision_end"]
        )
        self.video_block = profile.video.format(**f) if profile.video else ""

    def _as_video(self, sample: Sample) -> bool:
        if not (sample.frames and self.video_block):
            return False
        if not self.family.get("video"):
            raise InputError(
                f"item {sample.id!r}: profile {self.profile.name!r} takes video as video, which mmemb builds for "
                "Qwen2-VL and Qwen3-VL, not this family; embed frames as images with the mmemb profile, or leave "
                "video out"
            )
        return True

    def media_prompt(self, sample: Sample) -> str:
        if self._as_video(sample):
            return self.video_block
        n = self.num_images(sample)
        if self.profile.blank_image and sample.modality == "text":
            n = 1
        if self.profile.max_images:
            n = min(n, self.profile.max_images)
        return self.image_block * n

    def prepare(
        self, samples: list[Sample], texts: list[str], lock: AbstractContextManager | None = None
    ) -> Prompts:
        f = self.family
        self.check_reserved(samples, [f["image_pad"], f["video_pad"], f["vision_start"], f["vision_end"]])
        images, videos = [], []  # videos: (sample, its frames)
        for s in samples:
            got = sample_images(
                s,
                num_frames=self.config.num_frames,
                max_pixels=self.config.max_image_pixels,
                rgba_on_white=self.profile.rgba_on_white,
            )
            got = self.profile.media_images(s, got)
            if self._as_video(s):
                videos.append((s, got))
            else:
                images += got
        kwargs = {"do_resize": False} if self.profile.no_processor_resize else {}
        extra: dict = {}
        merge = self.image_processor.merge_size**2
        if images:
            processed = self.image_processor(images=images, return_tensors="pt", **kwargs)
            grid = processed["image_grid_thw"]  # (N, 3): patches in time, height, width
            counts = iter((grid.prod(-1) // merge).tolist())  # visual tokens per image
            texts = [_expand(t, f["image_pad"], counts) for t in texts]
            extra["pixel_values"] = processed["pixel_values"].to(self.model.model.visual.dtype)
            extra["image_grid_thw"] = grid
        if videos:
            parts = [self._video_patches(frames, s, kwargs) for s, frames in videos]
            grid = torch.stack([g for _, g in parts])  # (V, 3)
            if f["video"] == "timestamps":  # one marked block per temporal group, each after its time
                block = f["vision_start"] + f["video_pad"] + f["vision_end"]
                groups = iter(grid[:, 0].tolist())
                texts = [_replace_each(t, block, lambda: _timestamped(block, next(groups))) for t in texts]
                counts = iter([int(h * w) // merge for t, h, w in grid.tolist() for _ in range(t)])
            else:
                counts = iter((grid.prod(-1) // merge).tolist())
            texts = [_expand(t, f["video_pad"], counts) for t in texts]
            extra["pixel_values_videos"] = torch.cat([p for p, _ in parts]).to(self.model.model.visual.dtype)
            extra["video_grid_thw"] = grid
        with lock or nullcontext():  # media were decoded and processed outside it
            enc = self.tokenizer(texts, padding=True, add_special_tokens=False, return_tensors="pt")
        ids, mask = enc["input_ids"], enc["attention_mask"]  # (B, T)
        self.check_lengths(samples, mask.sum(1).tolist())
        mm_types = (ids == self.image_pad_id).long()  # (B, T): 1 on image tokens, 2 on video, 0 on text
        mm_types += 2 * (ids == self.video_pad_id).long()
        if self.profile.positions == "text":  # prompts without vision markers: the model's positions are 1-D
            positions = self.text_positions(mask)  # (3, B, T)
        else:
            positions, _ = self.model.model.get_rope_index(
                ids,
                mm_token_type_ids=mm_types,
                image_grid_thw=extra.get("image_grid_thw"),
                video_grid_thw=extra.get("video_grid_thw"),
                attention_mask=mask,
            )  # (3, B, T)
        if images or videos:
            extra["mm_token_type_ids"] = mm_types
        return Prompts(ids, mask, positions, extra)

    def _video_patches(self, frames: list, sample: Sample, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """One video's `pixel_values_videos` rows and its grid (3,), as Qwen2-VL's processor builds them: the
        frames resized and normalised like images, padded to an even count with the last frame, and each
        pair of consecutive frames one temporal patch. The image processor gives each frame as a patch whose
        two temporal slices are that frame, so slice 0 of frames 2k and 2k+1 are the video's patch k."""
        tp = self.image_processor.temporal_patch_size
        frames = list(frames) + [frames[-1]] * (-len(frames) % tp)
        out = self.image_processor(images=frames, return_tensors="pt", **kwargs)
        grid = out["image_grid_thw"]  # (F, 3), each (1, h, w)
        if not bool((grid == grid[0]).all()):
            raise InputError(
                f"item {sample.id!r}: its frames differ in size; a video's frames must share one size"
            )
        F, n = len(frames), int(grid[0].prod())
        pv = out["pixel_values"].view(F, n, 3, tp, -1)[:, :, :, 0]  # (F, n, C, ph*pw): one slice per frame
        pv = pv.view(F // tp, tp, n, 3, -1).permute(0, 2, 3, 1, 4)  # (F/tp, n, C, tp, ph*pw)
        rows = pv.reshape(F // tp * n, -1)  # (F/tp * n, C*tp*ph*pw), the layout of the image rows
        return rows, torch.tensor([F // tp, int(grid[0, 1]), int(grid[0, 2])])

    def forward_hidden(self, input_ids, attention_mask, position_ids, cache=None, extra=None, use_cache=True):
        device = self.device
        extra = {k: v.to(device) for k, v in (extra or {}).items()}
        out = self.model.model(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            position_ids=position_ids.to(device),
            past_key_values=cache,
            use_cache=use_cache,
            **extra,
        )
        return out.last_hidden_state, out.past_key_values

    def configure_trainable(self) -> None:
        """UME-R1's stage-1 setting: the vision tower frozen, its merger (projector) and the LM trained."""
        for name, p in self.named_parameters():
            p.requires_grad_(".visual." not in name or ".merger." in name)

    def save(self, directory: Path) -> None:
        target = Path(directory) / SAVED_SUBDIR
        self.model.save_pretrained(target)
        self.tokenizer.save_pretrained(target)
        self.image_processor.save_pretrained(target)


def _adapter_and_base(source: str, base: str) -> tuple[str, str]:
    """(adapter folder or "", the model folder to load): a PEFT adapter folder loads on its base model."""
    cfg = Path(source) / "adapter_config.json"
    if not cfg.is_file():
        return "", source
    import json

    try:
        meta = json.loads(cfg.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{cfg}: cannot read the adapter config ({e})") from None
    base = base or meta.get("base_model_name_or_path") or ""
    if not base:
        raise InputError(
            f"{cfg}: a PEFT adapter without base_model_name_or_path; give the base model with --base"
        )
    return source, base


def _merge_adapter(model, adapter: str):
    """Load a PEFT adapter onto `model` and merge it into the weights (the result is a plain model)."""
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(model, adapter).merge_and_unload()
    except (ValueError, KeyError, RuntimeError) as e:  # wrong base: missing modules or shape mismatches
        raise InputError(f"{adapter}: the adapter does not fit its base model ({e}); check --base") from None


def _replace_each(text: str, block: str, make) -> str:
    """Each occurrence of `block` replaced by a fresh `make()`, in order."""
    parts = text.split(block)
    return parts[0] + "".join(make() + rest for rest in parts[1:])


def _timestamped(block: str, groups: int) -> str:
    """Qwen3-VL's video placeholder for a frame list (processing_qwen3_vl.py L93-103, _calculate_timestamps
    L173-184): `<t seconds>` + block per temporal group. qwen-vl-utils gives a frame list fps 2.0 and indices
    0..n-1, so group k (frames 2k, 2k+1) sits at the mean of k and k + 0.5 seconds."""
    return "".join(f"<{(2 * k / 2.0 + (2 * k + 1) / 2.0) / 2:.1f} seconds>" + block for k in range(groups))


def _expand(text: str, pad: str, counts) -> str:
    """Replace each image placeholder by as many pad tokens as the image has visual tokens."""
    parts = text.split(pad)
    return parts[0] + "".join(pad * next(counts) + rest for rest in parts[1:])
