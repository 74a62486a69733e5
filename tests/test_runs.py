"Run folders, atomic files, run.json/status.json, the metrics log across a resume, compare_runs, plots, BT rendering."
import json, logging, os, shutil, sys, warnings
from pathlib import Path
import pytest
from halluc.config import load_config, save_config
from halluc.runs import RunExistsError, create_run_dir, prepare_run_dir, write_run_info, mark_status, last_checkpoint, MetricsFile, PACKAGES
from halluc.io import write_json_atomic, read_json, append_jsonl, read_jsonl, CorruptFileError
from halluc.report import load_run, compare_runs, list_runs, runs_main, plot_training, plot_accuracy, plot_bt_positions, bt_positions, render_backtracks, samples_table, plot_samples
import halluc.runs as runs


# ---------- run folders ----------

def test_refuse_resume_overwrite_keeps_old(tmp_path, caplog):
    d = create_run_dir(tmp_path, "r1")
    (d / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(RunExistsError, match="run.resume=true"):
        create_run_dir(tmp_path, "r1")
    assert create_run_dir(tmp_path, "r1", resume=True) == d and (d / "metrics.jsonl").exists()
    with caplog.at_level(logging.WARNING, logger="halluc.runs"):
        assert create_run_dir(tmp_path, "r1", overwrite=True) == d
    old = [p for p in tmp_path.iterdir() if p.name.startswith("r1.old-")]
    assert len(old) == 1 and (old[0] / "metrics.jsonl").read_text() == '{"step": 1}\n'
    assert not any(d.iterdir()) and "moved it to" in caplog.text and "nothing deleted" in caplog.text
    (d / "x").write_text("2"); create_run_dir(tmp_path, "r1", overwrite=True)   # a second overwrite in the same second
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("r1.old-")]) == 2
    with pytest.raises(ValueError, match="pick one"): create_run_dir(tmp_path, "r1", resume=True, overwrite=True)
    create_run_dir(tmp_path, "empty"); create_run_dir(tmp_path, "empty")       # an empty folder is not a run to protect


@pytest.mark.parametrize("name", ["a/b", "a\\b", "..", "../x", "x..y", "/abs", "", ".hidden"])
def test_bad_run_names(tmp_path, name):
    with pytest.raises(ValueError):
        create_run_dir(tmp_path, name)
    assert list(tmp_path.iterdir()) == []


def test_prepare_run_dir(tmp_path, caplog):
    cfg = load_config(None, [f"run.root={tmp_path}", "run.name=a", "run.seed=3"])
    d = prepare_run_dir(cfg, "default")
    assert {p.name for p in d.iterdir()} == {"config.yaml", "run.json", "status.json"}
    assert load_config(d / "config.yaml").run.seed == 3
    assert read_json(d / "status.json")["status"] == "running" and read_json(d / "run.json")["config"]["seed"] == 3
    with pytest.raises(RunExistsError): prepare_run_dir(cfg, "default")
    cfg2 = load_config(None, [f"run.root={tmp_path}", "run.name=a", "run.seed=3", "run.resume=true", "data.max_length=256"])
    with caplog.at_level(logging.WARNING, logger="halluc.runs"):
        assert prepare_run_dir(cfg2, "default") == d
    assert "data.max_length" in caplog.text
    info = read_json(d / "run.json")
    assert len(info["history"]) == 1 and read_json(d / "status.json")["attempts"] == 2
    assert prepare_run_dir(load_config(None, [f"run.root={tmp_path}"]), "sft-x").name == "sft-x"


def test_run_info(tmp_path, monkeypatch):
    info = write_run_info(tmp_path, extra={"arm": "a"})
    on_disk = read_json(tmp_path / "run.json")
    assert on_disk["arm"] == "a" and set(on_disk["packages"]) == set(PACKAGES) and on_disk["packages"]["torch"]
    for k in ("git", "hardware", "python", "command", "command_line", "start_time"): assert k in on_disk
    assert on_disk["hardware"]["cpu_count"] >= 1 and on_disk["hardware"]["ram_gb"] > 0
    assert on_disk["python"]["version"].startswith(f"{sys.version_info.major}.{sys.version_info.minor}")
    if shutil.which("git") and info["git"]["sha"]: assert len(info["git"]["sha"]) == 40 and isinstance(info["git"]["dirty"], bool)
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))      # no git on the PATH: recorded as null
    assert runs.git_info() == dict(sha=None, dirty=None, branch=None)
    assert runs.git_info(tmp_path) == dict(sha=None, dirty=None, branch=None)


