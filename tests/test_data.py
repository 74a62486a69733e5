"Data pipeline: loaders on the real GSM8K files, converters' invariant, labels, leakage, bad input."
import json, random
import pytest
from halluc.core import apply_backtracking
from halluc.data import load_records, encode_records, make_example, example_rng, ConvertParams, build_sft_dataset, dpo_pairs, grpo_view, check_no_leakage, LeakageError, BadRecord, format_prompt, get_converter, near_misses
from halluc.grading import ANSWER_PREFIX
from halluc.toy import make_tokenizer

@pytest.fixture(scope="module")
def tok_bt():
    tok = make_tokenizer("llama")
    return tok, tok.convert_tokens_to_ids("<|reserved_special_token_0|>")

@pytest.fixture(scope="module")
def gsm_train(gsm8k_dir): return load_records(gsm8k_dir / "train.jsonl")

def test_gsm8k_parsed(gsm_train, gsm8k_dir):
    assert len(gsm_train) == 7473
    assert all(r["final"] and "<<" not in r["solution"] and "####" not in r["solution"] for r in gsm_train)
    assert len({r["id"] for r in gsm_train}) == len(gsm_train)
    assert load_records(gsm8k_dir / "train.jsonl", max_records=50) == gsm_train[:50]
    assert load_records(gsm8k_dir, split="test")[0]["id"].startswith("gsm8k-")

def test_no_leakage_between_gsm8k_splits(gsm_train, gsm8k_dir):
    test = load_records(gsm8k_dir / "test.jsonl")
    check_no_leakage(gsm_train, test)
    with pytest.raises(LeakageError, match="also in the evaluation split"):
        build_sft_dataset(gsm_train[:5] + test[:1], make_tokenizer("llama"), 5, eval_records=test)

@pytest.mark.slow
@pytest.mark.parametrize("converter,params", [("numeric", {}), ("numeric", {"num_errors": 3}), ("random", {"error_len": 2, "num_errors": 2})])
def test_invariant_on_all_gsm8k_train(gsm_train, tok_bt, converter, params):
    "apply_backtracking(completion) is the clean completion, token for token, on every record."
    tok, bt = tok_bt
    ds = build_sft_dataset(gsm_train, tok, bt, converter, params, max_length=None)
    assert len(ds) == len(gsm_train)
    encs = encode_records(gsm_train, tok)
    n_err = 0
    for enc, ex in zip(encs, ds):
        comp = ex["input_ids"][ex["prompt_len"]:]
        assert apply_backtracking(comp, bt) == enc.completion_ids, enc.record["id"]
        n_err += ex["n_errors"] > 0
    assert n_err >= 0.99 * len(gsm_train)  # ratio 1.0: (nearly) every record gets a mistake

def test_labels_and_masks(tok_bt):
    tok, bt = tok_bt
    enc = encode_records(load_records("toy", max_records=30), tok)
    for mask in (True, False):
        for e in enc:
            ex = make_example(e, tok, "numeric", example_rng(0, e.record["id"]), ConvertParams(bt_id=bt, mask_errors=mask))
            P, ids, labels = ex["prompt_len"], ex["input_ids"], ex["labels"]
            assert labels[:P] == [-100] * P
            comp, lab = ids[P:], labels[P:]
            assert all(l == t for l, t in zip(lab, comp) if l != -100)          # trained labels are the tokens
            assert all(l == bt for l, t in zip(lab, comp) if t == bt)            # BTs are trained
            n_masked = sum(l == -100 for l in lab)
            if mask: assert n_masked == ex["n_bt"] > 0                           # exactly the error tokens masked
            else: assert n_masked == 0
            assert ex["completion_mask"] == [int(l != -100) for l in labels]

def test_deterministic_and_order_free(tok_bt):
    tok, bt = tok_bt
    recs = load_records("toy", max_records=40)
    a = build_sft_dataset(recs, tok, bt, "numeric", {"ratio": 0.5}, seed=3)
    b = build_sft_dataset(list(reversed(recs)), tok, bt, "numeric", {"ratio": 0.5}, seed=3)
    by_id = {r["id"]: r["input_ids"] for r in b}
    assert all(by_id[r["id"]] == r["input_ids"] for r in a)
    assert 5 < sum(1 for n in a["n_errors"] if n) < 35  # ratio 0.5 gives some of each

def test_near_misses():
    assert set(near_misses("24", ("48", "/", "2"))) >= {"25", "23", "42", "50", "46", "96"}
    assert "24" not in near_misses("24") and near_misses("abc") == []

def test_prompt_template_both_paths():
    q = "Ann has 3 pens. How many?"
    plain, chat = format_prompt(q, make_tokenizer("llama")), format_prompt(q, make_tokenizer("qwen"))
    assert plain.startswith("Question:") and ANSWER_PREFIX in plain
    assert chat.startswith("<|im_start|>user") and chat.endswith("<|im_start|>assistant\n") and ANSWER_PREFIX in chat

def test_views(tok_bt):
    tok, bt = tok_bt
    recs = load_records("toy", max_records=10)
    clean = {e.record["id"]: e.completion_ids for e in encode_records(recs, tok)}
    for kind in ("backtrack", "clean"):
        for p in dpo_pairs(recs, tok, bt, kind=kind):
            assert apply_backtracking(p["chosen_ids"], bt) == clean[p["id"]]
            assert p["rejected_ids"] != clean[p["id"]] and bt not in p["rejected_ids"]
    g = grpo_view(recs, tok)
    assert [x["final"] for x in g] == [r["final"] for r in recs]

