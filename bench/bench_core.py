"""keep_mask (vectorised, stays on the device) vs apply_backtracking looped over rows (with .tolist()).

Prints the ratio measured side by side in one run (best of N timings each), and tokens/s of both.
Usage: python bench/bench_core.py [--batch 256] [--time 2048] [--bt-rate 0.1] [--repeats 7] [--device cpu]
"""
import argparse, time
import torch
from halluc.core import apply_backtracking, keep_mask

def best_of(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter(); fn(); best = min(best, time.perf_counter() - t)
    return best

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=256); ap.add_argument("--time", type=int, default=2048)
    ap.add_argument("--bt-rate", type=float, default=0.1); ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--device", default="cpu"); ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: same as the single-threaded loop, stable under load)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(a.seed)
    BT = 3
    ids = torch.randint(4, 50_000, (a.batch, a.time), generator=g)
    ids[torch.rand(a.batch, a.time, generator=g) < a.bt_rate] = BT
    ids = ids.to(a.device)
    sync = (lambda: torch.cuda.synchronize()) if ids.is_cuda else (lambda: None)

    def vec(): keep_mask(ids, BT); sync()
    def loop(): [apply_backtracking(r, BT) for r in ids.tolist()]
    def tight():  # the same rule without input checks: the fastest plain-Python baseline
        for r in ids.tolist():
            st = []
            for t in r:
                if t == BT:
                    if st: st.pop()
                else: st.append(t)

    # correctness first: the two agree
    m = keep_mask(ids, BT)
    assert all(r[mm].tolist() == apply_backtracking(r.tolist(), BT) for r, mm in zip(ids[:16], m[:16]))
    vec(); loop()  # warm-up
    tv, tl, tt = best_of(vec, a.repeats), best_of(loop, a.repeats), best_of(tight, a.repeats)
    n = a.batch * a.time
    print(f"batch [{a.batch}, {a.time}] int64, ~{a.bt_rate:.0%} BTs, device {a.device}, torch threads {torch.get_num_threads()}")
    print(f"keep_mask (vectorised)      : {tv*1e3:8.2f} ms  {n/tv/1e6:8.1f} M tokens/s")
    print(f"apply_backtracking row loop : {tl*1e3:8.2f} ms  {n/tl/1e6:8.1f} M tokens/s")
    print(f"bare Python loop (no checks): {tt*1e3:8.2f} ms  {n/tt/1e6:8.1f} M tokens/s")
    print(f"ratio loop/vectorised       : {tl/tv:8.1f}x  (target >= 5x)")
    print(f"ratio bare loop/vectorised  : {tt/tv:8.1f}x")

if __name__ == "__main__":
    main()
