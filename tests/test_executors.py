"""Executors on the toy: SFT loss masking, GRPO from a saved SFT folder, DPO on exact ids (full FT and LoRA), resume.
Small on purpose: tiny model, a few records, two steps each."""
import json, os
from pathlib import Path
import pytest, torch
from halluc.config import load_config, ConfigError
from halluc.core import apply_backtracking
from halluc.data import format_target, dpo_pairs
from halluc.executors import EXECUTORS, SFTExecutor, GRPOExecutor, DPOExecutor, check_prompt_ids, frozen_copy, pretokenized_dpo_trainer
from halluc.data import format_messages
from halluc.patcher import add_backtrack_token, save_backtrack_model, load_backtrack_model, effective_embeddings
from halluc.toy import make_tokenizer, make_model, arithmetic_records

REPO = Path(__file__).resolve().parents[1]
FAST = ["trainer.logging_steps=1", "trainer.activation_checkpointing=false", "trainer.per_device_train_batch_size=4",
        "data.toy_n_test=4", "eval.max_new_tokens=16", "eval.batch_size=4"]


@pytest.fixture(scope="module")
def sft_folder(tmp_path_factory):
    "A freshly saved tiny toy backtrack model folder (weights + tokenizer + halluc.json), as an SFT run leaves it."
    tok = make_tokenizer("llama"); model = make_model(tok, "tiny", seed=1)
    add_backtrack_token(tok, model, init="semantic", seed=3)
    return save_backtrack_model(model, tok, tmp_path_factory.mktemp("sft") / "model", info=dict(executor="sft", run="fixture"))

def test_registry():
    assert EXECUTORS == {"sft": SFTExecutor, "dpo": DPOExecutor, "grpo": GRPOExecutor}

# --- SFT ------------------------------------------------------------------------------------------

def test_sft_masked_error_tokens_carry_no_loss(tmp_path):
    cfg = load_config(None, ["data.converter=numeric", "data.converter_params.ratio=1.0", "data.toy_n_train=8",
                             f"run.root={tmp_path}", "run.name=m", *FAST])
    ex = SFTExecutor(cfg); ex.run_dir = tmp_path
    tok, model = ex.load_tokenizer_and_model()
    from halluc.data import build_sft_dataset
    train, _ = ex.load_records()
    full = build_sft_dataset(train, tok, ex.bt_id, "numeric", {"ratio": 1.0}, mask_errors=True, max_length=256)
    trainer = ex.make_trainer(model, tok, ex.build_dataset(train), ex.training_args())
    rows = [trainer.train_dataset[i] for i in range(4)]
    batch = trainer.data_collator(rows)
    # the collated labels are the converter's: errors (after the prompt) at -100, BTs and corrections trained
    for i in range(4):
        n, pl = len(full[i]["input_ids"]), full[i]["prompt_len"]
        assert batch["labels"][i, :n].tolist() == full[i]["labels"] and (batch["labels"][i, n:] == -100).all()
        assert (batch["labels"][i, pl:n] == -100).any(), "every example has a masked mistake (ratio=1)"
        assert ex.bt_id in batch["labels"][i].tolist()
    err = (batch["labels"] == -100) & (batch["attention_mask"] == 1)
    err[:, :max(full[i]["prompt_len"] for i in range(4))] = False     # the mistakes only, not the prompts
    for i in range(4): err[i, :full[i]["prompt_len"]] = False
    unmasked = dict(batch, labels=torch.where(err, batch["input_ids"], batch["labels"]))
    model.eval()
    with torch.no_grad():
        loss_m = trainer.compute_loss(model, dict(batch)).item()
        loss_u = trainer.compute_loss(model, dict(unmasked)).item()
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch["labels"][:, 1:].flatten(), reduction="none")
    nll = nll.view(batch["labels"].shape[0], -1)
    keep = batch["labels"][:, 1:] != -100
    assert loss_m == pytest.approx((nll * keep).sum().item() / keep.sum().item(), rel=1e-4)   # TRL's loss: unmasked positions only
    nll_u = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), unmasked["labels"][:, 1:].flatten(), reduction="none")
    keep_u = unmasked["labels"][:, 1:] != -100
    assert loss_u == pytest.approx((nll_u * keep_u.flatten()).sum().item() / keep_u.sum().item(), rel=1e-4)
    assert keep_u.sum() > keep.sum() and loss_u != pytest.approx(loss_m, rel=1e-4)

