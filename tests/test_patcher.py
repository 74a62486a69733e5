"Tests for halluc.patcher: BT token choice, embedding init, LoRA wiring, save/load."
import copy, json, os, warnings
import pytest
import torch
from transformers import AutoTokenizer
from peft import PeftModel, get_peft_model

from halluc.core import BACKTRACK_TOKEN, bt_token_of
from halluc.toy import make_tokenizer, make_model
from halluc.config import BT_INITS
from halluc.core import RESERVED_BT_TOKEN, recorded_bt_token
from halluc.patcher import add_backtrack_token, lora_config_for_backtrack, get_peft_backtrack_model, peft_bt_mechanism, effective_embeddings, save_backtrack_model, load_backtrack_info, load_backtrack_model
from halluc.io import write_json_atomic

_TOKS = {}
def fresh_tok(kind):
    if kind not in _TOKS: _TOKS[kind] = make_tokenizer(kind)
    return copy.deepcopy(_TOKS[kind])

def patched(kind, **kw):
    tok = fresh_tok(kind); model = make_model(tok)
    return tok, model, add_backtrack_token(tok, model, **kw)

def emb(m): return m.get_input_embeddings().weight
def head(m): return m.get_output_embeddings().weight

def batch(tok, bt):
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]
    return torch.tensor([enc("Ann has 12 apples.") + [bt, bt] + enc(" 3 apples.")])

def logits(m, ids):
    m.eval()
    with torch.no_grad(): return m(input_ids=ids).logits

def train_step(pm, ids, lr=1e-2):
    pm.train()
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=lr)
    pm(input_ids=ids, labels=ids).loss.backward(); opt.step(); opt.zero_grad()

def effective(pm): return tuple(t.detach().clone() for t in effective_embeddings(pm))


# --- token choice ---------------------------------------------------------------------------------

def test_llama_reuses_reserved_row_without_resize():
    tok = fresh_tok("llama"); model = make_model(tok)
    n, rows = len(tok), emb(model).shape[0]
    bt = add_backtrack_token(tok, model)
    assert bt == tok.convert_tokens_to_ids(RESERVED_BT_TOKEN) and len(tok) == n and emb(model).shape[0] == rows
    assert tok.encode(RESERVED_BT_TOKEN)[0] == tok.bos_token_id != bt
    assert tok(RESERVED_BT_TOKEN, add_special_tokens=False)["input_ids"] == [bt] and tok.decode([bt]) == RESERVED_BT_TOKEN
    assert recorded_bt_token(tok) == RESERVED_BT_TOKEN == tok.init_kwargs["backtrack_token"] == bt_token_of(tok)

def test_qwen_adds_token_and_pads_to_64():
    tok = fresh_tok("qwen"); model = make_model(tok)
    old = emb(model).detach().clone()
    bt = add_backtrack_token(tok, model)
    assert tok.convert_ids_to_tokens(bt) == BACKTRACK_TOKEN and bt == old.shape[0] and len(tok) == old.shape[0] + 1
    W = emb(model)
    assert W.shape[0] % 64 == 0 and W.shape[0] >= len(tok) and model.config.vocab_size == W.shape[0]
    assert torch.equal(W[:old.shape[0]], old) and head(model) is W          # old rows kept, still tied
    assert torch.isfinite(W).all()
    assert tok(f"1{BACKTRACK_TOKEN}2", add_special_tokens=False)["input_ids"].count(bt) == 1
    assert tok.decode([bt]) == BACKTRACK_TOKEN

def test_idempotent_both_paths():
    for kind in ("llama", "qwen"):
        tok, model, bt = patched(kind)
        n, W = len(tok), emb(model).detach().clone()
        assert add_backtrack_token(tok, model) == bt and len(tok) == n and torch.equal(emb(model), W)
        assert tok.extra_special_tokens.count(BACKTRACK_TOKEN) == (kind == "qwen")

def test_unknown_family_gets_added_token_without_model():
    tok = fresh_tok("qwen")
    bt = add_backtrack_token(tok)
    assert tok.convert_ids_to_tokens(bt) == BACKTRACK_TOKEN
    model = make_model(tok)             # a model built after the tokenizer: no resize needed
    assert add_backtrack_token(tok, model) == bt

@pytest.mark.parametrize("kind", ["llama", "qwen"])
def test_record_survives_save_load(kind, tmp_path):
    tok, _, bt = patched(kind)
    tok.save_pretrained(tmp_path / "a")
    t2 = AutoTokenizer.from_pretrained(tmp_path / "a")
    assert recorded_bt_token(t2) == bt_token_of(t2) and t2.convert_tokens_to_ids(recorded_bt_token(t2)) == bt
    assert add_backtrack_token(t2) == bt and len(t2) == len(tok)
    t2.save_pretrained(tmp_path / "b")            # a second round trip keeps it too
    t3 = AutoTokenizer.from_pretrained(tmp_path / "b")
    assert recorded_bt_token(t3) == recorded_bt_token(tok) and t3.backtrack_token_id == bt


