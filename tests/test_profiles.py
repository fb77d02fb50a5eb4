"""Published profiles embed as their authors' code does.

Each reference below is written from the cited upstream lines (docs/design/published-profiles.md), not from
mmemb's code: the messages each harness builds, rendered by the checkpoint's own chat template (the tiny
checkpoints carry the families' real templates), images pre-resized by a transcription of qwen-vl-utils'
smart_resize, pad tokens expanded as the Qwen2-VL processor does, then a plain transformers forward (or
`generate`) and the upstream pooling / index rule. The tiny checkpoints are shaped as each family's published
one (UME-R1's two plain tokens; none for VLM2Vec and Qwen3-VL-Embedding).
"""

from __future__ import annotations

import io
import json
import math
import unicodedata

import numpy as np
import pytest
import torch
from PIL import Image

from mmemb import Embedder, InputError, Sample, profiles
from mmemb.testing.tiny_hf import build_tiny_hf

from .conftest import write_image

# ---- upstream strings and rules, transcribed (not imported from mmemb) -------------------------------------
# Kikcer/lume@08891de:src/eval/VLM2Vec/src/data/collator/eval_collator.py L21 (UME-R1's eval harness)
UME_GENERATION_PROMPT = (
    "Represent the above input text, images, videos, or any combination of the three as embeddings. First "
    "output the thinking process in <think> </think> tags and then summarize the entire input in a word or "
    "sentence. Finally, use the <gen_emb> tag to represent the entire input."
)
# QwenLM/Qwen3-VL-Embedding@8ce3aab:src/models/qwen3_vl_embedding.py L170
QWEN3_DEFAULT_INSTRUCTION = "Represent the user's input."


def qwen_smart_resize(height, width, factor, min_pixels, max_pixels):
    """qwen-vl-utils 0.0.11 vision_process.py L60-86 (0.0.14 is the same)."""
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def to_rgb(im):
    """qwen-vl-utils 0.0.11 vision_process.py L89-95 (0.0.14 L84-90)."""
    if im.mode == "RGBA":
        white = Image.new("RGB", im.size, (255, 255, 255))
        white.paste(im, mask=im.split()[3])
        return white
    return im.convert("RGB")


def fetch_image(im, factor, min_pixels, max_pixels):
    """qwen-vl-utils fetch_image for a PIL image: to_rgb, smart_resize, PIL resize."""
    im = to_rgb(im)
    h, w = qwen_smart_resize(im.height, im.width, factor, min_pixels, max_pixels)
    return im.resize((w, h))


def ume_blank():
    """eval_collator.py L259-274: a white 28x28 RGB image, sent as JPEG."""
    buf = io.BytesIO()
    Image.new("RGB", (28, 28), (255, 255, 255)).save(buf, format="JPEG")
    return Image.open(io.BytesIO(buf.getvalue()))


def expand(text, counts, pad):
    """processing_qwen2_vl.py L150-170: the k-th pad becomes grid_k.prod() // merge**2 copies."""
    parts = text.split(pad)
    assert len(parts) - 1 == len(counts)
    return parts[0] + "".join(pad * n + rest for n, rest in zip(counts, parts[1:], strict=True))


# ---- fixtures -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("profiles")
    return {
        "ume-r1": build_tiny_hf("qwen2_vl", root / "ume", ume=True),
        "vlm2vec-v2": build_tiny_hf("qwen2_vl", root / "vlm2vec"),
        "qwen3-vl-embedding": build_tiny_hf("qwen3_vl", root / "qwen3"),
    }


@pytest.fixture(scope="module")
def embedders(folders):
    return {
        p: Embedder.from_pretrained(f, profile=p, dtype="float32", quiet=True) for p, f in folders.items()
    }


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    frames = []
    for i in range(3):  # an odd count: Qwen2-VL pads to an even one with the last frame
        frames.append(root / f"f{i}.png")
        Image.new("RGB", (56, 56), (40 * i, 200 - 50 * i, 90)).save(frames[-1])
    return {
        "a": write_image(root / "a.png", size=(64, 48), seed=1),
        "b": write_image(root / "b.png", size=(40, 90), seed=2),
        "tiny": write_image(root / "tiny.png", size=(20, 30), seed=3),
        "big": write_image(root / "big.png", size=(170, 130), seed=4),
        "rgba": write_rgba(root / "rgba.png"),
        "frames": tuple(frames),
    }