def test_status_and_peak_rss(tmp_path):
    mark_status(tmp_path, "running")
    block = bytearray(64 * 2**20); block[::4096] = b"x" * len(block[::4096])
    mark_status(tmp_path, "finished")
    st = read_json(tmp_path / "status.json")
    assert st["status"] == "finished" and st["peak_rss_mb"] >= 64 and st["wall_seconds"] >= 0 and "ended" in st
    mark_status(tmp_path, "running")
    try: raise KeyError("boom")
    except KeyError as e: mark_status(tmp_path, "failed", error=e)
    st = read_json(tmp_path / "status.json")
    assert st["status"] == "failed" and st["error"]["type"] == "KeyError" and "boom" in st["error"]["traceback"]
    assert st["attempts"] == 2 and st["peak_rss_mb"] > 0
    mark_status(tmp_path, "failed", error="out of disk")
    assert read_json(tmp_path / "status.json")["error"]["message"] == "out of disk"
    with pytest.raises(ValueError, match="status must be"): mark_status(tmp_path, "done")


# ---------- atomic files ----------

def test_atomic_json_write(tmp_path, monkeypatch):
    p = tmp_path / "result.json"
    write_json_atomic(p, {"v": 1})
    def crash(*a, **k): raise OSError("disk full")
    monkeypatch.setattr(os, "replace", crash)                  # dies between writing the temp file and renaming it
    with pytest.raises(OSError): write_json_atomic(p, {"v": 2})
    monkeypatch.undo()
    assert read_json(p) == {"v": 1} and [q.name for q in tmp_path.iterdir()] == ["result.json"]
    assert oct(p.stat().st_mode & 0o777) == oct(0o644)


def test_append_jsonl_after_torn_line(tmp_path):
    p = tmp_path / "metrics.jsonl"
    p.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "lo')
    append_jsonl(p, {"step": 3, "loss": float("nan")})
    recs, bad = read_jsonl(p)
    assert [r["step"] for r in recs] == [1, 3] and bad == [(2, '{"step": 2, "lo')] and p.read_text().endswith("}\n")


# ---------- metrics across a resume ----------

def test_metrics_rewind_with_fake_states(tmp_path):
    from transformers import TrainerState, TrainerControl
    ML = runs.MetricsLogger
    def train(start, stop, zero=True):
        cb, st = ML(tmp_path), TrainerState(global_step=start, is_world_process_zero=zero)
        cb.on_train_begin(None, st, TrainerControl())
        for s in range(start + 1, stop + 1):
            st.global_step = s; cb.on_log(None, st, TrainerControl(), logs={"loss": 1.0 / s})
        return cb
    train(0, 10)
    train(0, 10, zero=False)                                   # another rank writes nothing
    assert [r["step"] for r in MetricsFile(tmp_path).read()] == list(range(1, 11))
    with open(tmp_path / "metrics.jsonl", "a") as f: f.write('{"step": 11, "lo')   # killed mid-line
    cb = train(6, 12)                                          # resumed from checkpoint-6
    assert cb.rewound == 5
    recs = MetricsFile(tmp_path).read()
    assert [r["step"] for r in recs] == list(range(1, 13)) and recs[7]["loss"] == 1 / 8


