"""The control task (reach a target): the records, the verifier, and the search-trace converter."""
import random
import re
import pytest
from hypothesis import given, settings, strategies as st
from halluc.core import apply_backtracking
from halluc.config import load_config
from halluc.data import build_sft_dataset, encode_records, load_records, make_example, example_rng, ConvertParams, convert_search
from halluc.patcher import add_backtrack_token
from halluc.toy import make_tokenizer, target_records, target_solved, TARGET_DIFFICULTIES


@pytest.fixture(scope="module")
def tok_bt():
    tok = make_tokenizer("llama"); return tok, add_backtrack_token(tok)


@pytest.mark.parametrize("difficulty", sorted(TARGET_DIFFICULTIES))
def test_records_have_one_solution_and_the_verifier_accepts_it(difficulty):
    for split in ("train", "test"):
        recs = target_records(300, seed=3, difficulty=difficulty, split=split)
        for r in recs:
            nums, t = r["numbers"], r["target"]
            assert len(set(nums)) == len(nums) == TARGET_DIFFICULTIES[difficulty][0]
            assert sum(a + b == t for i, a in enumerate(nums) for b in nums[i + 1:]) == 1
            assert target_solved(r["solution"] + "\nThe answer is: " + r["final"], nums, t)
    assert not {r["question"] for r in target_records(300, 3, difficulty)} & {r["question"] for r in target_records(300, 3, difficulty, "test")}


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from(["sum", "number", "twice", "op", "target"]))
def test_the_verifier_rejects_corrupted_solutions(seed, how):
    r = target_records(1, seed=seed)[0]
    nums, t = r["numbers"], r["target"]
    a, b = (int(x) for x in r["solution"].split(" = ")[0].split(" + "))
    c = next(x for x in range(1, 1000) if x not in nums)           # a number that is not in the list
    text, target = {"sum": (f"{a} + {b} = {t + 1}", t + 1),        # the arithmetic is wrong (claims the target + 1)
                    "number": (f"{a} + {c} = {a + c}", a + c),     # uses a number that is not listed
                    "twice": (f"{a} + {a} = {2 * a}", 2 * a),      # uses a number twice
                    "op": (f"{a} * {b} = {a * b}", a * b),         # not a sum
                    "target": (f"{a} + {b} = {t}", t + 1)}[how]    # the right pair, another target
    assert not target_solved(text, nums, target)
    assert target_solved(f"{a} + {b} = {t}", nums, t)

@pytest.mark.parametrize("mask", [True, False])
def test_search_traces_backtrack_to_the_optimal_path(tok_bt, mask):
    "On every generated record: the post-backtrack completion is the optimal-path solution, token for token; attempts honest."
    tok, bt = tok_bt
    recs = target_records(2000, seed=0)
    ds = build_sft_dataset(recs, tok, bt, "search", {"num_errors": 4, "ratio": 1.0}, mask_errors=mask, max_length=None)
    clean = {e.record["id"]: e for e in encode_records(recs, tok)}
    n_att = 0
    for ex in ds:
        e = clean[ex["id"]]
        comp = ex["input_ids"][ex["prompt_len"]:]
        assert apply_backtracking(comp, bt) == e.completion_ids
        masked = [l == -100 for l in ex["labels"][ex["prompt_len"]:]]
        assert any(masked) == mask and ex["n_bt"] > 0
        n_att += ex["n_errors"]
    assert len(ds) == 2000 and 2000 <= n_att <= 8000
    # the attempts are honest: each deleted line is `a + b = a+b` with a, b from the list, never the solution;
    # the proposal `a + b` is the masked span, its true sum ` = s` trains, and the BTs delete both
    for r in recs[:40]:
        e = clean[r["id"]]
        segs = convert_search(e, tok, random.Random(r["id"]), ConvertParams(bt_id=bt, num_errors=4))
        for (p, kp), (res, kr), (bts, kb) in zip(segs[0:-1:3], segs[1:-1:3], segs[2:-1:3]):
            assert (kp, kr, kb) == ("error", "ok", "bt") and len(bts) == len(p) + len(res) and set(bts) == {bt}
            line = tok.decode(p + res)
            (a, b), s = (int(x) for x in line.split(" = ")[0].split(" + ")), int(line.split(" = ")[1])
            assert a + b == s != r["target"] and a in r["numbers"] and b in r["numbers"] and a != b
            assert r["numbers"].index(a) < r["numbers"].index(b)       # in the list's order, as the solution writes its pair


