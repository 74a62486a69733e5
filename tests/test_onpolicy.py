"On-policy data: resumable deterministic sampling, the mistake → BTs → reference invariant, the registry, bad input."
import json, os, random, re, time
from pathlib import Path
import pytest
import torch
from halluc.core import apply_backtracking
from halluc.data import ConvertParams, encode_records, load_records, make_example, get_converter, build_sft_dataset, BadRecord
from halluc.data import CONVERTERS
from halluc.grading import answers_match, extract_answer, find_steps
from halluc.generate import sample_solutions
from halluc.onpolicy import analyse_sample, onpolicy_example, build_onpolicy_dataset, onpolicy_dpo_pairs, convert_onpolicy, make_onpolicy_converter, SkipSample, SKIP_REASONS, is_correct_solution, SamplesMissing
from halluc.toy import make_tokenizer, make_model
from halluc.patcher import add_backtrack_token

# --- fixtures -------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    "A toy Llama SFT-trained for ~15 s: it writes the format, gets some steps right and many wrong."
    from halluc.config import load_config
    from halluc.executors import SFTExecutor
    from halluc.patcher import load_backtrack_model
    root = tmp_path_factory.mktemp("onpolicy-sft")
    cfg = load_config(None, ["data.toy_n_train=512", "trainer.max_steps=150", "trainer.per_device_train_batch_size=16",
                             "trainer.learning_rate=3e-3", "trainer.activation_checkpointing=false", "trainer.logging_steps=1000",
                             "trainer.save_steps=1000", "eval.limit=2", "eval.max_new_tokens=8", f"run.root={root}", "run.name=x"])
    res = SFTExecutor(cfg).run()
    model, tok, info = load_backtrack_model(Path(res["run_dir"]) / "model")
    return model, tok, info["bt_id"]

@pytest.fixture(scope="session")
def train_recs(): return load_records("toy", max_records=48, seed=7)

@pytest.fixture(scope="session")
def trained_samples(trained, train_recs):
    model, tok, bt = trained
    return sample_solutions(model, tok, train_recs, k=4, batch_size=64, max_new_tokens=48, seed=0, progress=False)

@pytest.fixture(scope="module")
def tok_bt():
    tok = make_tokenizer("llama"); return tok, add_backtrack_token(tok)

@pytest.fixture(scope="module")
def untrained():
    tok = make_tokenizer("llama"); model = make_model(tok, "tiny", seed=0); bt = add_backtrack_token(tok, model)
    return model, tok, bt

def _ids(tok, s): return tok.backend_tokenizer.encode(s, add_special_tokens=False).ids

def _comp(ex): return ex["input_ids"][ex["prompt_len"]:]

def _is_correct(tok, ids, final):
    text = tok.decode(ids, skip_special_tokens=True)
    return answers_match(extract_answer(text), final) and all(s.ok for s in find_steps(text))

class CountingGenerate:
    "Wraps `model.generate`: counts calls, raises on call number `fail_at` (a simulated crash)."
    def __init__(self, model, fail_at=None):
        self.model, self.orig, self.calls, self.fail_at = model, model.generate, 0, fail_at
        model.generate = self
    def __call__(self, *a, **kw):
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at: raise RuntimeError("simulated crash")
        return self.orig(*a, **kw)
    def restore(self): self.model.generate = self.orig

# --- sampling -------------------------------------------------------------------------------------

@pytest.mark.slow
def test_sampling_shape_and_determinism(untrained):
    model, tok, bt = untrained
    recs = load_records("toy", max_records=6)
    kw = dict(k=3, batch_size=5, max_new_tokens=6, chunk_size=4, progress=False)
    a = sample_solutions(model, tok, recs, seed=1, **kw)
    assert [(r["id"], r["sample"]) for r in a] == [(r["id"], j) for r in recs for j in range(3)]
    assert all(not r["skipped"] and len(r["completion_ids"]) <= 6 for r in a)
    state = torch.get_rng_state()
    torch.rand(1000)                              # what ran before must not matter
    b = sample_solutions(model, tok, recs, seed=1, **kw)
    assert [r["completion_ids"] for r in a] == [r["completion_ids"] for r in b]
    torch.set_rng_state(state); x = torch.rand(3); torch.set_rng_state(state)
    sample_solutions(model, tok, recs, seed=1, **kw)
    assert torch.equal(torch.rand(3), x)          # the global RNG is left as it was (fork_rng)
    c = sample_solutions(model, tok, recs, seed=2, **kw)
    assert [r["completion_ids"] for r in a] != [r["completion_ids"] for r in c]
    assert model.training is False or model.training is True   # restored, whatever it was

