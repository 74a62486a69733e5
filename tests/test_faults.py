"""Fault injection: SIGKILL / SIGTERM mid-run and resume, writes cut short, a full disk, hostile records, reproducibility.

Each test injects one kind of fault and checks what must survive it. The training runs are the toy SFT config
(toy:llama-tiny, 24 records, batch 4, 8 steps: it crosses an epoch boundary at step 6), killed in child processes
that run the `halluc` command line. A child stops at an exact point (a step boundary, or inside a checkpoint save)
and writes a marker file; the test then kills it, so every kill lands where the test says, not where a timer did.
"""
import errno, json, os, random, shutil, signal, subprocess, sys, time
from pathlib import Path
import pytest, torch
from hypothesis import given, settings, HealthCheck, strategies as st

from halluc.config import load_config, save_config
from halluc.core import apply_backtracking
from halluc.io import read_json, write_json_atomic
from halluc.runs import MetricsFile, last_checkpoint
from halluc.report import compare_runs

REPO = Path(__file__).resolve().parents[1]
HALLUC = Path(sys.executable).parent / "halluc"            # the console script
if not HALLUC.exists(): HALLUC = Path(shutil.which("halluc") or HALLUC)
SFT_YAML = REPO / "configs" / "toy_sft_backtrack.yaml"
SFT = ["trainer.max_steps=8", "trainer.save_steps=3", "trainer.save_total_limit=2", "trainer.logging_steps=1",
       "trainer.per_device_train_batch_size=4", "data.toy_n_train=24", "data.toy_n_test=4", "eval.limit=4",
       "eval.max_new_tokens=16", "eval.batch_size=4", "trainer.activation_checkpointing=false"]
_CHILDREN: list[subprocess.Popen] = []

@pytest.fixture(autouse=True)
def _no_orphans():
    "No child outlives its test. (One torch thread comes from conftest; the children get OMP_NUM_THREADS=1, so in-process\n    and child runs compute alike.)"
    yield
    while _CHILDREN:
        p = _CHILDREN.pop()
        if p.poll() is None: p.kill(); p.wait()

def report(capsys, line: str):
    "Print a result line past pytest's capture (fault counts, fuzz example counts, timings)."
    with capsys.disabled(): print(f"\n[faults] {line}", flush=True)

# --- child processes: the `halluc` command with a fault hook ---------------------------------------------------

# Runs `halluc.cli.main` (what the console script runs) after installing one fault from $HALLUC_FAULT:
#   stall_after:N  at the start of step N+1 (step N trained, logged and saved if due): write the marker, then wait
#                  for SIGTERM (GracefulStop sees it) or to be killed
#   stall_save:N   inside the save of checkpoint-N, after the weights and before optimizer/RNG/trainer_state: marker, wait
CHILD = r'''
import os, signal, sys, time
fault, mark = os.environ.get("HALLUC_FAULT", ""), os.environ.get("HALLUC_FAULT_MARK", "")
def hit(): open(mark + ".tmp", "w").write(str(os.getpid())); os.replace(mark + ".tmp", mark)
if fault:
    kind, n = fault.split(":"); n = int(n)
    import transformers
    import halluc.executors as hx
    class Fault(transformers.TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if kind == "stall_after" and state.global_step == n:
                stop = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)   # the run's GracefulStop
                hit(); t = time.time()
                while time.time() - t < 120 and (stop is None or stop.signal is None): time.sleep(0.01)
    if kind == "stall_save":
        orig = transformers.Trainer._save_optimizer_and_scheduler
        def stalled(self, output_dir):
            if os.path.basename(output_dir) == f"checkpoint-{n}": hit(); time.sleep(120)
            return orig(self, output_dir)
        transformers.Trainer._save_optimizer_and_scheduler = stalled
    init = hx.BaseExecutor.__init__
    hx.BaseExecutor.__init__ = lambda self, cfg, callbacks=None: init(self, cfg, [*(callbacks or []), Fault()])
from halluc.cli import main
sys.exit(main(sys.argv[1:]))
'''

def child_env():
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")

def launch(root: Path, name: str, *extra, fault: str | None = None, log: Path):
    "Start `halluc train sft` on the toy config in a child; with a fault, through the hook above."
    mark = root / f"{name}.{(fault or 'none').replace(':', '-')}.mark"
    cmd = ([sys.executable, "-c", CHILD] if fault else [str(HALLUC)]) + ["train", "sft", str(SFT_YAML), f"run.root={root}",
                                                                          f"run.name={name}", *SFT, *extra]
    env = child_env()
    if fault: env.update(HALLUC_FAULT=fault, HALLUC_FAULT_MARK=str(mark))
    f = open(log, "ab")
    p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
    p.mark, p.log = mark, log
    _CHILDREN.append(p)
    return p

def tail(p, n=4000): return Path(p.log).read_text(errors="replace")[-n:]

def wait_mark(p, timeout=120):
    "Wait until the child reached its fault point; fail with its log if it exited first."
    t = time.time()
    while not p.mark.exists():
        if p.poll() is not None: pytest.fail(f"child exited ({p.returncode}) before its fault point:\n{tail(p)}")
        if time.time() - t > timeout: p.kill(); pytest.fail(f"child never reached its fault point:\n{tail(p)}")
        time.sleep(0.02)