def test_the_shipped_traces_say_how_they_miss_and_train_each_start_towards_the_solution(tok_bt):
    """miss + correct_start (the make-run recipe): the invariant holds, every attempt states truly how its sum misses the
    target, and of each masked proposal only its first position trains, towards the solution's first token."""
    tok, bt = tok_bt
    recs = target_records(1000, seed=1)
    ds = build_sft_dataset(recs, tok, bt, "search", {"num_errors": 3, "ratio": 1.0, "miss": True, "correct_start": True},
                           mask_errors=True, max_length=None)
    clean = {e.record["id"]: e for e in encode_records(recs, tok)}
    n_att = 0
    for ex in ds:
        e, r = clean[ex["id"]], clean[ex["id"]].record
        comp, labels = ex["input_ids"][ex["prompt_len"]:], ex["labels"][ex["prompt_len"]:]
        assert apply_backtracking(comp, bt) == e.completion_ids
        segs = convert_search(e, tok, example_rng(0, r["id"]), ConvertParams(bt_id=bt, num_errors=3, miss=True))
        assert [t for ids, _ in segs for t in ids] == comp          # the dataset holds exactly this trace
        pos = 0
        for (p, kp), (res, kr) in zip(segs[0:-1:3], segs[1:-1:3]):  # (proposal, its sum and miss), then the BTs
            assert (kp, kr) == ("error", "ok")
            assert labels[pos] == e.completion_ids[0] and all(l == -100 for l in labels[pos + 1:pos + len(p)])
            assert labels[pos + len(p):pos + len(p) + len(res)] == res
            a, b, s_, rel, t = re.fullmatch(r"(\d+) \+ (\d+) = (\d+) ([<>]) (\d+)\n", tok.decode(p + res)).groups()
            assert int(a) + int(b) == int(s_) != int(t) == r["target"] and (int(s_) < int(t)) == (rel == "<")
            pos += 2 * (len(p) + len(res)); n_att += 1
    assert n_att >= 1000


def test_negative_control_traces_claim_the_target(tok_bt):
    "honest=False: each failed attempt claims the target (a false line), is one masked span, and is deleted whole."
    tok, bt = tok_bt
    recs = target_records(300, seed=1)
    ds = build_sft_dataset(recs, tok, bt, "search", {"num_errors": 3, "ratio": 1.0, "honest": False}, mask_errors=True, max_length=None)
    clean = {e.record["id"]: e for e in encode_records(recs, tok)}
    for ex in ds:
        assert apply_backtracking(ex["input_ids"][ex["prompt_len"]:], bt) == clean[ex["id"]].completion_ids
    for r in recs[:40]:
        segs = convert_search(clean[r["id"]], tok, random.Random(r["id"]), ConvertParams(bt_id=bt, num_errors=3, honest=False))
        for (ids, kind), (bts, kb) in zip(segs[0:-1:2], segs[1:-1:2]):
            a, b, s = (int(x) for x in tok.decode(ids).replace("+", " ").replace("=", " ").split())
            assert kind == "error" and kb == "bt" and len(bts) == len(ids) and s == r["target"] != a + b


def test_validation_split_is_carved_from_train_and_disjoint():
    tr, va, te = ({r["question"] for r in target_records(2000, seed=0, split=s)} for s in ("train", "validation", "test"))
    assert len(va) == 2000 and not tr & va and not va & te and not tr & te
    cfg = load_config(None, ["data.source=toy_target", "data.eval_split=validation"])
    assert cfg.data.eval_split == "validation"


def test_config_and_loader(tok_bt):
    cfg = load_config(None, ["data.source=toy_target", "data.converter=search", "data.toy_difficulty=3"])
    recs = load_records(cfg.data.source, "test", toy_n=5, toy_difficulty=cfg.data.toy_difficulty)
    assert recs.source == "toy_target" and all(r["id"].startswith("target-") for r in recs)
    with pytest.raises(ValueError, match="difficulty"): load_records("toy_target", toy_n=2, toy_difficulty=6)
    tok, bt = tok_bt
    with pytest.raises(Exception, match="target problem"):
        make_example(encode_records(load_records("toy", max_records=1), tok)[0], tok, "search", example_rng(0, "x"), ConvertParams(bt_id=bt))


@pytest.mark.slow
def test_search_sft_trains_and_is_scored_by_the_verifier(tmp_path):
    "SFT on search traces through the executor, quick-evaluated with the control task's verifier (not the answer line)."
    from halluc.executors import executor_for
    cfg = load_config(None, ["data.source=toy_target", "data.converter=search", "data.toy_n_train=32", "data.toy_n_test=4",
                             "data.converter_params.num_errors=2", "trainer.max_steps=2", "trainer.per_device_train_batch_size=8",
                             "trainer.save_steps=2", "trainer.activation_checkpointing=false", "eval.max_new_tokens=24",
                             f"run.root={tmp_path}", "run.name=search"])
    res = executor_for(cfg).run()
    q = res["quick_eval"]
    assert res["global_step"] == 2 and q["n"] == 4 and 0 <= q["exact_match"] <= 1
    assert q["exact_match"] - q["counterfactual_exact_match"] == pytest.approx(q["recovery_rate"] - q["harm_rate"])