@pytest.mark.slow
def test_batched_greedy_equals_one_at_a_time(trained, train_recs):
    "Left padding changes nothing: greedy batched completions are the one-at-a-time ones."
    model, tok, bt = trained
    recs = train_recs[:10]
    one = sample_solutions(model, tok, recs, k=1, batch_size=1, temperature=0, max_new_tokens=32, progress=False)
    many = sample_solutions(model, tok, recs, k=1, batch_size=10, temperature=0, max_new_tokens=32, progress=False)
    assert [r["completion_ids"] for r in one] == [r["completion_ids"] for r in many]
    from halluc.generate import generate_completions
    from halluc.data import format_prompt
    ref = generate_completions(model, tok, recs, 32, 10)
    assert [r["completion_ids"] for r in many] == ref

@pytest.mark.slow
def test_killed_run_resumes_from_its_last_finished_chunk(untrained, tmp_path):
    model, tok, bt = untrained
    recs = load_records("toy", max_records=12)
    kw = dict(k=2, batch_size=8, max_new_tokens=5, chunk_size=4, seed=3, progress=False)   # 3 chunks, 1 generate call each
    whole = sample_solutions(model, tok, recs, **kw)
    out = tmp_path / "samples"
    g = CountingGenerate(model, fail_at=2)       # chunk 0 finishes, the crash comes during chunk 1
    try:
        with pytest.raises(RuntimeError, match="simulated crash"): sample_solutions(model, tok, recs, out_dir=out, **kw)
    finally: g.restore()
    assert sorted(p.name for p in out.glob("chunk-*")) == ["chunk-00000.jsonl"]
    (out / ".chunk-00001.jsonl.x1y2.tmp").write_text('{"id": "half a wri')   # a kill during the atomic write
    m0 = (out / "chunk-00000.jsonl").stat().st_mtime_ns
    time.sleep(0.01)
    g = CountingGenerate(model)
    try: again = sample_solutions(model, tok, recs, out_dir=out, **kw)
    finally: g.restore()
    assert g.calls == 2                           # only chunks 1 and 2 were generated
    assert (out / "chunk-00000.jsonl").stat().st_mtime_ns == m0
    assert sorted(p.name for p in out.iterdir()) == ["chunk-00000.jsonl", "chunk-00001.jsonl", "chunk-00002.jsonl", "sampling.json"]
    assert again == whole                         # a resumed run gives what an uninterrupted one gives
    g = CountingGenerate(model)                   # a finished run: nothing to generate
    try: assert sample_solutions(model, tok, recs, out_dir=out, **kw) == whole
    finally: g.restore()
    assert g.calls == 0
    p1 = out / "chunk-00001.jsonl"                # a damaged chunk file is sampled again, not trusted
    p1.write_text(p1.read_text()[:-30])
    g = CountingGenerate(model)
    try: assert sample_solutions(model, tok, recs, out_dir=out, **kw) == whole
    finally: g.restore()
    assert g.calls == 1
    with pytest.raises(ValueError, match="other settings.*k: 2 there, 3 now"):
        sample_solutions(model, tok, recs, out_dir=out, **{**kw, "k": 3})