@pytest.mark.slow
def test_sft_lora_trains_the_bt_rows_through_trl(tmp_path):
    "TRL's fused LM head reads lm_head.bias, which PEFT's TrainableTokensWrapper lacks: fused_head_compat fixes it."
    cfg = load_config(None, ["data.converter=numeric", "data.toy_n_train=16", "lora.enabled=true", f"run.root={tmp_path}",
                             "run.name=lora", "trainer.max_steps=2", "trainer.save_steps=10", "trainer.learning_rate=1e-2", *FAST])
    ex = SFTExecutor(cfg)
    res = ex.run()
    assert res["global_step"] == 2
    start = make_model(make_tokenizer("llama"), "tiny", seed=0)
    add_backtrack_token(make_tokenizer("llama"), start, init=cfg.backtrack.init, seed=0)
    w_in, w_out = effective_embeddings(ex.trainer.model)
    for w, s in ((w_in, start.get_input_embeddings().weight), (w_out, start.get_output_embeddings().weight)):
        assert torch.equal(w[:ex.bt_id], s[:ex.bt_id])                    # the other rows are frozen (and the start matches)
        assert not torch.allclose(w[ex.bt_id], s[ex.bt_id])               # the BT rows trained, the output one through TRL's fused head

# --- GRPO -----------------------------------------------------------------------------------------

def grpo_cfg(tmp_path, sft_folder, *extra):
    return load_config(REPO / "configs/toy_grpo.yaml", [f"model.name_or_path={sft_folder}", "data.toy_n_train=16", f"run.root={tmp_path}",
                       "run.name=g", "trainer.max_steps=2", "trainer.num_generations=4", "trainer.max_completion_length=24",
                       "trainer.save_steps=2", *FAST, *extra])

def test_grpo_keeps_the_sft_bt_row(tmp_path, sft_folder):
    ex = GRPOExecutor(grpo_cfg(tmp_path, sft_folder))
    tok, model = ex.load_tokenizer_and_model()
    saved, _, info = load_backtrack_model(sft_folder)
    assert ex.bt_id == info["bt_id"] and ex.parent["executor"] == "sft"
    for a, b in zip(effective_embeddings(model), effective_embeddings(saved)): assert torch.equal(a[ex.bt_id], b[ex.bt_id])