# --- embedding init -------------------------------------------------------------------------------

def _row(kind, init, seed=0, noise_std=None):
    tok, model, bt = patched(kind, init=init, seed=seed, noise_std=noise_std)
    return emb(model)[bt].detach().clone(), head(model)[bt].detach().clone(), bt

@pytest.mark.parametrize("kind", ["llama", "qwen"])
def test_init_strategies_finite_changed_deterministic(kind):
    tok = fresh_tok(kind); base = make_model(tok)
    before = add_backtrack_token(fresh_tok(kind))  # id without touching a model
    ref_in = emb(base)[before].detach() if before < emb(base).shape[0] else None
    rows = {}
    for init in BT_INITS:
        r, o, bt = _row(kind, init)
        assert bt == before and torch.isfinite(r).all() and torch.isfinite(o).all(), init
        if ref_in is not None: assert not torch.allclose(r, ref_in), init
        r2, o2, _ = _row(kind, init)
        assert torch.equal(r, r2) and torch.equal(o, o2), init
        assert not torch.equal(r, _row(kind, init, seed=1)[0]), init
        rows[init] = r
    assert len({tuple(r.tolist()) for r in rows.values()}) == len(rows)

def test_init_does_not_touch_global_rng_or_other_rows():
    tok = fresh_tok("llama"); model = make_model(tok)
    W0, O0 = emb(model).detach().clone(), head(model).detach().clone()
    state = torch.get_rng_state()
    bt = add_backtrack_token(tok, model, init="random")
    assert torch.equal(state, torch.get_rng_state())
    keep = torch.arange(W0.shape[0]) != bt
    assert torch.equal(emb(model)[keep], W0[keep]) and torch.equal(head(model)[keep], O0[keep])

def test_untied_output_row_set_for_llama():
    tok = fresh_tok("llama"); model = make_model(tok)
    O0 = head(model).detach().clone()
    bt = add_backtrack_token(tok, model, init="semantic", noise_std=0)
    ids = sorted({i for w in (" delete", " undo", " back", " backspace", " erase", " remove")
                  for i in tok(w, add_special_tokens=False)["input_ids"]})
    assert not torch.equal(head(model)[bt], O0[bt])
    torch.testing.assert_close(head(model)[bt], O0[ids].mean(0))
    torch.testing.assert_close(emb(model)[bt], emb(model)[ids].mean(0))

def test_noise_std_zero_mean_is_exact_mean():
    tok = fresh_tok("llama"); model = make_model(tok)
    W0 = emb(model).detach().clone()
    bt = add_backtrack_token(tok, model, init="mean", noise_std=0)
    keep = torch.arange(W0.shape[0]) != bt
    torch.testing.assert_close(emb(model)[bt], W0[keep].mean(0))

def test_init_none_leaves_rows():
    tok = fresh_tok("llama"); model = make_model(tok)
    W0 = emb(model).detach().clone()
    add_backtrack_token(tok, model, init=None)
    assert torch.equal(emb(model), W0)


# --- bad inputs -------------------------------------------------------------------------------------

def test_bad_inputs_raise_value_error():
    with pytest.raises(ValueError, match="init must be one of .*'semantic'.*'random'"):
        add_backtrack_token(fresh_tok("llama"), init="zeros")
    tok = fresh_tok("llama"); tok.pad_token = RESERVED_BT_TOKEN
    with pytest.raises(ValueError, match="pad token"):
        add_backtrack_token(tok)
    with pytest.raises(ValueError, match="noise_std"):
        add_backtrack_token(fresh_tok("qwen"), noise_std=float("nan"))
    with pytest.raises(ValueError, match="seed"):
        add_backtrack_token(fresh_tok("qwen"), seed="0")
    with pytest.raises(ValueError, match="transformers tokenizer"):
        add_backtrack_token(object())
    tok, model, bt = patched("llama")
    with pytest.raises(ValueError, match="outside the model's"):
        lora_config_for_backtrack(model, 10**6)
    with pytest.raises(ValueError, match="mechanism must be one of"):
        lora_config_for_backtrack(model, bt, mechanism="nope")
    with pytest.raises(ValueError, match="r must be"):
        lora_config_for_backtrack(model, bt, r=0)
    pm = get_peft_backtrack_model(model, bt, r=2)
    with pytest.raises(ValueError, match="PeftModel"):
        add_backtrack_token(tok, pm)
    with pytest.raises(ValueError, match="no recorded backtrack token"):
        save_backtrack_model(pm, fresh_tok("llama"), "/nonexistent/x")
    with pytest.raises(ValueError, match="may not override"):
        save_backtrack_model(pm, tok, "/nonexistent/x", info={"bt_id": 3})