@pytest.mark.slow
def test_prompts_longer_than_the_context_are_skipped_and_counted(untrained):
    model, tok, bt = untrained
    recs = load_records("toy", max_records=4)
    long = dict(recs[0], id="long", question=" ".join(["Ann has 3 apples."] * 400))   # > 1024 positions
    g = CountingGenerate(model)
    try: rows = sample_solutions(model, tok, recs + [long], k=2, max_new_tokens=4, progress=False)
    finally: g.restore()
    assert g.calls == 1
    skipped = [r for r in rows if r["skipped"]]
    assert [(r["id"], r["sample"], r["skipped"]) for r in skipped] == [("long", -1, "prompt_too_long")]
    rows2 = sample_solutions(model, tok, recs, k=2, max_new_tokens=4, max_prompt_len=10, progress=False)
    assert all(r["skipped"] == "prompt_too_long" for r in rows2) and len(rows2) == 4
    ds, rep = build_onpolicy_dataset(None, tok, bt, recs + [long], samples=rows)
    assert rep["prompt_too_long"] == 1 and rep["samples"] == 8

def test_empty_input(untrained):
    model, tok, bt = untrained
    assert sample_solutions(model, tok, [], progress=False) == []
    recs = load_records("toy", max_records=3)
    ds, rep = build_onpolicy_dataset(None, tok, bt, recs, samples=[])
    assert len(ds) == 0 and rep["samples"] == 0 and rep["usable"] == 0 and "input_ids" in ds.column_names
    ds, rep = build_onpolicy_dataset(model, tok, bt, [], k=2, progress=False)
    assert len(ds) == 0 and rep["records"] == 0
    assert onpolicy_dpo_pairs(recs, [], tok, bt)[0] == []
    with pytest.raises(ValueError, match="model to sample from"): build_onpolicy_dataset(None, tok, bt, recs)
    with pytest.raises(ValueError, match="k must be"): sample_solutions(model, tok, recs, k=0)

@pytest.mark.slow
def test_a_model_that_never_writes_a_checkable_step(untrained):
    "An untrained model writes nonsense: 0 usable mistakes, no crash."
    model, tok, bt = untrained
    recs = load_records("toy", max_records=6)
    ds, rep = build_onpolicy_dataset(model, tok, bt, recs, k=2, max_new_tokens=16, progress=False)
    assert rep["samples"] == 12 and rep["usable"] == 0 and rep["correct"] == 0
    assert rep["skipped"]["no_checkable_step"] == 12 and len(ds) == 0
    pairs, prep = onpolicy_dpo_pairs(recs, sample_solutions(model, tok, recs, k=1, max_new_tokens=8, progress=False), tok, bt)
    assert pairs == [] and prep["usable"] == 0

# --- one sample -----------------------------------------------------------------------------------

REC = dict(id="r", question="Ann has 7 apples. Ann gives away 2. Ann gets 3 more. How many apples does Ann have now?",
           solution="7 - 2 = 5\n5 + 3 = 8", final="8")

@pytest.mark.parametrize("text,status,mode,n_wrong", [
    ("7 - 2 = 5\n5 + 3 = 9\nThe answer is: 9", "mistake", "number", 1),
    ("7 - 2 = 15\n15 + 3 = 18\nThe answer is: 18", "mistake", "number", 2),
    ("7 - 2 = 5\n5 + 3 = 8\nThe answer is: 9", "mistake", "answer", 1),
    ("7 - 2 = 5\nThe answer is: 5", "mistake", "missing", None),
    ("6 - 2 = 4\n4 + 3 = 7\nThe answer is: 7", "mistake", "step", None),
    ("7 - 2 = 5\n5 + 3 = 8\n8 + 1 = 9\nThe answer is: 9", "mistake", "step", None),
    ("7 - 2 = 5\n5 + 3 = 8\nThe answer is: 8", "correct", "own", 0),
    ("7 - 2 = 5\n5 + 3 = 8\nThe answer is: 8", "correct", "own", 0),
    ("The answer is: 3", "mistake", "missing", None),
    ("", "skip", "", 0), ("apples apples apples", "skip", "", 0),
    ("apples 8 apples", "skip", "", 0),                      # a stray right number in nonsense is not a correct sample
    ("7 - 2 = 5\n5 + 3", "skip", "", 0),                     # stops where the reference goes on
])
def test_analyse_sample_shapes(tok_bt, text, status, mode, n_wrong):
    tok, bt = tok_bt
    enc = encode_records([REC], tok)[0]
    p = analyse_sample(REC, _ids(tok, text), tok, bt, enc)
    assert (p.status, p.mode) == (status, mode), p
    if n_wrong is not None: assert p.n_wrong == n_wrong
    if status == "skip":
        assert p.reason == "no_checkable_step"
        with pytest.raises(SkipSample) as e: onpolicy_example(REC, _ids(tok, text), tok, bt, enc)
        assert isinstance(e.value, BadRecord) and e.value.reason == "no_checkable_step"
        return
    comp = [t for s, _ in p.segments for t in s]
    fixed = apply_backtracking(comp, bt)
    assert _is_correct(tok, fixed, "8")
    if status == "mistake":
        S = _ids(tok, text)
        assert fixed == S[:p.kept] + enc.completion_ids[p.ref_from:]
        assert comp == S[:p.kept + p.n_wrong] + [bt] * p.n_wrong + enc.completion_ids[p.ref_from:]
        assert [k for _, k in p.segments][-3:] == ["error", "bt", "ok"]

