"""halluc.reward: answer extraction, the safe arithmetic checker, the four GRPO reward functions (ids, not text;
never throw; gaming never pays), the curriculum, and TRL actually using the curriculum weights."""
import copy, math, random, tempfile, time
import pytest
import torch
from hypothesis import given, settings, assume, HealthCheck, strategies as st

from halluc.core import apply_backtracking
from halluc.toy import make_tokenizer, make_model, arithmetic_records
from halluc.patcher import add_backtrack_token
from halluc.config import RewardConfig
from halluc.grading import normalize_number, answers_match, extract_answer, safe_eval, find_steps, check_steps, first_wrong_step, process_score, prompt_numbers
from halluc.reward import make_reward_funcs, weighted_reward, curriculum_weights, CurriculumCallback, RewardFunc, RewardStats, REWARD_NAMES
from halluc.config import RewardConfig

_TOKS = {}
def patched_tok(kind):
    "A toy tokenizer with a BT token (llama: reuses a reserved token; qwen: adds <|BACKTRACK|>)."
    if kind not in _TOKS:
        tok = make_tokenizer(kind)
        _TOKS[kind] = (tok, add_backtrack_token(tok))
    return _TOKS[kind]

TOK, BT = patched_tok("qwen")
FUNCS = make_reward_funcs(TOK, BT)
def enc(s, tok=TOK): return tok(s, add_special_tokens=False)["input_ids"]

# a fixed record whose first step's result has two digits (10..79), so the "wrong" numbers below (c+10, c+20)
# differ from it in the first digit and nothing is retyped
REC = next(r for r in arithmetic_records(50, seed=3, difficulty=3) if 10 <= int(r["solution"].split("\n")[0].split()[-1]) < 80)
Q, FINAL = REC["question"], REC["final"]
STEPS = [l for l in REC["solution"].split("\n") if not l.startswith("####")]
CLEAN = "\n".join(STEPS) + f"\nThe answer is: {FINAL}"

def score(ids_list, funcs=FUNCS, prompt=Q, final=FINAL, **kw):
    n = len(ids_list)
    batch = dict(prompts=[prompt] * n, completions=["<decoded text: must be ignored>"] * n, completion_ids=ids_list,
                 final=[final] * n, trainer_state=None, **kw)
    return {f.__name__: f(**batch) for f in funcs}

# --- numbers and answers -------------------------------------------------------------------------------

@pytest.mark.parametrize("s,want", [("$1,200.50", "1200.5"), ("-3.00.", "-3"), ("-0.0", "0"), ("007", "7"), (".5", "0.5"),
                                    ("+4", "4"), ("\u22125", "-5"), (18, "18"), (2.5, "2.5"), ("1e3", "1000"), ("3/4", "0.75"), ("1/3", None), ("0x1F", None),
                                    ("", None), (None, None), (True, None), (float("inf"), None), ("٣", "3"), ("1" * 500, None)])
def test_normalize_number(s, want):
    assert normalize_number(s) == want

def test_answers_match():
    assert answers_match("18.00", "18") and answers_match("$1,000", 1000) and answers_match("-5", "-5.0")
    assert not answers_match(None, None) and not answers_match("x", "x") and not answers_match("18", "-18")

@pytest.mark.parametrize("text,strict,want", [
    ("9 * 3 = 27\nThe answer is: 27", True, "27"), ("The answer is: 3\nthe answer is 4.", True, "4"),
    ("#### 1,031.00", True, "1031"), ("The answer is: 5\n#### 6", True, "5"), ("so 27 + 4 = 31 apples", True, None),
    ("so 27 + 4 = 31 apples", False, "31"), ("it is -5.", False, "-5"), ("from 3-4 of them", False, "4"),
    ("The answer is: **$42**", True, "42"), ("", False, None), ("no digits", False, None)])
def test_extract_answer(text, strict, want):
    assert extract_answer(text, strict=strict) == want

# --- the safe arithmetic checker ---------------------------------------------------------------------------

def test_safe_eval_bounds():
    assert safe_eval("(2 + 3) * -4") == -20 and safe_eval("7 / 2") == 3.5 and safe_eval("05 + 3") == 8
    for bad in ["2 ** 3", "9**9**9", "1 / 0", "10 // 3", "__import__('os').system('true')", "1" * 31 + " + 1",
                "(" * 25 + "1" + ")" * 25, "99999999999999999 * 99999999999999999", "a + 1", "[1] * 3", "1e400 * 1", ""]:
        assert safe_eval(bad) is None, bad
    t = time.perf_counter(); safe_eval("9**9**9**9**9"); check_steps("9**9**9**9 = 1"); assert time.perf_counter() - t < 0.05

