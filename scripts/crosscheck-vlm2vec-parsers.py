"""Run VLM2Vec's own eval parsers on the MMEB-V2 fixture and compare what they build with mmemb's loaders.

A dev check, not CI: it needs a VLM2Vec checkout and the `datasets` library, neither an mmemb dependency.

    git clone https://github.com/TIGER-AI-Lab/VLM2Vec /tmp/vlm2vec && git -C /tmp/vlm2vec checkout 6e1e1d4
    pip install --target /tmp/dslib datasets
    PYTHONPATH=/tmp/dslib HF_DATASETS_OFFLINE=1 python scripts/crosscheck-vlm2vec-parsers.py /tmp/vlm2vec

VLM2Vec's model and video-decoding imports (torch models, cv2, decord) are not needed to parse rows, so
`src.model.processor` and `src.utils.vision_utils.vision_utils` are stood in for by modules that hold the
real functions it uses (`process_input_text`, `load_frames`, `sample_frames`, `process_video_frames`,
`qa_template`), taken from the checkout's source text. `datasets.load_dataset(repo, ...)` is redirected to
the fixture's snapshot folder. Everything else is VLM2Vec's code as checked out: the yaml entries, the
parsers, `generate_cand_dataset`, `load_qrels_mapping`.

Compared per dataset: the number of queries; each query's media (frame or image paths after sampling);
that its text and instruction appear in VLM2Vec's query text; each row's candidates (texts and media paths)
in order for local ranking, and the candidate corpus size for global ranking; and the gold candidates.
"""

from __future__ import annotations

import ast
import sys
import tempfile
import types
from collections import defaultdict
from pathlib import Path

import yaml

from mmemb.data import hub, mmeb_v2
from mmemb.testing.mmeb_v2_fixture import build


def functions(path: Path, names: set[str], namespace: dict) -> dict:
    """Exec the named top-level functions and assignments of a source file into namespace."""
    tree = ast.parse(path.read_text())
    keep = [
        n
        for n in tree.body
        if (isinstance(n, ast.FunctionDef) and n.name in names)
        or (isinstance(n, ast.Assign) and any(getattr(t, "id", "") in names for t in n.targets))
    ]
    exec(compile(ast.Module(body=keep, type_ignores=[]), str(path), "exec"), namespace)
    return namespace


def install_stubs(vlm: Path) -> None:
    import os
    import re

    import numpy as np

    proc = types.ModuleType("src.model.processor")
    proc.__dict__.update(
        GME="gme", LamRA="lamra", LamRA_QWEN2_5="lamra_qwen25", E5_V="e5_v", PROMPT_TEMPLATE_DICT={}
    )
    proc.VLM_IMAGE_TOKENS = defaultdict(lambda: "<|image_pad|>")
    proc.VLM_VIDEO_TOKENS = defaultdict(lambda: "<|video_pad|>")
    proc.__dict__["VLM_IMAGE_TOKENS"], proc.__dict__["VLM_VIDEO_TOKENS"] = (
        proc.VLM_IMAGE_TOKENS,
        proc.VLM_VIDEO_TOKENS,
    )
    consts = {  # the backbone names (module-level string constants) some parsers import
        t.id
        for n in ast.parse((vlm / "src/model/processor.py").read_text()).body
        if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)
        for t in n.targets
        if isinstance(t, ast.Name)
    }
    functions(vlm / "src/model/processor.py", {"process_input_text", *consts}, proc.__dict__)
    vis = types.ModuleType("src.utils.vision_utils.vision_utils")
    vis.__dict__.update(os=os, re=re, np=np)
    functions(
        vlm / "src/utils/vision_utils/vision_utils.py",
        {
            "VID_EXTENSIONS",
            "IMAGE_EXTENSIONS",
            "qa_template",
            "load_frames",
            "sample_frames",
            "process_video_frames",
        },
        vis.__dict__,
    )
    vis.save_frames = lambda **kw: None  # frames are all present in the fixture
    basic = types.ModuleType("src.utils.basic_utils")
    basic.print_master = basic.print_rank = lambda *a, **k: None
    for name, mod in {"src.model.processor": proc, "src.utils.vision_utils.vision_utils": vis,
                      "src.utils.basic_utils": basic}.items():  # fmt: skip
        sys.modules[name] = mod
    for name in ("cv2", "imageio", "decord"):
        m = types.ModuleType(name)
        m.VideoReader, m.cpu = object, lambda *a: None
        sys.modules[name] = m
    sys.path.insert(0, str(vlm))