def test_own_backtracks_are_applied_first(tok_bt):
    "A sample that backtracks itself is read after its BTs: here it deleted a right 5 and wrote a wrong 4."
    tok, bt = tok_bt
    raw = _ids(tok, "7 - 2 = 5") + [bt] + _ids(tok, "4\n4 + 3 = 7\nThe answer is: 7")
    p = analyse_sample(REC, raw, tok, bt)
    assert (p.status, p.mode, p.n_wrong) == ("mistake", "number", 1)
    assert tok.decode(p.segments[1][0]) == "4" and _is_correct(tok, apply_backtracking([t for s, _ in p.segments for t in s], bt), "8")
    assert analyse_sample(REC, [bt] * 5, tok, bt).reason == "no_checkable_step"
    special = [tok.bos_token_id] + _ids(tok, "7 - 2 = 6")
    assert analyse_sample(REC, special, tok, bt).mode == "number"

def test_too_many_wrong_tokens_is_too_long(tok_bt):
    tok, bt = tok_bt
    p = analyse_sample(REC, _ids(tok, "6 - 2 = 4\n4 + 3 = 7"), tok, bt, max_wrong_tokens=3)
    assert (p.status, p.reason) == ("skip", "too_long")

def test_unfinished_correct_sample_becomes_the_reference(tok_bt):
    tok, bt = tok_bt
    enc = encode_records([REC], tok)[0]
    p = analyse_sample(REC, _ids(tok, "7 - 2 = 5\n5 + 3 = 8\nThe answer is: 8"), tok, bt, enc, finished=False)
    assert (p.status, p.mode) == ("correct", "reference") and p.segments == [(enc.completion_ids, "ok")]

@pytest.mark.parametrize("kind", ["llama", "qwen"])
def test_fuzz_samples_never_crash_and_keep_the_invariant(kind):
    "Random samples built from step pieces, numbers, BTs, special and out-of-vocabulary ids: no exception, and every example backtracks to a correct solution."
    tok = make_tokenizer(kind); bt = add_backtrack_token(tok)
    enc = encode_records([REC], tok)[0]
    rng = random.Random(0)
    pieces = ["7 - 2 = 5", "7 - 2 = 4", "5 + 3 = 8", "5 + 3 = 9", "4 + 3 = 7", "\n", " ", "=", "The answer is: 8", "The answer is: 7",
              "#### 8", "apples", "8", "12", "7 - 2", " = ", "-", "$"]
    seen = {}
    for _ in range(300):
        ids = []
        for _ in range(rng.randint(0, 8)):
            x = rng.random()
            if x < 0.6: ids += _ids(tok, rng.choice(pieces))
            elif x < 0.75: ids += [bt] * rng.randint(1, 3)
            elif x < 0.85: ids.append(rng.choice(tok.all_special_ids))
            elif x < 0.95: ids.append(rng.randrange(len(tok)))
            else: ids.append(len(tok) + rng.randrange(64))               # a padded embedding row the model can sample
        p = analyse_sample(REC, ids, tok, bt, enc, finished=rng.random() < 0.5)
        seen[p.mode or p.reason] = seen.get(p.mode or p.reason, 0) + 1
        if p.status == "skip": assert p.reason in SKIP_REASONS; continue
        comp = [t for s_, _ in p.segments for t in s_]
        fixed = apply_backtracking(comp, bt)
        assert _is_correct(tok, fixed, "8"), (tok.decode(ids, skip_special_tokens=False), p)
        if p.status == "mistake":
            assert comp[p.kept + p.n_wrong:p.kept + 2 * p.n_wrong] == [bt] * p.n_wrong
            assert fixed[p.kept:] == enc.completion_ids[p.ref_from:]
    assert {"number", "step", "no_checkable_step"} <= set(seen), seen