def test_find_steps():
    txt = "Ann has 12 apples. 12 + 5 = 17\n17 * 3 = 50\n- 50 - 8 = 42\n1. 10 / 3 = 3.33 and 2 + 3 = 5 + 1 = 6"
    steps = find_steps(txt)
    assert [s.expr for s in steps] == ["12 + 5", "17 * 3", "50 - 8", "10 / 3", "2 + 3", "5 + 1"]
    assert [s.ok for s in steps] == [True, False, True, True, True, True] and check_steps(txt) == (5, 6)
    assert [txt[s.start:s.end] for s in steps][:3] == ["12 + 5 = 17", "17 * 3 = 50", "50 - 8 = 42"]
    s, e = first_wrong_step(txt); assert txt[s:e] == "17 * 3 = 50"
    assert check_steps("$1,200 + $300 = $1,500") == (1, 1) and check_steps("3 x 4 = 12, 8 ÷ 2 = 4 and 2×5 = 10") == (3, 3)
    assert check_steps("x = 5, 3 = 3, a == b, <= 4") == (0, 0) and first_wrong_step("no steps here") is None
    assert check_steps("9**9**9 = 1") == (0, 1) and check_steps("7 / 0 = 1") == (0, 1)
    assert check_steps("10 / 3 = 3") == (0, 1) and check_steps("2 / 3 = 0.67") == (1, 1)

def test_process_guards():
    q = "Ann has 12 apples. Ann gets 5 more. Ann then has 3 times as many. How many apples does Ann have now?"
    clean = "12 + 5 = 17\n17 * 3 = 51\nThe answer is: 51"
    assert process_score(clean, q) == 1.0 and process_score(clean) == 1.0
    assert process_score("The answer is: 51", q) == 0.0
    assert process_score("1 + 1 = 2\n" * 10 + clean, q) < 1.0                      # constants only, repeated
    assert process_score("12 + 5 = 17\n" * 5 + "17 * 3 = 51\nThe answer is: 51", q) == 2 / 6  # repeats earn nothing
    assert process_score("40 + 11 = 51\nThe answer is: 51", q) == 0.0             # not from the question
    assert process_score("12 + 3 = 15\n15 + 5 = 20\n" + clean, q) == 2 / 4         # grounded but dangling
    assert process_score("12 + 5 = 17\n17 * 3 = 51\n51 * 1 = 51\nThe answer is: 51", q) == 2 / 3
    assert process_score("12 + 5 = 17\n17 * 3 = 50\nThe answer is: 50", q) == 0.5   # a wrong step earns nothing
    assert process_score("Ann has half: 12 / 2 = 6\nThe answer is: 6", "Ann has 12 apples and gives half away.") == 1.0
    assert prompt_numbers("twelve eggs, a dozen, 1,200 pens") >= {12.0, 1200.0}

# --- the reward functions -------------------------------------------------------------------------------------

def test_names_signature_and_ids_not_text():
    assert [f.__name__ for f in FUNCS] == list(REWARD_NAMES) and all(isinstance(f, RewardFunc) for f in FUNCS)
    from trl.trainer.utils import get_callable_name, is_async_callable
    assert [get_callable_name(f) for f in FUNCS] == list(REWARD_NAMES) and not any(is_async_callable(f) for f in FUNCS)
    wrong = enc("9 * 3 = 28") + [BT] + enc("7")   # the decoded text would read "9 * 3 = 287"
    assert TOK.decode(wrong, skip_special_tokens=True) != TOK.decode(apply_backtracking(wrong, BT), skip_special_tokens=True)
    row = FUNCS[0].scorer.score_batch([Q], [wrong], [FINAL], 1)[0]
    assert row.text == TOK.decode(apply_backtracking(wrong, BT), skip_special_tokens=True) == "9 * 3 = 27"
    # TRL passes extra dataset columns and helpers as keyword arguments
    out = FUNCS[1](prompts=[Q], completions=["x"], completion_ids=[enc(CLEAN)], final=[FINAL], trainer_state=None,
                   id=["a"], question=[Q], log_extra=lambda *a: None, log_metric=lambda *a: None)
    assert out == [1.0]

