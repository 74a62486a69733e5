"""Throughput of halluc.reward: the four GRPO reward functions together on 4,096 toy completions of 256 tokens.

Completions are realistic toy solutions (prose, `a op b = c` steps, `The answer is: N`), eight per prompt as GRPO
samples them; each step has a 30% chance of a numeric mistake taken back with BTs, some completions have wasted
BTs, a retype, or a wrong answer. They are scored the way
TRL's GRPOTrainer does: the four functions one after another on each generation batch (256 completions), with
a cold cache. One CPU thread. Printed side by side with a naive reference (per row `apply_backtracking` +
`tokenizer.decode`, no sharing between the four functions) measured in the same run.

    .venv/bin/python bench/bench_reward.py [--n 4096] [--len 256] [--batch 256] [--tricks] [--scaling]

`--tricks` also scores everything with each of halluc.reward's speed tricks turned off, one at a time, and prints
what each buys (the numbers quoted in nbs/10_reward.ipynb).
"""
import argparse, contextlib, random, time
from unittest import mock
import torch
import halluc.reward as R
from halluc.core import apply_backtracking, backtrack_edits, backtrack_stats
from halluc.reward import make_reward_funcs, text_scores, byte_table, REWARD_NAMES
from halluc.grading import clear_caches, prompt_numbers, normalize_number
from halluc.toy import make_tokenizer, arithmetic_records

def bt_id_of(tok):
    from halluc.patcher import add_backtrack_token
    return add_backtrack_token(tok)   # the llama-like toy tokenizer: reuses <|reserved_special_token_0|>