def write_rgba(path):
    """Clip art: a coloured disc on a transparent background whose hidden colour is black."""
    arr = np.zeros((64, 64, 4), dtype=np.uint8)
    yy, xx = np.mgrid[:64, :64]
    disc = (yy - 32) ** 2 + (xx - 32) ** 2 < 400
    arr[disc] = (200, 40, 90, 255)
    arr[(yy < 8) & ~disc, 3] = 120  # some half-transparent pixels too
    Image.fromarray(arr, "RGBA").save(path)
    return path


def kinds(m):
    return {
        "text": Sample(id="text", text="a red bicycle by the wall", instruction="Find an image of this:"),
        "text_noinst": Sample(id="text_noinst", text="two people on the beach, <disc_emb> "),
        "image": Sample(id="image", image=m["a"], text="what is shown?", instruction="Answer the question"),
        "image_only": Sample(id="image_only", image=m["b"], instruction="Represent the given image"),
        "tiny": Sample(id="tiny", image=m["tiny"], text="a small one"),  # VLM2Vec: under 28 px -> 56x56
        "big": Sample(id="big", image=m["big"], text="a big one"),  # over the tiny processor's own bounds
        "rgba": Sample(
            id="rgba", image=m["rgba"], text="clip art"
        ),  # transparent: UME, Qwen3 put it on white
        "pages": Sample(id="pages", pages=(m["a"], m["b"]), instruction="Find the document", text="q"),
        "video": Sample(id="video", frames=m["frames"], instruction="Find the clip", text="a man cooking"),
    }


# ---- reference builders, one per harness -------------------------------------------------------------------
def ume_reference(s, tok):
    """UME-R1 eval: process_input_text's join, the collator's strip + <disc_emb> + generation prompt in one user
    turn, visual items first (a blank image for text-only; one item for several images), the chat template."""
    prompt = s.instruction or ""
    if s.text:
        prompt = prompt + " " + s.text
    user = prompt.strip() + "\n<disc_emb>\n" + UME_GENERATION_PROMPT
    if s.frames:
        content, images = [{"type": "video"}], [Image.open(f) for f in s.frames]
    elif s.image or s.pages:
        first = (s.image or s.pages[0],)
        content, images = [{"type": "image"}], [Image.open(p) for p in first]
    else:
        content, images = [{"type": "image"}], [ume_blank()]
    text = tok.apply_chat_template(
        [{"role": "user", "content": content + [{"type": "text", "text": user}]}],
        tokenize=False,
        add_generation_prompt=True,
    )
    return text, [fetch_image(im, 28, 4 * 28 * 28, 16384 * 28 * 28) for im in images]


def vlm2vec_reference(s, tok):
    """VLM2Vec processor.py process_input_text: no chat template, the media token then one space."""
    prompt = s.instruction or ""
    if s.text:
        prompt = prompt + " " + s.text
    paths = s.frames or s.pages or ((s.image,) if s.image else ())
    if s.frames:
        prompt = "<|video_pad|> " + prompt
    else:  # one token per image: the processor fills the k-th token with the k-th image
        prompt = "<|image_pad|> " * len(paths) + prompt
    images = []
    for p in paths:
        im = Image.open(p).convert("RGB")
        if min(im.size) < 28:  # processor.py L328-332
            im = im.resize((56, 56))
        images.append(im)
    return prompt, images