@pytest.mark.parametrize("kind", ["llama", "qwen"])
def test_clean_solution_scores_full(kind):
    tok, bt = patched_tok(kind)
    funcs = make_reward_funcs(tok, bt)
    recs = arithmetic_records(150, seed=1, difficulty=5) + arithmetic_records(150, seed=1, difficulty=1)
    ids = [enc("\n".join(l for l in r["solution"].split("\n") if not l.startswith("####")) + f"\nThe answer is: {r['final']}", tok)
           + [tok.eos_token_id] for r in recs]
    s = {f.__name__: f(prompts=[r["question"] for r in recs], completions=None, completion_ids=ids,
                       final=[r["final"] for r in recs]) for f in funcs}
    for i, r in enumerate(recs):
        assert [s[k][i] for k in REWARD_NAMES] == [1.0, 1.0, 1.0, 1.0], (r, [s[k][i] for k in REWARD_NAMES])

def test_format():
    f = lambda text, **kw: score([enc(text)], **kw)["format"][0]
    assert f(CLEAN) == 1.0 and f(CLEAN + " apples.\n\n") == 1.0 and f("\n".join(STEPS) + f"\n#### {FINAL}") == 1.0
    assert f(CLEAN + "\n" + f"The answer is: {FINAL}") == 0.0          # repeated answer lines
    assert f(CLEAN + "\nand then 5 more") == 0.0 and f(CLEAN + " or 3") == 0.0 and f("\n".join(STEPS)) == 0.0
    assert f(CLEAN + f"\n#### {FINAL}") == 0.0                           # two answer lines, two styles
    strict = make_reward_funcs(TOK, BT, RewardConfig(strict_format=True))
    assert f("\n".join(STEPS) + f"\n#### {FINAL}", funcs=strict) == 0.0 and f(CLEAN, funcs=strict) == 1.0

def test_outcome():
    o = lambda text, final=FINAL: score([enc(text)], final=final)["outcome"][0]
    assert o(CLEAN) == 1.0 and o(CLEAN, final=f" {FINAL}.00 ") == 1.0 and o(CLEAN, final=int(FINAL)) == 1.0
    assert o(f"The answer is: {int(FINAL) + 1}\nThe answer is: {FINAL}") == 0.0   # hedging between two answers
    assert o("\n".join(STEPS)) == 1.0                                            # flexible: the last number
    assert o(CLEAN, final=None) == 0.0 and o(CLEAN, final="n/a") == 0.0

def test_efficiency_terms():
    clean = enc(CLEAN)
    e = lambda ids, **kw: score([ids], **kw)["efficiency"][0]
    assert e(clean) == 1.0
    assert e([BT, BT] + clean) == pytest.approx(1.0 - 2 * 0.1)                  # wasted
    assert e(clean[:6] + [BT] * 3 + clean[3:]) == pytest.approx(1.0 - 3 * 0.1)   # deleted and retyped
    # a wrong step taken back (and the answer right): the recovery bonus, once, paying back costs (capped at 1)
    a, op, b, _, c = STEPS[0].split()
    head, wrong = enc(f"{a} {op} {b} = "), enc(str(int(c) + 10))  # differs in its first digit: nothing retyped
    fixed = head + wrong + [BT] * len(wrong) + clean[len(head):]
    assert TOK.decode(apply_backtracking(fixed, BT), skip_special_tokens=True) == CLEAN
    assert e(fixed) == 1.0 and e([BT, BT] + fixed) == pytest.approx(1.0)            # the bonus pays for 2 wasted BTs
    assert e([BT, BT, BT] + fixed) == pytest.approx(0.9)
    assert e([BT, BT] + fixed, final=str(int(FINAL) + 1)) == pytest.approx(0.8)      # no bonus when the answer is wrong
    wrong2 = enc(str(int(c) + 20))
    twice = head + wrong + [BT] * len(wrong) + wrong2 + [BT] * len(wrong2) + clean[len(head):]
    over_cap = lambda ids: max(0.0, 0.5 * (ids.count(BT) / len(ids) - 0.2) / 0.8)     # the BT-rate penalty (see below)
    assert e([BT, BT, BT, BT] + twice) == pytest.approx(0.8 - over_cap([BT, BT, BT, BT] + twice))   # the bonus never stacks
    funcs0 = make_reward_funcs(TOK, BT, RewardConfig(recovery_bonus=0.0))
    assert e([BT, BT] + fixed, funcs=funcs0) == pytest.approx(0.8)
    # a wrong answer taken back
    ans = enc(CLEAN[: CLEAN.rindex(":") + 2]); bad = enc(str(int(FINAL) + 7))
    assert e([BT, BT] + ans + bad + [BT] * len(bad) + enc(FINAL)) == pytest.approx(1.0)
    # a right step deleted and replaced: no recovery
    assert e([BT, BT] + clean[:len(head)] + enc(c) + [BT] * len(enc(c)) + clean[len(head):]) == pytest.approx(0.8 - 0.1 * len(enc(c)))
    # a BT rate over the cap: 40 tokens deleted by 40 BTs in a short completion
    junk = enc(" blah" * 40)[:40]
    rate_ids = junk + [BT] * len(junk) + clean
    rate = len(junk) / len(rate_ids)
    assert rate > 0.2 and e(rate_ids) == pytest.approx(1.0 - 0.5 * (rate - 0.2) / 0.8)
    assert e([BT] * 50) == -1.0 and e([]) == 0.0 and e([TOK.eos_token_id]) == 0.0
    cfg = RewardConfig(wasted_bt_penalty=0.5, recovery_bonus=0.0)
    assert e([BT, BT] + clean, funcs=make_reward_funcs(TOK, BT, cfg)) == 0.0
    assert e([BT] + fixed, funcs=make_reward_funcs(TOK, BT, {"recovery_bonus": 0.0})) == pytest.approx(0.9)