@pytest.mark.slow
def test_grpo_two_steps_from_sft_folder(tmp_path, sft_folder):
    from halluc.reward import curriculum_weights, REWARD_NAMES
    cfg = grpo_cfg(tmp_path, sft_folder)
    ex = GRPOExecutor(cfg)
    res = ex.run()
    assert res["global_step"] == 2
    w0 = curriculum_weights(0.0, cfg.reward)
    assert ex.trainer.args.reward_weights == [w0[n] for n in REWARD_NAMES]
    funcs = ex.trainer.reward_funcs
    assert [f.__name__ for f in funcs] == list(REWARD_NAMES) and all(f.stats["items"] == 8 and f.stats["errors"] == 0 for f in funcs)
    logs = [json.loads(l) for l in (Path(res["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    steps = [l for l in logs if "rewards/outcome/mean" in l]
    assert [l["step"] for l in steps] == [1, 2]
    for l in steps:
        assert all(f"rewards/{n}/mean" in l and f"curriculum/{n}" in l for n in REWARD_NAMES)
    assert steps[0]["curriculum/outcome"] == pytest.approx(w0["outcome"])                     # progress 0 at step 1's start
    assert steps[1]["curriculum/outcome"] == pytest.approx(curriculum_weights(0.5, cfg.reward)["outcome"])
    info = json.loads((Path(res["run_dir"]) / "model" / "halluc.json").read_text())
    assert info["executor"] == "grpo" and info["parent"] == str(sft_folder) and info["init"] == "semantic"
    assert (Path(res["run_dir"]) / "checkpoints" / "checkpoint-2").is_dir()

@pytest.mark.slow
def test_grpo_lora_one_step(tmp_path, sft_folder):
    ex = GRPOExecutor(grpo_cfg(tmp_path, sft_folder, "lora.enabled=true", "trainer.max_steps=1"))
    res = ex.run()
    assert res["global_step"] == 1 and hasattr(ex.trainer.model, "peft_config")
    assert json.loads((Path(res["run_dir"]) / "model" / "halluc.json").read_text())["merged"] is True

def test_grpo_refuses_trainer_reward_weights(tmp_path, sft_folder):
    ex = GRPOExecutor(grpo_cfg(tmp_path, sft_folder, "trainer.reward_weights=[1, 1, 1, 1]")); ex.run_dir = tmp_path
    with pytest.raises(ConfigError, match="reward.weights_start"): ex.training_args()

@pytest.mark.slow
def test_grpo_prompt_ids_match_sft(tmp_path):
    "TRL's own prompt tokenisation gives the SFT prompt ids; a templated string on a BOS-adding tokenizer would not."
    from trl import GRPOTrainer, GRPOConfig
    import datasets
    from halluc.data import format_prompt
    tok = make_tokenizer("llama"); model = make_model(tok, "tiny"); add_backtrack_token(tok, model)
    # a Llama-3-like chat template whose text starts with BOS, on a tokenizer whose post-processor adds BOS too
    tok.chat_template = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
                         "{{ m['content'] }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant"
                         "<|end_header_id|>\n\n{% endif %}")
    recs = arithmetic_records(3, seed=0)
    args = GRPOConfig(str(tmp_path), use_cpu=True, per_device_train_batch_size=2, num_generations=2, max_steps=1, report_to="none")
    ds = datasets.Dataset.from_list([dict(prompt=format_messages(r["question"]), final=r["final"]) for r in recs])
    tr = GRPOTrainer(model=model, reward_funcs=lambda completions, **k: [0.0] * len(completions), args=args, train_dataset=ds, processing_class=tok)
    assert check_prompt_ids(tr, tok, recs, [format_messages(r["question"]) for r in recs]) == 3
    with pytest.raises(ValueError, match="doubled BOS"):
        check_prompt_ids(tr, tok, recs, [format_prompt(r["question"], tok) for r in recs])

# --- DPO ------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_dpo_two_steps(tmp_path, sft_folder, lora):
    cfg = load_config(REPO / "configs/toy_dpo.yaml", [f"model.name_or_path={sft_folder}", "data.toy_n_train=24", f"run.root={tmp_path}",
                      "run.name=d", "trainer.max_steps=2", "trainer.save_steps=2", f"lora.enabled={str(lora).lower()}",
                      "trainer.learning_rate=1e-2", "trainer.warmup_steps=0", *FAST])
    ex = DPOExecutor(cfg)
    res = ex.run()
    tr = ex.trainer
    assert res["global_step"] == 2 and (Path(res["run_dir"]) / "model" / "halluc.json").exists()
    if lora:
        assert tr.ref_model is None and "ref" in tr.model.peft_config     # TRL's frozen copy of the fresh adapter
        w_out = effective_embeddings(tr.model)[1]
        saved = load_backtrack_model(sft_folder)[0].get_output_embeddings().weight
        assert torch.equal(w_out[:ex.bt_id], saved[:ex.bt_id]) and not torch.allclose(w_out[ex.bt_id], saved[ex.bt_id])
    else:
        assert tr.ref_model is not None and not any(p.requires_grad for p in tr.ref_model.parameters())
    logs = [json.loads(l) for l in (Path(res["run_dir"]) / "metrics.jsonl").read_text().splitlines() if "rewards/margins" in l]
    # step 1 scores before any update: the reference is the starting model, BT rows included, so the margin is exactly 0;
    # at step 2 the policy has moved and the reference has not
    assert [l["step"] for l in logs] == [1, 2] and logs[0]["rewards/margins"] == 0.0 and logs[1]["rewards/margins"] != 0.0

@pytest.mark.slow
def test_dpo_trains_on_the_exact_pair_ids(tmp_path, sft_folder):
    "The chosen ids TRL collates are dpo_pairs' ids: one BOS, the BTs, and backtracking them gives the reference solution."
    cfg = load_config(REPO / "configs/toy_dpo.yaml", [f"model.name_or_path={sft_folder}", "data.toy_n_train=40", "data.converter=random",
                      f"run.root={tmp_path}", "run.name=d", *FAST])
    ex = DPOExecutor(cfg); ex.run_dir = tmp_path
    tok, model = ex.load_tokenizer_and_model()
    train, _ = ex.load_records()
    ds = ex.build_dataset(train)
    tr = ex.make_trainer(model, tok, ds, ex.training_args())
    pairs = dpo_pairs(train, tok, ex.bt_id, source="random", precision_share=cfg.data.dpo_precision_share)
    recs = {r["id"]: r for r in train}
    assert len(tr.train_dataset) == len(pairs) > 0
    batch = tr.data_collator([tr.train_dataset[i] for i in range(len(pairs))])
    n = len(pairs)
    for k, p in enumerate(pairs):
        row, m = batch["input_ids"][k], batch["completion_mask"][k].bool()
        chosen = row[m].tolist()
        assert chosen == p["chosen_ids"] and row[:len(p["prompt_ids"])].tolist() == p["prompt_ids"]
        assert batch["input_ids"][n + k][batch["completion_mask"][n + k].bool()].tolist() == p["rejected_ids"]
        assert row[0] == tok.bos_token_id and row[1] != tok.bos_token_id
        r = recs[p["id"]]
        if p["pair"] == "mistake": assert chosen.count(ex.bt_id) == cfg.data.converter_params.get("error_len", 3)
        else: assert ex.bt_id not in chosen and ex.bt_id in p["rejected_ids"]        # a precision pair: the BT is rejected
        assert tok.decode(apply_backtracking(chosen, ex.bt_id), skip_special_tokens=True) == format_target(r["solution"], r["final"])

def test_dpo_text_path_would_not_keep_the_ids():
    "Why PretokenizedDPOTrainer: TRL's text tokenisation of the same pairs doubles BOS and re-segments random mistakes."
    from trl.data_utils import _tokenize
    tok = make_tokenizer("llama"); bt = add_backtrack_token(tok)
    pairs = dpo_pairs(arithmetic_records(40, seed=0), tok, bt, source="random")
    p0 = _tokenize(tok, pairs[0]["prompt"])["input_ids"]
    assert p0[:2] == [tok.bos_token_id] * 2
    changed = sum(_tokenize(tok, p["prompt"] + p["chosen"])["input_ids"][len(p0):] != p["chosen_ids"] for p in pairs)
    assert changed > 0

@pytest.mark.slow
def test_dpo_text_datasets_still_go_through_trl(tmp_path):
    "A text dataset takes TRL's own path (PretokenizedDPOTrainer only skips re-tokenising given ids)."
    import datasets, trl
    tok = make_tokenizer("qwen"); model = make_model(tok, "tiny")
    ds = datasets.Dataset.from_list([dict(prompt="Q: 1+1?\n", chosen="2", rejected="3")] * 2)
    args = trl.DPOConfig(str(tmp_path), use_cpu=True, max_steps=1, report_to="none", per_device_train_batch_size=2)
    tr = pretokenized_dpo_trainer()(model=model, ref_model=frozen_copy(model), args=args, train_dataset=ds, processing_class=tok)
    assert tr.train_dataset[0]["chosen_ids"] == tok("2" + tok.eos_token)["input_ids"]

def test_dpo_refuses_onpolicy(tmp_path, sft_folder):
    cfg = load_config(REPO / "configs/toy_dpo.yaml", [f"model.name_or_path={sft_folder}", "data.converter=onpolicy", "data.toy_n_train=4", *FAST])
    ex = DPOExecutor(cfg); ex.load_tokenizer_and_model()
    with pytest.raises(ConfigError, match="data.converter"): ex.build_dataset(ex.load_records()[0])

# --- resume ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_resume_continues_from_the_last_checkpoint(tmp_path):
    base = ["data.toy_n_train=32", f"run.root={tmp_path}", "run.name=r", "trainer.save_steps=2", *FAST]
    first = SFTExecutor(load_config(None, base + ["trainer.max_steps=4"])).run()
    ck = Path(first["run_dir"]) / "checkpoints"
    assert first["global_step"] == 4 and (ck / "checkpoint-4").is_dir()
    with open(Path(first["run_dir"]) / "metrics.jsonl", "a") as f:   # a step lost in a crash, and a torn line
        f.write(json.dumps({"step": 5, "loss": 9.9}) + "\n" + '{"step": 6, "lo')
    second = SFTExecutor(load_config(None, base + ["trainer.max_steps=6", "run.resume=true"])).run()
    assert second["global_step"] == 6 and second["resumed_from"] == str(ck / "checkpoint-4")
    assert (ck / "checkpoint-6").is_dir()
    steps = [json.loads(l)["step"] for l in (Path(second["run_dir"]) / "metrics.jsonl").read_text().splitlines() if "loss" in json.loads(l)]
    assert steps == [1, 2, 3, 4, 5, 6]
    state = json.loads((ck / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6 and [h["step"] for h in state["log_history"] if "loss" in h] == [1, 2, 3, 4, 5, 6]

@pytest.mark.slow
def test_grpo_resume_keeps_the_curriculum_on_schedule(tmp_path, sft_folder):
    from halluc.reward import curriculum_weights
    first = GRPOExecutor(grpo_cfg(tmp_path, sft_folder)).run()
    cfg = grpo_cfg(tmp_path, sft_folder, "trainer.max_steps=4", "run.resume=true")
    second = GRPOExecutor(cfg).run()
    assert second["global_step"] == 4 and second["resumed_from"].endswith("checkpoint-2")
    logs = [json.loads(l) for l in (Path(second["run_dir"]) / "metrics.jsonl").read_text().splitlines() if "rewards/outcome/mean" in l]
    assert [l["step"] for l in logs] == [1, 2, 3, 4]
    for l, p in zip(logs[2:], (2 / 4, 3 / 4)):   # after the resume, progress is global_step / the new max_steps
        assert l["curriculum/outcome"] == pytest.approx(curriculum_weights(p, cfg.reward)["outcome"])