def qwen3_reference(s, tok):
    """Qwen3VLEmbedder.format_model_input: the instruction (stripped, '.' added unless punctuated) as the
    system message, then videos, images, texts in the user turn; the chat template with the assistant turn."""
    instruction = s.instruction
    if instruction:
        instruction = instruction.strip()
        if instruction and not unicodedata.category(instruction[-1]).startswith("P"):
            instruction = instruction + "."
    paths = s.pages or ((s.image,) if s.image else ())
    content = [{"type": "video"}] if s.frames else []  # videos, then images, then texts (L274-324)
    content += [{"type": "image"} for _ in paths] + ([{"type": "text", "text": s.text}] if s.text else [])
    conversation = [
        {"role": "system", "content": [{"type": "text", "text": instruction or QWEN3_DEFAULT_INSTRUCTION}]},
        {"role": "user", "content": content},
    ]
    text = tok.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    if s.frames:
        frames = qwen3_fetch_video([Image.open(f) for f in s.frames])
        # processing_qwen3_vl.py L93-103 + _calculate_timestamps: fps 2.0, indices 0..n-1, pairs averaged
        stamps = [i / 2.0 for i in range(len(frames))]
        stamps = [(stamps[i] + stamps[i + 1]) / 2 for i in range(0, len(stamps), 2)]
        block = "<|vision_start|><|video_pad|><|vision_end|>"
        return text.replace(block, "".join(f"<{t:.1f} seconds>" + block for t in stamps)), frames
    return text, [fetch_image(Image.open(p), 32, 4096, 1843200) for p in paths]


def qwen3_fetch_video(frames):
    """qwen-vl-utils 0.0.14 fetch_video, frame-list branch (L416-475) with Qwen3VLEmbedder's total_pixels
    7864320 (L276, L296-300): fetch_image per frame at image_patch_size 32 (factor 64), pad to even, then one
    smart_resize for all (factor 32) and a bicubic resize (torchvision upstream; PIL here)."""
    frames = [fetch_image(f, 64, 4 * 64 * 64, 16384 * 64 * 64) for f in frames]
    n = math.ceil(len(frames) / 2) * 2
    frames += [frames[-1]] * (n - len(frames))
    min_pixels = 128 * 32 * 32
    max_pixels = max(min(768 * 32 * 32, 7864320 / n * 2), int(min_pixels * 1.05))
    h, w = qwen_smart_resize(frames[0].height, frames[0].width, 32, min_pixels, max_pixels)
    return [f.resize((w, h), Image.BICUBIC) for f in frames]


REFERENCE = {"ume-r1": ume_reference, "vlm2vec-v2": vlm2vec_reference, "qwen3-vl-embedding": qwen3_reference}
PROCESSOR_SIZE = {  # what each harness gives the image processor
    "ume-r1": {"size": {"shortest_edge": 784, "longest_edge": 2359296}},
    "vlm2vec-v2": {"size": {"shortest_edge": 3136, "longest_edge": 1003520}},
    "qwen3-vl-embedding": {},
}