def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path

@pytest.mark.parametrize("rows,msg", [
    ([{"question": "q?", "answer": "1 + 1 = 2\n#### 2"}, {"question": "q2?"}], r"bad\.jsonl:2: missing field 'answer'"),
    ([{"question": "q?", "answer": "no final here"}], r"bad\.jsonl:1: field 'answer' has no final number"),
    ([{"question": "q?", "answer": "x\n#### many"}], r"bad\.jsonl:1: field 'answer' final line 'many' is not a number"),
    (["{not json"], r"bad\.jsonl:1: not valid JSON"),
    ([], r"no records"),
])
def test_bad_rows_name_file_row_field(tmp_path, rows, msg):
    p = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(BadRecord, match=msg):
        load_records(p)

def test_skip_mode_counts(tmp_path):
    p = write_jsonl(tmp_path / "mixed.jsonl", [{"question": "a?", "answer": "#### 1"}, {"question": "b?"}, "{x", {"question": "c?", "answer": "#### 3"}])
    recs = load_records(p, on_bad_record="skip")
    assert [r["final"] for r in recs] == ["1", "3"] and [i for i, _ in recs.skipped] == [2, 3]

def test_other_bad_inputs(tmp_path, tok_bt):
    tok, bt = tok_bt
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_records(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="did you mean 'numeric'"):
        get_converter("numerik")
    recs = load_records("toy", max_records=3)
    with pytest.raises(BadRecord, match="error_len=500"):
        build_sft_dataset(recs, tok, bt, "random", {"error_len": 500})
    with pytest.raises(ValueError, match="unknown key"):
        build_sft_dataset(recs, tok, bt, "numeric", {"ratoi": 0.5})
    with pytest.raises(BadRecord, match="max_length 10"):
        build_sft_dataset(recs, tok, bt, "clean", max_length=10)
    ok = build_sft_dataset(recs + load_records("toy", max_records=1, toy_difficulty=1), tok, bt, "clean", max_length=80, on_bad_record="skip")
    assert 0 < len(ok) < 4 and json.loads(ok.info.description)["skipped"] >= 1

def test_generic_qa_loader(tmp_path):
    p = write_jsonl(tmp_path / "qa.jsonl", [{"prompt": "What is 2+2?", "target": "4"}, {"prompt": "3*3?", "target": "$9.00"}])
    recs = load_records(p, question_field="prompt", answer_field="target")
    assert [r["final"] for r in recs] == ["4", "9"] and recs[0]["solution"] == ""

@pytest.mark.slow
def test_onpolicy_converter_resolves_by_name():
    """`data.converter=onpolicy` resolves wherever a config is trained (halluc.executors imports halluc.onpolicy, which
    registers it); halluc.data alone (below onpolicy in the layers) names the module instead. Fresh interpreters."""
    import subprocess, sys
    run = lambda code: subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    out = run("import halluc.executors; from halluc.data import get_converter; print(get_converter('onpolicy').__module__)")
    assert out.returncode == 0 and "halluc.onpolicy" in out.stdout, out.stderr[-500:]
    out = run("from halluc.config import load_config; from halluc.executors import executor_for; "
              "print(type(executor_for(load_config(None, ['data.converter=onpolicy']))).__name__)")
    assert out.returncode == 0 and "OnPolicySFTExecutor" in out.stdout, out.stderr[-500:]
    out = run("from halluc.data import get_converter; get_converter('onpolicy')")
    assert out.returncode != 0 and "registered by halluc.onpolicy" in out.stderr

@pytest.mark.slow
@pytest.mark.parametrize("source", ["toy", "gsm8k"])
def test_dpo_pairs_never_reward_deleting_a_right_answer(tok_bt, gsm8k_dir, source):
    """Mistake pairs on all of GSM8K train and 2,000 toy records: every chosen completion backtracks to the reference
    (so reaches the gold answer); no rejected completion reaches it. Precision pairs: chosen clean, rejected a false BT."""
    from halluc.grading import extract_answer, normalize_number
    tok, bt = tok_bt
    recs = load_records(str(gsm8k_dir / "train.jsonl")) if source == "gsm8k" else load_records("toy", toy_n=2000)
    pairs = dpo_pairs(recs, tok, bt, precision_share=0.2)
    gold = {r["id"]: normalize_number(r["final"]) for r in recs}
    answer = lambda ids: normalize_number(extract_answer(tok.decode(apply_backtracking(ids, bt), skip_special_tokens=True)))
    mistakes = [p for p in pairs if p["pair"] == "mistake"]
    precision = [p for p in pairs if p["pair"] == "precision"]
    assert len(mistakes) > 0.5 * len(recs) * 0.8 and len(precision) > 0.1 * len(recs)
    assert all(answer(p["chosen_ids"]) == gold[p["id"]] for p in mistakes)
    assert [p["id"] for p in mistakes if answer(p["rejected_ids"]) == gold[p["id"]]] == []
    assert all(answer(p["rejected_ids"]) == answer(p["chosen_ids"]) == gold[p["id"]] and bt in p["rejected_ids"] for p in precision)
    print(f"{source}: {len(recs)} records -> {len(mistakes)} mistake pairs (0 rejected reach the gold answer), {len(precision)} precision pairs")