def test_conversational_prompts_and_tensors():
    msgs = [{"role": "system", "content": "Solve it."}, {"role": "user", "content": Q}]
    ids = enc(CLEAN)
    s = {f.__name__: f(prompts=[msgs], completions=[[{"role": "assistant", "content": "?"}]],
                       completion_ids=[torch.tensor(ids)], final=[FINAL]) for f in FUNCS}
    assert [s[k][0] for k in REWARD_NAMES] == [1.0, 1.0, 1.0, 1.0]

def test_shared_cache_scores_each_completion_once():
    funcs = make_reward_funcs(TOK, BT)
    ids = [enc(CLEAN), enc(CLEAN) + [BT], [BT] * 3, enc("The answer is: 3")]
    batch = dict(prompts=[Q] * 4, completions=[""] * 4, completion_ids=ids, final=[FINAL] * 4)
    first = [f(**batch) for f in funcs]
    assert funcs[0].scorer.n_scored == 4                              # computed once, shared by all four
    ids[0] += [enc(" ok")[0], BT]                                     # a row changed in place is scored anew
    assert funcs[0](**batch)[0] == 1.0 and funcs[3](**batch)[0] == 1.0 and funcs[0].scorer.n_scored == 5
    del ids[0][-2:]
    assert [f(**batch) for f in funcs] == first
    small = make_reward_funcs(TOK, BT, cache_size=2)
    for _ in range(3): small[0](prompts=[Q] * 4, completions=[""] * 4, completion_ids=[list(r) for r in ids], final=[FINAL] * 4)
    assert len(small[0].scorer.cache) <= 2

def test_invalid_inputs_are_counted_never_raised():
    funcs = make_reward_funcs(TOK, BT)
    V = len(TOK)
    bad = [None, [-1, 5], [V], [10 ** 30], [1.5, 2], "text", [[1, 2]], [float("nan")], torch.zeros(2, 2, dtype=torch.long),
           torch.tensor([1.0]), object()]
    for f in funcs:
        out = f(prompts=[Q] * len(bad), completions=[""] * len(bad), completion_ids=bad, final=[FINAL] * len(bad))
        assert out == [0.0] * len(bad) and f.n_invalid == len(bad) and f.stats["errors"] == 0
    o = funcs[0]
    assert o(prompts=None, completions=None, completion_ids=None) == [] and o(None, ["a", "b"], None) == [0.0, 0.0]
    assert o(prompts=[Q], completions=[""], completion_ids=[enc(CLEAN)]) == [0.0] and o.stats["no_final"] >= 1
    assert o(prompts=[Q, Q], completions=["", ""], completion_ids=[enc(CLEAN), enc(CLEAN)], final=[FINAL]) == [1.0, 0.0]
    assert isinstance(o.stats, RewardStats) and set(o.stats) == {"calls", "items", "invalid", "no_final", "errors"}
    with pytest.raises(ValueError): make_reward_funcs(TOK, -1)
    with pytest.raises(ValueError): make_reward_funcs(TOK, len(TOK))
    with pytest.raises(ValueError): make_reward_funcs(TOK, "7")

def test_internal_failure_scores_zero_and_is_counted(monkeypatch):
    import halluc.reward as R
    funcs = make_reward_funcs(TOK, BT)
    monkeypatch.setattr(R, "text_scores", lambda *a: 1 / 0)
    out = funcs[0](prompts=[Q], completions=[""], completion_ids=[enc(CLEAN)], final=[FINAL])
    assert out == [0.0] and funcs[0].n_errors == 1
    monkeypatch.setattr(funcs[0].scorer, "score_batch", lambda *a: 1 / 0)
    assert funcs[0](prompts=[Q], completions=[""], completion_ids=[enc(CLEAN)], final=[FINAL]) == [0.0]

# --- gaming never pays ------------------------------------------------------------------------------------------

