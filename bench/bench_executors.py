"""Executor overhead: SFTExecutor and GRPOExecutor against bare TRL scripts on the same toy data, model and steps.

Each pair is timed on `trainer.train()` only (model loading, data conversion, the final model folder and the quick
eval are outside the clock; both arms save one checkpoint at the end, as transformers does when saving is on), side by side in one process, same seed, one thread; the two arms alternate over `--repeats` rounds and
the medians of wall time (the target) and process CPU time are compared, and the fastest runs of each arm (the least
disturbed by other work on a shared machine, where identical runs vary by +-20 %). The bare scripts build the same model and dataset by hand and call `SFTTrainer` /
`GRPOTrainer` directly (the GRPO one with the same reward functions at fixed weights, no curriculum, no metrics
log). Equal training losses confirm the two arms did the same work. GRPO starts from the SFT arm's saved model.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_executors.py [--sft-steps 40] [--grpo-steps 10] [--repeats 7]
"""
import argparse, os, shutil, statistics, tempfile, time
from pathlib import Path
os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch
torch.set_num_threads(1)
from halluc.config import load_config
from halluc.executors import SFTExecutor, GRPOExecutor

REPO = Path(__file__).resolve().parents[1]
N_TRAIN = 256

def quiet(tr):
    "No progress bar, no printed logs (the same in both arms)."
    from transformers.trainer_callback import ProgressCallback, PrinterCallback
    tr.remove_callback(ProgressCallback); tr.remove_callback(PrinterCallback)
    return tr

def _mean_len(tr):
    xs = [h["completions/mean_length"] for h in tr.state.log_history if "completions/mean_length" in h]
    return sum(xs) / len(xs)

def timed(cls):
    "An executor subclass that times its trainer's `train()`."
    class Timed(cls):
        def make_trainer(self, *a):
            tr = super().make_trainer(*a)
            quiet(tr)
            train = tr.train
            def run(*aa, **kw):
                t, c = time.perf_counter(), time.process_time(); out = train(*aa, **kw)
                self.train_wall = (time.perf_counter() - t, time.process_time() - c); return out
            tr.train = run
            return tr
    return Timed

def sft_overrides(root, name, steps):
    return [f"run.root={root}", f"run.name={name}", f"trainer.max_steps={steps}", f"trainer.save_steps={10 ** 6}",
            "trainer.logging_steps=10", f"data.toy_n_train={N_TRAIN}", "data.toy_n_test=8", "eval.limit=8", "eval.max_new_tokens=8"]

def executor_sft(root, name, steps):
    ex = timed(SFTExecutor)(load_config(REPO / "configs/toy_sft_backtrack.yaml", sft_overrides(root, name, steps)))
    res = ex.run()
    return ex.train_wall, res["train_loss"], Path(res["run_dir"]) / "model"

def bare_sft(root, steps):
    from trl import SFTConfig, SFTTrainer
    from halluc.toy import make_tokenizer, make_model, arithmetic_records
    from halluc.patcher import add_backtrack_token
    from halluc.data import build_sft_dataset
    torch.manual_seed(0)
    tok = make_tokenizer("llama"); model = make_model(tok, "tiny", seed=0)
    bt = add_backtrack_token(tok, model, init="semantic", seed=0)
    ds = build_sft_dataset(arithmetic_records(N_TRAIN, seed=0, difficulty=2, split="train"), tok, bt, "numeric", {"ratio": 0.5},
                           max_length=256).select_columns(["input_ids", "labels"])
    args = SFTConfig(output_dir=str(root / "bare-sft"), max_steps=steps, per_device_train_batch_size=16, learning_rate=3e-3,
                     lr_scheduler_type="cosine", warmup_steps=0.05, logging_steps=10, save_strategy="steps", save_steps=10 ** 6,
                     report_to="none", use_cpu=True, bf16=False, seed=0, activation_checkpointing=False)
    tr = quiet(SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok))
    t, c = time.perf_counter(), time.process_time(); out = tr.train()
    return (time.perf_counter() - t, time.process_time() - c), out.training_loss

GRPO_TRAINER = dict(per_device_train_batch_size=16, num_generations=8, max_completion_length=64, temperature=1.0, learning_rate=1e-4,
                    lr_scheduler_type="constant", beta=0.0, logging_steps=5)

