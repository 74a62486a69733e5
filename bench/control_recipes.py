"""Recipe search for the control task's `backtrack` arm, on the VALIDATION split (carved from train; test is never read).

Each recipe is trained with `halluc.jobs.train_job` (the experiment's configs plus overrides) and evaluated greedy on
200 validation problems by the run's own quick eval (`data.eval_split=validation`), then diagnosed with
`halluc.measure.attempt_diagnostics`. Continued recipes start from the `opt` model, as the experiment's arms start from
`control_pretrain`. One seed, one thread per process; run two at a time on a 2-core machine.

    OMP_NUM_THREADS=1 .venv/bin/python bench/control_recipes.py opt btc5 [--root /tmp/recipes]

Figures from the session that chose the shipped recipe (toy:llama-tiny, difficulty 1, batch 32, 200 validation
problems, seed 0 unless said; EM = exact match by the verifier; first = first attempt right; prec = BT precision;
kept = a wrong attempt kept: miss (sum != target) / unlisted (target reached with a number not listed)):
  recipe                                                         EM     first  prec   recovery harm  kept miss/unlisted
  opt     clean, 600 steps from scratch (the start of the c* runs) 0.715  0.715  -      -        -     0.00 / 0.045 (false claims 0.24)
  optc    opt + 300 clean                                          0.715
  optc12  opt + 1200 clean  (the matched control of *12)           0.865  0.865  -      -        -     0.00 / 0.07
  btu1    search, proposals trained, 600 from scratch              0.25   0.245  0.89
  btm1    search masked, 600 from scratch                          0.35   0.36   0.97
  bts15   search masked, 1500 from scratch                         0.77   0.765  0.48   0.01     0.005 0.015 / 0.215
  btc     opt + 300 search masked, ratio 0.8                       0.345  0.44   0.72   0.115    0.20  (deleted a right attempt 0.44)
  btc5    opt + 600 search masked, ratio 0.5                       0.715  0.63   0.94   0.095    0.01  0.08 / 0.19
  btc12   opt + 1200 search masked, ratio 0.5 (shipped recipe)     0.85   0.83   1.00   0.02     0.00  0.01 / 0.14
  btc12s1 the same, seed 1                                         0.875  0.845  1.00   0.03     0.00  0.01 / 0.115
  offc    btc5 + proposals that reach the target with an unlisted number   0.685  0.70  0.62  0.01  0.025
  offc12  btc12 + the same                                         0.825  0.805  0.66   0.035    0.015 0.065 / 0.11
  offc12r8 offc12 with ratio 0.8                                   0.81   0.72   0.45   0.14     0.05  0.025 / 0.165
  sys6    systematic search (every pair in order), 600 from scratch 0.15  0.115  0.87   0.14     0.105 0.81 / 0.035
  sysc    opt + 400 systematic                                      0.10   0.115  0.85   0.08     0.095 0.86 / 0.01
  sys15   systematic, 1500 from scratch                             0.28   0.115  0.86   0.265    0.10  0.715 / 0.005
  --- 2026-12-02: at the main job's budget (400 clean from scratch, then 400 more), seeds 0 / 1 ---
  opt4    clean, 400 from scratch (= control_pretrain)               0.36/0.425 (false claims 0.64/0.48)
  optc4   opt4 + 400 clean                                          0.65/0.765 0.65/0.765 -   -        -     0.00/0.00 / 0.02/0.14
  btc4    opt4 + 400 search masked (the traces before miss)         -/0.475  -/0.485 -/0.75 -/0.02   -/0.03 -/0.335 / -/0.18
  btm4    btc4 + miss + correct_start (shipped recipe)              0.49/0.375 0.47/0.355 0.98/1.00 0.08/0.02 0.06/0.00 0.075/0.095 / 0.05/0.095
          (btm4: false claims kept 0.38/0.43, honest sums 0.61/0.46: the check works on what is written, the first attempt claims the target)
  optc4h  optc4 continued at 3e-3 cosine (seed 0)                  0.675  0.675
  btm4h   btm4 continued at 3e-3 cosine (seed 0)                    0.51   0.515  1.00   0.025    0.03  0.17 / 0.055 (false claims 0.265)
  btm4r3  btm4, ratio 0.3 (seed 0)                                  0.53   0.51   1.00   0.02     0.00  0.10 / 0.02 (false claims 0.35; BT on 0.065)
  btm4r2  btm4, ratio 0.2 (seed 0)                                  0.535  0.535  -      0.00     0.00  0.025 / 0.01 (false claims 0.43; never BTs)
  Pilots of other designs (an in-process script that swapped the converter, not committed; seed 0, validation):
  complement search (each attempt a listed a and t-a, deleted when t-a is not listed), unmasked, 600 / 1200 from scratch:
          0.61 / 0.66, kept unlisted 0.365 / 0.34 -- a 2-digit complement is deleted, a 1-digit unlisted one never:
          the membership check is not learned (toy:llama-small, 600 steps: 0.59, kept unlisted 0.315)
  the same cut after t-a (decision at the number itself), opt4 + 400: 0.545 (share with BT 0.01)
  lettered numbers (A=6 B=3 ...; attempts name letters, copy values), 600 from scratch: clean 0.71, search 0.225 (letters not followed)
  5 numbers up to 9, opt 600 + 600 / + 1800 clean: 0.82 / 0.935; + 600 / + 1800 search masked: 0.56 / 0.865
          (+1800: precision 1.00, kept miss 0.00, kept unlisted 0.135, BT on 0.01 of problems: every error left is a pair
          that reaches the target with a number that is not listed)
  --- 2026-12-02, third session (seed 0, validation): does a search the model need not invent, or a harder task, pay? ---
  opt8    clean, 800 from scratch (cosine)                          0.815  0.815  -      -        -     0.00 / 0.04 (false claims 0.145)
  opt16   clean, 1600 from scratch                                  0.925  0.925  -      -        -     0.00 / 0.025 (false claims 0.05)
  sysm8   systematic search saying how each pair misses (every pair in order up to the solution, all of it trained),
          800 from scratch                                          0.72   0.115  1.00   0.645    0.04  0.19 / 0.00
          (repeats 0.09; deleted right 0.065: equal sums read as a miss, `8 + 5 = 13 < 13`; after 5 misses it writes
          the last pair as the target without copying it: `8 + 6 = 15` for `9 6`)
  sysm16  the same, 1600 from scratch                               0.705  0.115  0.98   0.59     0.00  0.075 / 0.175 (repeats 0.34:
          it loses its place in the enumeration; 99.5 tokens a problem)
  sysm8 seed 1                                              0.54   0.11   1.00   0.43     0.00  0.015 / 0.00 (false claims 0.445,
          honest sums 0.49: this seed learnt to claim the target instead of adding)
  sysm6   the same, 600 from scratch                                0.165  0.115  1.00   0.155    0.105 0.65 / 0.14 (repeats 0.355)
  sysm4c  opt4 + 400 systematic                                     0.185  0.08   1.00   0.145    0.035 0.515 / 0.02 (false claims 0.28)
  btm8    the shipped traces (miss, correct_start), 800 from scratch 0.635 0.58   1.00   0.055    0.00  0.065 / 0.29 (honest sums 0.99)
  btm8off btm8 + proposals that reach the target with an unlisted number  0.385  0.38  1.00  0.02  0.015 0.11 / 0.065 (false claims 0.44)
  Pilot of a harder task (an in-process script that swapped the records and the converter, not committed): pick THREE of
  4 numbers up to 9 (always one solution), 800 steps from scratch: optimal paths 0.435 (one pass is hard here); systematic
  search saying how each triple misses 0.285 (BT on 0.965; equal sums read as misses, `2 + 8 + 5 = 15 < 15`, and the last
  triple written without copying it); sampled wrong triples (masked, ratio 0.5 / 0.8) 0.15 / 0.12 (repeated numbers,
  wrong sums: the tiny model learns neither the 3-number sum nor the comparison at this budget).
  Pilot of a search whose next attempt follows from the last one's comparison (same script): the numbers sorted, 4 up to
  19, two pointers (too small: move the left number up; too big: the right one down; at most 3 misses), all trained,
  800 from scratch: optimal paths 0.585, two-pointer traces 0.13 (two-digit sums and comparisons wrong, `10 + 8 = 11 > 3`,
  and the line after the misses claims the target without adding: `1 + 11 = 13`).
  toy:llama-small (4 layers, hidden 128; ~3x the step time), 800 from scratch, seeds 0 / 1 / 2:
  opt8s   clean, the config's lr 3e-3                               0.62 / 0.55 / 0.705 (false claims 0.325 / 0.43 / -)
  sysm8s  systematic search + miss, lr 3e-3                         0.66 / 0.84 / 0.995 (precision 0.996 / 0.993 / 1.00,
          harm 0.00 / 0.005 / 0.00; 87-90 tokens a problem) -- ahead of opt8s on every seed, but:
  opt8sl  clean, lr 1e-3                                            0.985 / 0.965 (seeds 0 / 1): the baseline at its own
          tuned learning rate solves the task in one pass, so the lead above is the baseline's learning rate, not search
  btm8s   the shipped traces, from scratch, lr 3e-3 (seed 0)        0.60   0.575  1.00   0.025    0.00  0.085 / 0.315
  --- 2026-12-02, fourth session: the model's OWN wrong lines as the failed attempts (bench/control_onpolicy.py), seeds 0 / 1 ---
  (opt4 measured again today, the same command: 0.47 / 0.48; every row below is from today's runs, side by side)
  optc4   opt4 + 400 clean                                          0.705 / 0.665
  optc8   opt4 + 800 clean  (the matched control of onp8, loop4)    0.825 / 0.735 (false claims 0.145 / 0.08)
  onp4    opt4 + 400 on the start model's wrong first lines (greedy first, then distinct wrong ones from 8 samples at T=1;
          masked, deleted whole, then the solution; ratio 0.5, 1-2 lines)  0.59 / -   0.58   0.61   0.02  0.01  (BT on 0.135,
          repeats 0.14, kept false claims 0.41)
  onp8    the same, 800 steps                                       0.745 / 0.585  0.78 / 0.61  0.32 / 0.45  0.04 / 0.06
          0.075 / 0.085 (BT on 0.615 / 0.555, deleted right 0.495 / 0.38, repeats 0.69 / 0.765, kept false claims 0.225 / 0.295)
  (the start model's wrong lines: 49% / 52% of its greedy first lines, nearly all false claims such as `6 + 3 = 8`; 3.8 / 4.6
  distinct wrong lines a problem; sampling 4000 x 9 takes ~47 s)
  the package's own on-policy path (halluc.onpolicy: the first wrong step of k=4 samples, BTs, the reference continuation):
  OnPolicySFTExecutor, one round of 800 (seed 0)                    0.575         0.58   0.42   0.23  0.235 (BT on 1.00)
  loop4   SelfCorrectionLoop, 2 rounds x 400 (rounds 1 / 2)        seed 0: 0.425 / 0.505 (precision 0.61 / 0.54, BT on 0.75 / 0.97);
                                                                    seed 1: 0.445 / 0.62  (precision 0.62 / 0.64, BT on 0.685 / 0.14)
  The model's own errors here are false claims: checking `6 + 3 = 8` means adding again, the same work as writing the sum,
  so the detector is the arithmetic task's (precision 0.32-0.64: BTs fire on right lines and wrong ones alike), and after a
  deletion the model writes the deleted pair again (repeats up to 0.77). On-policy traces lose 8-32 points to matched
  clean training on both seeds.
Reading: the sum check is learned (precision 1.0, no harm) once the traces get ~1200 steps, but the model's own
residual errors are then pairs that reach the target with a number that is not listed, which a sum check cannot see;
training the membership check (offc*) or a systematic search (sys*) did not converge at these budgets. No recipe beat
matched optimal-path SFT on validation. A search the model need not invent (systematic, every pair in order) removes the
membership errors (kept unlisted 0.00 at 800 steps) but the 2-layer model loses its place in a 6-pair enumeration and
reads equal sums as misses; it is unstable across seeds (0.72 / 0.54) and does not improve with twice the steps
(0.72 -> 0.705) while optimal paths do (0.815 -> 0.925); on tasks where one pass is hard (three of four numbers: 0.435;
sorted numbers up to 19: 0.585) the search fails harder (0.285; 0.13). In every design the line written after the
failed attempts copies the target instead of adding, since in training that line always reaches it.
Trained on its own errors (onp*, loop4), the check does not learn either: those errors are false claims, which only
adding again can expose, and the tiny model does not learn that check at these budgets (precision 0.32-0.64).
With a 4-layer model the one-pass baseline (tuned) reaches 0.965-0.985 at 800 steps: no room is left for +10 points on
this task, and the harder tasks defeat the tiny model's search. A positive control therefore needs a task that is hard in
one pass for a model that can learn the search, i.e. more model and steps than 10 minutes of 2 CPU cores give.
"""
import argparse, json, os, sys, time
os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch
torch.set_num_threads(1)
from halluc.data import load_records
from halluc.generate import generate_completions
from halluc.jobs import train_job
from halluc.measure import attempt_diagnostics
from halluc.patcher import load_backtrack_model

