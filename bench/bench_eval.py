"""hf-backtrack vs lm-eval's plain `hf` model: the same toy task, tiny model, samples and generation settings.

Both run through lm_eval.simple_evaluate on toy_arithmetic_backtrack (the plain model's bare text is scored by
the same process_results). Model loading is outside the timings; the runs alternate and the best of N counts.
Prints both wall times and the ratio (target <= 1.10), and checks that hf's text is hf-backtrack's raw text.
Usage: python bench/bench_eval.py [--n 200] [--batch-size 16] [--max-gen-toks 32] [--repeats 5] [--threads 1]
"""
import argparse, logging, tempfile, time, warnings
from pathlib import Path
import torch


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200); ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-gen-toks", type=int, default=32); ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is stable on a shared machine)")
    ap.add_argument("--preset", default="tiny")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    logging.getLogger("lm-eval").setLevel(logging.ERROR); logging.getLogger("lm_eval").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from halluc.evaluation import HFBacktrackLM, task_dir
    from halluc.patcher import add_backtrack_token, save_backtrack_model
    from halluc.toy import make_model, make_tokenizer

    tok = make_tokenizer("llama"); model = make_model(tok, a.preset); add_backtrack_token(tok, model)
    path = save_backtrack_model(model, tok, Path(tempfile.mkdtemp()) / "model")
    tm = TaskManager(include_path=str(task_dir(toy_n=max(a.n, 200))), include_defaults=False)
    lms = {"hf": HFLM(pretrained=str(path), device="cpu", batch_size=a.batch_size, dtype="float32"),
           "hf-backtrack": HFBacktrackLM(pretrained=str(path), device="cpu", batch_size=a.batch_size, dtype="float32")}
    gen = {"max_gen_toks": a.max_gen_toks}
    spent = [0.0]   # time hf-backtrack spends on its own decoding (cut, backtrack, decode, payload), measured directly
    inner = HFBacktrackLM.completion
    def timed(self, *args, **kw):
        t = time.perf_counter(); out = inner(self, *args, **kw); spent[0] += time.perf_counter() - t; return out
    HFBacktrackLM.completion = timed

    def run(name):
        t = time.perf_counter()
        r = simple_evaluate(model=lms[name], tasks=["toy_arithmetic_backtrack"], limit=a.n, task_manager=tm, gen_kwargs=gen,
                            log_samples=False, bootstrap_iters=0)
        return time.perf_counter() - t, r["results"]["toy_arithmetic_backtrack"]

    run("hf"); run("hf-backtrack")  # warm-up (task building, first generate)
    best, res, n_bt_runs = {"hf": float("inf"), "hf-backtrack": float("inf")}, {}, 0
    spent[0] = 0.0
    for _ in range(a.repeats):
        for name in ("hf", "hf-backtrack") if _ % 2 == 0 else ("hf-backtrack", "hf"):
            t, r = run(name); best[name] = min(best[name], t); res[name] = r; n_bt_runs += name == "hf-backtrack"
    plain, bt = res["hf"], res["hf-backtrack"]
    assert plain["exact_match_flexible,none"] == bt["raw_exact_match_flexible,none"], "hf's text should be hf-backtrack's raw text"
    ratio = best["hf-backtrack"] / best["hf"]
    print(f"toy_arithmetic_backtrack, {a.n} samples, model {a.preset}, batch {a.batch_size}, max_gen_toks {a.max_gen_toks}, "
          f"greedy, cpu, torch threads {torch.get_num_threads()}, best of {a.repeats}")
    print(f"hf (lm-eval)     : {best['hf']:7.2f} s")
    print(f"hf-backtrack     : {best['hf-backtrack']:7.2f} s   (bt_rate {bt['bt_rate,none']:.1f}/100 tokens, "
          f"share_with_bt {bt['share_with_bt,none']:.2f})")
    print(f"ratio bt / plain : {ratio:7.3f}   (target <= 1.10)")
    own = spent[0] / max(n_bt_runs, 1)
    print(f"hf-backtrack's own decoding: {own * 1e3:.1f} ms a run = {own / best['hf']:.1%} of the plain run "
          "(the rest of any difference is machine noise)")


if __name__ == "__main__":
    main()
