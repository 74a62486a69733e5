"""Throughput of halluc.reward: the four GRPO reward functions together on 4,096 toy completions of 256 tokens.

Completions are realistic toy solutions (prose, `a op b = c` steps, `The answer is: N`), eight per prompt as GRPO
samples them; each step has a 30% chance of a numeric mistake taken back with BTs, some completions have wasted
BTs, a retype, or a wrong answer. They are scored the way
TRL's GRPOTrainer does: the four functions one after another on each generation batch (256 completions), with
a cold cache. One CPU thread. Printed side by side with a naive reference (per row `apply_backtracking` +
`tokenizer.decode`, no sharing between the four functions) measured in the same run.

    .venv/bin/python bench/bench_reward.py [--n 4096] [--len 256] [--batch 256]
"""
import argparse, random, time
import torch
from halluc.core import apply_backtracking, backtrack_stats
from halluc.reward import make_reward_funcs, clear_caches, _text_scores, prompt_numbers, normalize_number, REWARD_NAMES
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
            _text_scores(text, prompt_numbers(p), normalize_number(f), False)
    return time.perf_counter() - t

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4096); ap.add_argument("--len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=256); ap.add_argument("--naive-n", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(1)
    tok = make_tokenizer("llama"); bt = bt_id_of(tok)
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
          f"{funcs[0].scorer.decode.table is not None}")
    print("mean rewards: " + ", ".join(f"{k}={v:.3f}" for k, v in mean.items()))
    print(f"halluc.reward, all four functions: {dt:.3f} s  ->  {a.n / dt:,.0f} completions/s  (target >= 5,000/s; "
          f"CPU time {cpu:.3f} s -> {a.n / cpu:,.0f}/s; best of {a.repeat} cold runs)")
    print(f"naive reference (measured on {k}):  {dt_naive:.3f} s  ->  {a.n / dt_naive:,.0f} completions/s")
    print(f"speed-up: {dt_naive / dt:.1f}x")
    assert all(f.stats["errors"] == 0 and f.stats["invalid"] == 0 for f in funcs), [f.stats for f in funcs]

if __name__ == "__main__":
    main()
