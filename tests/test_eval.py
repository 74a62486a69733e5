"Tests for halluc.evaluation: agreement with quick_eval, the lm-eval CLI wrapper, bad inputs."
import json, os, subprocess, sys, warnings
from pathlib import Path
import pytest
import torch

from halluc.evaluation import (HALLUC_TASKS, HFBacktrackLM, evaluate, gsm8k_dataset, package_task_dir, print_include_path,
                               process_results, parse_payload, task_dir, task_yaml, UTILS_PY)
from halluc.data import format_prompt, format_target
from halluc.executors import quick_eval
from halluc.patcher import add_backtrack_token, load_backtrack_model, save_backtrack_model
from halluc.toy import arithmetic_records, make_model, make_tokenizer

REPO = Path(__file__).resolve().parents[1]




@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
    "An untrained tiny toy model with a BT token, saved the way the executors save it."
    tok = make_tokenizer("llama"); model = make_model(tok); add_backtrack_token(tok, model)
    return save_backtrack_model(model, tok, tmp_path_factory.mktemp("toy") / "model")


def _memorise(tok, model, bt, recs, steps=300):
    "Train (plain torch) until `model` reproduces, greedily, completions with slips, BTs and fixes for `recs`."
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]
    rows = []
    for i, r in enumerate(recs):
        tgt = format_target(r["solution"], r["final"])
        kind = i % 5
        if kind == 0: c = enc(tgt)                                              # clean
        elif kind == 1: w = enc("99 + "); c = w + [bt] * len(w) + enc(tgt)      # a slip at the start, taken back
        elif kind == 2:                                                         # a wrong answer taken back: a recovery
            head = enc(format_target(r["solution"], "").rstrip()); w = enc(" 98")
            c = head + w + [bt] * len(w) + enc(" " + r["final"])
        elif kind == 3: c = [bt] + enc(tgt)                                     # a wasted BT
        else: c = enc(tgt) + [bt]                                               # the last digit deleted: harm if 2+ digits
        rows.append((tok(format_prompt(r["question"], tok))["input_ids"], c + [tok.eos_token_id]))
    L = max(len(p) + len(c) for p, c in rows)
    ids = torch.full((len(rows), L), tok.pad_token_id); lab = torch.full_like(ids, -100); am = torch.zeros_like(ids)
    for k, (p, c) in enumerate(rows):
        s = p + c; ids[k, :len(s)] = torch.tensor(s); lab[k, len(p):len(s)] = torch.tensor(c); am[k, :len(s)] = 1
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=am, labels=lab).loss
        loss.backward(); opt.step(); opt.zero_grad()
        if loss.item() < 0.005: break
    model.eval()
    return loss.item()


@pytest.fixture(scope="module")
def memorised_dir(tmp_path_factory):
    "A toy model that answers the first 8 toy test problems, with BTs: what makes the agreement check non-trivial."
    tok = make_tokenizer("llama"); model = make_model(tok, seed=0); bt = add_backtrack_token(tok, model)
    recs = arithmetic_records(8, seed=0, split="test")
    assert _memorise(tok, model, bt, recs) < 0.05
    return save_backtrack_model(model, tok, tmp_path_factory.mktemp("mem") / "model"), recs


@pytest.mark.slow
def test_agrees_with_quick_eval(memorised_dir, tmp_path):
    path, recs = memorised_dir
    r = evaluate(str(path), ["toy_arithmetic_backtrack"], limit=len(recs), batch_size=8, max_new_tokens=96, output_dir=tmp_path)
    m = r["tasks"]["toy_arithmetic_backtrack"]["metrics"]
    model, tok, info = load_backtrack_model(path)
    q = quick_eval(model, tok, info["bt_id"], recs, max_new_tokens=96, batch_size=8)
    print("hf-backtrack:", {k: round(v, 4) for k, v in m.items()}, "\nquick_eval:", {k: v for k, v in q.items() if k != "samples"})
    assert r["tasks"]["toy_arithmetic_backtrack"]["n"] == q["n"] == 8
    assert m["exact_match_flexible"] == q["exact_match"] > 0.5
    for k in ("counterfactual_exact_match", "recovery_rate", "harm_rate", "bt_precision", "false_bt_rate", "bt_span_accuracy"):
        assert m[k] == pytest.approx(q[k]), k                     # both paths score with halluc.measure, counterfactual included
    assert m["exact_match_flexible"] - m["counterfactual_exact_match"] == pytest.approx(m["recovery_rate"] - m["harm_rate"])
    assert m["bt_rate"] == pytest.approx(q["bt_rate"]) and m["bt_rate"] > 0
    assert m["share_with_bt"] == q["share_with_bt"] > 0 and m["tokens_per_problem"] == pytest.approx(q["tokens_per_problem"])
    assert m["wasted_bt_rate"] > 0
    # per sample: the post-backtrack text is what quick_eval decodes
    rows = [json.loads(l) for l in (tmp_path / "samples_toy_arithmetic_backtrack.jsonl").read_text().splitlines()]
    by_id = {s["id"]: s for s in q["samples"]}
    for row in rows:
        s = by_id.get(row["doc"]["id"])
        if s: assert row["halluc"]["text"] == s["final"] and row["halluc"]["raw"] == s["raw"]
    ev = json.loads((tmp_path / "eval.json").read_text())
    assert ev["tasks"]["toy_arithmetic_backtrack"]["metrics"]["exact_match_flexible"] == q["exact_match"]
    assert not list(tmp_path.glob(".*tmp"))