def reference_inputs(profile, folder, batch, padding_side):
    """The harness's model inputs for a batch: texts, expanded pads, pixel values, tokenised with padding."""
    from transformers import AutoImageProcessor, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    tok.padding_side = padding_side
    proc = AutoImageProcessor.from_pretrained(folder, **PROCESSOR_SIZE[profile])
    kwargs = {"do_resize": False} if profile == "qwen3-vl-embedding" else {}
    texts, images, videos = [], [], []
    for s in batch:
        text, ims = REFERENCE[profile](s, tok)
        texts.append(text)
        (videos.append(ims) if s.frames else images.extend(ims))
    extra = {}
    if images:
        out = proc(images=images, return_tensors="pt", **kwargs)
        counts = (out["image_grid_thw"].prod(-1) // 4).tolist()
        texts = [expand(t, c, "<|image_pad|>") for t, c in _split(texts, counts, "<|image_pad|>")]
        extra |= {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]}
    if videos:
        pv, grid = zip(*[video_reference(v, proc) for v in videos], strict=True)
        if profile == "qwen3-vl-embedding":  # one pad per temporal group
            counts = [int(h * w) // 4 for t, h, w in (g.tolist() for g in grid) for _ in range(t)]
        else:
            counts = [int(g.prod()) // 4 for g in grid]
        texts = [expand(t, c, "<|video_pad|>") for t, c in _split(texts, counts, "<|video_pad|>")]
        extra |= {"pixel_values_videos": torch.cat(pv), "video_grid_thw": torch.stack(grid)}
    enc = tok(texts, padding=True, add_special_tokens=False, return_tensors="pt")
    ids = enc["input_ids"]
    image_id, video_id = tok.convert_tokens_to_ids(["<|image_pad|>", "<|video_pad|>"])
    mm = (ids == image_id).long() + 2 * (ids == video_id).long()
    return texts, enc, extra | ({"mm_token_type_ids": mm} if extra else {})


def _split(texts, counts, pad):
    """Give each text the counts of its own pads, in order."""
    out, k = [], 0
    for t in texts:
        n = t.count(pad)
        out.append((t, counts[k : k + n]))
        k += n
    assert k == len(counts)
    return out


def video_reference(frames, proc):
    """transformers 4.49 Qwen2VLImageProcessor._preprocess for a video (what UME-R1 and VLM2Vec ran): frames
    resized (here already at size), rescaled and normalised, padded with the last to a multiple of
    temporal_patch_size, then cut into (grid_t, gh, gw, mh, mw, C, tp, ph, pw) patches."""
    arr = np.stack([np.asarray(f.convert("RGB"), dtype=np.float64) / 255.0 for f in frames])  # (F, H, W, C)
    arr = (arr - np.array(proc.image_mean)) / np.array(proc.image_std)
    patches = arr.transpose(0, 3, 1, 2)  # (F, C, H, W)
    tp, ps, m = proc.temporal_patch_size, proc.patch_size, proc.merge_size
    if patches.shape[0] % tp:
        patches = np.concatenate([patches, np.repeat(patches[-1:], tp - patches.shape[0] % tp, 0)])
    C, H, W = patches.shape[1:]
    gt, gh, gw = patches.shape[0] // tp, H // ps, W // ps
    patches = patches.reshape(gt, tp, C, gh // m, m, ps, gw // m, m, ps)
    patches = patches.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    flat = patches.reshape(gt * gh * gw, C * tp * ps * ps)
    return torch.tensor(flat, dtype=torch.float32), torch.tensor([gt, gh, gw])


def reference_vectors(profile, folder, batch, model):
    """A plain transformers forward and the upstream pooling, each harness with its own padding side."""
    side = {"ume-r1": "left", "vlm2vec-v2": "right", "qwen3-vl-embedding": "right"}[profile]
    _, enc, extra = reference_inputs(profile, folder, batch, side)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    kwargs = {}
    if profile == "vlm2vec-v2":  # VLM2Vec's model finds no <|vision_start|>: 1-D positions
        pos = mask.long().cumsum(-1) - 1
        kwargs["position_ids"] = pos.masked_fill(mask == 0, 1).unsqueeze(0).expand(3, -1, -1)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, **extra, **kwargs)
    h = out.hidden_states[-1]  # (B, T, D), after the final norm
    if profile == "ume-r1":  # eval_twomode get_disc_embedding_idx: the last <disc_emb>
        disc = _token(folder, "<disc_emb>")
        idx = [max(j for j in range(ids.shape[1]) if ids[i, j] == disc) for i in range(len(batch))]
    else:  # the last position whose mask is 1
        idx = (mask.sum(1) - 1).tolist()
    vecs = torch.stack([h[i, j] for i, j in enumerate(idx)])
    return torch.nn.functional.normalize(vecs.float(), dim=-1).numpy()


def _token(folder, token):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder).convert_tokens_to_ids(token)


def _model(folder):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32).eval()