def finish(p, timeout=180):
    try: return p.wait(timeout)
    except subprocess.TimeoutExpired: p.kill(); p.wait(); pytest.fail(f"child hung:\n{tail(p)}")

def kill9(p):
    p.send_signal(signal.SIGKILL); assert p.wait(30) == -signal.SIGKILL

def loss_steps(run_dir):
    return [(r["step"], r["loss"]) for r in MetricsFile(run_dir).read() if "loss" in r]

def ckpts(run_dir): return sorted(p.name for p in (Path(run_dir) / "checkpoints").iterdir() if p.name.startswith("checkpoint-"))

def weights(folder):
    from safetensors.torch import load_file
    return load_file(str(Path(folder) / "model.safetensors"))

def max_diff(a, b):
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)

@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    "The uninterrupted run, in this process through `train_job` (what `halluc train` calls)."
    from halluc.jobs import train_job
    root = tmp_path_factory.mktemp("ref")
    res = train_job("sft", str(SFT_YAML), [f"run.root={root}", "run.name=ref", *SFT])
    return Path(res["run_dir"]), res

# --- 1. killed and stopped runs resume to the same model ---------------------------------------------------------

@pytest.mark.slow
def test_sigkill_sigterm_resume_chain_matches_uninterrupted(tmp_path, reference, capsys):
    """One run, four attempts: SIGKILL between checkpoints, SIGKILL inside a checkpoint save, SIGTERM (a checkpoint at
    the current step, status interrupted, exit 0), then a plain resume to the end. The result equals the uninterrupted run."""
    ref_dir, ref = reference
    run = tmp_path / "chain"
    logf = tmp_path / "child.log"
    # attempt 1: SIGKILL after step 4 (checkpoint-3 saved, steps 1-4 logged)
    p = launch(tmp_path, "chain", fault="stall_after:4", log=logf); wait_mark(p)
    assert (run / "checkpoints" / "checkpoint-3" / "trainer_state.json").is_file()
    kill9(p)
    assert [s for s, _ in loss_steps(run)] == [1, 2, 3, 4] and read_json(run / "status.json")["status"] == "running"
    # attempt 2: resume from 3, SIGKILL inside the save of checkpoint-6 (weights written, no trainer_state.json)
    p = launch(tmp_path, "chain", "run.resume=true", fault="stall_save:6", log=logf); wait_mark(p); kill9(p)
    half = run / "checkpoints" / "checkpoint-6"
    assert (half / "model.safetensors").is_file() and not (half / "trainer_state.json").exists()
    assert last_checkpoint(run).endswith("checkpoint-3")
    # attempt 3: resume (from 3 again: the half checkpoint-6 is skipped), SIGTERM at the start of step 7
    p = launch(tmp_path, "chain", "run.resume=true", fault="stall_after:6", log=logf); wait_mark(p)
    p.send_signal(signal.SIGTERM)
    assert finish(p) == 130, tail(p)   # interrupted: exit 130 after saving, like Ctrl-C
    st = read_json(run / "status.json")
    assert st["status"] == "interrupted" and "at step 7" in st["error"]["message"] and st["attempts"] == 3
    assert (run / "checkpoints" / "checkpoint-7" / "trainer_state.json").is_file() and last_checkpoint(run).endswith("checkpoint-7")
    assert ckpts(run) == ["checkpoint-6", "checkpoint-7"]                       # save_total_limit=2: checkpoint-3 rotated out
    assert not (run / "model").exists() and not (run / "result.json").exists()
    # attempt 4: the console script, resume to the end
    p = launch(tmp_path, "chain", "run.resume=true", log=logf)
    assert finish(p) == 0, tail(p)
    res, st = read_json(run / "result.json"), read_json(run / "status.json")
    assert res["global_step"] == 8 and res["resumed_from"].endswith("checkpoint-7") and st["status"] == "finished"
    assert st["attempts"] == 4 and st["peak_rss_mb"] < 4096, st
    assert ckpts(run) == ["checkpoint-7", "checkpoint-8"]
    # every step logged exactly once, with the uninterrupted run's numbers
    got, want = loss_steps(run), loss_steps(ref_dir)
    assert [s for s, _ in got] == list(range(1, 9)) == [s for s, _ in want]
    loss_gap = max(abs(a - b) for (_, a), (_, b) in zip(got, want))
    # a summary line per attempt that ended in the trainer (the SIGTERM one at 7, the last at 8); none from the kills
    assert [r["step"] for r in MetricsFile(run).read() if "train_runtime" in r] == [7, 8]
    from halluc.patcher import load_backtrack_model
    model, tok, info = load_backtrack_model(run / "model")
    assert info["bt_id"] == tok.convert_tokens_to_ids(info["bt_token"]) and info["run"] == "chain"
    w_gap = max_diff(weights(run / "model"), weights(ref_dir / "model"))
    report(capsys, f"kill/resume chain: 2 SIGKILL + 1 SIGTERM, 4 attempts; max |loss - ref| = {loss_gap:.3g}, "
                   f"max |w - ref| = {w_gap:.3g}; quick_eval {res['quick_eval']['exact_match']} vs ref {ref['quick_eval']['exact_match']}; "
                   f"peak RSS {st['peak_rss_mb']:.0f} MiB")
    assert loss_gap == 0.0 and w_gap == 0.0
    # result.json's train_loss is the whole run's mean (the trainer's own covers only the last attempt, step 8)
    assert res["train_loss"] == pytest.approx(ref["train_loss"], rel=1e-12) and res["train_loss_attempt"] == got[-1][1]
    same = lambda q: {k: v for k, v in q.items() if k not in ("samples", "timing")}   # timings are not results
    assert same(res["quick_eval"]) == same(ref["quick_eval"])