@pytest.mark.slow
def test_metrics_resume_with_a_real_trainer(tmp_path):
    "Train 8 steps saving at 4 and 8, lose checkpoint-8 (the crash), resume: every step logged exactly once."
    import torch
    from transformers import Trainer, TrainingArguments
    class Tiny(torch.nn.Module):
        def __init__(self): super().__init__(); self.lin = torch.nn.Linear(2, 1)
        def forward(self, x, labels): return {"loss": ((self.lin(x).squeeze(-1) - labels) ** 2).mean()}
    g = torch.Generator().manual_seed(0)
    ds = [{"x": torch.randn(2, generator=g), "labels": torch.tensor(1.0)} for _ in range(64)]
    run = create_run_dir(tmp_path, "tiny")
    def trainer():
        args = TrainingArguments(output_dir=str(run / "checkpoints"), max_steps=8, logging_steps=1, save_steps=4,
                                 per_device_train_batch_size=4, report_to="none", use_cpu=True, disable_tqdm=True,
                                 save_only_model=False, dataloader_num_workers=0, seed=0)
        torch.manual_seed(0)
        return Trainer(model=Tiny(), args=args, train_dataset=ds, callbacks=[runs.MetricsLogger(run)])
    trainer().train()
    first = {r["step"]: r["loss"] for r in MetricsFile(run).read() if "loss" in r}
    shutil.rmtree(run / "checkpoints" / "checkpoint-8")
    ck = last_checkpoint(run)
    assert ck.endswith("checkpoint-4")
    trainer().train(resume_from_checkpoint=ck)
    recs = MetricsFile(run).read()
    steps = [r["step"] for r in recs if "loss" in r]
    assert steps == list(range(1, 9))
    assert sum("train_runtime" in r for r in recs) == 1            # the summary line of the lost run was dropped
    assert all(abs(r["loss"] - first[r["step"]]) < 1e-4 for r in recs if "loss" in r)   # the resume repeats the same steps
    assert all(r["time"] > 0 for r in recs)


