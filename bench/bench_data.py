"""Converting all GSM8K train records with the `numeric` converter (tokenise + inject + labels),
through `datasets.map` with batching: records/s, single process and with worker processes, in one run.

Usage: python bench/bench_data.py [--gsm8k ../shared/data/gsm8k/train.jsonl] [--num-proc 2] [--tokenizer llama]
"""
import argparse, os, time
from pathlib import Path
from halluc.data import load_records, build_sft_dataset
from halluc.toy import make_tokenizer
from halluc.patcher import add_backtrack_token

def main():
    default = Path(os.environ.get("GSM8K_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k")) / "train.jsonl"
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gsm8k", default=str(default)); ap.add_argument("--num-proc", type=int, default=2)
    ap.add_argument("--tokenizer", default="llama", choices=["llama", "qwen"])
    a = ap.parse_args()
    recs = load_records(a.gsm8k)
    tok = make_tokenizer(a.tokenizer); bt = add_backtrack_token(tok)
    build_sft_dataset(recs[:300], tok, bt, "numeric", max_length=None)  # warm-up: imports, caches
    res = {}
    for n in (None, a.num_proc):
        t = time.perf_counter()
        ds = build_sft_dataset(recs, tok, bt, "numeric", max_length=None, num_proc=n)
        res[n] = time.perf_counter() - t
        assert len(ds) == len(recs)
    n_tok = sum(len(x) for x in ds["input_ids"])
    print(f"{len(recs)} GSM8K train records, numeric converter, {a.tokenizer} toy tokenizer, {n_tok / len(recs):.0f} tokens/example")
    for n, t in res.items():
        print(f"num_proc={n or 1}: {t:6.2f} s  {len(recs) / t:8.0f} records/s  (target >= 1000)")
    print(f"ratio 1 process / {a.num_proc} processes: {res[None] / res[a.num_proc]:.2f}x")

if __name__ == "__main__":
    main()