@pytest.mark.slow
@pytest.mark.parametrize("kind", ["llama", "qwen"])
def test_invariant_on_gsm8k_records_with_planted_slips(gsm8k_dir, kind):
    "GSM8K references with the first step's result changed (and, second, the prose before it reworded): every usable example backtracks to a correct solution."
    tok = make_tokenizer(kind); bt = add_backtrack_token(tok)
    recs = [r for r in load_records(gsm8k_dir / "train.jsonl", max_records=150) if find_steps(r["solution"])]
    encs = encode_records(recs, tok)
    tally = {}
    for r, enc in zip(recs, encs):
        sol = r["solution"]; st = find_steps(sol)[0]
        i = sol.rindex("=", st.start, st.end) + 1
        while sol[i] == " ": i += 1
        wrong = str(int(float(st.claimed)) + 1)
        for variant in (sol[:i] + wrong + sol[st.end:], "So " + sol[st.start:i] + wrong + sol[st.end:]):
            p = analyse_sample(r, _ids(tok, variant + "\nThe answer is: " + r["final"]), tok, bt, enc)
            key = p.mode if p.status == "mistake" else p.reason or p.status
            tally[key] = tally.get(key, 0) + 1
            if p.status != "mistake": continue
            comp = [t for s, _ in p.segments for t in s]
            fixed = apply_backtracking(comp, bt)
            assert fixed[-(len(enc.completion_ids) - p.ref_from):] == enc.completion_ids[p.ref_from:]
            assert is_correct_solution(tok.decode(fixed, skip_special_tokens=True), r["final"], enc.completion_text), (variant, tok.decode(fixed))
    n = 2 * len(recs)
    print(kind, n, tally)
    assert tally.get("number", 0) >= 0.95 * n, tally     # nearly all: the slip is found and fixed at the number

# --- datasets, pairs, registry --------------------------------------------------------------------

@pytest.mark.slow
def test_dataset_from_a_trained_model(trained, train_recs, trained_samples):
    model, tok, bt = trained
    steps = [s.ok for r in trained_samples for s in find_steps(tok.decode(apply_backtracking(r["completion_ids"], bt), skip_special_tokens=True))]
    assert 0 < sum(steps) < len(steps)            # the model gets some steps right and some wrong
    encs = {e.record["id"]: e for e in encode_records(train_recs, tok)}
    right = dict(id=train_recs[0]["id"], sample=4, completion_ids=encs[train_recs[0]["id"]].completion_ids[:-1], finished=True, skipped="")
    ds, rep = build_onpolicy_dataset(None, tok, bt, train_recs, samples=trained_samples + [right], mistakes_per_record=2)
    print(rep)
    assert rep["samples"] == 4 * len(train_recs) + 1 and rep["correct"] + rep["wrong"] == rep["samples"]
    assert rep["usable"] + sum(rep["skipped"].values()) == rep["wrong"]
    assert rep["usable"] >= 0.5 * rep["wrong"] > 0 and rep["correct"] >= 1 and len(rep["modes"]) >= 2
    assert json.loads(ds.info.description)["usable"] == rep["usable"]
    finals = {r["id"]: r["final"] for r in train_recs}
    n_mis = 0
    for ex in ds:
        comp, lab = _comp(ex), ex["labels"][ex["prompt_len"]:]
        fixed = apply_backtracking(comp, bt)
        assert _is_correct(tok, fixed, finals[ex["id"]])
        assert ex["labels"][:ex["prompt_len"]] == [-100] * ex["prompt_len"]
        if ex["kind"] == "mistake":
            n_mis += 1
            C = encs[ex["id"]].completion_ids
            i = comp.index(bt)
            tail = comp[i + ex["n_bt"]:]                # after the BTs: the reference, token for token, to its EOS
            assert 0 < len(tail) <= len(C) and C[len(C) - len(tail):] == tail and bt not in tail                      # the wrong tokens right before the BTs are masked, the BTs trained
            nb = ex["n_bt"]
            assert comp[i:i + nb] == [bt] * nb and lab[i - nb:i] == [-100] * nb and lab[i:i + nb] == [bt] * nb
        else: assert ex["n_bt"] == 0 and comp[-1] == tok.eos_token_id
    assert n_mis == rep["examples_mistake"] > 0
    ds2, _ = build_onpolicy_dataset(None, tok, bt, train_recs, samples=trained_samples, mask_errors=False, max_length=40)
    assert all(len(x) <= 40 for x in ds2["input_ids"])