@pytest.mark.slow
def test_chat_template_prompt_and_lora_folder(tmp_path):
    "A chat-template tokenizer gets the training prompt (per sample equal to quick_eval); LoRA adapter folders load."
    from halluc.patcher import get_peft_backtrack_model
    tok = make_tokenizer("qwen"); model = make_model(tok); add_backtrack_token(tok, model)
    save_backtrack_model(model, tok, tmp_path / "qwen")
    r = evaluate(str(tmp_path / "qwen"), "toy_arithmetic_backtrack", limit=4, batch_size=4, max_new_tokens=12)
    m, t, info = load_backtrack_model(tmp_path / "qwen")
    recs = arithmetic_records(4, seed=0, split="test")
    q = quick_eval(m, t, info["bt_id"], recs, max_new_tokens=12, batch_size=4)
    ours = [json.loads(s["filtered_resps"][0]) for s in r["samples"]["toy_arithmetic_backtrack"]]
    assert ours[0]["prompt"] == format_prompt(recs[0]["question"], t) and ours[0]["prompt"].startswith("<|im_start|>user")
    assert [o["raw"] for o in ours] == [s["raw"] for s in q["samples"]] and [o["text"] for o in ours] == [s["final"] for s in q["samples"]]
    tok = make_tokenizer("llama"); model = make_model(tok); bt = add_backtrack_token(tok, model)
    save_backtrack_model(get_peft_backtrack_model(model, bt, r=4), tok, tmp_path / "lora", merge=False)
    r = evaluate(str(tmp_path / "lora"), "toy_arithmetic_backtrack", limit=2, batch_size=2, max_new_tokens=4)
    assert r["bt_id"] == bt and r["tasks"]["toy_arithmetic_backtrack"]["n"] == 2


@pytest.mark.slow
def test_plain_hf_returns_the_raw_text(memorised_dir):
    "lm-eval's own `hf` model on the same task: its text is hf-backtrack's raw text (BTs dropped, nothing deleted)."
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager
    path, recs = memorised_dir
    tm = TaskManager(include_path=str(task_dir()), include_defaults=False)
    res = simple_evaluate(model="hf", model_args=f"pretrained={path}", tasks=["toy_arithmetic_backtrack"], limit=4, batch_size=4,
                          device="cpu", task_manager=tm, gen_kwargs={"max_gen_toks": 96}, log_samples=False)
    plain = res["results"]["toy_arithmetic_backtrack"]
    bt = evaluate(str(path), "toy_arithmetic_backtrack", limit=4, batch_size=4, max_new_tokens=96)
    rows = bt["samples"]["toy_arithmetic_backtrack"]
    raw = [parse_payload(r["filtered_resps"][0])["raw_text"] for r in rows]
    from halluc.grading import answers_match, extract_answer
    assert plain["exact_match_flexible,none"] == sum(answers_match(extract_answer(t), r["doc"]["final"]) for t, r in zip(raw, rows)) / 4
    assert plain["bt_rate,none"] == 0