def gaming_cases(tok, bt, rec):
    e = lambda s: enc(s, tok)
    steps = [l for l in rec["solution"].split("\n") if not l.startswith("####")]
    final, wrong_final = rec["final"], str(int(rec["final"]) + 1)
    clean = e("\n".join(steps) + f"\nThe answer is: {final}")
    ans = e(f"The answer is: {final}")
    a, op, b, _, c = steps[0].split()
    junk = e(f"{a} {op} {b} = {int(c) + 3}\nno idea, maybe")
    nums = [int(x) for x in rec["question"].replace(".", " ").replace("?", " ").split() if x.isdigit()]
    grounded_pad = "\n".join(f"{x} + {y} = {x + y}" for x, y in zip(nums, nums[1:]))   # right, from the question
    return clean, {
        "always-BT": [bt] * 64,
        "empty": [],
        "eos only": [tok.eos_token_id],
        "BT everything, then the answer": clean + [bt] * len(clean) + ans,
        "junk with a wrong step, BT'd, then the answer": junk + [bt] * len(junk) + ans,
        "wasted BTs then the answer": [bt] * 10 + ans,
        "repeated answer lines": clean + e(f"\nThe answer is: {final}" * 4),
        "hedged answers": e("\n".join(steps) + f"\nThe answer is: {wrong_final}\nThe answer is: {final}"),
        "the answer alone": ans,
        "trivial steps, then the answer": e("1 + 1 = 2\n" * 20 + f"The answer is: {final}"),
        "trivial steps, then a wrong answer": e("1 + 1 = 2\n" * 20 + f"The answer is: {wrong_final}"),
        "trivial steps, then the solution": e("1 + 1 = 2\n2 + 2 = 4\n" * 10) + clean,
        "grounded padding, then the answer": e(grounded_pad + f"\nThe answer is: {final}"),
        "grounded padding, then the solution": e(grounded_pad + "\n") + clean,
        "identity steps, then the answer": e("\n".join(steps) + f"\n{final} * 1 = {final}\n{final} + 0 = {final}\nThe answer is: {final}"),
        "solution, wrong answer": e("\n".join(steps) + f"\nThe answer is: {wrong_final}"),
        "retype churn": clean[:4] + [bt] * 4 + clean,
    }, {  # a deliberate mistake, then the fix: may tie with the clean solution, never beat it
        "mistake on purpose, fixed": e(f"{a} {op} {b} = {int(c) + 10}") + [bt] * len(e(f" {int(c) + 10}")) + clean[len(e(f"{a} {op} {b} =")):],
        "wrong answer on purpose, fixed": clean + [bt] * len(e(final)) + e(wrong_final) + [bt] * len(e(wrong_final)) + e(final),
    }

@pytest.mark.parametrize("kind", ["llama", "qwen"])
@pytest.mark.parametrize("schedule", ["linear", "cosine", "step", "constant"])
def test_gaming_never_pays(kind, schedule):
    tok, bt = patched_tok(kind)
    cfg = RewardConfig(schedule=schedule)
    funcs = make_reward_funcs(tok, bt, cfg)
    for rec in arithmetic_records(5, seed=11, difficulty=3):
        clean, cases, ties = gaming_cases(tok, bt, rec)
        assert tok.decode(apply_backtracking(ties["mistake on purpose, fixed"], bt), skip_special_tokens=True) == \
            tok.decode(clean, skip_special_tokens=True)
        names = list(cases) + list(ties); cases.update(ties)
        batch = dict(prompts=[rec["question"]] * (len(names) + 1), completions=[""] * (len(names) + 1),
                     completion_ids=[clean] + [cases[n] for n in names], final=[rec["final"]] * (len(names) + 1))
        for progress in (0.0, 0.5, 1.0):
            w = curriculum_weights(progress, cfg)
            r = weighted_reward(funcs, w, **batch)
            assert r[0] == pytest.approx(sum(w.values())), (progress, r[0])
            for n, v in zip(names, r[1:]):
                if n in ties: assert v <= r[0] + 1e-9, f"{n!r} scored {v:.3f} > clean {r[0]:.3f}"
                else: assert v < r[0] - 1e-9, f"{n!r} scored {v:.3f} >= clean {r[0]:.3f} at progress {progress} ({schedule}, {kind})"

# --- fuzz: never throw, finite, fast ------------------------------------------------------------------------------

V = len(TOK)
an_id = st.one_of(st.integers(0, V - 1), st.just(BT), st.integers(-2 ** 70, 2 ** 70), st.integers(V, V + 5),
                  st.sampled_from([None, 1.5, float("nan"), True, "7", b"x"]))