def test_last_checkpoint_skips_incomplete(tmp_path):
    assert last_checkpoint(tmp_path) is None
    for n in (2, 10):
        (tmp_path / "checkpoints" / f"checkpoint-{n}").mkdir(parents=True)
        (tmp_path / "checkpoints" / f"checkpoint-{n}" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoints" / "checkpoint-12").mkdir()
    (tmp_path / "checkpoints" / "checkpoint-9").mkdir()
    assert last_checkpoint(tmp_path).endswith("checkpoint-10")


# ---------- comparing runs ----------

def _fake_run(root, name, seed, em, converter="numeric", eval_json=None):
    d = create_run_dir(root, name)
    cfg = load_config(None, [f"run.name={name}", f"run.seed={seed}", f"data.converter={converter}"])
    save_config(cfg, d / "config.yaml"); write_run_info(d, cfg); mark_status(d, "running")
    for s in range(1, 6): append_jsonl(d / "metrics.jsonl", {"step": s, "loss": 1.0 / s, "learning_rate": 1e-4})
    write_json_atomic(d / "result.json", dict(kind="sft", train_loss=0.4, global_step=5, train_seconds=1.5,
                      quick_eval=dict(n=20, exact_match=em, counterfactual_exact_match=em - 0.05, bt_rate=1.5, share_with_bt=0.25)))
    if eval_json: write_json_atomic(d / "eval.json", eval_json)
    mark_status(d, "finished")
    return d


@pytest.fixture
def three_runs(tmp_path):
    root = tmp_path / "runs"
    ev = dict(tasks={"toy_arithmetic_backtrack": dict(n=20, metrics=dict(exact_match_flexible=0.55, recovery_rate=0.1, harm_rate=0.02, bt_rate=1.2)),
                     "gsm8k_backtrack": dict(n=20, metrics=dict(exact_match_flexible=0.05))},
              settings=dict(tasks=["toy_arithmetic_backtrack", "gsm8k_backtrack"]))
    _fake_run(root, "clean_sft-seed0", 0, 0.40, converter="clean")
    _fake_run(root, "bt_sft-seed0", 0, 0.60, eval_json=ev)
    _fake_run(root, "bt_sft-seed1", 1, 0.70)
    return root


def test_compare_runs_table(three_runs):
    df = compare_runs(three_runs)
    assert list(df.run) == ["bt_sft-seed0", "bt_sft-seed1", "clean_sft-seed0"]
    assert list(df.arm) == ["bt_sft", "bt_sft", "clean_sft"] and list(df.seed) == [0, 1, 0]
    assert list(df.converter) == ["numeric", "numeric", "clean"] and set(df.executor) == {"sft"}
    assert (df.status == "finished").all() and (df.steps == 5).all() and df.final_loss.tolist() == [0.2] * 3
    assert df.exact_match.tolist() == [0.6, 0.7, 0.4] and df.counterfactual_exact_match.round(2).tolist() == [0.55, 0.65, 0.35]
    assert df.recovery_rate.iloc[0] == 0.1 and df.harm_rate.iloc[0] == 0.02 and df["gsm8k_backtrack/exact_match_flexible"].iloc[0] == 0.05
    assert df.eval_task.iloc[0] == "toy_arithmetic_backtrack" and df.peak_rss_mb.notna().all()
    assert df.attrs["skipped"] == []
    assert list(compare_runs(str(three_runs / "bt_*")).run) == ["bt_sft-seed0", "bt_sft-seed1"]
    assert list(compare_runs([three_runs / "clean_sft-seed0"]).run) == ["clean_sft-seed0"]
    r = load_run(three_runs / "bt_sft-seed0")
    assert r["result"]["global_step"] == 5 and len(r["metrics"]) == 5 and r["config"]["run"]["seed"] == 0


def test_compare_runs_skips_half_written_file(three_runs):
    bad = _fake_run(three_runs, "bt_sft-seed2", 2, 0.9)
    (bad / "result.json").write_text('{"kind": "sft", "quick_eval": {"exact_ma')    # a crash mid-write
    torn = _fake_run(three_runs, "bt_sft-seed3", 3, 0.8)
    with open(torn / "metrics.jsonl", "a") as f: f.write('{"step": 6, "lo')
    with pytest.warns(UserWarning, match=r"bt_sft-seed2 \(.*result\.json"):
        df = compare_runs(three_runs)
    assert "bt_sft-seed2" not in set(df.run) and "bt_sft-seed3" in set(df.run) and len(df) == 4
    (s,) = df.attrs["skipped"]
    assert s["run"] == "bt_sft-seed2" and s["file"].endswith("result.json") and "not valid JSON" in s["error"]
    assert df.attrs["warnings"][0]["run"] == "bt_sft-seed3"
    (three_runs / "clean_sft-seed0" / "status.json").write_text("")                  # empty: also unreadable
    with pytest.warns(UserWarning):
        assert len(compare_runs(three_runs)) == 3
    with pytest.warns(UserWarning, match="result.json"):
        r = load_run(bad)
    assert r["result"] is None and r["problems"]


def test_status_interrupted_and_list_runs(three_runs, capsys):
    d = three_runs / "bt_sft-seed1"
    st = read_json(d / "status.json"); st.update(status="running", pid=2**22 + 12345)   # no such process
    write_json_atomic(d / "status.json", st)
    create_run_dir(three_runs, "clean_sft-seed0", overwrite=True)                        # leaves clean_sft-seed0.old-*
    df = list_runs(three_runs)
    assert list(df.run) == ["bt_sft-seed0", "bt_sft-seed1"] and df.status.tolist() == ["finished", "interrupted"]
    assert list(df.columns[:3]) == ["run", "status", "executor"]
    assert len(list_runs(three_runs, include_old=True)) == 3
    assert runs_main([str(three_runs)]) == 0
    out = capsys.readouterr().out
    assert "bt_sft-seed1" in out and "interrupted" in out and ".old-" not in out
    runs_main([str(three_runs / "nothing-here")])
    assert "no runs" in capsys.readouterr().out


# ---------- plots ----------

def test_plot_accuracy_error_bars(three_runs):
    from matplotlib.container import ErrorbarContainer
    df = compare_runs(three_runs)
    fig = plot_accuracy(df, save_to=three_runs)
    png = three_runs / "accuracy_exact_match.png"
    assert fig.saved_to == png and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    (eb,) = [c for c in fig.axes[0].containers if isinstance(c, ErrorbarContainer)]
    seg = eb.lines[2][0].get_segments()
    from halluc.measure import seed_summary
    lo, hi = seed_summary(list(df[df.arm == "bt_sft"].exact_match))["ci95"]
    assert abs((seg[0][1][1] - seg[0][0][1]) - (hi - lo)) < 1e-9                                       # the 95% CI over seeds
    assert seg[1][1][1] == seg[1][0][1]                                                               # one seed: no spread
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["bt_sft\n(n=2)", "clean_sft\n(n=1)"]
    fig2 = plot_accuracy(df, metric=["exact_match", "counterfactual_exact_match"], save_to=three_runs / "cmp.png")
    assert fig2.saved_to.exists() and len([c for c in fig2.axes[0].containers if isinstance(c, ErrorbarContainer)]) == 2
    with pytest.raises(ValueError, match="numeric columns"): plot_accuracy(df, metric="nope")


def test_plot_training(tmp_path):
    for s in range(1, 31):
        append_jsonl(tmp_path / "metrics.jsonl", {"step": s, "epoch": s / 30, "loss": 1 / s, "grad_norm": 1.0, "learning_rate": 1e-5,
            "reward": 0.5, "reward_std": 0.1, "rewards/outcome/mean": s / 30, "rewards/outcome/std": 0.1, "rewards/process/mean": 0.3,
            "curriculum/outcome": s / 60, "curriculum/process": 0.5 - s / 60, "backtrack/bt_rate": 0.01 * s,
            "completions/mean_length": 40.0, "completions/max_length": 60.0, "entropy": 0.9})
    append_jsonl(tmp_path / "metrics.jsonl", {"step": 30, "train_runtime": 12.0, "train_loss": 0.3, "train_samples_per_second": 9.0})
    fig = plot_training(tmp_path)
    png = tmp_path / "plots" / "training.png"
    assert png.exists() and png.stat().st_size > 20_000
    titles = [a.get_title() for a in fig.axes if a.get_visible()]
    assert titles == ["loss", "learning rate", "grad norm", "reward", "reward: outcome", "reward: process",
                      "curriculum weights", "BT rate", "completions", "entropy"]
    cur = fig.axes[titles.index("curriculum weights")]
    assert sorted(l.get_label() for l in cur.get_lines()) == ["outcome", "process"]
    with pytest.raises(ValueError, match="no metrics"): plot_training(tmp_path / "nothing")


# ---------- backtracks rendered ----------

@pytest.fixture(scope="module")
def tok_bt():
    from halluc.toy import make_tokenizer
    tok = make_tokenizer("llama")
    return tok, tok.convert_tokens_to_ids("<|reserved_special_token_0|>")


def test_render_backtracks_exact(tok_bt):
    tok, bt = tok_bt
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]
    assert render_backtracks(enc("x = 12") + [bt, bt] + enc("17"), tok, bt) == "x = [~~12~~⌫⌫]17"
    # nested: '8' deleted, then '9' and the space before '8': one edit region; a BT with nothing to delete is (⌫)
    assert render_backtracks(enc("7 + 8") + [bt] + enc("9") + [bt, bt] + enc("6"), tok, bt) == "7 +[~~ 8~~⌫~~9~~⌫⌫]6"
    assert render_backtracks([bt] + enc("5"), tok, bt, style="plain") == "[(⌫)]5"
    assert render_backtracks(enc("no edits"), tok, bt) == "no edits"
    assert render_backtracks([], tok, bt) == ""


