"""`mmemb reproduce --tiny` end to end (tiny random Qwen2-VL, a 5% mmeb-mini build from the Debian data):
every stage runs, the results hold together, a rerun resumes, other settings are refused, and the exported
weights reproduce the recorded numbers. Plus the shipped nano-r1 weights: they load to the recorded model."""

from __future__ import annotations

import json
import shutil

import pytest

from mmemb.cli import main
from mmemb.embedder import PRETRAINED, Embedder
from mmemb.reproduce import ALL_STAGES, VARIANTS, Recipe, Study

from .test_data_mini import needs_data

pytestmark = needs_data


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("reproduce")
    mp = pytest.MonkeyPatch()
    mp.setenv("MMEMB_CACHE", str(root / "cache"))
    out = root / "study"
    assert main(["reproduce", "--tiny", "--out", str(out), "--quiet"]) == 0
    yield {"root": root, "out": out}
    mp.undo()


def test_every_stage_ran_and_the_results_hold_together(study):
    out = study["out"]
    assert all((out / s / "DONE.json").is_file() for s in ALL_STAGES)
    res = json.loads((out / "results.json").read_text())
    assert set(res["models"]) == set(VARIANTS)
    for name, runs in res["models"].items():
        expected = {"disc", "never", "always", "oracle"} | ({"adaptive"} if name == "selected" else set())
        assert set(runs) == expected, name
        assert runs["never"]["invocation"] == 0.0 and runs["always"]["invocation"] == 1.0
        for task, score in runs["oracle"]["tasks"].items():  # per query the better action
            assert score >= max(runs["never"]["tasks"][task], runs["always"]["tasks"][task]) - 1e-9
        assert len(runs["disc"]["tasks"]) == 9 and runs["disc"]["queries"] > 0

    # adaptive is, per query, exactly the fixed mode of the action it took
    def per_query(run):
        f = next((out / "eval" / "selected" / run).glob("per_query.*.jsonl"))
        return {(q["task"], q["row"]): q for q in map(json.loads, f.read_text().splitlines())}

    never, always, adaptive = per_query("never"), per_query("always"), per_query("adaptive")
    assert adaptive.keys() == never.keys() == always.keys()
    for key, q in adaptive.items():
        assert q["score"] == (always if q["reasoned"] else never)[key]["score"], key
    sweep = res["sweep"]
    assert [r["lam"] for r in sweep["curve"]] == [0.0, 100.0] and sweep["curve"][1]["invocation"] == 0.0
    # every stated difference has its paired interval, and the interval's centre is the difference itself
    iv, sel = res["intervals"], res["models"]["selected"]
    d = iv["modes"]["always - never"]
    assert d["diff"] == pytest.approx(sel["always"]["overall"] - sel["never"]["overall"], abs=0.011)
    assert d["ci95"][0] <= d["diff"] <= d["ci95"][1] and d["queries"] == sel["never"]["queries"]
    assert set(iv["always_minus_never_by_task"]) == set(sel["never"]["tasks"])
    assert {"selected - none (always think)", "selected - all (never think)"} <= set(iv["ablations"])
    report = (out / "report.md").read_text()
    assert "Paired differences" in report and "95% CI" in report
    assert "| adaptive (policy) |" in report and "no selection" in report and "counterfactual" in report
    assert (out / "sweep.png").stat().st_size > 0
    # the ablations trained on different data: the four stage-1 models differ, and each started from the
    # shared warm start (which also scored the candidates); every trained model keeps the think format
    assert len({Embedder.from_pretrained(out / f"stage1-{v}" / "final").fingerprint() for v in VARIANTS}) == 4
    base = str(out / "stage1-base" / "final")
    for v in VARIANTS:
        config = (out / f"stage1-{v}" / "config.yaml").read_text()
        assert f"init: {base}" in config, v
        assert Embedder.from_pretrained(out / f"stage1-{v}" / "final").config.generation.guard, v
    scorer = json.loads((out / "select" / "summary.json").read_text())["settings"]["scorer"]
    assert scorer == Embedder.from_pretrained(base).fingerprint()