# --- LoRA -----------------------------------------------------------------------------------------

def test_lora_config_mechanisms():
    tok, model, bt = patched("llama")
    assert peft_bt_mechanism(model) == "trainable_token_indices"
    cfg = lora_config_for_backtrack(model, bt)
    assert cfg.trainable_token_indices == {"model.embed_tokens": [bt], "lm_head": [bt]} and peft_bt_mechanism(cfg) == "trainable_token_indices"
    assert cfg.r == 16 and cfg.lora_alpha == 32 and cfg.lora_dropout == 0.05
    qtok, qmodel, qbt = patched("qwen")
    assert lora_config_for_backtrack(qmodel, qbt).trainable_token_indices == {"model.embed_tokens": [qbt]}
    m = lora_config_for_backtrack(qmodel, qbt, mechanism="modules_to_save")
    assert m.modules_to_save == ["model.embed_tokens", "lm_head"] and m.ensure_weight_tying
    assert peft_bt_mechanism(lora_config_for_backtrack(model, bt, train_bt_rows=False)) is None
    # an untied head with a bias cannot use trainable tokens (PEFT would drop the bias): fall back
    model.lm_head.bias = torch.nn.Parameter(torch.zeros(emb(model).shape[0]))
    assert peft_bt_mechanism(model) == "modules_to_save"
    assert peft_bt_mechanism(lora_config_for_backtrack(model, bt)) == "modules_to_save"
    with pytest.raises(ValueError, match="bias"):
        lora_config_for_backtrack(model, bt, mechanism="trainable_token_indices")

@pytest.mark.slow
@pytest.mark.parametrize("kind", ["llama", "qwen"])
def test_lora_step_moves_only_bt_rows(kind):
    tok, model, bt = patched(kind)
    base_W = emb(model).detach().clone()
    pm = get_peft_model(model, lora_config_for_backtrack(model, bt, r=4, alpha=8))
    ids = batch(tok, bt)
    assert bt in ids[0].tolist()
    w0, o0 = effective(pm)
    train_step(pm, ids)
    w1, o1 = effective(pm)
    others = torch.arange(w0.shape[0]) != bt
    assert not torch.equal(w1[bt], w0[bt])
    assert torch.equal(w1[others], w0[others]) and torch.equal(o1[others], o0[others])
    if kind == "llama": assert not torch.equal(o1[bt], o0[bt]) and not torch.equal(o1[bt], w1[bt])
    else: assert torch.equal(w1, o1)
    base = pm.get_base_model().get_input_embeddings().token_adapter.base_layer.weight
    assert torch.equal(base, base_W)     # the frozen base rows stay as they were

@pytest.mark.slow
def test_modules_to_save_fallback_trains_and_roundtrips(tmp_path):
    tok, model, bt = patched("qwen")
    pm = get_peft_backtrack_model(model, bt, r=4, alpha=8, mechanism="modules_to_save")
    ids = batch(tok, bt)
    w0, _ = effective(pm)
    train_step(pm, ids)
    w1, o1 = effective(pm)
    assert not torch.equal(w1[bt], w0[bt]) and torch.equal(w1, o1)   # tied copy stays tied
    ref = logits(pm, ids)
    out = save_backtrack_model(pm, tok, tmp_path / "a", merge=False)
    assert load_backtrack_info(out)["peft_mechanism"] == "modules_to_save"
    m2, _, _ = load_backtrack_model(out)
    assert torch.equal(logits(m2, ids), ref)
    base, _, binfo = load_backtrack_model(out / "base")   # base/ holds the untrained rows, not the trained copy
    assert torch.equal(emb(base), w0) and binfo["merged"] and binfo["role"] == "adapter base" and binfo["bt_id"] == bt


