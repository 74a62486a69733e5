"""On-policy sampling throughput on the toy model: completions/s with batched, left-padded generation
(`halluc.onpolicy.sample_solutions`, batch_size 64) against one completion at a time (batch_size 1),
measured side by side in one run, one CPU thread. Then the analysis step (samples -> examples).

Uses the toy experiment's backtrack-SFT model when it exists (runs/toy-experiment/backtrack_sft/model),
else a fresh tiny toy Llama (it never emits an EOS, so every completion runs to max_new_tokens).

Usage: OMP_NUM_THREADS=1 python bench/bench_onpolicy.py [--model DIR] [--records 32] [--k 4] [--max-new-tokens 64]
"""
import os
os.environ.setdefault("OMP_NUM_THREADS", "1")
import argparse, time
from pathlib import Path
import datasets, torch   # imported before timing anything
from halluc.data import load_records
from halluc.generate import sample_solutions
from halluc.onpolicy import build_onpolicy_dataset

def load(model_dir):
    if model_dir and Path(model_dir, "halluc.json").exists():
        from halluc.patcher import load_backtrack_model
        model, tok, info = load_backtrack_model(model_dir)
        return model, tok, info["bt_id"], str(model_dir)
    from halluc.toy import make_tokenizer, make_model
    from halluc.patcher import add_backtrack_token
    tok = make_tokenizer("llama"); model = make_model(tok, "tiny"); bt = add_backtrack_token(tok, model)
    return model, tok, bt, "toy:llama-tiny (untrained)"

def main():
    default = Path(__file__).resolve().parents[1] / "runs" / "toy-experiment" / "backtrack_sft" / "model"
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(default)); ap.add_argument("--records", type=int, default=32)
    ap.add_argument("--k", type=int, default=4); ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64); ap.add_argument("--single", type=int, default=16,
                                                                          help="completions for the one-at-a-time run")
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    model, tok, bt, name = load(a.model)
    recs = load_records("toy", max_records=a.records)
    kw = dict(max_new_tokens=a.max_new_tokens, progress=False, seed=0)
    sample_solutions(model, tok, recs[:2], k=2, batch_size=4, **kw)                      # warm-up
    t = time.perf_counter(); many = sample_solutions(model, tok, recs, k=a.k, batch_size=a.batch_size, **kw)
    t_many = time.perf_counter() - t
    n_single = max(1, a.single // a.k)
    t = time.perf_counter(); one = sample_solutions(model, tok, recs[:n_single], k=a.k, batch_size=1, **kw)
    t_one = time.perf_counter() - t
    r_many, r_one = len(many) / t_many, len(one) / t_one
    toks = sum(len(r["completion_ids"]) for r in many) / len(many)
    print(f"model {name}, {torch.get_num_threads()} thread(s), max_new_tokens={a.max_new_tokens}, {toks:.0f} tokens/completion on average")
    print(f"batched (batch_size={a.batch_size}): {len(many):4d} completions in {t_many:6.2f} s  {r_many:8.1f} completions/s")
    print(f"one at a time (batch_size=1):  {len(one):4d} completions in {t_one:6.2f} s  {r_one:8.1f} completions/s")
    print(f"ratio batched / one at a time: {r_many / r_one:.1f}x  (target >= 5x)")
    t = time.perf_counter(); ds, rep = build_onpolicy_dataset(None, tok, bt, recs, samples=many)
    t_an = time.perf_counter() - t
    print(f"analysis: {rep['samples']} samples -> {len(ds)} examples in {t_an:.2f} s ({rep['samples'] / t_an:.0f} samples/s); "
          f"correct {rep['correct']}, usable mistakes {rep['usable']} of {rep['wrong']}, skipped {rep['skipped']}, modes {rep['modes']}")

if __name__ == "__main__":
    main()