def test_exported_weights_load_to_the_evaluated_model_and_reproduce_its_numbers(study, monkeypatch):
    out, root = study["out"], study["root"]
    monkeypatch.setenv("MMEMB_CACHE", str(root / "cache"))
    recipe = json.loads((out / "weights" / "RECIPE.json").read_text())
    assert recipe["command"] == "mmemb reproduce --tiny" and recipe["data"]["content_hash"]
    model = Embedder.from_pretrained(out / "weights")
    assert model.fingerprint() == recipe["fingerprint"]
    assert model.policy_fingerprint() == recipe["policy_fingerprint"]
    again = root / "again"
    args = [
        "reproduce",
        "--tiny",
        "--eval-only",
        "--model",
        str(out / "weights"),
        "--out",
        str(again),
        "--quiet",
    ]
    assert main(args) == 0
    now = json.loads((again / "results.json").read_text())["models"]["model"]
    then = json.loads((out / "results.json").read_text())["models"]["selected"]
    for run in ("disc", "never", "always", "adaptive", "oracle"):
        assert now[run]["tasks"] == pytest.approx(then[run]["tasks"]), run
        assert now[run]["invocation"] == pytest.approx(then[run]["invocation"]), run
    assert (
        "(same)" in (again / "report.md").read_text() and "DIFFERENT" not in (again / "report.md").read_text()
    )