def redirect_hub(cache: Path) -> None:
    import datasets

    real = datasets.load_dataset

    def load(path, *args, **kw):
        snap = hub.find_snapshot(path, cache)
        return real(str(snap.path) if snap else path, *args, cache_dir=tempfile.mkdtemp(), **kw)

    import src.utils.dataset_utils as du

    datasets.load_dataset = du.load_dataset = load
    real_map = datasets.Dataset.map

    def map_in_process(self, *args, **kw):  # the stand-in modules do not pickle into worker processes
        kw.pop("num_proc", None)
        return real_map(self, *args, **kw)

    datasets.Dataset.map = map_in_process
    import uuid

    import datasets.arrow_dataset as ad
    import datasets.fingerprint as fp

    for mod in (
        fp,
        ad,
    ):  # dill cannot hash these tables here (pyarrow's MonthDayNano); nothing is cached anyway
        for fn in ("update_fingerprint", "generate_fingerprint"):
            if hasattr(mod, fn):
                setattr(mod, fn, lambda *a, **k: uuid.uuid4().hex)
    for mod in list(sys.modules.values()):
        if getattr(mod, "__name__", "").startswith("src.data.eval_dataset.") and hasattr(mod, "load_dataset"):
            mod.load_dataset = load


def vlm2vec_rows(vlm: Path, name: str, media: Path, ours: Path | None):
    from src.data.eval_dataset.base_eval_dataset import AutoEvalPairDataset, generate_cand_dataset

    entry = None
    for kind in ("image", "video", "visdoc"):
        conf = yaml.safe_load((vlm / f"experiments/public/eval/{kind}.yaml").read_text())
        entry = conf.get(name) or entry
    kwargs = dict(entry)
    for key in ("image_root", "video_root", "frame_root", "clip_root", "data_path"):
        if kwargs.get(key):
            kwargs[key] = str(media / kwargs[key])  # eval.py joins --data_basedir onto these
    for key in ("image_root", "frame_root"):  # a folder variant VLM2Vec's yaml does not name (design note, A)
        if kwargs.get(key) and not Path(kwargs[key]).exists() and ours is not None:
            kwargs[key] = str(ours)
    if kwargs.get("num_sample_per_subset") == "None":
        kwargs["num_sample_per_subset"] = None
    model_args = types.SimpleNamespace(model_backbone="qwen2_vl")
    data_args = types.SimpleNamespace(image_resolution=None)
    parser = kwargs.pop("dataset_parser")
    ds, corpus = AutoEvalPairDataset.instantiate(parser, model_args=model_args, data_args=data_args, **kwargs)
    return ds, generate_cand_dataset(ds, corpus), kwargs.get("eval_type")


def paths(media_dict) -> list[str]:
    return [str(Path(p)) for p in (media_dict or {}).get("paths") or []]


def ours_media(sample) -> list[str]:
    return [str(p) for p in sample.media()]  # the loader keeps the frames VLM2Vec's parser keeps