# --- save / load ------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("kind", ["llama", "qwen"])
@pytest.mark.parametrize("merge", [True, False])
def test_save_load_roundtrip(kind, merge, tmp_path):
    tok, model, bt = patched(kind, init="combined")
    pm = get_peft_backtrack_model(model, bt, r=4, alpha=8)
    ids = batch(tok, bt)
    train_step(pm, ids, lr=5e-2)
    ref = logits(pm, ids)
    out = save_backtrack_model(pm, tok, tmp_path / "m", merge=merge, info={"run": "t"})
    info = load_backtrack_info(out)
    assert info["bt_id"] == bt and info["merged"] is merge and info["init"] == "combined" and info["run"] == "t"
    assert info["bt_token"] == recorded_bt_token(tok) and info["halluc_version"] and "base" in info
    assert (out / "base" / "config.json").is_file() is not merge and (out / "config.json").is_file() is merge
    assert info["peft_mechanism"] == "trainable_token_indices"
    if not merge:   # the adapter carries only the BT rows, not whole embedding matrices
        from safetensors import safe_open
        with safe_open(str(out / "adapter_model.safetensors"), "pt") as f: keys = list(f.keys())
        deltas = [k for k in keys if "trainable_tokens_delta" in k]
        assert len(deltas) == (2 if kind == "llama" else 1) and not [k for k in keys if k.endswith("embed_tokens.weight")]
        with safe_open(str(out / "adapter_model.safetensors"), "pt") as f: assert all(f.get_tensor(k).shape[0] == 1 for k in deltas)
    m2, t2, info2 = load_backtrack_model(out)
    assert info2 == info and isinstance(m2, PeftModel) is not merge
    assert t2.convert_tokens_to_ids(info["bt_token"]) == bt and recorded_bt_token(t2) == info["bt_token"]
    got = logits(m2, ids)
    if merge: torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    else: assert torch.equal(got, ref)
    assert torch.equal(logits(pm, ids), ref) and isinstance(pm, PeftModel)   # caller's model not merged away
    assert not [f for f in os.listdir(tmp_path) if f != "m"]                 # no temp leftovers

def test_save_plain_model_and_dtype(tmp_path):
    tok, model, bt = patched("llama")
    out = save_backtrack_model(model, tok, tmp_path / "p", merge=False)   # no PEFT: merge is moot
    m2, _, info = load_backtrack_model(out, dtype=torch.bfloat16)
    assert info["merged"] and info["peft_mechanism"] is None and m2.dtype == torch.bfloat16
    assert torch.equal(emb(m2).float(), emb(model).to(torch.bfloat16).float())

def test_overwrite_and_refusal(tmp_path):
    tok, model, bt = patched("llama")
    (tmp_path / "empty").mkdir()
    save_backtrack_model(model, tok, tmp_path / "empty")            # an empty folder is fine
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_backtrack_model(model, tok, tmp_path / "empty")
    pm = get_peft_backtrack_model(model, bt, r=2)
    save_backtrack_model(pm, tok, tmp_path / "empty", merge=False, overwrite=True)
    assert not load_backtrack_info(tmp_path / "empty")["merged"] and sorted(os.listdir(tmp_path)) == ["empty"]
    save_backtrack_model(pm, tok, tmp_path / "empty", merge=True, overwrite=True)   # stale adapter files go
    assert not (tmp_path / "empty" / "adapter_config.json").exists() and not (tmp_path / "empty" / "base").exists()
    (tmp_path / "f").write_text("x")
    with pytest.raises(FileExistsError, match="not a folder"):
        save_backtrack_model(model, tok, tmp_path / "f")

def test_info_errors_and_plain_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="halluc.json"):
        load_backtrack_info(tmp_path)
    assert load_backtrack_info(tmp_path, missing_ok=True) is None
    (tmp_path / "halluc.json").write_text("[1, 2")
    with pytest.raises(ValueError, match="halluc.json is corrupt"):
        load_backtrack_info(tmp_path)
    write_json_atomic(tmp_path / "halluc.json", {"bt_token": "x", "bt_id": -1, "merged": True})
    with pytest.raises(ValueError, match="bt_id"):
        load_backtrack_info(tmp_path, missing_ok=True)
    assert [f for f in os.listdir(tmp_path) if f.endswith(".tmp")] == []
    # a plain HF folder: loaded with one warning, info None
    tok = fresh_tok("qwen"); model = make_model(tok)
    model.save_pretrained(tmp_path / "plain"); tok.save_pretrained(tmp_path / "plain")
    with pytest.warns(UserWarning, match="plain model"):
        m, t, info = load_backtrack_model(tmp_path / "plain")
    assert info is None and type(m).__name__ == "Qwen3ForCausalLM"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_backtrack_model(tmp_path / "plain")        # warned once only
    with pytest.raises(FileNotFoundError):
        load_backtrack_model(tmp_path / "missing")

def test_load_checks_bt_id_against_tokenizer(tmp_path):
    tok, model, bt = patched("qwen")
    out = save_backtrack_model(model, tok, tmp_path / "m")
    info = json.loads((out / "halluc.json").read_text()); info["bt_id"] = bt - 1
    write_json_atomic(out / "halluc.json", info)
    with pytest.raises(ValueError, match="maps"):
        load_backtrack_model(out)