a_row = st.one_of(st.lists(st.one_of(st.integers(0, V - 1), st.just(BT)), max_size=300), st.lists(an_id, max_size=40),
                  st.none(), st.text(max_size=10), st.integers())
a_text = st.one_of(st.text(max_size=400), st.text(alphabet="0123456789+-*/()=x×÷ .,$\n-#:Theanswris", max_size=600))

@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(a_row, max_size=8), finals=st.one_of(st.none(), st.text(max_size=8), st.lists(st.one_of(
       st.none(), st.text(max_size=6), st.integers(-10 ** 40, 10 ** 40), st.floats()), max_size=8)),
       prompts=st.one_of(st.none(), st.lists(st.one_of(st.none(), a_text, st.integers()), max_size=8)))
def test_fuzz_reward_funcs_never_throw(rows, finals, prompts):
    for f in FUNCS:
        t = time.perf_counter()
        out = f(prompts=prompts, completions=None, completion_ids=rows, final=finals, trainer_state=None)
        assert time.perf_counter() - t < 0.05
        assert len(out) == len(rows) and all(isinstance(v, float) and math.isfinite(v) for v in out)
        assert all(-1.0 <= v <= 1.0 for v in out)
    assert all(f.stats["errors"] == 0 for f in FUNCS)

@settings(max_examples=300, deadline=None)
@given(text=a_text)
def test_fuzz_text_functions(text):
    t = time.perf_counter()
    a = extract_answer(text); b = extract_answer(text, strict=True)
    r, n = check_steps(text); span = first_wrong_step(text); p = process_score(text, text)
    assert time.perf_counter() - t < 0.05
    assert a is None or normalize_number(a) == a
    assert 0 <= r <= n and 0.0 <= p <= 1.0 and (span is None or 0 <= span[0] < span[1] <= len(text))
    if span is not None: assert "=" in text[span[0]:span[1]]

@pytest.mark.parametrize("text", ["(" * 10000 + "1 + 1" + ")" * 10000 + " = 2", "1 " * 20000 + "= 5", "=" * 50000,
                                  "9" * 5000 + " * 9 = " + "9" * 5000, "1 + 1 = 2 " * 3000, "The answer is: " + "9" * 10000,
                                  "the answer is" + " " * 50000 + "x", "#### " + "1," * 20000, "-" * 50000 + "5",
                                  "\u0663 + \u0664 = \u0667 😀 " * 1000, "$" * 30000 + "1 + 1 = 2"])
def test_adversarial_texts_bounded(text):
    t = time.perf_counter()
    extract_answer(text); check_steps(text); first_wrong_step(text); process_score(text, text); normalize_number(text)
    out = score([enc(text[:3000])])
    assert time.perf_counter() - t < 1.0, "linear time on 10k-50k characters"
    assert all(math.isfinite(v[0]) for v in out.values())

@settings(max_examples=200, deadline=None)
@given(ids=st.lists(st.one_of(st.integers(0, V - 1), st.just(BT)), max_size=120), kind=st.sampled_from(["llama", "qwen"]))
def test_scorer_text_is_the_core_rule(ids, kind):
    "Survivors come from keep_mask in a batch; the text equals the reference rule + tokenizer.decode."
    tok, bt = patched_tok(kind)
    ids = [bt if t == BT else min(t, len(tok) - 1) for t in ids]
    funcs = make_reward_funcs(tok, bt)
    rows = funcs[0].scorer.score_batch(None, [ids, ids[::-1]], None, 2)
    for r, x in zip(rows, [ids, ids[::-1]]):
        assert r.text == tok.decode(apply_backtracking(x, bt), skip_special_tokens=True)

@pytest.mark.parametrize("kind", ["llama", "qwen"])
def test_fast_decoder_matches_tokenizer(kind):
    tok, bt = patched_tok(kind)
    from halluc.reward import byte_table
    dec = make_reward_funcs(tok, bt)[0].scorer.decode
    assert byte_table(tok) is not None, "byte-level toy tokenizers get the table decoder"
    rng = random.Random(0)
    seqs = [[rng.randrange(len(tok)) for _ in range(rng.randrange(0, 64))] for _ in range(300)]
    assert [dec(s) for s in seqs] == [tok.decode(s, skip_special_tokens=True) for s in seqs]
    other = copy.deepcopy(tok); other.clean_up_tokenization_spaces = True
    assert byte_table(other) is None    # anything the table cannot mirror falls back to the tokenizer