@pytest.mark.slow
def test_too_long_for_max_length_is_counted(trained, train_recs, trained_samples):
    model, tok, bt = trained
    ds, rep = build_onpolicy_dataset(None, tok, bt, train_recs, samples=trained_samples, max_length=55)
    assert rep["skipped"]["too_long"] > 0 and all(len(x) <= 55 for x in ds["input_ids"])

@pytest.mark.slow
def test_dpo_pairs_from_own_mistakes(trained, train_recs, trained_samples):
    model, tok, bt = trained
    pairs, rep = onpolicy_dpo_pairs(train_recs, trained_samples, tok, bt, pairs_per_record=2)
    assert len(pairs) == rep["pairs"] > 0
    finals = {r["id"]: r["final"] for r in train_recs}
    by_id = {}
    for s in trained_samples: by_id.setdefault(s["id"], []).append(apply_backtracking(s["completion_ids"], bt))
    for p in pairs:
        assert _is_correct(tok, apply_backtracking(p["chosen_ids"], bt), finals[p["id"]])
        rej = p["rejected_ids"][:-1] if p["rejected_ids"] and p["rejected_ids"][-1] == tok.eos_token_id else p["rejected_ids"]
        assert rej in by_id[p["id"]] and bt not in rej                     # the model's own sample, after its own BTs
        i = p["chosen_ids"].index(bt)
        assert p["chosen_ids"][:i] == p["rejected_ids"][:i]                 # shared prefix up to the BTs
    assert len({(p["id"], tuple(p["chosen_ids"])) for p in pairs}) == len(pairs)

def test_registry_converter(tok_bt, untrained):
    tok, bt = tok_bt
    assert get_converter("onpolicy") is convert_onpolicy
    enc = encode_records([REC], tok)[0]
    with pytest.raises(SamplesMissing, match="needs the model's samples"):
        make_example(enc, tok, "onpolicy", random.Random(0), ConvertParams(bt_id=bt))
    samples = [dict(id="r", sample=0, completion_ids=_ids(tok, "apples"), finished=True, skipped=""),
               dict(id="r", sample=1, completion_ids=_ids(tok, "7 - 2 = 4\n4 + 3 = 7"), finished=True, skipped="")]
    ex = make_example(enc, tok, "onpolicy", random.Random(0), ConvertParams(bt_id=bt, extra={"samples": samples}))
    assert ex["n_bt"] == 1 and _is_correct(tok, apply_backtracking(_comp(ex), bt), "8")
    ex = make_example(enc, tok, "onpolicy", random.Random(0), ConvertParams(bt_id=bt, ratio=0.0, extra={"samples": samples}))
    assert _comp(ex) == enc.completion_ids                                # ratio 0: the reference
    ex = make_example(enc, tok, make_onpolicy_converter(samples[:1]), random.Random(0), ConvertParams(bt_id=bt))
    assert _comp(ex) == enc.completion_ids                                # nothing usable: the reference
    recs = [REC, dict(REC, id="r2", question=REC["question"] + " ")]
    try:
        make_onpolicy_converter(samples, register_as="onpolicy_test")
        ds = build_sft_dataset(recs, tok, bt, "onpolicy_test")
        assert ds["n_bt"] == [1, 0]                                       # r2 has no samples: the reference
    finally: CONVERTERS.pop("onpolicy_test", None)
    assert get_converter("onpolicy") is convert_onpolicy

