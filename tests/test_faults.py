"""Fault injection: SIGKILL / SIGTERM mid-run and resume, writes cut short, a full disk, hostile records, reproducibility.

Each test injects one kind of fault and checks what must survive it. The training runs are the toy SFT config
(toy:llama-tiny, 24 records, batch 4, 8 steps: it crosses an epoch boundary at step 6), killed in child processes
that run the `halluc` command line. A child stops at an exact point (a step boundary, or inside a checkpoint save)
and writes a marker file; the test then kills it, so every kill lands where the test says, not where a timer did.
"""
import errno, json, os, random, signal, subprocess, sys, time
from pathlib import Path
import pytest, torch
from hypothesis import given, settings, HealthCheck, strategies as st

from halluc.config import load_config, save_config
from halluc.core import apply_backtracking
from halluc.runs import read_json, write_json_atomic, write_text_atomic, MetricsFile, compare_runs, last_checkpoint

REPO = Path(__file__).resolve().parents[1]
HALLUC = Path(sys.executable).parent / "halluc"            # the console script
SFT_YAML = REPO / "configs" / "toy_sft_backtrack.yaml"
SFT = ["trainer.max_steps=8", "trainer.save_steps=3", "trainer.save_total_limit=2", "trainer.logging_steps=1",
       "trainer.per_device_train_batch_size=4", "data.toy_n_train=24", "data.toy_n_test=4", "eval.limit=4",
       "eval.max_new_tokens=16", "eval.batch_size=4", "trainer.activation_checkpointing=false"]
TIMINGS: dict[str, float] = {}

@pytest.fixture(autouse=True)
def _one_thread(request):
    n = torch.get_num_threads(); torch.set_num_threads(1)
    t = time.perf_counter()
    yield
    torch.set_num_threads(n)
    TIMINGS[request.node.name] = time.perf_counter() - t

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
    assert finish(p) == 0, tail(p)
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
                   f"max |w - ref| = {w_gap:.3g}; quick_eval {res['quick_eval']['exact_match']} vs ref {ref['quick_eval']['exact_match']}")
    assert loss_gap == 0.0 and w_gap == 0.0
    assert {k: v for k, v in res["quick_eval"].items() if k != "samples"} == {k: v for k, v in ref["quick_eval"].items() if k != "samples"}