# ---- tests ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("profile", list(REFERENCE))
def test_prompt_ids_equal_the_harness(profile, folders, embedders, media):
    """Golden renderings: per input kind, the exact prompt text and token ids the authors' harness builds."""
    e, folder = embedders[profile], folders[profile]
    for name, s in kinds(media).items():
        texts, enc, _ = reference_inputs(profile, folder, [s], "left")
        ours = e.backbone.prepare([s], [e.prompt(s)])  # the whole prompt (no shared-prefix split)
        assert ours.input_ids.tolist() == enc["input_ids"].tolist(), (profile, name, texts[0])


def test_golden_strings():
    """The rendered text before pad expansion, spelled out once per profile (a change shows as a diff here)."""
    s = Sample(id="q", text="a dog", instruction="Find it")
    p = profiles.get("ume-r1")
    assert p.render(s, "<I>") == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<I>Find it a dog\n"
        f"<disc_emb>\n{UME_GENERATION_PROMPT}<|im_end|>\n<|im_start|>assistant\n"
    )
    assert profiles.get("vlm2vec-v2").render(s, "<|image_pad|> ") == "<|image_pad|> Find it a dog"
    assert profiles.get("vlm2vec-v2").render(Sample(id="q", text="a dog"), "") == " a dog"
    q3 = profiles.get("qwen3-vl-embedding")
    assert q3.render(s, "") == (
        "<|im_start|>system\nFind it.<|im_end|>\n<|im_start|>user\na dog<|im_end|>\n<|im_start|>assistant\n"
    )
    assert "system\nWhat is it?<|im_end|>" in q3.render(
        Sample(id="q", text="x", instruction=" What is it? "), ""
    )
    assert f"system\n{QWEN3_DEFAULT_INSTRUCTION}<|im_end|>" in q3.render(Sample(id="q", text="x"), "")


@pytest.mark.parametrize("profile", list(REFERENCE))
def test_vectors_equal_plain_transformers(profile, folders, embedders, media):
    """A batch of every input kind, left-padded by mmemb, equals the harness's own forward and pooling."""
    e, folder = embedders[profile], folders[profile]
    batch = list(kinds(media).values())
    ours = e.encode(batch, mode="disc", batch_size=len(batch)).vectors
    ref = reference_vectors(profile, folder, batch, _model(folder))
    np.testing.assert_allclose(ours, ref, atol=2e-5)
    alone = np.stack([e.encode([s], mode="disc").vectors[0] for s in batch])  # padding changes nothing
    np.testing.assert_allclose(ours, alone, atol=2e-5)


def test_video_patches_match_a_still_image(embedders, media, tmp_path):
    """Two identical frames make the same patches as that frame as an image (Qwen2-VL broadcasts an image to
    both temporal slices); the visual tokens differ only in type."""
    b = embedders["vlm2vec-v2"].backbone
    frame = Image.open(media["frames"][0])
    rows, grid = b._video_patches([frame, frame], Sample(id="v", frames=media["frames"]), {})
    image = b.image_processor(images=[frame], return_tensors="pt")
    torch.testing.assert_close(rows, image["pixel_values"])
    assert grid.tolist() == image["image_grid_thw"][0].tolist()