# --- the self-correction loop ---------------------------------------------------------------------

@pytest.mark.slow
def test_self_correction_loop_rounds_and_resume(tmp_path):
    from halluc.config import load_config
    from halluc.jobs import SelfCorrectionLoop
    cfg = load_config(None, ["data.toy_n_train=16", "data.converter=numeric", "trainer.max_steps=3", "trainer.per_device_train_batch_size=8",
                             "trainer.learning_rate=3e-3", "trainer.activation_checkpointing=false", "trainer.save_steps=100",
                             "eval.limit=2", "eval.max_new_tokens=12", "eval.batch_size=8", f"run.root={tmp_path}", "run.name=loop"])
    out = SelfCorrectionLoop(cfg, rounds=2, k=2, sample_kw=dict(max_new_tokens=12, progress=False)).run()
    root = tmp_path / "loop"
    assert [r["round"] for r in out["rounds"]] == [0, 1, 2]
    for r in (0, 1, 2):
        assert (root / f"round-{r}" / "model" / "halluc.json").is_file() and (root / f"round-{r}" / "result.json").is_file()
        assert out["rounds"][r]["exact_match"] is not None
    for r in (1, 2):
        rep = json.loads((root / f"round-{r}" / "onpolicy.json").read_text())
        # data.onpolicy_temperatures [0, 1]: one greedy sample and k=2 at T=1 per record
        assert rep["samples"] == 48 and rep["examples"] >= 16            # every record: its own example, or its reference
        assert {t: v["samples"] for t, v in rep["by_temperature"].items()} == {"0.0": 16, "1.0": 32}
        assert 0 <= rep["detection_before"]["n_records"] <= 16
        assert sorted(p.name for p in (root / f"round-{r}" / "samples").iterdir()) == ["T0", "T1"]
        assert sorted(p.name for p in (root / f"round-{r}" / "samples" / "T1").iterdir()) == ["chunk-00000.jsonl", "sampling.json"]
        q = json.loads((root / f"round-{r}" / "result.json").read_text())["quick_eval"]
        assert q["detection_after"]["n_records"] == 2 and q["detection_before"] == rep["detection_before"]
        assert load_config(root / f"round-{r}" / "config.yaml").model.name_or_path == str(root / f"round-{r - 1}" / "model")
    assert json.loads((root / "loop.json").read_text()) == json.loads(json.dumps(out))
    m = (root / "round-2" / "result.json").stat().st_mtime_ns
    again = SelfCorrectionLoop(cfg, rounds=2, k=2, sample_kw=dict(max_new_tokens=12, progress=False)).run()   # finished: nothing reruns
    assert again["rounds"] == out["rounds"] and (root / "round-2" / "result.json").stat().st_mtime_ns == m
    from halluc.config import apply_overrides, config_from_dict, config_to_dict
    from halluc.runs import RunExistsError
    other = config_from_dict(apply_overrides(config_to_dict(cfg), ["trainer.learning_rate=1e-2"]))
    with pytest.raises(RunExistsError, match="trainer.learning_rate: 0.003 there, 0.01 now"):   # another lr: not the old rounds
        SelfCorrectionLoop(other, rounds=2, k=2, sample_kw=dict(max_new_tokens=12, progress=False)).run()
    assert (root / "round-2" / "result.json").stat().st_mtime_ns == m
    with pytest.raises(ValueError, match="round 0"):
        SelfCorrectionLoop(load_config(None, ["data.converter=onpolicy"]), rounds=1)