# --- the pure scorer and its edit-based terms -------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(ids=st.lists(st.one_of(st.integers(0, 40), st.just(BT)), max_size=80))
def test_edits_of_is_the_core_rule(ids):
    "The tail-only replay gives backtrack_edits' edits, and kept_mask its survivors."
    from halluc.core import backtrack_edits
    from halluc.reward import edits_of, kept_mask
    from itertools import compress
    e = edits_of(ids, BT)
    assert e == (backtrack_edits(ids, BT) if BT in ids else [])
    assert list(compress(ids, kept_mask(len(ids), e))) == apply_backtracking(ids, BT)

def test_score_is_what_the_reward_functions_return():
    from halluc.reward import score as score_one, reward_config
    sc = FUNCS[0].scorer
    a, op, b, _, c = STEPS[0].split()
    head, wrong = enc(f"{a} {op} {b} = "), enc(str(int(c) + 10))
    rows = [enc(CLEAN), head + wrong + [BT] * len(wrong) + enc(CLEAN)[len(head):], [BT, BT] + enc(CLEAN), [BT] * 5]
    got = [score_one(tuple(r), BT, sc.decode, prompt_numbers(Q), normalize_number(FINAL), reward_config()) for r in rows]
    s = score(rows)
    assert [[g[i] for g in got] for i in range(4)] == [s[k] for k in REWARD_NAMES]
    assert got[1].recovered and not got[0].recovered and got[2].n_wasted == 2 and got[3].bt_rate == 1.0

def test_retype_reads_the_text_that_stays():
    "A run whose text after it survives is compared with that surviving text, even across a later edit."
    from halluc.reward import edits_of, kept_mask, retyped_counts
    x, y, z, w = enc(" alpha")[0], enc(" beta")[0], enc(" gamma")[0], enc(" delta")[0]
    ids = [x, y, z, BT, BT, BT, x, w, BT, y, z]                  # x y z deleted; x (w deleted) y z typed again
    e = edits_of(ids, BT)
    assert retyped_counts(ids, kept_mask(len(ids), e), e) == [3, 0]
    assert score([ids], final="0")["efficiency"][0] == pytest.approx(1.0 - 3 * 0.1 - 0.5 * (4 / 11 - 0.2) / 0.8)  # 4 BTs in 11

def test_a_failing_log_metric_keeps_the_scores():
    funcs = make_reward_funcs(TOK, BT)
    def boom(*a): raise RuntimeError("logger down")
    out = funcs[3](prompts=[Q], completions=[""], completion_ids=[enc(CLEAN)], final=[FINAL], log_metric=boom)
    assert out == [1.0] and funcs[3].stats["errors"] == 0 and funcs[3].stats["items"] == 1

# --- curriculum ----------------------------------------------------------------------------------------------------

def test_curriculum_weights():
    start, end = RewardConfig().weights_start, RewardConfig().weights_end
    for sch in ["linear", "cosine", "step", "constant"]:
        cfg = RewardConfig(schedule=sch)
        assert curriculum_weights(0, cfg) == start
        assert curriculum_weights(1, cfg) == (start if sch == "constant" else end)
        ws = [curriculum_weights(p / 20, cfg)["outcome"] for p in range(21)]
        assert all(a <= b + 1e-12 for a, b in zip(ws, ws[1:])), sch            # outcome only grows
        assert all(abs(sum(curriculum_weights(p / 20, cfg).values()) - 1) < 1e-9 for p in range(21))
    assert curriculum_weights(0.5)["outcome"] == pytest.approx(0.45)
    assert curriculum_weights(0.25, {"schedule": "cosine"})["outcome"] == pytest.approx(0.2 + 0.5 * (1 - math.cos(math.pi / 4)) / 2)
    assert curriculum_weights(0.29, RewardConfig(schedule="step", step_at=0.3)) == start
    assert curriculum_weights(0.3, RewardConfig(schedule="step", step_at=0.3)) == end
    for p in (-1, 2, float("nan"), None, "x"): assert math.isfinite(sum(curriculum_weights(p).values()))
    assert curriculum_weights(0.5, {"weights_start": {"outcome": 1.0}, "weights_end": {"outcome": 0.0, "format": 1.0}}) == \
        {"outcome": 0.5, "format": 0.5}
    with pytest.raises(ValueError): curriculum_weights(0.5, {"schedule": "exponential"})
    with pytest.raises(ValueError): CurriculumCallback(None, {"schedule": "exponential"})