def test_ume_gen_equals_generate_and_its_index_rule(folders, embedders, media):
    """gen mode = transformers `generate` (greedy, batch of 1) + eval_twomode's index rule (the state that
    consumes the last generated <gen_emb>, else the last step's), both when <gen_emb> comes and when the
    cap is hit first."""
    folder, e = folders["ume-r1"], embedders["ume-r1"]
    gen_id = _token(folder, "<gen_emb>")
    s = Sample(id="g", image=media["a"], text="what is shown?")
    model = _model(folder)
    cap = 6
    _, enc, extra = reference_inputs("ume-r1", folder, [s], "left")

    def upstream(model):
        with torch.no_grad():
            out = model.generate(**enc, **extra, max_new_tokens=cap, do_sample=False, output_hidden_states=True,
                                 return_dict_in_generate=True)  # fmt: skip
        gen = out.sequences[0, enc["input_ids"].shape[1] :].tolist()
        idx = -1  # eval_twomode.py L39-56
        for j in range(len(gen) - 1, -1, -1):
            if gen[j] == gen_id:
                idx = j + 1 if j + 1 < len(gen) - 1 else -1
                break
        vec = out.hidden_states[idx][-1][0, -1]
        return gen, torch.nn.functional.normalize(vec.float(), dim=-1).numpy()

    def ours(model):
        e.backbone.model.load_state_dict(model.state_dict())
        return e.encode([s], mode="gen", max_new_tokens=cap - 1)

    gen, ref = upstream(model)
    assert gen_id not in gen and len(gen) == cap  # the random model never writes <gen_emb>: the cap rule
    got = ours(model)
    np.testing.assert_allclose(got.vectors[0], ref, atol=2e-5)
    assert got.gen_emb_found == [False]

    # make <gen_emb> the greedy choice at step 2: swap its output row with the token chosen there
    swap = gen[2]
    assert swap not in gen[:2]
    with torch.no_grad():
        w = model.lm_head.weight
        w[[swap, gen_id]] = w[[gen_id, swap]].clone()
    gen2, ref2 = upstream(model)
    assert gen2[2] == gen_id and gen2.count(gen_id) == 1
    got2 = ours(model)
    np.testing.assert_allclose(got2.vectors[0], ref2, atol=2e-5)
    assert got2.gen_emb_found == [True]
    e.backbone.model.load_state_dict(_model(folder).state_dict())  # leave the shared embedder as built


def test_profile_defaults_and_round_trip(folders, embedders, tmp_path):
    e = embedders["ume-r1"]
    assert e.config.profile == "ume-r1" and e.policy is None
    assert (e.config.backbone.min_pixels, e.config.backbone.max_pixels) == (784, 2359296)
    assert e.config.generation.max_new_tokens == 8191  # generate's 8192: its last token is never fed
    s = [Sample(id="t", text="a cat")]
    e.save_pretrained(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "embedder_config.json").read_text())["profile"] == "ume-r1"
    back = Embedder.from_pretrained(tmp_path / "saved", dtype="float32", quiet=True)
    assert back.profile.name == "ume-r1"
    np.testing.assert_allclose(back.encode(s).vectors, e.encode(s).vectors, atol=1e-6)
    with pytest.raises(InputError, match="saved with profile 'ume-r1'"):
        Embedder.from_pretrained(tmp_path / "saved", profile="vlm2vec-v2", quiet=True)
    assert len(back.backbone.tokenizer) == len(e.backbone.tokenizer)  # nothing added
    assert e.fingerprint() != embedders["vlm2vec-v2"].fingerprint()


def test_detection_and_refusals(folders, embedders, media, tmp_path, capsys):
    assert profiles.detect(str(folders["ume-r1"])) == "ume-r1"  # its tokens say so
    assert profiles.detect(str(folders["vlm2vec-v2"])) == ""  # a plain Qwen2-VL folder says nothing
    assert profiles.detect("zhibinlan/UME-R1-2B") == "ume-r1"
    snap = "/x/hub/models--Qwen--Qwen3-VL-Embedding-2B/snapshots/abc"
    assert profiles.detect(snap) == "qwen3-vl-embedding"
    e = Embedder.from_pretrained(folders["ume-r1"], dtype="float32")
    assert e.profile.name == "ume-r1" and "embeds as UME-R1" in capsys.readouterr().err
    Embedder.from_pretrained(folders["vlm2vec-v2"], dtype="float32")
    err = capsys.readouterr().err
    assert "fresh, untrained mmemb embedder" in err and "give --profile" in err
    with pytest.raises(InputError, match="has no <disc_emb> <gen_emb>"):
        Embedder.from_pretrained(folders["vlm2vec-v2"], profile="ume-r1", quiet=True)
    with pytest.raises(InputError, match="is for qwen3_vl models"):
        Embedder.from_pretrained(folders["vlm2vec-v2"], profile="qwen3-vl-embedding", quiet=True)
    with pytest.raises(InputError, match="unknown profile"):
        Embedder.from_pretrained(folders["vlm2vec-v2"], profile="clip", quiet=True)
    with pytest.raises(InputError, match="does not apply"):
        Embedder.from_pretrained("nano", profile="ume-r1", quiet=True)
    with pytest.raises(InputError, match="not defined for profile 'vlm2vec-v2'"):
        embedders["vlm2vec-v2"].encode([Sample(id="t", text="x")], mode="gen")