CONT = ["trainer.learning_rate=1e-3", "trainer.lr_scheduler_type=constant", "trainer.warmup_steps=0"]
PLAIN = ["data.converter_params.miss=false", "data.converter_params.correct_start=false"]   # the traces before miss/correct_start
SYS = ["data.converter_params.systematic=true", "data.converter_params.ratio=1.0", "data.mask_errors=false",
       "data.converter_params.correct_start=false", "eval.max_new_tokens=192"]
RECIPES = {   # name -> (config, start recipe or None, steps, overrides)
    "opt": ("configs/toy_target_optimal.yaml", None, 600, []),
    "optc": ("configs/toy_target_optimal.yaml", "opt", 300, CONT),
    "btu1": ("configs/toy_target_backtrack.yaml", None, 600, PLAIN + ["data.mask_errors=false"]),
    "btm1": ("configs/toy_target_backtrack.yaml", None, 600, PLAIN),
    "btc": ("configs/toy_target_backtrack.yaml", "opt", 300, PLAIN + CONT + ["data.converter_params.ratio=0.8"]),
    "btc5": ("configs/toy_target_backtrack.yaml", "opt", 600, PLAIN + CONT),
    "negc": ("configs/toy_target_backtrack.yaml", "opt", 600, PLAIN + CONT + ["data.converter_params.honest=false"]),
    "optc12": ("configs/toy_target_optimal.yaml", "opt", 1200, CONT),
    "btc12": ("configs/toy_target_backtrack.yaml", "opt", 1200, PLAIN + CONT),
    "offc": ("configs/toy_target_backtrack.yaml", "opt", 600, PLAIN + CONT + ["data.converter_params.unlisted=true"]),
    "offc12": ("configs/toy_target_backtrack.yaml", "opt", 1200, PLAIN + CONT + ["data.converter_params.unlisted=true"]),
    "offc12r8": ("configs/toy_target_backtrack.yaml", "opt", 1200, PLAIN + CONT + ["data.converter_params.unlisted=true", "data.converter_params.ratio=0.8"]),
    "sys6": ("configs/toy_target_backtrack.yaml", None, 600, PLAIN + ["data.converter_params.systematic=true", "data.converter_params.ratio=1.0",
                                                                "data.mask_errors=false", "eval.max_new_tokens=160"]),
    "bts15": ("configs/toy_target_backtrack.yaml", None, 1500, PLAIN),
    # at the main job's budget: 400 clean steps, then 400 more (the experiment's control_pretrain -> arms)
    "opt4": ("configs/toy_target_optimal.yaml", None, 400, []),
    "optc4": ("configs/toy_target_optimal.yaml", "opt4", 400, CONT),
    "btc4": ("configs/toy_target_backtrack.yaml", "opt4", 400, PLAIN + CONT),
    "btm4": ("configs/toy_target_backtrack.yaml", "opt4", 400, CONT),
    "optc4h": ("configs/toy_target_optimal.yaml", "opt4", 400, ["trainer.warmup_steps=0"]),     # continued at the config's 3e-3, cosine
    "btm4h": ("configs/toy_target_backtrack.yaml", "opt4", 400, ["trainer.warmup_steps=0"]),
    "btm4r3": ("configs/toy_target_backtrack.yaml", "opt4", 400, CONT + ["data.converter_params.ratio=0.3"]),
    "btm4r2": ("configs/toy_target_backtrack.yaml", "opt4", 400, CONT + ["data.converter_params.ratio=0.2"]),
    # systematic search that says how each pair misses (every listed pair in order up to the solution, all trained)
    "sysm8": ("configs/toy_target_backtrack.yaml", None, 800, SYS),
    "sysm4c": ("configs/toy_target_backtrack.yaml", "opt4", 400, CONT + SYS),
    "sysm16": ("configs/toy_target_backtrack.yaml", None, 1600, SYS),
    "sysm6": ("configs/toy_target_backtrack.yaml", None, 600, SYS),
    "sysm8s": ("configs/toy_target_backtrack.yaml", None, 800, SYS + ["model.name_or_path=toy:llama-small"]),   # 4 layers, hidden 128
    "opt8s": ("configs/toy_target_optimal.yaml", None, 800, ["model.name_or_path=toy:llama-small"]),
    "btm8s": ("configs/toy_target_backtrack.yaml", None, 800, ["model.name_or_path=toy:llama-small"]),
    "opt8sl": ("configs/toy_target_optimal.yaml", None, 800, ["model.name_or_path=toy:llama-small", "trainer.learning_rate=1e-3"]),
    "opt8": ("configs/toy_target_optimal.yaml", None, 800, []),
    "opt16": ("configs/toy_target_optimal.yaml", None, 1600, []),
    "btm8": ("configs/toy_target_backtrack.yaml", None, 800, []),              # the shipped traces, from scratch
    "btm8off": ("configs/toy_target_backtrack.yaml", None, 800, ["data.converter_params.unlisted=true"]),
}

