"""The run lifecycle (issue 16, items 1-3): an existing run is never touched by a job that did not own it, a finished
run has nothing to resume, and a run is resumed only by the config that made it."""
import hashlib, json
from pathlib import Path
import pytest
from halluc.jobs import run_notebook, train_job
from halluc.runs import RunExistsError, mark_status

REPO = Path(__file__).resolve().parents[1]
SFT_YAML = str(REPO / "configs" / "toy_sft_backtrack.yaml")
TINY = ["trainer.max_steps=6", "trainer.save_steps=3", "trainer.logging_steps=1", "trainer.per_device_train_batch_size=4",
        "data.toy_n_train=32", "data.toy_n_test=2", "eval.limit=2", "eval.max_new_tokens=8", "eval.batch_size=2",
        "trainer.gradient_checkpointing=false"]

def snapshot(d: Path) -> dict:
    "relative path -> sha256 of every file under `d` (the folder byte for byte)."
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()}

@pytest.fixture
def finished(tmp_path):
    "A finished 6-step SFT run `r` under tmp_path/runs (checkpoints at 3 and 6) and its train_job overrides."
    ovs = [f"run.root={tmp_path / 'runs'}", "run.name=r", *TINY]
    res = train_job("sft", SFT_YAML, ovs)
    assert res["global_step"] == 6 and json.loads((tmp_path / "runs/r/status.json").read_text())["status"] == "finished"
    return tmp_path / "runs" / "r", ovs

@pytest.mark.slow
def test_a_refused_job_leaves_the_finished_run_byte_identical(finished, tmp_path):
    "`halluc run nbs/train_sft.ipynb … run.name=r` on a finished run: the job refuses, and the runner leaves r as it was."
    run, ovs = finished
    before = snapshot(run)
    with pytest.raises(RuntimeError, match="belongs to another job"):
        run_notebook(str(REPO / "nbs/train_sft.ipynb"), SFT_YAML, TINY + ["run.name=r"], root=str(tmp_path / "runs"), log_output=False)
    assert snapshot(run) == before
    kept = list((tmp_path / "runs").glob(".r.failed-*.train_sft.ipynb"))
    assert len(kept) == 1 and "RunExistsError" in kept[0].read_text()

@pytest.mark.slow
def test_resuming_a_finished_run_is_a_no_op(finished):
    run, ovs = finished
    before = snapshot(run)
    res = train_job("sft", SFT_YAML, ovs, resume=True)
    assert res["already_finished"] and res["global_step"] == 6
    assert snapshot(run) == before, "nothing of a finished run is rewritten"