def test_curriculum_callback_on_a_stub_trainer():
    from collections import defaultdict
    from types import SimpleNamespace as NS
    tr = NS(reward_weights=torch.ones(5), reward_func_names=list(REWARD_NAMES) + ["custom"], _metrics={"train": defaultdict(list)})
    cb = CurriculumCallback(tr, RewardConfig(schedule="linear"))
    cb.on_train_begin(None, NS(global_step=0, max_steps=10), None)
    assert tr.reward_weights.tolist()[:4] == pytest.approx([0.2, 0.3, 0.4, 0.1]) and tr.reward_weights[4] == 1.0
    assert not tr._metrics["train"]                                   # train begin sets, does not log
    cb.on_step_begin(None, NS(global_step=5, max_steps=10), None)
    w = curriculum_weights(0.5)
    assert tr.reward_weights.tolist() == pytest.approx([w[n] for n in REWARD_NAMES] + [1.0])
    assert tr._metrics["train"]["curriculum/outcome"] == [pytest.approx(0.45)]
    logs = {"loss": 1.0}; cb.on_log(None, None, None, logs=logs)
    assert logs["curriculum/outcome"] == pytest.approx(0.45) and logs["curriculum/custom"] == 1.0
    with pytest.raises(ValueError):
        CurriculumCallback(tr, None, names=list(REWARD_NAMES)).apply(0.5)   # 4 names, 5 weights
    bare = NS()
    CurriculumCallback(bare, None).on_step_begin(None, NS(global_step=0, max_steps=0), None)
    assert bare.reward_weights.tolist() == pytest.approx([0.2, 0.3, 0.4, 0.1])

@pytest.mark.slow
def test_trl_grpo_uses_curriculum_weights(tmp_path):
    """A real trl.GRPOTrainer, 3 steps on a tiny toy model (~15-30 s on CPU): at every reward computation
    trainer.reward_weights holds curriculum_weights(global_step / max_steps); the logs carry the same weights; and
    TRL's logged `reward` equals sum(weight * rewards/<name>/mean), i.e. TRL combined the rewards with them."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer
    tok = make_tokenizer("llama"); model = make_model(tok, "tiny"); bt = add_backtrack_token(tok, model)
    recs = arithmetic_records(8, seed=0)
    ds = Dataset.from_list([{"prompt": r["question"] + "\n", "final": r["final"]} for r in recs])
    cfg = RewardConfig(schedule="linear")
    funcs = make_reward_funcs(tok, bt, cfg)
    seen = []
    class Probe:  # the real reward function plus a distinct offset, so each weight shows in the logged reward
        def __init__(self, f, offset): self.f, self.offset, self.__name__ = f, offset, f.__name__
        def __call__(self, **kw):
            seen.append((kw["trainer_state"].global_step, self.__name__, trainer.reward_weights.clone(), kw["final"]))
            return [v + self.offset for v in self.f(**kw)]
    args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=2, num_generations=2, max_completion_length=16,
                      max_steps=3, logging_steps=1, use_cpu=True, bf16=False, report_to="none", save_strategy="no",
                      beta=0.0, learning_rate=1e-3, seed=0, disable_tqdm=True)
    trainer = GRPOTrainer(model=model, reward_funcs=[Probe(f, 1.0 + 2 ** i) for i, f in enumerate(funcs)], args=args,
                          train_dataset=ds, processing_class=tok)
    assert hasattr(trainer, "reward_weights") and trainer.reward_func_names == list(REWARD_NAMES)
    cb = CurriculumCallback(trainer, cfg)
    trainer.add_callback(cb)
    trainer.train()
    max_steps = trainer.state.max_steps
    assert max_steps == 3 and sorted({s for s, *_ in seen}) == [0, 1, 2]
    for step, name, w, final in seen:
        want = curriculum_weights(step / max_steps, cfg)
        assert w.tolist() == pytest.approx([want[n] for n in REWARD_NAMES]), (step, name)
        assert final and all(isinstance(x, str) for x in final)       # TRL passed the dataset's `final` column
    logs = [h for h in trainer.state.log_history if "reward" in h]
    assert len(logs) == 3
    for h in logs:
        want = curriculum_weights((h["step"] - 1) / max_steps, cfg)
        assert [h[f"curriculum/{n}"] for n in REWARD_NAMES] == pytest.approx([want[n] for n in REWARD_NAMES])
        combined = sum(h[f"curriculum/{n}"] * h[f"rewards/{n}/mean"] for n in REWARD_NAMES)
        assert h["reward"] == pytest.approx(combined, rel=1e-5)
        assert combined != pytest.approx(sum(h[f"rewards/{n}/mean"] for n in REWARD_NAMES))  # not TRL's default weights
        assert {"backtrack/bt_rate", "backtrack/wasted", "reward/invalid"} <= set(h)
    assert [h[0] for h in cb.history] == [0, 1, 2]
    assert all(f.stats["items"] == 6 and f.stats["errors"] == 0 and f.stats["invalid"] == 0 for f in funcs)
