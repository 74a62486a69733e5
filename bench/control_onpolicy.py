"""On-policy search traces for the control task, on the VALIDATION split (test is never read); figures in
`control_recipes.py`'s docstring.

`lines`: the start model's own wrong first lines (its greedy one first, then distinct wrong ones from `k` samples at T=1, as
the verifier `halluc.toy.target_solved` judges them), masked, each deleted whole by BTs, then the reference solution; with
probability `ratio` a record gets 1 to `num_errors` of them, else its clean solution. The converter is registered in-process
under the name `search` (`halluc.data.register_converter`), so `configs/toy_target_backtrack.yaml` runs with it; the name
`onpolicy` would not do: an SFT config with `data.converter=onpolicy` runs `OnPolicySFTExecutor`, which samples on its own.
`loop`: the package's own `halluc.jobs.SelfCorrectionLoop` (sample, `halluc.onpolicy` examples, SFT) for `rounds` rounds.
Both continue from `ROOT/opt4/model` (made by `control_recipes.py opt4 --root ROOT --seed S`), as the experiment's arms
continue from `control_pretrain`; compare with `optc4` / `optc8` (the same start, clean, matched steps).

    OMP_NUM_THREADS=1 .venv/bin/python bench/control_onpolicy.py lines --root /tmp/r --seed 0 --steps 800
    OMP_NUM_THREADS=1 .venv/bin/python bench/control_onpolicy.py loop --root /tmp/r --seed 0 --steps 400 --rounds 2
"""
import argparse, json, os, sys, time
os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch
torch.set_num_threads(1)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import control_recipes as CR
from halluc.config import load_config
from halluc.core import apply_backtracking
from halluc.data import load_records, register_converter
from halluc.generate import generate_completions, sample_solutions
from halluc.jobs import SelfCorrectionLoop
from halluc.patcher import load_backtrack_model
from halluc.toy import parse_target_question, target_solved

CONFIG = "configs/toy_target_backtrack.yaml"

def wrong_lines(model_dir: str, seed: int, k: int) -> tuple[dict, dict]:
    "Record id -> the model's distinct wrong first lines (token ids, greedy first), and counts."
    model, tok, info = load_backtrack_model(model_dir)
    d = load_config(CONFIG).data   # the run's training records, as its config makes them
    recs = load_records(d.source, "train", toy_n=d.toy_n_train, toy_difficulty=d.toy_difficulty, seed=seed)
    newline = {i for i in range(len(tok)) if "\n" in tok.decode([i])}   # token ids that end a line, decoded once
    greedy = generate_completions(model, tok, recs, 24, batch_size=128)
    by = {}
    for r in (sample_solutions(model, tok, recs, k=k, batch_size=256, max_new_tokens=24, seed=seed, progress=False) if k else []):
        by.setdefault(r["id"], []).append(r["completion_ids"])
    W, greedy_wrong = {}, 0
    for rec, g in zip(recs, greedy):
        nums, target = parse_target_question(rec["question"])
        out = []
        for j, ids in enumerate([g] + by.get(rec["id"], [])):
            ids = apply_backtracking(list(ids), info["bt_id"])
            end = next((i + 1 for i, t in enumerate(ids) if t in newline), None)
            if end is None or target_solved(tok.decode(ids[:end], skip_special_tokens=True), nums, target): continue
            if ids[:end] not in out: out.append(ids[:end]); greedy_wrong += j == 0
        W[rec["id"]] = out
    return W, dict(greedy_wrong=greedy_wrong / len(recs), any_wrong=sum(map(bool, W.values())) / len(recs),
                   wrong_per_record=sum(map(len, W.values())) / len(recs))

def lines(root: str, seed: int, steps: int, ratio: float, num_errors: int, k: int):
    t0 = time.time()
    W, counts = wrong_lines(f"{root}/opt4/model", seed, k)
    print(json.dumps(dict(sampling_s=round(time.time() - t0), **counts)), flush=True)

    @register_converter("search")   # this process only: the backtrack config's converter name, with these lines bound
    def first_lines(enc, tokenizer, rng, params):
        wr = W.get(enc.record["id"], [])
        if not wr or rng.random() >= params.ratio: return [(list(enc.completion_ids), "ok")]
        n = rng.randint(1, min(len(wr), max(1, params.num_errors)))
        pick = [wr[0]] + rng.sample(wr[1:], n - 1) if n > 1 else [wr[0] if rng.random() < 0.5 else rng.choice(wr)]
        return [s for line in pick for s in ((list(line), "error"), ([params.bt_id] * len(line), "bt"))] + [(list(enc.completion_ids), "ok")]

    name = f"onp{steps // 100}"
    CR.RECIPES[name] = (CONFIG, "opt4", steps, CR.CONT + [
        f"data.converter_params.ratio={ratio}", f"data.converter_params.num_errors={num_errors}"])
    CR.run(name, root, seed)

def loop(root: str, seed: int, steps: int, rounds: int, k: int):
    t0 = time.time()
    ovs = [f"run.root={root}", f"run.name=loop{steps // 100}", f"run.seed={seed}", f"model.seed={seed}", f"data.seed={seed}",
           f"model.name_or_path={root}/opt4/model", "data.eval_split=validation", "eval.limit=200", f"trainer.max_steps={steps}", *CR.CONT]
    s = SelfCorrectionLoop(load_config("configs/toy_target_optimal.yaml", ovs), rounds=rounds, k=k).run()
    for r in s["rounds"]:
        print(json.dumps({key: r[key] for key in ("round", "exact_match", "counterfactual_exact_match", "bt_precision", "share_with_bt")}), flush=True)
    print(json.dumps(dict(seconds=round(time.time() - t0))))

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=["lines", "loop"]); ap.add_argument("--root", default="/tmp/halluc-recipes")
    ap.add_argument("--seed", type=int, default=0); ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--ratio", type=float, default=0.5); ap.add_argument("--num-errors", type=int, default=2)
    ap.add_argument("--k", type=int, default=8); ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    if a.kind == "lines": lines(a.root, a.seed, a.steps, a.ratio, a.num_errors, a.k)
    else: loop(a.root, a.seed, a.steps, a.rounds, a.k)