def compare(name: str, vlm: Path, where: mmeb_v2.Where) -> list[str]:
    ours_root = where.media_dir(mmeb_v2.SOURCES[name])
    ds, cands, eval_type = vlm2vec_rows(vlm, name, where.data_root, ours_root)
    task = mmeb_v2.load_task(name, where)
    errs = []
    if len(ds) != len(task.queries):
        return [f"{len(ds)} queries in VLM2Vec, {len(task.queries)} in mmemb"]
    cand_by_name = {r["dataset_infos"]["cand_name"]: r for r in cands}
    for i, row in enumerate(ds):
        q = task.items[task.queries[i]]
        theirs_text = row["query_text"][0]
        if ours_media(q) != paths(row["query_image"][0]):
            errs.append(f"row {i}: query media {ours_media(q)} != {paths(row['query_image'][0])}")
        for part in (q.text, q.instruction):
            if (
                part
                and part not in theirs_text.replace("\n", " ").replace("  ", " ")
                and part not in theirs_text
            ):
                errs.append(f"row {i}: {part!r} not in VLM2Vec's query text {theirs_text!r}")
        info = row["dataset_infos"]
        gold_names = info["label_name"] if isinstance(info["label_name"], list) else [info["label_name"]]

        def content(cand_row) -> tuple:
            return cand_row["cand_text"][0], paths(cand_row["cand_image"][0])

        theirs_gold = sorted(
            str(content(cand_by_name[g])[1] or content(cand_by_name[g])[0]) for g in gold_names
        )
        ours_gold = sorted(str(ours_media(task.items[k]) or task.items[k].text) for k in task.relevance[i])
        if theirs_gold != ours_gold:
            errs.append(f"row {i}: gold {ours_gold} != VLM2Vec's {theirs_gold}")
        if task.local is not None:
            theirs = [(t, paths(m)) for t, m in zip(row["cand_text"], row["cand_image"], strict=True)]
            ours = [(task.items[k].text, ours_media(task.items[k])) for k in task.local[i]]
            if len(theirs) != len(ours):
                errs.append(f"row {i}: {len(theirs)} candidates in VLM2Vec, {len(ours)} in mmemb")
                continue
            order = sorted if mmeb_v2.SOURCES[name].parser == "moment_retrieval" else list  # os.listdir order
            if order(m for _, m in theirs) != order(m for _, m in ours):
                errs.append(f"row {i}: candidate media differ")
            for (tt, _), (ot, _) in zip(theirs, ours, strict=True):
                if ot and ot not in tt:
                    errs.append(f"row {i}: candidate text {ot!r} not in VLM2Vec's {tt!r}")
    if task.local is None and len(cands) != len(task.corpus):
        errs.append(f"corpus: {len(cands)} candidates in VLM2Vec, {len(task.corpus)} in mmemb")
    if (eval_type == "global") != (task.local is None):
        errs.append(f"ranking: VLM2Vec {eval_type}, mmemb {'global' if task.local is None else 'local'}")
    return errs


def main() -> int:
    vlm = Path(sys.argv[1])
    install_stubs(vlm)
    out = Path(tempfile.mkdtemp())
    media, cache = build(out)
    where = mmeb_v2.Where(media, cache, out / "pages")
    import importlib

    for f in sorted((vlm / "src/data/eval_dataset").glob("*.py")):
        if f.stem not in ("__init__", "gui_dataset", "videommmu_dataset"):
            importlib.import_module(f"src.data.eval_dataset.{f.stem}")
    redirect_hub(cache)
    present = [s.name for s in mmeb_v2.check(list(mmeb_v2.SOURCES), where) if s.state == "present"]
    bad = 0
    for name in present:
        try:
            errs = compare(name, vlm, where)
        except Exception as e:  # a VLM2Vec parser that fails on the fixture is a finding too
            import traceback

            errs = [f"VLM2Vec raised {type(e).__name__}: {e}", *traceback.format_exc().splitlines()[-12:]]
        bad += bool(errs)
        print(f"{'ok  ' if not errs else 'DIFF'} {name}" + "".join(f"\n     {e}" for e in errs[:14]))
    print(f"{len(present) - bad} of {len(present)} datasets: mmemb builds what VLM2Vec's parsers build")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
