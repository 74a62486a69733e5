"Property tests: the vectorised keep_mask, the text path and the stats agree with the reference rule."
import pytest, torch
from hypothesis import given, settings, strategies as st
from halluc.core import (apply_backtracking, backtrack_stats, keep_mask, apply_backtracking_batch, BacktrackStats, backtrack_edits,
                         backtrack_roles, strip_bt)

BT, PAD = 3, 0

def naive(ids, bt):
    "An independent statement of the rule: repeatedly delete the first BT and the token before it."
    ids = list(ids)
    while bt in ids:
        i = ids.index(bt)
        del ids[max(i - 1, 0):i + 1]
    return ids

rows = st.lists(st.sampled_from([BT, BT, 1, 2, 4, 5, 6]), max_size=40)

@given(rows)
def test_reference_matches_independent_rule(ids):
    assert apply_backtracking(ids, BT) == naive(ids, BT)

@given(rows)
def test_idempotent_and_bt_free(ids):
    out = apply_backtracking(ids, BT)
    assert apply_backtracking(out, BT) == out
    assert BT not in out

@given(rows)
def test_stats_add_up(ids):
    s = backtrack_stats(ids, BT)
    assert s.n_bt == ids.count(BT)
    assert s.n_kept == len(apply_backtracking(ids, BT))
    assert s.n_bt - s.n_wasted == s.n_deleted
    assert s.n_kept + s.n_deleted == len(ids) - s.n_bt

@given(rows)
def test_edits_are_the_rule(ids):
    "What the edits delete is what the rule deletes; each run's BTs delete or are wasted; roles are read off them."
    edits = backtrack_edits(ids, BT)
    gone = {p for e in edits for p in e.deleted}
    bts = {i for e in edits for i in range(e.start, e.end)}
    assert bts == {i for i, t in enumerate(ids) if t == BT} and not gone & bts
    assert [t for i, t in enumerate(ids) if i not in gone | bts] == apply_backtracking(ids, BT)
    assert all(len(e.deleted) + e.n_wasted == e.end - e.start and all(p < e.start for p in e.deleted) for e in edits)
    assert all(a.end < b.start for a, b in zip(edits, edits[1:]))          # maximal runs: a normal token between two
    s = backtrack_stats(ids, BT)
    assert sum(e.n_wasted for e in edits) == s.n_wasted and len(gone) == s.n_deleted
    roles = backtrack_roles(ids, BT)
    assert {i for i, r in enumerate(roles) if r == "d"} == gone and roles.count("w") == s.n_wasted
    assert strip_bt(ids, BT) == [t for t in ids if t != BT]

@st.composite
def padded_batches(draw):
    seqs = draw(st.lists(st.one_of(rows, st.lists(st.just(BT), max_size=10)), min_size=1, max_size=6))
    T = max(len(s) for s in seqs) + draw(st.integers(0, 3))
    left = draw(st.booleans())
    ids = torch.full((len(seqs), T), PAD, dtype=torch.long); am = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        if not s: continue
        sl = slice(T - len(s), T) if left else slice(0, len(s))
        ids[i, sl] = torch.tensor(s); am[i, sl] = 1
    return seqs, ids, am

@settings(max_examples=300, deadline=None)
@given(padded_batches())
def test_keep_mask_equals_reference(batch):
    seqs, ids, am = batch
    m = keep_mask(ids, BT, am)
    assert m.dtype == torch.bool and m.shape == ids.shape
    assert not (m & (am == 0)).any()
    for i, s in enumerate(seqs):
        assert ids[i][m[i]].tolist() == apply_backtracking(s, BT)
    assert apply_backtracking_batch(ids, BT, am) == [apply_backtracking(s, BT) for s in seqs]

def test_prompt_is_never_edited():
    ids = torch.tensor([[7, 8, BT, BT, BT, 1]])
    comp = torch.tensor([[0, 0, 1, 1, 1, 1]])
    assert ids[0][keep_mask(ids, BT, completion_mask=comp)[0]].tolist() == [7, 8, 1]

def test_edge_rows():
    ids = torch.tensor([[BT, BT, BT], [PAD, PAD, PAD]])
    am = torch.tensor([[1, 1, 1], [0, 0, 0]])
    assert not keep_mask(ids, BT, am).any()
    assert keep_mask(torch.zeros((2, 0), dtype=torch.long), BT).shape == (2, 0)
    assert backtrack_stats([BT, BT], BT) == BacktrackStats(2, 2, 0, 0)

@pytest.mark.parametrize("bad, msg", [
    (lambda: keep_mask(torch.zeros(2, 3, 4, dtype=torch.long), BT), "2-D"),
    (lambda: keep_mask(torch.zeros(2, 3), BT), "integer"),
    (lambda: keep_mask(torch.zeros(2, 3, dtype=torch.long), BT, torch.ones(2, 4)), "shape"),
    (lambda: apply_backtracking([1, "a", 2], BT), "ids[1]"),
    (lambda: apply_backtracking([1, 2.5], BT), "ids[1]"),
    (lambda: apply_backtracking([1, -4], BT), "negative"),
    (lambda: apply_backtracking([1, 2], "3"), "bt_id"),
    (lambda: apply_backtracking([1, 2], -1), "bt_id"),
])
def test_bad_input_is_a_clear_valueerror(bad, msg):
    with pytest.raises(ValueError, match=msg.replace("[", r"\[").replace("]", r"\]")):
        bad()

@given(rows)
def test_roles_agree_with_the_rule(ids):
    from halluc.core import backtrack_roles
    r = backtrack_roles(ids, BT)
    s = backtrack_stats(ids, BT)
    assert [t for t, x in zip(ids, r) if x == "k"] == apply_backtracking(ids, BT)
    assert (r.count("k"), r.count("d"), r.count("w"), r.count("b") + r.count("w")) == (s.n_kept, s.n_deleted, s.n_wasted, s.n_bt)