@pytest.mark.slow
def test_grpo_crash_and_resume_matches_uninterrupted(tmp_path, reference, capsys):
    """GRPO samples its completions from the torch RNG: after a crash at step 3, resuming from checkpoint-2 must replay
    steps 3-4 with the same prompts, samples, rewards and updates (the trainer restores the RNG state and skips the
    batches already seen)."""
    from transformers import TrainerCallback
    from halluc.executors import GRPOExecutor
    def cfg(name, *extra):
        return load_config(REPO / "configs" / "toy_grpo.yaml", [
            f"model.name_or_path={reference[0] / 'model'}", f"run.root={tmp_path}", f"run.name={name}", "data.toy_n_train=8",
            "data.toy_n_test=4", "trainer.max_steps=4", "trainer.save_steps=2", "trainer.logging_steps=1",
            "trainer.per_device_train_batch_size=4", "trainer.num_generations=4", "trainer.max_completion_length=16",
            "eval.limit=2", "eval.max_new_tokens=16", *extra])
    ref = GRPOExecutor(cfg("ref")).run()
    class Crash(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == 3: raise RuntimeError("injected crash after step 3")
    with pytest.raises(RuntimeError, match="injected crash"):
        GRPOExecutor(cfg("g"), callbacks=[Crash()]).run()
    st_ = read_json(tmp_path / "g" / "status.json")
    assert st_["status"] == "failed" and "injected crash" in st_["error"]["message"] and "Traceback" in st_["error"]["traceback"]
    res = GRPOExecutor(cfg("g", "run.resume=true")).run()
    assert res["global_step"] == 4 and res["resumed_from"].endswith("checkpoint-2")
    skip = {"time", "step", "epoch", "train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss", "total_flos",
            "step_time"}
    got = [r for r in MetricsFile(tmp_path / "g").read() if "loss" in r]
    want = [r for r in MetricsFile(tmp_path / "ref").read() if "loss" in r]
    assert [r["step"] for r in got] == [1, 2, 3, 4] == [r["step"] for r in want]
    gaps = {k: max(abs(a[k] - b[k]) for a, b in zip(got, want)) for k in want[0]
            if k not in skip and isinstance(want[0][k], float)}
    w_gap = max_diff(weights(tmp_path / "g" / "model"), weights(tmp_path / "ref" / "model"))
    report(capsys, f"GRPO crash at step 3 + resume: max |metric - ref| over {len(gaps)} logged series = {max(gaps.values()):.3g}, "
                   f"max |w - ref| = {w_gap:.3g}; train_loss {res['train_loss']:.6g} vs ref {ref['train_loss']:.6g}")
    assert {"reward", "rewards/outcome/mean", "completions/mean_length", "loss", "grad_norm"} <= set(gaps)
    assert all(v == 0.0 for v in gaps.values()), {k: v for k, v in gaps.items() if v}
    assert w_gap == 0.0 and res["train_loss"] == pytest.approx(ref["train_loss"], rel=1e-6, abs=1e-9)

# --- 5. reproducibility ----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_rerun_from_saved_config_reproduces(reference, capsys):
    "`halluc train sft runs/x/config.yaml run.name=y` (train_job, in this process) repeats the run exactly; another seed does not."
    from halluc.jobs import train_job
    ref_dir, ref = reference
    again = train_job("sft", str(ref_dir / "config.yaml"), ["run.name=again"])
    assert Path(again["run_dir"]).parent == ref_dir.parent                 # run.root came from the saved config
    assert loss_steps(again["run_dir"]) == loss_steps(ref_dir) and len(loss_steps(ref_dir)) == 8
    same = lambda q: {k: v for k, v in q.items() if k != "timing"}                     # timings are not results
    assert same(again["quick_eval"]) == same(ref["quick_eval"]) and again["train_loss"] == ref["train_loss"]
    assert max_diff(weights(Path(again["run_dir"]) / "model"), weights(ref_dir / "model")) == 0.0
    other = train_job("sft", str(ref_dir / "config.yaml"), ["run.name=seed1", "run.seed=1"])
    diff = max(abs(a - b) for (_, a), (_, b) in zip(loss_steps(other["run_dir"]), loss_steps(ref_dir)))
    report(capsys, f"rerun from config.yaml: losses, weights and quick_eval identical; run.seed=1 moves the losses by up to {diff:.3g}")
    assert diff > 1e-3                                                       # the comparison can tell runs apart

# --- 4. a full disk ----------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_full_disk_during_checkpoint_saves(tmp_path, monkeypatch, capsys):
    """A real full disk surfaces as safetensors' SafetensorError or torch.save's RuntimeError (seen on a 64 KiB tmpfs),
    not an OSError. Both must fail the run with a DiskFullError naming the disk and the checkpoint to resume from, leave
    status.json readable, and the previous checkpoint resumable. Attempt 2 also fails the status.json write (the whole
    disk is full): the DiskFullError must still be what the caller sees."""
    import transformers.modeling_utils as mu
    import halluc.runs as hr
    from safetensors import SafetensorError
    from halluc.executors import SFTExecutor, DiskFullError
    from halluc.patcher import load_backtrack_model
    run = tmp_path / "d"
    cfg = lambda *x: load_config(SFT_YAML, [f"run.root={tmp_path}", "run.name=d", *SFT, "trainer.max_steps=4", "trainer.save_steps=2", *x])
    # attempt 1: the weights of checkpoint-4 hit a full disk halfway
    real_save = mu.safe_save_file
    def weights_full(tensors, filename, metadata=None):
        if "checkpoint-4" in str(filename):
            Path(filename).write_bytes(b"\0" * 512)
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real_save(tensors, filename, metadata=metadata)
    monkeypatch.setattr(mu, "safe_save_file", weights_full)
    with pytest.raises(DiskFullError) as e1: SFTExecutor(cfg()).run()
    m1 = str(e1.value)
    assert "No space left" in m1 and "GiB free" in m1 and str(run / "checkpoints" / "checkpoint-2") in m1 and "run.resume=true" in m1
    assert isinstance(e1.value.__cause__, SafetensorError) and e1.value.errno == errno.ENOSPC
    st1 = read_json(run / "status.json")
    assert st1["status"] == "failed" and st1["error"]["type"] == "DiskFullError" and last_checkpoint(run).endswith("checkpoint-2")
    monkeypatch.undo()
    # attempt 2 (resume from 2): optimizer.pt of checkpoint-4 fails the way torch.save fails on a full disk; so does status.json
    real_torch_save, real_json = torch.save, hr.write_json_atomic
    full = []
    def torch_full(obj, f, *a, **k):
        if str(f).endswith(os.path.join("checkpoint-4", "optimizer.pt")):
            full.append(f); raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
        return real_torch_save(obj, f, *a, **k)
    def json_full(path, obj):
        if full: raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_json(path, obj)
    monkeypatch.setattr(torch, "save", torch_full); monkeypatch.setattr(hr, "write_json_atomic", json_full)
    with pytest.raises(DiskFullError) as e2: SFTExecutor(cfg("run.resume=true")).run()
    m2 = str(e2.value)
    assert "full disk" in m2 and "unexpected pos" in m2 and "checkpoint-2" in m2
    st2 = read_json(run / "status.json")                                    # not rewritten, still whole: the attempt's start
    assert st2["status"] == "running" and st2["attempts"] == 2
    monkeypatch.undo()
    # attempt 3: space is back; resume from checkpoint-2 and finish
    res = SFTExecutor(cfg("run.resume=true")).run()
    assert res["global_step"] == 4 and res["resumed_from"].endswith("checkpoint-2")
    assert read_json(run / "status.json")["status"] == "finished" and ckpts(run) == ["checkpoint-2", "checkpoint-4"]
    assert [s for s, _ in loss_steps(run)] == [1, 2, 3, 4]
    load_backtrack_model(run / "model")
    report(capsys, "full disk: 2 injected (SafetensorError on weights, torch.save RuntimeError + status.json ENOSPC); "
                   "both -> DiskFullError naming checkpoint-2; resume from checkpoint-2 finished")

# --- 2. writes cut short ----------------------------------------------------------------------------------------------

class _HalfWriter:
    "A file object that writes the first half of what it is given, then fails (a crash mid-write)."
    def __init__(self, f): self.f = f
    def write(self, s): self.f.write(s[: len(s) // 2]); self.f.flush(); raise OSError(errno.EIO, "injected: crash mid-write")
    def __getattr__(self, k): return getattr(self.f, k)
    def __enter__(self): return self
    def __exit__(self, *a): self.f.close()

def _writers():
    from halluc import patcher
    def metrics_rewind(p, v):   # v=1 writes five steps; v=2 rewinds to step 3 (an atomic rewrite)
        if v == 1: p.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 6)))
        else: MetricsFile(p).rewind(3)
    return {
        "runs.write_json_atomic": ("result.json", lambda p, v: write_json_atomic(p, {"v": v, "pad": "x" * 5000}),
                                   lambda p: read_json(p)["v"]),
        "patcher.write_json_atomic": ("halluc.json", lambda p, v: patcher.write_json_atomic(p, {"v": v, "pad": "x" * 5000}),
                                      lambda p: json.loads(p.read_text())["v"]),
        "config.save_config": ("config.yaml", lambda p, v: save_config(load_config(None, [f"run.seed={v}"]), p),
                               lambda p: load_config(p).run.seed),
        "MetricsFile.rewind": ("metrics.jsonl", metrics_rewind, lambda p: 1 if len(MetricsFile(p).read()) == 5 else 2),
    }