def executor_grpo(root, name, steps, model_dir):
    ov = [f"model.name_or_path={model_dir}", f"run.root={root}", f"run.name={name}", f"trainer.max_steps={steps}",
          f"trainer.save_steps={10 ** 6}", f"data.toy_n_train={N_TRAIN}", "data.toy_n_test=8", "eval.limit=8", "eval.max_new_tokens=8"]
    ov += [f"trainer.{k}={v}" for k, v in GRPO_TRAINER.items()]
    ex = timed(GRPOExecutor)(load_config(REPO / "configs/toy_grpo.yaml", ov))
    ex.run()
    return ex.train_wall, _mean_len(ex.trainer)

def bare_grpo(root, steps, model_dir):
    import datasets
    from trl import GRPOConfig, GRPOTrainer
    from halluc.patcher import load_backtrack_model
    from halluc.toy import arithmetic_records
    from halluc.data import grpo_view
    from halluc.reward import make_reward_funcs, curriculum_weights, REWARD_NAMES
    from halluc.config import RewardConfig
    torch.manual_seed(0)
    model, tok, info = load_backtrack_model(model_dir)
    recs = arithmetic_records(N_TRAIN, seed=0, difficulty=2, split="train")
    ds = datasets.Dataset.from_list([dict(prompt=r["prompt"], final=r["final"]) for r in grpo_view(recs, tok)])
    w0 = curriculum_weights(0.0, RewardConfig())
    args = GRPOConfig(output_dir=str(root / "bare-grpo"), max_steps=steps, save_strategy="steps", save_steps=10 ** 6, report_to="none", use_cpu=True,
                      bf16=False, seed=0, activation_checkpointing=False, use_vllm=False, reward_weights=[w0[n] for n in REWARD_NAMES], **GRPO_TRAINER)
    tr = GRPOTrainer(model=model, reward_funcs=make_reward_funcs(tok, info["bt_id"], RewardConfig()), args=args, train_dataset=ds,
                     processing_class=tok)
    quiet(tr)
    t, c = time.perf_counter(), time.process_time(); tr.train()
    return (time.perf_counter() - t, time.process_time() - c), _mean_len(tr)

def report(name, ex, bare, check):
    print(name)
    for k, what in ((0, "wall"), (1, "CPU ")):
        e, b = [x[k] for x in ex], [x[k] for x in bare]
        me, mb = statistics.median(e), statistics.median(b)
        print(f"  {what} executor {me:6.2f} s (runs {', '.join(f'{x:.2f}' for x in e)})\n       bare TRL {mb:6.2f} s "
              f"(runs {', '.join(f'{x:.2f}' for x in b)})\n       ratio of medians {me / mb:.3f}"
              + ("  (target <= 1.10)" if k == 0 else "") + f", ratio of the fastest runs {min(e) / min(b):.3f}")
    print(f"  same work: {check}", flush=True)

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sft-steps", type=int, default=40); ap.add_argument("--grpo-steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=7)
    a = ap.parse_args()
    import logging, transformers, datasets
    transformers.logging.set_verbosity_error(); datasets.disable_progress_bars(); logging.getLogger("halluc").setLevel(logging.ERROR)
    os.environ["TQDM_DISABLE"] = "1"
    root = Path(tempfile.mkdtemp(prefix="bench-exec-"))
    print(f"toy llama-tiny, {N_TRAIN} train records, torch threads {torch.get_num_threads()}, {a.repeats} rounds (arms alternate)")
    executor_sft(root, "warmup", 2); bare_sft(root, 2)   # imports, caches
    ex, bare = [], []
    for i in range(a.repeats):
        order = (0, 1) if i % 2 == 0 else (1, 0)
        for arm in order:
            if arm == 0: w, ex_loss, model_dir = executor_sft(root, f"sft-{i}", a.sft_steps); ex.append(w)
            else: w, bare_loss = bare_sft(root, a.sft_steps); bare.append(w)
    report(f"SFT {a.sft_steps} steps x 16 sequences", ex, bare, f"train loss {ex_loss:.5f} vs {bare_loss:.5f}")
    gex, gbare = [], []
    for i in range(a.repeats):
        order = (0, 1) if i % 2 == 0 else (1, 0)
        for arm in order:
            if arm == 0: w, gex_loss = executor_grpo(root, f"grpo-{i}", a.grpo_steps, model_dir); gex.append(w)
            else: w, gbare_loss = bare_grpo(root, a.grpo_steps, model_dir); gbare.append(w)
    report(f"GRPO {a.grpo_steps} steps x 16 completions (2 prompts x 8), <= 64 tokens", gex, gbare,
           f"mean completion length {gex_loss:.2f} vs {gbare_loss:.2f} (same samples; the losses differ by design: the curriculum moves the weights)")
    shutil.rmtree(root, ignore_errors=True)

if __name__ == "__main__":
    main()
