"""mmemb as an mteb encoder: mteb's own evaluation path, offline, on locally built tasks, scores equal to
`mmemb eval`'s on the same data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mmemb import Embedder, InputError, Sample

from .conftest import assert_same_vectors, needs, needs_debian_data

try:
    import mteb
    from mteb.models.models_protocols import EncoderProtocol
except ImportError:  # pragma: no cover
    mteb = None


@pytest.fixture(autouse=True)
def has_mteb():
    needs(mteb is not None, "mteb (the mteb extra; scripts/setup.sh installs it)")


def mmeb_mini_task(name: str, n: int):
    from mmemb.eval.evaluate import load, resolve

    needs_debian_data(Path("/usr/share/openclipart/png"))
    task = load(resolve("mmeb-mini", None), name)
    task.limit(n)
    return task


def mteb_ranks(encoder, task, tmp_path) -> tuple[dict, list[int]]:
    """mteb's scores and each query's gold rank, read from mteb's own prediction file."""
    from mmemb.mteb_encoder import mteb_task

    folder = tmp_path / "predictions"
    res = mteb.evaluate(
        encoder, mteb_task(task), cache=None, show_progress_bar=False, prediction_folder=folder
    )
    scores = res.task_results[0].scores["test"][0]
    preds = json.loads(next(folder.glob("*.json")).read_text())["default"]["test"]
    ranks = []
    for row, rel in enumerate(task.relevance):
        got = preds[f"q{row}"]
        gold = max(got[k] for k, v in rel.items() if v > 0)
        ranks.append(sum(score > gold for score in got.values()) + 1)
    return scores, ranks


@pytest.mark.parametrize(
    ("name", "modes"),
    [("Clipart-T2I", ("disc", "disc")), ("Clipart-I2T", (None, None))],  # None: the model's defaults
)
def test_mteb_scores_equal_mmemb_eval_on_the_same_data(name, modes, tmp_path):
    from mmemb.eval.runner import EvalSettings, evaluate_task
    from mmemb.mteb_encoder import MMEmbEncoder

    task = mmeb_mini_task(name, 10)
    model = Embedder.from_pretrained("nano-r1", quiet=True)
    encoder = MMEmbEncoder(model, query_mode=modes[0], corpus_mode=modes[1], cache_root=tmp_path / "mteb")
    assert isinstance(encoder, EncoderProtocol)
    if modes[0] is None:  # nano-r1 has a trained policy: adaptive queries, nothink candidates
        assert (encoder.query_mode, encoder.corpus_mode) == ("adaptive", "nothink")
    scores, ranks = mteb_ranks(encoder, task, tmp_path)
    settings = EvalSettings(qry_mode=encoder.query_mode, tgt_mode=encoder.corpus_mode)
    ours = evaluate_task(task, model, settings, tmp_path / "eval", model.fingerprint())  # its own cache
    assert ranks == [q["gold_rank"] for q in ours.per_query]
    assert scores["hit_rate_at_1"] == pytest.approx(ours.metrics["hit@1"], abs=1e-5)
    assert scores["mrr_at_10"] == pytest.approx(ours.metrics["mrr@10"], abs=1e-5)
    assert scores["main_score"] == scores["precision_at_1"]


def test_rows_become_samples_and_what_mmemb_cannot_embed_is_refused(nano, tmp_path):
    from PIL import Image

    from mmemb.mteb_encoder import MMEmbEncoder, to_sample

    image = Image.new("RGB", (20, 10), (200, 30, 30))
    batch = {"text": ["red? Find it."], "query": ["red?"], "instruction": ["Find it."], "image": [image]}
    s = to_sample(batch, 0, "the task's prompt", tmp_path / "0", "T row 0")
    assert (s.text, s.instruction) == ("red?", "Find it.")  # the row's own instruction, raw query text
    assert np.array_equal(np.asarray(Image.open(s.image)), np.asarray(image))  # lossless
    s = to_sample({"text": ["a doc"], "image": [[image, image]]}, 0, None, tmp_path / "1", "T row 1")
    assert len(s.pages) == 2 and s.instruction is None
    video = np.zeros((3, 3, 8, 8), np.uint8)  # (frames, channels, height, width)
    assert len(to_sample({"video": [video]}, 0, "p", tmp_path / "2", "T row 2").frames) == 3
    with pytest.raises(
        InputError, match="T row 3: mmemb embeds text, images, documents and video, not audio"
    ):
        to_sample({"audio": [b""], "text": ["x"]}, 0, None, tmp_path / "3", "T row 3")
    with pytest.raises(InputError, match=r"T row 4: a video must be \(frames, channels, height, width\)"):
        to_sample({"video": [np.zeros((8, 8))]}, 0, None, tmp_path / "4", "T row 4")
    with pytest.raises(InputError, match="not a valid pair"):
        MMEmbEncoder(nano, query_mode="gen", corpus_mode="disc", cache_root=tmp_path)
    encoder = MMEmbEncoder(nano, cache_root=tmp_path)
    meta = encoder.mteb_model_meta
    assert meta.embed_dim == 576 and meta.n_parameters == sum(p.numel() for p in nano.backbone.parameters())
    assert meta.similarity_fn_name.value == "cosine" and meta.use_instructions
    with pytest.raises(InputError, match="not trained with Matryoshka"):  # mteb's embed_dim: a trained width
        MMEmbEncoder(nano, embed_dim=64, cache_root=tmp_path)


def test_a_matryoshka_model_gives_mteb_its_widths(nano, monkeypatch, tmp_path):
    from mmemb.embedder import truncate
    from mmemb.mteb_encoder import MMEmbEncoder

    monkeypatch.setattr(nano.config, "matryoshka_dims", [64, 128])
    encoder = MMEmbEncoder(nano, query_mode="disc", embed_dim=64, cache_root=tmp_path)
    assert encoder.mteb_model_meta.embed_dim == [64, 128, 576]
    task = type("Meta", (), {"name": "T", "prompt": {"query": "Find it."}})()
    batches = [{"text": ["a red circle", "two cats"]}, {"text": ["a page"]}]
    got = encoder.encode(batches, task_metadata=task, hf_split="test", hf_subset="default")
    full = nano.encode(
        [Sample(text=t, instruction="Find it.") for t in ["a red circle", "two cats", "a page"]]
    )
    assert got.shape == (3, 64)
    assert_same_vectors(got, truncate(full.vectors, 64), str(nano.dtype))


def test_a_model_meta_loads_its_encoder_again(tmp_path):
    """The meta rebuilds its encoder as mteb's `ModelMeta.load_model()` does (`loader(name, revision=...,
    **loader_kwargs)`; load_model itself first insists on mteb's image and video extras, torchvision and
    torchcodec, which mmemb does not use and which are not installed here)."""
    from mmemb.mteb_encoder import MMEmbEncoder

    first = MMEmbEncoder("nano-r1", query_mode="disc", cache_root=tmp_path)
    meta = first.mteb_model_meta
    assert meta.name == "mmemb/nano-r1" and meta.revision == first.model.fingerprint()[:12]
    again = meta.loader(meta.name, revision=meta.revision, **meta.loader_kwargs, cache_root=tmp_path)
    assert (again.query_mode, again.corpus_mode) == ("disc", "disc")
    assert again.model.fingerprint() == first.model.fingerprint()