def make_completions(tok, bt, n, length, group=8, seed=0):
    "n completions of exactly `length` ids, `group` per prompt (as GRPO samples them), with prompts and gold answers."
    rng = random.Random(seed)
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]
    recs = [r for r in arithmetic_records(-(-n // group), seed=seed, difficulty=5) for _ in range(group)][:n]
    prompts, ids, finals = [], [], []
    for rec in recs:
        steps = [l for l in rec["solution"].split("\n") if not l.startswith("####")]
        body = []
        if rng.random() < 0.05: body += [bt] * rng.randint(1, 3)                    # wasted BTs
        for line in steps:
            lhs, c = line.split(" = ")
            body += enc(f"\nSo {lhs} = ")
            if rng.random() < 0.3:                                                  # a near miss, taken back
                wrong = enc(str(int(c) + rng.choice([-2, -1, 1, 2, 10])))
                body += wrong + [bt] * len(wrong)
            elif rng.random() < 0.05:                                               # delete and retype
                body += enc(c)[:1] + [bt]
            body += enc(c) + enc(".")
        final = rec["final"] if rng.random() > 0.1 else str(int(rec["final"]) + 1)
        tail = enc(f"\nThe answer is: {final}") + [tok.eos_token_id]
        prose = []
        while len(prose) + len(body) + len(tail) < length:
            prose += enc(" Let me restate the problem. " + rec["question"])
        prose = prose[len(prose) + len(body) + len(tail) - length:]
        ids.append(prose + body + tail); prompts.append(rec["question"]); finals.append(rec["final"])
        assert len(ids[-1]) == length
    return prompts, ids, finals

def run_fast(tok, bt, prompts, ids, finals, batch):
    "Wall and CPU seconds to score everything, starting cold (fresh functions, module caches emptied)."
    clear_caches()
    funcs = make_reward_funcs(tok, bt)
    out = {f.__name__: [] for f in funcs}
    t, c = time.perf_counter(), time.process_time()
    for a in range(0, len(ids), batch):
        kw = dict(prompts=prompts[a:a + batch], completions=[""] * len(ids[a:a + batch]),
                  completion_ids=ids[a:a + batch], final=finals[a:a + batch], trainer_state=None)
        for f in funcs: out[f.__name__] += f(**kw)
    return time.perf_counter() - t, time.process_time() - c, out, funcs

def run_naive(tok, bt, prompts, ids, finals):
    "The obvious implementation: each of the four functions backtracks and decodes every row itself."
    clear_caches()
    t = time.perf_counter()
    for _ in REWARD_NAMES:
        for p, r, f in zip(prompts, ids, finals):
            text = tok.decode(apply_backtracking(r, bt), skip_special_tokens=True)
            backtrack_stats(r, bt)
            text_scores(text, prompt_numbers(p), normalize_number(f), False)
    return time.perf_counter() - t

def _plain_prompt_numbers(init):
    def __init__(self, *a, **kw): init(self, *a, **kw); self.prompt_nums = prompt_numbers
    return __init__

TRICKS = {  # name -> a context manager that turns the trick off
    "byte-table decoding (make_decoder)": lambda: mock.patch.object(R, "byte_table", lambda tok: None),
    "tail-only replay (edits_of)": lambda: mock.patch.object(R, "edits_of", lambda ids, bt: backtrack_edits(ids, bt) if bt in ids else []),
    "last-batch memo (_LastBatch)": lambda: mock.patch.object(R._LastBatch, "get", lambda self, *a: None),
    "completion cache (Scorer.cache)": lambda: mock.patch.object(R.Scorer, "__init__", _cache_off(R.Scorer.__init__)),
    "prompt-number memo (Scorer.prompt_nums)": lambda: mock.patch.object(R.Scorer, "__init__", _plain_prompt_numbers(R.Scorer.__init__)),
}

def _cache_off(init):
    def __init__(self, *a, **kw): init(self, *a, **kw); self.cache_size = 0
    return __init__

def measure_tricks(tok, bt, prompts, ids, finals, batch, repeat):
    "CPU seconds with everything on, then with each trick off (best of `repeat`, interleaved against machine load)."
    cpu = {name: [] for name in [None, *TRICKS]}
    for _ in range(repeat):
        for name in cpu:
            with (TRICKS[name]() if name else contextlib.nullcontext()):
                cpu[name].append(run_fast(tok, bt, prompts, ids, finals, batch)[1])
    base = min(cpu.pop(None))
    for name, ts in cpu.items():
        print(f"  without {name:42s} CPU {min(ts):.3f} s -> {len(ids) / min(ts):,.0f}/s: the trick buys {min(ts) / base:.2f}x")

def measure_scaling(tok, bt, short: int = 4096, factor: int = 16, repeat: int = 3):
    "Per-token time of `halluc.reward.score` on one long completion vs one `factor`x longer, side by side: ~1x is linear."
    from halluc.reward import score
    dec = lambda ids: tok.decode(ids, skip_special_tokens=True)
    base = tok.encode("3 + 4 = 7\n7 * 2 = 14\n", add_special_tokens=False)
    def completion(n, seed=0):
        rng, ids = random.Random(seed), []
        while len(ids) < n:
            ids += base
            if rng.random() < 0.3: ids += [bt] * rng.randint(1, 3)
        return ids[:n]
    a, b = completion(short), completion(short * factor)
    ta, tb = [], []
    for _ in range(repeat):   # interleaved, best of each
        t = time.perf_counter(); score(a, bt, dec, final="14"); ta.append(time.perf_counter() - t)
        t = time.perf_counter(); score(b, bt, dec, final="14"); tb.append(time.perf_counter() - t)
    per_a, per_b = min(ta) / len(a), min(tb) / len(b)
    print(f"score() on one completion: {len(a):,} tokens {min(ta) * 1e3:.1f} ms, {len(b):,} tokens {min(tb) * 1e3:.1f} ms; "
          f"time per token grows {per_b / per_a:.2f}x for {factor}x the length (1x = linear, {factor}x = quadratic)")

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4096); ap.add_argument("--len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=256); ap.add_argument("--naive-n", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3); ap.add_argument("--tricks", action="store_true")
    ap.add_argument("--scaling", action="store_true", help="only the per-token time of one long completion vs one 16x longer")
    a = ap.parse_args()
    torch.set_num_threads(1)
    tok = make_tokenizer("llama"); bt = bt_id_of(tok)
    if a.scaling: return measure_scaling(tok, bt, repeat=a.repeat)
    prompts, ids, finals = make_completions(tok, bt, a.n, a.len)
    n_bt = sum(bt in r for r in ids)
    run_fast(tok, bt, prompts[:256], ids[:256], finals[:256], a.batch)  # imports, compiled regexes
    k = min(a.naive_n, a.n)
    runs, naive = [], []
    for _ in range(a.repeat):  # interleaved, so both see the same machine load; the best of each is reported
        runs.append(run_fast(tok, bt, prompts, ids, finals, a.batch))
        naive.append(run_naive(tok, bt, prompts[:k], ids[:k], finals[:k]) * a.n / k)
    dt, cpu, out, funcs = min(runs, key=lambda r: r[0])
    dt_naive = min(naive)
    mean = {name: sum(v) / len(v) for name, v in out.items()}
    print(f"{a.n} completions x {a.len} tokens ({n_bt} with BTs), batches of {a.batch}, 1 thread, fast decoding: "
          f"{byte_table(tok) is not None}")
    print("mean rewards: " + ", ".join(f"{k}={v:.3f}" for k, v in mean.items()))
    print(f"halluc.reward, all four functions: {dt:.3f} s  ->  {a.n / dt:,.0f} completions/s  (target >= 5,000/s; "
          f"CPU time {cpu:.3f} s -> {a.n / cpu:,.0f}/s; best of {a.repeat} cold runs)")
    print(f"naive reference (measured on {k}):  {dt_naive:.3f} s  ->  {a.n / dt_naive:,.0f} completions/s")
    print(f"speed-up: {dt_naive / dt:.1f}x")
    sc = funcs[0].scorer
    print(f"completions scored {sc.n_scored:,}, served by the caches {sc.n_cache_hits:,} (of {4 * a.n:,} rows in all calls)")
    assert all(f.stats["errors"] == 0 and f.stats["invalid"] == 0 for f in funcs), [f.stats for f in funcs]
    if a.tricks: measure_tricks(tok, bt, prompts, ids, finals, a.batch, a.repeat)

if __name__ == "__main__":
    main()