@pytest.mark.parametrize("crash", ["mid-write", "before-fsync", "before-rename"])
@pytest.mark.parametrize("writer", list(_writers()))
def test_crashed_write_keeps_the_old_file(tmp_path, monkeypatch, writer, crash):
    name, write, read = _writers()[writer]
    p = tmp_path / name
    write(p, 1)
    assert read(p) == 1
    real_fdopen = os.fdopen
    def boom(*a, **k): raise OSError(errno.EIO, f"injected: crash {crash}")
    if crash == "mid-write": monkeypatch.setattr(os, "fdopen", lambda *a, **k: _HalfWriter(real_fdopen(*a, **k)))
    elif crash == "before-fsync": monkeypatch.setattr(os, "fsync", boom)
    else: monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="injected"): write(p, 2)
    monkeypatch.undo()
    assert read(p) == 1 and [q.name for q in tmp_path.iterdir()] == [name]    # the old file whole, no temp file left
    write(p, 2); assert read(p) == 2                                        # and the next write goes through

def test_save_backtrack_model_crash_keeps_the_old_folder(tmp_path, monkeypatch):
    "Replacing a model folder (`overwrite=True`) and crashing while the new one is written leaves the old one in place."
    from halluc import patcher
    from halluc.toy import make_tokenizer, make_model
    tok = make_tokenizer("llama"); model = make_model(tok, "tiny", seed=0); patcher.add_backtrack_token(tok, model)
    dst = patcher.save_backtrack_model(model, tok, tmp_path / "model", info={"v": 1})
    def boom(*a, **k): raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(patcher, "write_json_atomic", boom)                 # dies writing the new halluc.json
    with pytest.raises(OSError): patcher.save_backtrack_model(model, tok, dst, info={"v": 2}, overwrite=True)
    monkeypatch.undo()
    assert patcher.load_backtrack_info(dst)["v"] == 1 and [q.name for q in tmp_path.iterdir()] == ["model"]
    patcher.load_backtrack_model(dst)

