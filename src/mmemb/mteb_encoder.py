"""mmemb as an mteb encoder (`pip install 'mmemb[mteb]'`): any mmemb model on mteb's / MIEB's own tasks.

    import mteb
    from mmemb.mteb_encoder import MMEmbEncoder
    model = MMEmbEncoder("nano-r1", query_mode="adaptive")   # corpus mode: nothink (the model's default)
    mteb.evaluate(model, mteb.get_tasks(tasks=["..."]))

It implements mteb's `EncoderProtocol` (on `AbsEncoder`, for its instruction lookup and cosine similarity):
`encode(DataLoader[BatchedInput], *, task_metadata, hf_split, hf_subset, prompt_type)` turns every batch row
into an mmemb `Sample` and returns the vectors of `Embedder.encode`, so a vector is exactly what
`mmemb embed` / `mmemb eval` compute for that item.

- Modes. Queries (prompt_type query, or none: classification, clustering, STS) are embedded in
  `query_mode`; documents in `corpus_mode`. Defaults per model: a model with an adaptive policy (mmemb's
  own) embeds queries adaptively, others (UME-R1, VLM2Vec, ...) in disc; the corpus mode is `mmemb eval`'s
  default for that query mode (nothink for generating queries, where the model has it).
- Instructions follow the task's metadata: a query row's own `instruction` column where the task has one,
  else `AbsEncoder.get_instruction` (the task's prompt for this prompt type, then its task type's default).
- Inputs: text; an image (PIL, as mteb's datasets decode it) or a list of images (document pages); a video
  as a (frames, channels, height, width) uint8 tensor. Images are written losslessly (PNG) to a temporary
  folder for the call: the pixels mmemb reads are mteb's.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .cache import CachedEncoder
from .embedder import Embedder, truncate
from .eval.evaluate import default_target_mode
from .eval.runner import EvalSettings, check_modes
from .paths import embeddings_dir
from .types import InputError, Sample

try:
    from mteb.models.abs_encoder import AbsEncoder
    from mteb.models.model_meta import ModelMeta, ScoringFunction
    from mteb.types import PromptType
except ImportError as e:  # an optional extra
    raise ImportError("mmemb.mteb_encoder needs mteb: pip install 'mmemb[mteb]'") from e


def default_modes(embedder: Embedder, query_mode: str | None, corpus_mode: str | None) -> tuple[str, str]:
    modes = embedder.profile.modes
    if query_mode is None:
        query_mode = "adaptive" if embedder.policy is not None else "disc"
    if corpus_mode is None:
        corpus_mode = default_target_mode(query_mode, modes)
    check_modes(embedder, EvalSettings(qry_mode=query_mode, tgt_mode=corpus_mode))  # as `mmemb eval` does
    return query_mode, corpus_mode


class MMEmbEncoder(AbsEncoder):
    """An mmemb model for `mteb.evaluate`. `model`: what `Embedder.from_pretrained` takes (nano-r1, a saved
    folder, a hub id), or an `Embedder`. Vectors go through `mmemb eval`'s embedding cache (`cache_root`,
    default the eval cache): the same batches as `mmemb eval`, and a rerun embeds nothing twice."""

    def __init__(
        self,
        model: str | Path | Embedder = "nano-r1",
        revision: str | None = None,
        *,
        device: str | None = None,
        query_mode: str | None = None,
        corpus_mode: str | None = None,
        batch_size: int = EvalSettings.batch_size,
        cache_root: Path | None = None,
        embed_dim: int | None = None,
        **load: Any,
    ) -> None:
        source = None
        if isinstance(model, Embedder):
            self.model, name = model, "mmemb/custom"
        else:
            # mteb's ModelMeta.load_model calls loader(meta.name, ...): "mmemb/nano-r1" is the shipped nano-r1
            source = str(model).removeprefix("mmemb/") if str(model).startswith("mmemb/") else str(model)
            self.model = Embedder.from_pretrained(load.pop("source", source), device=device, **load)
            local = "/" not in source or Path(source).exists()
            name = f"mmemb/{Path(source).name}" if local else source
        self.query_mode, self.corpus_mode = default_modes(self.model, query_mode, corpus_mode)
        self.dimensions = self.model.check_dimensions(embed_dim)  # Matryoshka width (mteb's embed_dim)
        self.settings = EvalSettings(batch_size=batch_size)
        self.cache = CachedEncoder(
            self.model, cache_root or embeddings_dir(), batch_size, self.settings.shard_size, False,
            self.model.fingerprint(),
        )  # fmt: skip
        modes = {"query_mode": self.query_mode, "corpus_mode": self.corpus_mode}
        self.mteb_model_meta = model_meta(
            self.model, name, revision, modes | {"source": source} if source else modes
        )

    def instruction(self, task_metadata, prompt_type: PromptType | None) -> str | None:
        """The task's prompt for this side: a per-side prompt dict is read as is (a side without a prompt has
        none), anything else through mteb's lookup (`AbsEncoder.get_instruction`)."""
        prompt = task_metadata.prompt
        if isinstance(prompt, dict):
            return prompt.get(prompt_type.value if prompt_type else PromptType.query.value) or None
        return self.get_instruction(task_metadata, prompt_type) or None

    def mode(self, prompt_type: PromptType | None) -> str:
        return self.corpus_mode if prompt_type == PromptType.document else self.query_mode

    def encode(
        self,
        inputs,
        *,
        task_metadata,
        hf_split: str,
        hf_subset: str,
        prompt_type: PromptType | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """(N, D) float32: the rows of every batch, in order. Rows are gathered a cache shard at a time (their
        media written to a temporary folder), embedded once per distinct item, then dropped from disk."""
        instruction = self.instruction(task_metadata, prompt_type)
        out: list[np.ndarray] = []
        rows: list[Sample] = []
        with tempfile.TemporaryDirectory(prefix="mmemb-mteb-") as tmp:

            def flush() -> None:
                try:
                    vectors, _ = self.cache.samples(rows, self.mode(prompt_type), self.settings.gen)
                except InputError as e:
                    raise InputError(
                        f"mteb task {task_metadata.name} ({hf_subset}/{hf_split}): {e}"
                    ) from None
                out.append(vectors if self.dimensions is None else truncate(vectors, self.dimensions))
                rows.clear()
                for path in Path(tmp).iterdir():
                    path.unlink()

            n = 0
            for batch in inputs:
                for i in range(batch_rows(batch)):
                    rows.append(
                        to_sample(batch, i, instruction, Path(tmp) / str(n), f"{task_metadata.name} row {n}")
                    )
                    n += 1
                if len(rows) >= self.settings.shard_size:
                    flush()
            if rows:
                flush()
        return (
            np.concatenate(out).astype(np.float32)
            if out
            else np.zeros((0, self.dimensions or self.model.width), np.float32)
        )


def batch_rows(batch: dict) -> int:
    sizes = {len(v) for k, v in batch.items() if k in ("text", "query", "image", "video")}
    if len(sizes) != 1:
        raise InputError(
            f"an mteb batch with columns of different lengths or no input column: {sorted(batch)}"
        )
    return sizes.pop()


def to_sample(batch: dict, i: int, instruction: str | None, stem: Path, where: str) -> Sample:
    """Row i of an mteb batch as a Sample (its media written to files named from `stem`). A query row with
    its own instruction keeps its raw text (mteb's `query` column; `text` has the instruction appended)."""
    unknown = sorted(set(batch) & {"audio", "conversation"})
    if unknown:
        raise InputError(f"{where}: mmemb embeds text, images, documents and video, not {', '.join(unknown)}")
    text = batch["text"][i] if "text" in batch else None
    if "instruction" in batch and "query" in batch:
        text, instruction = batch["query"][i], batch["instruction"][i] or instruction
    fields: dict[str, Any] = {"id": where, "text": text or None, "instruction": instruction}
    if batch.get("image") is not None and batch["image"][i] is not None:
        images = batch["image"][i]
        if isinstance(images, list):
            fields["pages"] = tuple(
                save(img, stem.with_name(f"{stem.name}-p{p}.png"), where) for p, img in enumerate(images)
            )
        else:
            fields["image"] = save(images, stem.with_suffix(".png"), where)
    if batch.get("video") is not None and batch["video"][i] is not None:
        fields["frames"] = tuple(video_frames(batch["video"][i], stem, where))
    return Sample(**fields)


def save(image, path: Path, where: str) -> Path:
    if not hasattr(image, "save"):
        raise InputError(f"{where}: an image column holds {type(image).__name__}, not a PIL image")
    image.save(path, format="PNG")
    return path


def video_frames(video, stem: Path, where: str) -> list[Path]:
    """A (T, C, H, W) uint8 tensor or array as T frame files, in time order."""
    from PIL import Image

    frames = np.asarray(video)
    if frames.ndim != 4 or frames.shape[1] not in (1, 3):
        raise InputError(f"{where}: a video must be (frames, channels, height, width); got {frames.shape}")
    paths = []
    for t, frame in enumerate(frames):
        pixels = frame.transpose(1, 2, 0)  # (H, W, C)
        pixels = np.ascontiguousarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
        paths.append(
            save(Image.fromarray(pixels.astype(np.uint8)), stem.with_name(f"{stem.name}-f{t}.png"), where)
        )
    return paths


def model_meta(
    embedder: Embedder,
    name: str = "mmemb/nano-r1",
    revision: str | None = None,
    loader_kwargs: dict | None = None,
) -> ModelMeta:
    """mteb's ModelMeta of an mmemb model (what mteb's results and leaderboard record). `meta.load_model()`
    rebuilds the encoder: loader_kwargs carry the modes and where the model came from."""
    backbone = embedder.backbone
    params = sum(p.numel() for p in backbone.parameters())
    return ModelMeta(
        loader=MMEmbEncoder,
        loader_kwargs=loader_kwargs or {},
        name=name,
        revision=revision or embedder.fingerprint()[:12],
        release_date=None,
        languages=["eng-Latn"],
        n_parameters=params,
        memory_usage_mb=None,
        max_tokens=None,
        embed_dim=[*embedder.config.matryoshka_dims, embedder.width]
        if embedder.config.matryoshka_dims
        else embedder.width,
        license=None,
        open_weights=True,
        public_training_code=None,
        public_training_data=None,
        framework=["PyTorch", "Transformers"],
        similarity_fn_name=ScoringFunction.COSINE,
        use_instructions=True,
        training_datasets=None,
        modalities=["image", "text", "video"],
    )


def mteb_task(task, prompts: dict[str, str] | None = None):
    """An mmemb task (`mmemb.eval.evaluate.load`: mmeb-mini, MMEB-V2, your own rows) as an mteb retrieval
    task, offline: queries, corpus and qrels in mteb's own layout, each query's own candidate list as
    `top_ranked` (MMEB ranks a query's candidates only). mteb's precision_at_1 on it is `mmemb eval`'s hit@1.
    Instructions go in the task's metadata prompt ({"query": ..., "document": ...}): one per side, so a task
    whose rows carry different instructions is refused. Text and image items only (video and pages: use
    `mmemb eval`)."""
    from datasets import Dataset
    from mteb.abstasks.retrieval import AbsTaskRetrieval
    from mteb.abstasks.task_metadata import TaskMetadata
    from PIL import Image

    if task.local is None:
        raise InputError(f"{task.name}: ranks a shared corpus; mteb_task builds per-query candidate tasks")
    cand_keys = task.candidate_keys()
    sides = {"query": [task.items[k] for k in task.queries], "document": [task.items[k] for k in cand_keys]}
    found = {}
    for side, samples in sides.items():
        if any(s.frames or s.pages for s in samples):
            raise InputError(
                f"{task.name}: its {side} items hold video or pages; mteb_task takes text and images"
            )
        found[side] = {s.instruction for s in samples}
        if len(found[side]) > 1:
            raise InputError(
                f"{task.name}: its {side} items carry {len(found[side])} instructions; mteb_task needs one"
            )
    prompt = prompts or {side: next(iter(v)) for side, v in found.items() if next(iter(v))}

    def rows(ids: list[str], samples: list[Sample]) -> Dataset:
        cols: dict[str, list] = {"id": ids}
        if any(s.text for s in samples):
            cols["text"] = [s.text or "" for s in samples]
        if any(s.image for s in samples):
            cols["image"] = [Image.open(s.image) for s in samples]
        return Dataset.from_dict(cols)

    def modality(samples: list[Sample]) -> str:
        return ("i" if any(s.image for s in samples) else "") + ("t" if any(s.text for s in samples) else "")

    qids = [f"q{row}" for row in range(len(task.queries))]
    split = {
        "queries": rows(qids, sides["query"]),
        "corpus": rows(cand_keys, sides["document"]),
        "relevant_docs": {
            q: {k: int(v) for k, v in rel.items()} for q, rel in zip(qids, task.relevance, strict=True)
        },
        "top_ranked": dict(zip(qids, task.local, strict=True)),
    }
    category = f"{modality(sides['query'])}2{modality(sides['document'])}"
    metadata = TaskMetadata(
        name=task.name,
        description=f"{task.name} as mmemb reads it, built locally for mteb (mmemb.mteb_encoder.mteb_task).",
        reference=None,
        dataset={"path": f"local/{task.name}", "revision": "local"},
        type="Any2AnyRetrieval",
        category=category,
        modalities=sorted({"image" if "i" in category else "text", "text" if "t" in category else "image"}),
        eval_splits=["test"],
        eval_langs=["eng-Latn"],
        main_score="precision_at_1",
        date=None,
        domains=None,
        task_subtypes=None,
        license=None,
        annotations_creators=None,
        dialect=None,
        sample_creation=None,
        bibtex_citation="",
        prompt=prompt or None,
    )

    class Local(AbsTaskRetrieval):
        def load_data(self, **kwargs: Any) -> None:
            self.dataset = {"default": {"test": split}}
            self.data_loaded = True

    Local.metadata = metadata
    return Local()