@pytest.mark.slow
def test_resuming_after_the_last_checkpoint_trains_no_further(finished):
    "Killed after its last checkpoint (checkpoint-6 of 6, no model/ yet): the resume saves and evaluates step 6, no step 7."
    run, ovs = finished
    import shutil
    shutil.rmtree(run / "model"); (run / "result.json").unlink()
    mark_status(run, "running")                     # as a SIGKILL leaves it
    steps_before = [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines()]
    res = train_job("sft", SFT_YAML, ovs, resume=True)
    assert res["global_step"] == 6 and res["resumed_from"].endswith("checkpoint-6") and (run / "model" / "halluc.json").exists()
    assert not (run / "checkpoints" / "checkpoint-7").exists()
    steps = [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == max(steps_before) == 6
    assert json.loads((run / "status.json").read_text())["status"] == "finished"

@pytest.mark.slow
def test_a_run_is_resumed_only_by_the_config_that_made_it(finished):
    "A DPO config cannot resume an SFT run (finished or interrupted with a checkpoint): refused, naming the key; nothing written."
    run, ovs = finished
    before = snapshot(run)
    dpo = ovs + ["model.name_or_path=toy:llama-tiny", "data.converter=numeric"]
    with pytest.raises(RunExistsError, match="executor: 'sft' in the run, 'dpo' now"):
        train_job("dpo", str(REPO / "configs" / "toy_dpo.yaml"), dpo, resume=True)
    assert snapshot(run) == before
    mark_status(run, "interrupted")                 # stopped after checkpoint-6: there is something to continue
    before = snapshot(run)
    with pytest.raises(RunExistsError, match="data.converter"):
        train_job("sft", SFT_YAML, ovs + ["data.converter=clean"], resume=True)
    assert snapshot(run) == before
    # what is not the run's identity (a longer schedule) may change on resume
    res = train_job("sft", SFT_YAML, [o for o in ovs if not o.startswith("trainer.max_steps")] + ["trainer.max_steps=7"], resume=True)
    assert res["global_step"] == 7

# --- non-finite training (item 6) -------------------------------------------------------------------------------

from hypothesis import given, settings, strategies as st
from halluc.config import ConfigError, load_config

@pytest.mark.parametrize("ov, key", [("trainer.learning_rate=.inf", "trainer.learning_rate"), ("trainer.learning_rate=-1e-4", "trainer.learning_rate"),
                                     ("trainer.max_steps=-5", "trainer.max_steps"), ("trainer.max_steps=0", "trainer.max_steps"),
                                     ("run.seed=4294967296", "run.seed"), ("trainer.seed=-1", "trainer.seed"),
                                     ("backtrack.noise_std=1e300", "backtrack.noise_std"), ("data.toy_n_train=1000000000", "data.toy_n_train"),
                                     ("trainer.num_train_epochs=.nan", "trainer.num_train_epochs")])
def test_out_of_range_numbers_are_config_errors(ov, key):
    with pytest.raises(ConfigError) as e: load_config(None, [ov])
    assert e.value.key == key, e.value

@settings(max_examples=200, deadline=None)
@given(st.floats(allow_nan=True, allow_infinity=True))
def test_any_float_learning_rate_is_valid_or_refused(lr):
    "A float learning rate either loads as that finite, non-negative value or is a ConfigError naming trainer.learning_rate."
    try: cfg = load_config(None, [f"trainer.learning_rate={lr!r}".replace("nan", ".nan").replace("inf", ".inf")])
    except ConfigError as e:
        assert e.key == "trainer.learning_rate" and not (lr >= 0 and lr != float("inf")), (lr, e)
        return
    assert cfg.trainer["learning_rate"] == lr and 0 <= lr < float("inf")

@pytest.mark.slow
def test_training_that_goes_non_finite_fails_and_saves_no_model(tmp_path):
    "A learning rate of 1e30 (finite, so the config loads) drives the loss to NaN: the run stops with NonFiniteError, status failed."
    from halluc.executors import NonFiniteError
    with pytest.raises(NonFiniteError, match="learning rate 1e\\+30"):
        train_job("sft", SFT_YAML, [f"run.root={tmp_path}", "run.name=nan", "trainer.learning_rate=1e30", *TINY])
    st_ = json.loads((tmp_path / "nan/status.json").read_text())
    assert st_["status"] == "failed" and st_["error"]["type"] == "NonFiniteError" and not (tmp_path / "nan/model").exists()

# --- evaluation outputs (item 4) --------------------------------------------------------------------------------

@pytest.mark.slow
def test_two_models_with_one_parent_keep_their_own_evaluations(tmp_path):
    "`halluc eval models/a` then `models/b`: each result lands in a folder named for its model; b never overwrites a."
    from halluc.jobs import eval_job
    from halluc.patcher import add_backtrack_token, save_backtrack_model
    from halluc.toy import make_model, make_tokenizer
    for name, seed in (("a", 1), ("b", 2)):
        tok = make_tokenizer("llama"); m = make_model(tok, "tiny", seed=seed); add_backtrack_token(tok, m, seed=seed)
        save_backtrack_model(m, tok, tmp_path / "models" / name, info=dict(executor="sft", run=name))
    kw = dict(tasks=["toy_arithmetic_backtrack"], limit=2, max_new_tokens=8, device="cpu")
    eval_job(str(tmp_path / "models/a"), **kw); a = snapshot(tmp_path / "models/a-eval")
    eval_job(str(tmp_path / "models/b"), **kw)
    assert snapshot(tmp_path / "models/a-eval") == a and (tmp_path / "models/b-eval/eval.json").exists()
    assert json.loads((tmp_path / "models/b-eval/eval.json").read_text())["model"].endswith("models/b")
    with pytest.raises(FileExistsError, match="holds the evaluation of"):
        eval_job(str(tmp_path / "models/b"), output_dir=str(tmp_path / "models/a-eval"), **kw)
    assert snapshot(tmp_path / "models/a-eval") == a
    eval_job(str(tmp_path / "models/a"), output_dir=str(tmp_path / "models/a-eval"), **kw)   # its own folder: re-evaluated

# --- reading what is on disk (item 7) ---------------------------------------------------------------------------

import shutil as _shutil
from hypothesis import HealthCheck

JSON = st.recursive(st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.sampled_from(["global_step", "quick_eval", "config", "git",
                    "tasks", "settings", "status", "step", "loss", "exact_match", "metrics", "model", "x"]), c, max_size=4), max_leaves=10)