# Regression test. Was a bug (then 01_patcher, now 05_patcher: save_backtrack_model): the old folder is renamed aside before the new
# one is renamed in; when that second os.replace fails, the except only removes the temp folder, so `model/` is
# gone and the old weights sit in a hidden `.model.old-*`. Fix: in the except, `if old is not None and not
# path.exists(): os.replace(old, path)`.
def test_save_backtrack_model_failed_swap_restores_the_old_folder(tmp_path, monkeypatch):
    from halluc import patcher
    from halluc.toy import make_tokenizer, make_model
    tok = make_tokenizer("llama"); model = make_model(tok, "tiny", seed=0); patcher.add_backtrack_token(tok, model)
    dst = patcher.save_backtrack_model(model, tok, tmp_path / "model", info={"v": 1})
    real = os.replace
    def swap_fails(a, b):
        if Path(b) == dst and Path(a).name.startswith(".model.tmp-"): raise OSError(errno.EIO, "injected: rename failed")
        return real(a, b)
    monkeypatch.setattr(os, "replace", swap_fails)
    with pytest.raises(OSError): patcher.save_backtrack_model(model, tok, dst, info={"v": 2}, overwrite=True)
    monkeypatch.undo()
    assert dst.is_dir() and patcher.load_backtrack_info(dst)["v"] == 1

# Regression test. Was a bug (then 08_runs, now 11_runs: last_checkpoint): the trainer writes trainer_state.json last but not
# atomically (`TrainerState.save_to_json`); a kill inside that write leaves a truncated file, last_checkpoint
# only checks that it exists, and every resume then dies in the trainer's json.loads. Fix: accept a checkpoint
# only when `read_json(p / 'trainer_state.json')` parses to a dict (catch CorruptFileError).
def test_last_checkpoint_skips_a_torn_trainer_state(tmp_path):
    for n, text in ((3, '{"global_step": 3, "log_history": []}'), (6, '{"global_step": 6, "log_hist')):
        d = tmp_path / "checkpoints" / f"checkpoint-{n}"; d.mkdir(parents=True)
        (d / "trainer_state.json").write_text(text)
    assert last_checkpoint(tmp_path).endswith("checkpoint-3")

KILL_WRITER = r'''
import sys, os
from pathlib import Path
from halluc.runs import write_json_atomic, append_jsonl
d = Path(sys.argv[1]); i = 0
while True:
    i += 1
    write_json_atomic(d / "result.json", {"i": i, "pad": "x" * 300000})
    append_jsonl(d / "metrics.jsonl", {"step": i, "pad": "y" * 100000})
    if i == 3: (d / "ready").write_text("1")
'''