def run(name, root, seed=0):
    cfg, base, steps, more = RECIPES[name]
    ovs = [f"run.root={root}", f"run.name={name}", "run.overwrite=true", f"run.seed={seed}", f"model.seed={seed}", f"data.seed={seed}",
           "data.eval_split=validation", "eval.limit=200", f"trainer.max_steps={steps}", *more]
    if base: ovs.append(f"model.name_or_path={root}/{base}/model")
    t0 = time.time()
    q = train_job("sft", cfg, ovs)["quick_eval"]
    model, tok, info = load_backtrack_model(f"{root}/{name}/model")
    recs = load_records("toy_target", "validation", toy_n=200, toy_difficulty=1)
    ids = generate_completions(model, tok, recs, next((int(o.split("=")[1]) for o in more if o.startswith("eval.max_new_tokens=")), 128))
    raw = [tok.decode(i, skip_special_tokens=False) for i in ids]
    from halluc.core import apply_backtracking
    kept = [tok.decode(apply_backtracking(i, info["bt_id"]), skip_special_tokens=True) for i in ids]
    d = attempt_diagnostics(recs, raw, kept, tok.convert_ids_to_tokens(info["bt_id"]))
    keys = ("exact_match", "counterfactual_exact_match", "recovery_rate", "harm_rate", "bt_precision", "share_with_bt", "tokens_per_problem")
    print(json.dumps(dict(recipe=name, seconds=round(time.time() - t0), **{k: q.get(k) for k in keys}, **d)), flush=True)

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("recipes", nargs="+", choices=sorted(RECIPES)); ap.add_argument("--root", default="/tmp/halluc-recipes")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    for r in a.recipes: run(r, a.root, a.seed)