# ---- the paths a user takes: embed, eval, serve with --profile ---------------------------------------------
def test_cli_embed_eval_serve_with_a_profile(folders, embedders, tmp_path, capsys):
    from pathlib import Path

    from fastapi.testclient import TestClient

    from mmemb.cli import main
    from mmemb.data.mini import build_mini
    from mmemb.serve.app import ServeSettings, create_app

    from .conftest import needs_debian_data

    src = tmp_path / "items.jsonl"
    src.write_text(
        '{"id": "a", "text": "a red car", "instruction": "Find it"}\n{"id": "b", "text": "a dog"}\n'
    )
    out = tmp_path / "v.npy"
    args = ["embed", "--model", str(folders["vlm2vec-v2"]), "--profile", "vlm2vec-v2", "--dtype", "float32"]
    assert main(args + ["--input", str(src), "--out", str(out), "--quiet"]) == 0
    want = embedders["vlm2vec-v2"].encode([Sample(id="a", text="a red car", instruction="Find it")]).vectors
    np.testing.assert_allclose(np.load(out)[:1], want, atol=1e-5)
    assert "embeds as VLM2Vec-V2.0" in capsys.readouterr().err
    assert main(args + ["--input", str(src), "--out", str(out), "--mode", "gen", "--quiet"]) == 2
    assert "mode 'gen' is not defined for profile 'vlm2vec-v2'" in capsys.readouterr().err

    client = TestClient(create_app(embedders["qwen3-vl-embedding"], ServeSettings(model_name="q3")))
    r = client.post("/v1/embeddings", json={"input": ["a red car"]})
    assert r.status_code == 200, r.text
    want = embedders["qwen3-vl-embedding"].encode(["a red car"]).vectors[0]
    np.testing.assert_allclose(r.json()["data"][0]["embedding"], want, atol=1e-5)
    assert client.post("/v1/embeddings", json={"input": ["x"], "mode": "adaptive"}).status_code == 400
    serve = ["serve", "--model", str(folders["vlm2vec-v2"]), "--profile", "vlm2vec-v2", "--mode", "adaptive"]
    assert main(serve) == 2  # refused before it listens
    assert "mode 'adaptive' is not defined" in capsys.readouterr().err

    needs_debian_data(Path("/usr/share/openclipart/png"))
    root = build_mini(tmp_path / "mini", seed=0, scale=0.02)
    run = ["eval", "--model", str(folders["ume-r1"]), "--profile", "ume-r1", "--tasks", "mmeb-mini"]
    run += ["--data-root", str(root), "--out", str(tmp_path / "run"), "--limit", "2", "--quiet"]
    run += [
        "--cache",
        str(tmp_path / "cache"),
        "--qry-mode",
        "gen",
        "--max-new-tokens",
        "3",
        "--dtype",
        "float32",
    ]
    assert main(run) == 0, capsys.readouterr().err
    assert (tmp_path / "run" / "scores.gen-gen.json").is_file()  # UME-R1 embeds candidates in gen too


@pytest.mark.parametrize("n, size", [(3, (56, 56)), (64, (700, 500)), (21, (1000, 900)), (8, (90, 2000))])
def test_qwen3_video_frames_follow_fetch_video(n, size):
    """The per-frame budget that the video's total pixels leave (it binds on long, large videos)."""
    frames = [Image.new("RGB", size, (3 * i, 100, 200 - 2 * i)) for i in range(n)]
    ours = profiles.get("qwen3-vl-embedding").video_frames(frames)
    ref = qwen3_fetch_video(frames)
    assert [f.size for f in ours] == [f.size for f in ref] and len(ours) == n + n % 2
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(ours, ref, strict=True))