@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    train_job("sft", SFT_YAML, [f"run.root={root / 'runs'}", "run.name=good", *TINY])
    return root / "runs" / "good"

@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(file=st.sampled_from(["result.json", "status.json", "run.json", "eval.json", "metrics.jsonl"]), value=JSON)
def test_runs_of_any_json_shape_are_listed_or_skipped_by_name(good_run, file, value):
    "One file of a run holds any valid JSON: `halluc runs` still lists the good run, and lists or skips this one naming the file."
    import json as _json, warnings
    from halluc.report import compare_runs, list_runs
    root = good_run.parent.parent / "fuzz"; _shutil.rmtree(root, ignore_errors=True)
    _shutil.copytree(good_run, root / "good"); _shutil.copytree(good_run, root / "odd")
    text = _json.dumps(value, allow_nan=True)
    (root / "odd" / file).write_text(text + "\n" if file == "metrics.jsonl" else text)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = compare_runs(root)
    listed = set(df["run"]); skipped = {s["run"]: s for s in df.attrs["skipped"]}
    assert "good" in listed and ("odd" in listed) != ("odd" in skipped), (listed, skipped)
    if "odd" in skipped: assert skipped["odd"]["file"] and skipped["odd"]["file"].endswith(file), skipped["odd"]
    assert "good" in set(list_runs(root)["run"])

def test_a_run_named_like_a_halluc_folder_is_listed(tmp_path):
    from halluc.report import find_runs
    for n in ("model", "checkpoints", "plots", "x"): (tmp_path / n).mkdir(); (tmp_path / n / "status.json").write_text('{"status": "finished"}')
    assert sorted(p.name for p in find_runs(tmp_path)) == ["checkpoints", "model", "plots", "x"]

# --- item 16: one mode for everything a run writes --------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_every_file_of_a_run_has_one_mode_under_the_umask(tmp_path, umask):
    import os, stat
    old = os.umask(umask)
    try: train_job("sft", SFT_YAML, [f"run.root={tmp_path}", "run.name=m", *TINY])
    finally: os.umask(old)
    modes = {}
    for p in [tmp_path / "m", *sorted((tmp_path / "m").rglob("*"))]:
        modes.setdefault("dir" if p.is_dir() else "file", {}).setdefault(oct(stat.S_IMODE(p.stat().st_mode)), []).append(str(p.relative_to(tmp_path)))
    assert set(modes["file"]) == {oct(0o644 & ~umask)}, {k: v[:3] for k, v in modes["file"].items()}
    assert set(modes["dir"]) == {oct(0o755 & ~umask)}, {k: v[:3] for k, v in modes["dir"].items()}