@pytest.mark.slow
def test_sigkill_during_writes_never_leaves_half_json(tmp_path, capsys):
    "SIGKILL a process that rewrites result.json and appends metrics.jsonl as fast as it can, three times at random moments."
    from halluc.io import append_jsonl, read_jsonl
    rng, torn, temps = random.Random(0), 0, 0
    for k in range(3):
        (tmp_path / "ready").unlink(missing_ok=True)
        p = subprocess.Popen([sys.executable, "-c", KILL_WRITER, str(tmp_path)], env=child_env()); _CHILDREN.append(p)
        t = time.time()
        while not (tmp_path / "ready").exists():
            assert p.poll() is None and time.time() - t < 60
            time.sleep(0.01)
        time.sleep(rng.uniform(0.01, 0.2)); p.kill(); p.wait()
        r = read_json(tmp_path / "result.json")                              # always whole: one complete version
        assert r["pad"] == "x" * 300000 and r["i"] >= 3
        recs, bad = read_jsonl(tmp_path / "metrics.jsonl")
        torn += len(bad); assert len(bad) <= 1 + k                           # at most the line being written at each kill
        temps = len(list(tmp_path.glob(".result.json.*.tmp")))
    append_jsonl(tmp_path / "metrics.jsonl", {"step": -1})                   # a later writer starts on a fresh line
    assert read_jsonl(tmp_path / "metrics.jsonl")[0][-1] == {"step": -1}
    report(capsys, f"SIGKILL mid-write x3: result.json whole every time; {torn} torn metrics line(s) skipped by the reader; "
                   f"{temps} orphan temp file(s) (a kill between mkstemp and rename; readers ignore them)")

def test_compare_runs_skips_each_kind_of_corrupt_file(tmp_path):
    "Beyond test_runs (a torn result.json, an empty status.json): eval.json, eval/eval.json, config.yaml, run.json, non-objects."
    from halluc.runs import create_run_dir, mark_status
    root = tmp_path / "runs"
    def run(name):
        d = create_run_dir(root, name)
        save_config(load_config(None, [f"run.name={name}"]), d / "config.yaml"); mark_status(d, "running")
        write_json_atomic(d / "result.json", dict(kind="sft", global_step=2, quick_eval=dict(n=2, exact_match=0.5)))
        mark_status(d, "finished")
        return d
    run("good")
    bad = {"eval-torn": ("eval.json", '{"tasks": {"toy": {"metrics": {"exact_ma'),
           "eval-nested": ("eval/eval.json", "[1, 2, 3]"), "config-torn": ("config.yaml", "run: {seed: [1, 2\n  name: x"),
           "run-binary": ("run.json", b"\xff\xfe\x00garbage"), "result-list": ("result.json", '["not", "an", "object"]')}
    for name, (f, content) in bad.items():
        p = run(name) / f; p.parent.mkdir(exist_ok=True)
        p.write_bytes(content) if isinstance(content, bytes) else p.write_text(content)
    with pytest.warns(UserWarning, match="left out"):
        df = compare_runs(root)
    assert list(df.run) == ["good"] and df.exact_match.tolist() == [0.5]
    skipped = {s["run"]: s["file"] for s in df.attrs["skipped"]}
    assert skipped == {n: str(root / n / f) for n, (f, _) in bad.items()}

# --- 3. hostile inputs --------------------------------------------------------------------------------------------------

_TOKS = {}
def tok_bt(kind):
    "A toy tokenizer with its BT token (llama: reserved token reused; qwen: <|BACKTRACK|> added, chat template)."
    if kind not in _TOKS:
        from halluc.toy import make_tokenizer
        from halluc.patcher import add_backtrack_token
        tok = make_tokenizer(kind); _TOKS[kind] = (tok, add_backtrack_token(tok))
    return _TOKS[kind]

# numbers as GSM8K writes them and as it never does: huge, negative, with commas and decimals, unicode digits, junk
a_number = st.one_of(st.integers(-10 ** 6, 10 ** 6).map(str), st.integers(0, 10 ** 60).map(str),
                     st.integers(0, 10 ** 12).map(lambda n: f"{n:,}"), st.floats(-1e9, 1e9, allow_nan=False).map(lambda x: f"{x:.2f}"),
                     st.sampled_from(["0", "-0", "007", "1e5", "1e400", "\u0663", "\u00bd", "1.", ".5", "$5", "10%", "3/4", "-", ",", "1,,2"]))
a_step = st.tuples(a_number, st.sampled_from(["+", "-", "*", "/", "x", "\u00d7", "\u00f7", "=", ""]), a_number, a_number).map(
    lambda t: f"{t[0]} {t[1]} {t[2]} = {t[3]}")
OTHER_SPECIALS = ["<|eot_id|>", "<|begin_of_text|>", "<|im_end|>", "<|im_start|>", "<|end_of_text|>", "<|endoftext|>"]
a_line = st.one_of(a_step, st.text(max_size=40), a_number, st.sampled_from(OTHER_SPECIALS + ["The answer is: 5", "#### 7", "=", "<<1+1=2>>"]))
a_record = st.fixed_dictionaries(dict(
    id=st.text(min_size=1, max_size=12), question=st.one_of(st.text(max_size=80), st.lists(st.one_of(st.text(max_size=10), a_number), max_size=8).map(" ".join)),
    solution=st.lists(a_line, max_size=6).map("\n".join), final=st.one_of(a_number, st.text(max_size=10))))