def test_a_rerun_resumes_and_a_lost_stage_is_redone_identically(study, monkeypatch, capsys):
    out, root = study["out"], study["root"]
    monkeypatch.setenv("MMEMB_CACHE", str(root / "cache"))
    before = json.loads((out / "results.json").read_text())["models"]
    for stage in ("eval", "report"):  # as if killed during evaluation
        (out / stage / "DONE.json").unlink()
    shutil.rmtree(out / "eval" / "none")
    assert main(["reproduce", "--tiny", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "stage 6/14 stage1-none: done earlier" in err and "stage 11/14 eval: running" in err
    after = json.loads((out / "results.json").read_text())["models"]
    assert after == before  # the embedding cache gives back the same vectors, latencies included


def test_other_settings_in_the_same_folder_are_refused(study, monkeypatch, capsys):
    monkeypatch.setenv("MMEMB_CACHE", str(study["root"] / "cache"))
    assert main(["reproduce", "--tiny", "--out", str(study["out"]), "--limit", "2"]) == 2
    err = capsys.readouterr().err
    assert "eval_limit" in err and "another --out" in err
    assert main(["reproduce", "--model", "nano", "--out", str(study["root"] / "x")]) == 2
    assert main(["reproduce", "--limit", "-1", "--out", str(study["root"] / "y")]) == 2


@pytest.mark.slow
def test_the_shipped_nano_r1_loads_to_the_recorded_model(tmp_path):
    recipe = json.loads((PRETRAINED["nano-r1"] / "RECIPE.json").read_text())
    results = json.loads((PRETRAINED["nano-r1"] / "results.json").read_text())
    model = Embedder.from_pretrained("nano-r1", dtype=results["dtype"])  # as it ran
    assert model.fingerprint() == recipe["fingerprint"]
    assert model.policy_fingerprint() == recipe["policy_fingerprint"]
    assert recipe["command"] == "mmemb reproduce" and model.config.policy.trained
    eval_only = Study(tmp_path, Recipe(model="nano-r1"), eval_only=True, log=False)
    assert eval_only.models() == {"model": PRETRAINED["nano-r1"]}  # the report finds the recorded results
    size = sum(f.stat().st_size for f in PRETRAINED["nano-r1"].iterdir())
    assert size < 5e6  # small trained parts only: never the base weights


def test_the_default_build_is_recorded_by_name_not_by_cache_path(tmp_path):
    study = Study(tmp_path, Recipe(), log=False)
    assert study.stage1_config("selected").data.source == "mmeb-mini"
    assert study.policy_config().data.source == "mmeb-mini"  # what `policy.trained` records in the model


def test_a_recipe_file_replaces_the_fields_it_names_and_refuses_bad_ones(tmp_path, capsys):
    from mmemb.cli import build_parser
    from mmemb.config import resolve_tree
    from mmemb.reproduce import check_recipe

    path = tmp_path / "recipe.json"
    path.write_text(json.dumps({"data_root": "runs/pick-data", "k": 3, "data_scale": 1, "guard": False}))
    recipe = resolve_tree(Recipe, check_recipe, path, build_parser().parse_args(["reproduce"]), {})
    assert (recipe.data_root, recipe.k, recipe.data_scale, recipe.guard) == ("runs/pick-data", 3, 1.0, False)
    assert recipe.stage1 == Recipe().stage1 and recipe.model == "nano"  # the rest: the default recipe
    for bad, says in (
        ({"kk": 3}, "unknown key(s) ['kk']"),
        ({"k": "3"}, "k: expected int, got str"),
        ({"k": True}, "k: expected int, got bool"),
        ({"k": 0}, "k must be >= 1"),
        ({"stage1": "run.max_steps=3"}, "stage1: expected list, got str"),
        ({"stage1": ["run.max_steps"]}, "stage1 must be a list of key=value strings"),
        ({"lams": [0, "a"]}, "lams must be a list of numbers >= 0"),
        ({"teacher": "gpt"}, "teacher 'gpt': use 'hints' or 'model'"),
        ([1, 2], "expected a mapping, got list"),
    ):
        path.write_text(json.dumps(bad))
        assert main(["reproduce", "--recipe", str(path), "--out", str(tmp_path / "s")]) == 2
        assert says in capsys.readouterr().err
        assert not (tmp_path / "s").exists()  # refused before anything is written
    path.write_text("{not json")
    assert main(["reproduce", "--recipe", str(path), "--out", str(tmp_path / "s")]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    # flags over the file, key=value over both
    path.write_text(json.dumps({"eval_limit": 7, "k": 2}))
    args = build_parser().parse_args(["reproduce", "--limit", "5", "k=3"])
    recipe = resolve_tree(Recipe, check_recipe, path, args, {"--limit": "eval_limit"}, args.overrides)
    assert (recipe.eval_limit, recipe.k) == (5, 3)


@pytest.mark.parametrize("variant", ["base", *VARIANTS])
def test_the_stage_configs_are_what_the_key_value_recipe_made(tmp_path, variant):
    """The study sets its stages' settings as typed fields; they equal the `key=value` list it used to pass
    (the reference below), with the recipe's own overrides still last."""
    from mmemb.train.config import load_policy_config, load_train_config

    r = Recipe(pairs_per_task=3, budget=24, stage1=["run.max_steps=7", "data.limit_per_task=5"])
    study = Study(tmp_path, r, log=False)
    out, start = tmp_path, str(tmp_path / "stage1-base" / "final")
    sel = "select-absolute" if variant == "absolute" else "select"
    want = load_train_config(None, [
        f"model.init={r.model if variant == 'base' else start}", "data.source=mmeb-mini", "data.limit_per_task=3",
        f"data.variant={'none' if variant == 'base' else 'selected' if variant == 'absolute' else variant}",
        f"data.selection={out / sel / 'selection.jsonl'}", f"data.candidates={out / 'candidates' / 'candidates.jsonl'}",
        f"run.output={out / ('stage1-' + variant)}", *(r.warm_start if variant == "base" else r.stage1),
    ])  # fmt: skip
    assert study.stage1_config(variant) == want
    want = load_policy_config(None, [
        f"model.init={out / 'stage1-selected' / 'final'}", "data.source=mmeb-mini", "data.limit_per_task=3",
        f"data.selection={out / 'select' / 'selection.jsonl'}", "policy.budgets=[0,24]",
        f"run.output={out / 'policy'}", f"run.batch_size={r.eval_batch}", *r.policy,
    ])  # fmt: skip
    assert study.policy_config() == want


def test_every_stage_has_its_runner(tmp_path):
    study = Study(tmp_path, Recipe(), log=False)
    runners = {s: study.runner(s).__name__ for s in ALL_STAGES}
    assert runners["stage1-none"] == "stage_stage1" and runners["select-absolute"] == "stage_select"
    assert all(name == "stage_" + s.split("-")[0] for s, name in runners.items())