def test_bt_positions_and_samples(tok_bt, tmp_path):
    tok, bt = tok_bt
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]
    comps = [enc("1 2") + [bt] + enc("3"), enc("4 5 6")]
    assert bt_positions(comps, bt) == [(len(enc("1 2")) + 0.5) / len(comps[0])]
    fig = plot_bt_positions(comps, bt, save_to=tmp_path / "bt.png")
    assert fig.saved_to.exists() and fig.axes[0].get_title() == "1 BTs in 1 of 2 completions"
    samples = [dict(id="a", ids=enc("x = 12") + [bt, bt] + enc("17"), gold="17"),
               dict(id="b", raw=tok.decode(enc("y = 3") + [bt] + enc("4"), skip_special_tokens=False), gold="5")]
    table = samples_table(samples, tok, bt)
    lines = table.split("\n")
    assert lines[0].startswith("sample │ completion") and "x = [~~12~~⌫⌫]17" in lines[2] and "x = 17" in lines[2]
    assert lines[2].rstrip().endswith("17 ✓") and "y = [~~3~~⌫]4" in table and "5 ✗" in table
    fig = plot_samples(samples, tok, bt, save_to=tmp_path)
    assert fig.saved_to == tmp_path / "samples.png" and fig.saved_to.stat().st_size > 3000