@pytest.mark.slow
def test_fuzz_converters_keep_the_invariant(capsys):
    """make_example on hostile records through every converter, both tokenizers: only BadRecord escapes, and backtracking
    the completion gives the clean completion, token for token; labels line up; DPO pairs likewise."""
    from halluc.data import encode_records, make_example, example_rng, ConvertParams, BadRecord, dpo_pairs
    from halluc.data import CONVERTERS
    n = dict(examples=0, ok=0, bad_record=0, dpo_pairs=0)
    slowest = [0.0]
    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(rec=a_record, kind=st.sampled_from(["llama", "qwen"]), conv=st.sampled_from(sorted(CONVERTERS)),
           ratio=st.floats(0, 1), num_errors=st.integers(0, 4), error_len=st.integers(0, 6), mask=st.booleans(),
           max_length=st.one_of(st.none(), st.integers(1, 300)), seed=st.integers(0, 3))
    def one(rec, kind, conv, ratio, num_errors, error_len, mask, max_length, seed):
        n["examples"] += 1
        tok, bt = tok_bt(kind)
        t = time.perf_counter()
        (enc,) = encode_records([rec], tok)
        cp = ConvertParams(bt_id=bt, mask_errors=mask, ratio=ratio, num_errors=num_errors, error_len=error_len)
        try: ex = make_example(enc, tok, conv, example_rng(seed, rec["id"]), cp, max_length)
        except BadRecord: n["bad_record"] += 1; ex = None
        if ex is not None:
            n["ok"] += 1
            P, ids, labels = ex["prompt_len"], ex["input_ids"], ex["labels"]
            comp = ids[P:]
            assert ids[:P] == enc.prompt_ids and len(labels) == len(ids) and labels[:P] == [-100] * P
            assert apply_backtracking(comp, bt) == enc.completion_ids                  # the invariant
            assert comp.count(bt) == ex["n_bt"] and all(l == x for l, x in zip(labels[P:], comp) if l != -100)
            assert mask or -100 not in labels[P:]
            assert max_length is None or len(ids) <= max_length
            if conv == "clean": assert comp == enc.completion_ids
        for source in ("numeric", "random"):
            try: pairs = dpo_pairs([rec], tok, bt, source=source, params=dict(num_errors=max(num_errors, 1), error_len=error_len), seed=seed)
            except BadRecord: continue
            for p in pairs:
                n["dpo_pairs"] += 1
                assert apply_backtracking(p["chosen_ids"], bt) == enc.completion_ids and bt not in p["rejected_ids"]
        slowest[0] = max(slowest[0], time.perf_counter() - t)
        assert time.perf_counter() - t < 2.0
    one()
    report(capsys, f"fuzz converters (clean/random/numeric x llama/qwen + DPO pairs): {n['examples']} examples "
                   f"({n['ok']} converted, {n['bad_record']} BadRecord, {n['dpo_pairs']} DPO pairs checked); slowest {slowest[0]:.3f}s")
    assert n["ok"] > 100 and n["bad_record"] > 0

a_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                      lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3), max_leaves=6)
a_good_row = st.fixed_dictionaries(dict(question=st.text(min_size=1, max_size=30).filter(str.strip),
                                        answer=st.tuples(st.lists(a_line, max_size=3), st.integers(-10 ** 9, 10 ** 9)).map(
                                            lambda t: "\n".join(t[0]) + f"\n#### {t[1]:,}"))).map(json.dumps)
a_row = st.one_of(
    a_good_row, a_good_row, a_json.map(json.dumps),
    st.fixed_dictionaries(dict(question=st.one_of(st.text(max_size=30), a_json),
                               answer=st.one_of(st.lists(a_line, max_size=3).map("\n".join).map(lambda s: s + "\n#### "),
                                                st.just("")).flatmap(lambda pre: st.one_of(a_number, st.text(max_size=8), a_json).map(
                                                    lambda f: pre + f if isinstance(f, str) else f)))).map(json.dumps),
    st.text(max_size=40))                                                            # not JSON at all

def test_fuzz_load_records_only_bad_record(tmp_path, capsys):
    "Hostile JSONL rows: `error` mode raises BadRecord naming the row, `skip` mode keeps the good rows, each normalised."
    from halluc.data import load_records, BadRecord
    from halluc.grading import normalize_number
    p = tmp_path / "rows.jsonl"
    n = dict(files=0, loaded=0, raised=0, rows_kept=0, rows_skipped=0)
    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(rows=st.lists(a_row, max_size=6))
    def one(rows):
        n["files"] += 1
        p.write_text("".join(r.replace("\n", " ") + "\n" for r in rows), encoding="utf-8")
        try: load_records(p)
        except BadRecord as e: n["raised"] += 1; assert "rows.jsonl" in str(e)
        else: n["loaded"] += 1
        try: recs = load_records(p, on_bad_record="skip")
        except BadRecord as e: assert "no records" in str(e) or "every row was bad" in str(e); return
        n["rows_kept"] += len(recs); n["rows_skipped"] += len(recs.skipped)
        assert len({r["id"] for r in recs}) == len(recs)
        for r in recs: assert normalize_number(r["final"]) == r["final"] and r["question"].strip() == r["question"] != ""
    one()
    report(capsys, f"fuzz load_records: {n['files']} files ({n['loaded']} loaded, {n['raised']} BadRecord in error mode; "
                   f"skip mode kept {n['rows_kept']} rows, skipped {n['rows_skipped']})")
    assert n["loaded"] > 0 and n["raised"] > 0