@pytest.mark.slow
def test_cli_wrapper(toy_dir, tmp_path):
    "`halluc-lm-eval` (lm-eval's own CLI with hf-backtrack registered) with the include path halluc prints."
    exe = Path(sys.executable).parent / "halluc-lm-eval"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "halluc.evaluation", "lm_eval"]
    out = tmp_path / "out"
    args = ["--model", "hf-backtrack", "--model_args", f"pretrained={toy_dir}", "--tasks", "toy_arithmetic_backtrack",
            "--include_path", str(task_dir()), "--device", "cpu", "--limit", "4", "--batch_size", "4",
            "--gen_kwargs", "max_gen_toks=8", "--output_path", str(out), "--log_samples"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run(cmd + args, capture_output=True, text=True, timeout=240, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "toy_arithmetic_backtrack" in p.stdout and "exact_match_flexible" in p.stdout
    res = json.loads(next(out.rglob("results_*.json")).read_text())
    assert res["n-samples"]["toy_arithmetic_backtrack"]["effective"] == 4
    sample = json.loads(next(out.rglob("samples_toy_arithmetic_backtrack_*.jsonl")).read_text().splitlines()[0])
    assert json.loads(sample["resps"][0][0])["halluc_eval"] == 1


def test_tasks_path_and_shipped_files(capsys, tmp_path):
    print_include_path(["--dest", str(tmp_path / "t"), "--toy-difficulty", "3"])
    d = Path(capsys.readouterr().out.strip())
    assert d == tmp_path / "t" and {p.name for p in d.iterdir()} == {f"{n}.yaml" for n in HALLUC_TASKS} | {"utils.py"}
    assert "toy_difficulty: 3" in (d / "toy_arithmetic_backtrack.yaml").read_text()
    for n in HALLUC_TASKS: assert (package_task_dir() / f"{n}.yaml").read_text() == task_yaml(n)
    assert (package_task_dir() / "utils.py").read_text() == UTILS_PY


@pytest.mark.slow
def test_gsm8k_tasks_load_and_run(toy_dir, gsm8k_dir):
    r = evaluate(str(toy_dir), "gsm8k_backtrack,gsm8k_backtrack_cot_8shot", limit=2, batch_size=2, max_new_tokens=4)
    assert {t: s["n"] for t, s in r["tasks"].items()} == {"gsm8k_backtrack": 2, "gsm8k_backtrack_cot_8shot": 2}
    docs = r["samples"]["gsm8k_backtrack_cot_8shot"]
    assert docs[0]["arguments"][0][0].count("Q: ") == 9 and docs[0]["doc"]["final"] == "18"   # Janet's ducks


# --- bad inputs -----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_folder_without_halluc_json_warns_once_and_evaluates(tmp_path):
    tok = make_tokenizer("llama"); model = make_model(tok)
    model.save_pretrained(tmp_path / "plain"); tok.save_pretrained(tmp_path / "plain")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        r1 = evaluate(str(tmp_path / "plain"), "toy_arithmetic_backtrack", limit=2, batch_size=2, max_new_tokens=4)
        r2 = evaluate(str(tmp_path / "plain"), "toy_arithmetic_backtrack", limit=2, batch_size=2, max_new_tokens=4)
    said = [x for x in w if "halluc.json" in str(x.message)]
    assert len(said) == 1 and "plain model" in str(said[0].message)
    assert r1["backtracking"] is False and r1["bt_id"] is None and r2["tasks"]["toy_arithmetic_backtrack"]["n"] == 2
    assert r1["tasks"]["toy_arithmetic_backtrack"]["metrics"]["bt_rate"] == 0


@pytest.mark.slow
def test_in_memory_model_without_bt_token_warns():
    tok = make_tokenizer("llama"); model = make_model(tok)
    with pytest.warns(UserWarning, match="no backtrack token"):
        lm = HFBacktrackLM(pretrained=model, tokenizer=tok, batch_size=2)
    assert lm.bt_id is None
    tok2 = make_tokenizer("llama"); model2 = make_model(tok2); bt = add_backtrack_token(tok2, model2)
    r = evaluate(model2, "toy_arithmetic_backtrack", tokenizer=tok2, limit=2, batch_size=2, max_new_tokens=4)
    assert r["bt_id"] == bt and r["tasks"]["toy_arithmetic_backtrack"]["n"] == 2


def test_unknown_task_lists_halluc_tasks(toy_dir):
    with pytest.raises(ValueError) as e: evaluate(str(toy_dir), ["gsm8k_backtrack", "gsm8k"])
    assert "gsm8k" in str(e.value) and all(n in str(e.value) for n in HALLUC_TASKS)


def test_missing_data_file_is_named(toy_dir, tmp_path):
    missing = tmp_path / "nowhere" / "test.jsonl"
    with pytest.raises(FileNotFoundError, match=str(missing)): evaluate(str(toy_dir), "gsm8k_backtrack", gsm8k_path=missing)
    with pytest.raises(FileNotFoundError, match=str(missing)): gsm8k_dataset(gsm8k_path=str(missing))   # the CLI path
    with pytest.raises(FileNotFoundError, match="nope"): evaluate(str(tmp_path / "nope"), "toy_arithmetic_backtrack")


def test_no_answer_scores_zero_and_is_counted():
    doc = dict(question="q", solution="2 + 2 = 4", final="4")
    for text in ["", "I am not sure.", "   \n"]:
        m = process_results(doc, [text])
        assert m["exact_match_flexible"] == m["exact_match_strict"] == 0 and m["no_answer"] == m["no_answer_line"] == 1
    m = process_results(doc, ['{"halluc_eval": 1, "text": "no idea", "raw": "4<BT>no idea", "raw_text": "4no idea", '
                              '"n_tokens": 5, "n_bt": 1, "n_wasted": 0, "n_deleted": 1, "n_kept": 3, "counterfactual": "4"}'])
    assert m["no_answer"] == 1 and m["counterfactual_exact_match"] == 1 and m["harm_rate"] == 1 and m["bt_rate"] == [1, 5]
