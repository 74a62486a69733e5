"""What the numbers mean, under hostile input: counterfactual identity, BT runs that delete nothing, a task without a
step checker, completions that never stop, bad parameters; and the paired statistics against known answers."""
import math, random
import pytest
from hypothesis import given, settings, strategies as st
from halluc.measure import (bt_runs, bt_summary, precision_metrics, recovery_harm, paired_comparison, mcnemar_p, seed_summary,
                            auroc, score_completions, evaluate_completions, first_bt_prefix)
from halluc.toy import make_tokenizer, make_model
from halluc.patcher import add_backtrack_token
from halluc.data import load_records


@pytest.fixture(scope="module")
def tok_bt():
    tok = make_tokenizer("llama"); return tok, add_backtrack_token(tok)


@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=60))
def test_recovery_minus_harm_is_the_counterfactual_gap(pairs):
    r = recovery_harm([a for a, _ in pairs], [b for _, b in pairs])
    assert math.isclose(r["exact_match"] - r["counterfactual_exact_match"], r["recovery_rate"] - r["harm_rate"], abs_tol=1e-12)


def test_only_bts_and_wasted_bts(tok_bt):
    "A completion that is only BTs deletes nothing: no run to judge, no precision claimed; the counts still add up."
    tok, bt = tok_bt
    dec = lambda ids: tok.decode(ids, skip_special_tokens=True)
    assert bt_runs([bt] * 5, bt, dec, "7") == []
    rec = dict(id="a", question="q", solution="3 + 4 = 7", final="7")
    m = score_completions(tok, bt, [rec], [[bt] * 5], counterfactuals=[[]])["metrics"]
    assert m["bt_precision"] is None and m["share_with_bt"] == 1 and m["exact_match"] == 0 and m["bt_runs"] == 0
    assert first_bt_prefix([bt] * 5, bt) == []


def test_task_without_a_step_checker(tok_bt):
    "checkable=False: a deleted wrong step is not judged by the checker; only a known reference decides, and it says so."
    tok, bt = tok_bt
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]
    dec = lambda ids: tok.decode(ids, skip_special_tokens=True)
    ids = enc("3 + 4 = 8") + [bt] + enc("7")
    assert [r.why for r in bt_runs(ids, bt, dec, "7", checkable=False)] == ["unknown"]
    assert [r.why for r in bt_runs(ids, bt, dec, "7", reference="3 + 4 = 7", checkable=False)] == ["reference"]
    rec = dict(id="a", question="q", solution="", final="7")
    m = score_completions(tok, bt, [rec], [ids], counterfactuals=[enc("3 + 4 = 8")], checkable=False)["metrics"]
    assert m["checkable"] is False and m["bt_precision"] is None and m["bt_runs_unjudged"] == 1


def test_never_stopping_completions_are_counted(tok_bt):
    tok, bt = tok_bt
    model = make_model(tok, "tiny")            # untrained: it never writes the EOS within 6 tokens
    recs = load_records("toy", "test", toy_n=3)
    ev = evaluate_completions(model, tok, bt, recs, max_new_tokens=6)
    m = ev["metrics"]
    assert m["unfinished"] == 1.0 and m["tokens_per_problem"] == 6.0
    with pytest.raises(ValueError, match="num_samples"): evaluate_completions(model, tok, bt, recs, num_samples=0)
    with pytest.raises(ValueError, match="no records"): evaluate_completions(model, tok, bt, [])


def test_paired_statistics_against_known_answers():
    assert math.isclose(mcnemar_p(1, 9), 2 * (1 + 10) / 1024)               # binomial(10, 1/2): P(X <= 1) twice
    rng = random.Random(1)
    a = [rng.random() < 0.6 for _ in range(400)]; b = [x if rng.random() < 0.8 else not x for x in a]
    c = paired_comparison(a, b, n_boot=1000)
    assert c["ci95"][0] <= c["diff"] <= c["ci95"][1] and c["n"] == 400
    assert paired_comparison(a, b, n_boot=1000, seed=3) == paired_comparison(a, b, n_boot=1000, seed=3)   # seeded
    with pytest.raises(ValueError, match="same problems"): paired_comparison([1, 0], [1])
    s = seed_summary([0.2, 0.4])
    assert math.isclose(s["mean"], 0.3) and math.isclose(s["ci95"][1] - s["mean"], 12.706 * s["std"] / math.sqrt(2))


@settings(max_examples=50)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=30), st.lists(st.floats(0, 1), min_size=1, max_size=30))
def test_auroc_is_the_pair_count(pos, neg):
    want = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))
    assert math.isclose(auroc(pos, neg), want)