# Regression test. Was a bug (then 04_data, now 06_data): a record whose question or solution contains the BT token text literally
# is tokenised with the BT id inside the *clean* completion, so training teaches a BT where none was meant and
# apply_backtracking(clean) != clean. Fix: encode_records / make_example raise BadRecord (or strip) when bt_id
# is in the prompt or clean completion ids.
@pytest.mark.parametrize("kind", ["llama", "qwen"])
def test_bt_token_text_inside_a_record_is_refused(kind):
    from halluc.data import encode_records, make_example, example_rng, ConvertParams, BadRecord
    tok, bt = tok_bt(kind)
    lit = tok.convert_ids_to_tokens(bt)
    rec = dict(id="x", question="What is 2 + 3?", solution=f"2 + 3 = 6{lit}5", final="5")
    with pytest.raises(BadRecord, match="backtrack"):
        (enc,) = encode_records([rec], tok)
        make_example(enc, tok, "clean", example_rng(0, "x"), ConvertParams(bt_id=bt))

def _with_alarm(seconds, fn, *a):
    "Run `fn(*a)`, raising TimeoutError after `seconds` (SIGALRM; main thread only)."
    def on_alarm(*_): raise TimeoutError(f"{getattr(fn, '__name__', fn)} took over {seconds}s")
    old = signal.signal(signal.SIGALRM, on_alarm); signal.setitimer(signal.ITIMER_REAL, seconds)
    try: return fn(*a)
    finally: signal.setitimer(signal.ITIMER_REAL, 0); signal.signal(signal.SIGALRM, old)

# Regression test. Was a bug (then 04_data, now 06_data: near_misses): one digit-swap candidate per digit pair, each a full copy of
# the number -> quadratic: a 3,000-digit answer takes ~1.5 s, 30,000 digits 117 s (measured), 10^6 digits would
# never finish. Fix: skip the swaps for numbers longer than ~18 digits (`if len(d) <= 18:` around the swap
# loop).
def test_numeric_converter_on_a_huge_answer_is_fast():
    from halluc.data import encode_records, make_example, example_rng, ConvertParams
    tok, bt = tok_bt("llama")
    big = "12" * 1500
    (enc,) = encode_records([dict(id="big", question="q?", solution=f"We have {big} apples.", final=big)], tok)
    ex = _with_alarm(0.3, make_example, enc, tok, "numeric", example_rng(0, "big"), ConvertParams(bt_id=bt))
    assert apply_backtracking(ex["input_ids"][ex["prompt_len"]:], bt) == enc.completion_ids

@pytest.mark.parametrize("text", ["(" * 100_000 + "1 + 1" + ")" * 100_000 + " = 2", "(" * 1000 + "1 + 1" + ")" * 1000 + " = 2",
                                  "((((((((((((((((((((1 + 1)))))))))))))))))))) = 2\nThe answer is: 2", "1 = " * 100_000 + "1",
                                  "(1 + " * 50_000 + "1" + ")" * 50_000 + " = 50001"])
def test_reward_text_functions_on_deep_parentheses(text):
    "What test_reward.py lacks: 10^5-deep nesting, and nesting inside a real step; bounded time, no RecursionError."
    from halluc.grading import extract_answer, check_steps, first_wrong_step, process_score, normalize_number
    for fn in (extract_answer, check_steps, first_wrong_step, lambda t: process_score(t, t), normalize_number):
        t = time.perf_counter(); fn(text)
        assert time.perf_counter() - t < 0.5, fn
    right, n = check_steps(text)
    assert 0 <= right <= n

# Regression test. Was a bug (then 05_reward, now 03_grading: _last_number): `_DIGIT_RE.search(text[::-1])` reverses the whole text on
# every loop turn, and a long digit run takes len/(4*_MAX_NUM_CHARS) turns -> quadratic: 10^5 digits 0.02 s,
# 3*10^5 0.15 s, 10^6 1.6 s (extract_answer) / 2.9 s (a step line) / 2.2 s (process_score). Fix: `rev =
# text[::-1]` once before the loop and search `rev`.
@pytest.mark.parametrize("text", ["The answer is: " + "9" * 10 ** 6, "9" * 10 ** 6 + " * 9 = " + "9" * 10 ** 6])
def test_reward_text_functions_on_a_million_digits(text):
    "Reward inputs are capped by max_completion_length, but extract_answer is public: a 10^6-digit number must stay linear."
    from halluc.grading import extract_answer, check_steps, process_score, normalize_number
    for fn in (normalize_number, check_steps, extract_answer, lambda t: process_score(t, t)):
        _with_alarm(0.5, fn, text)
