"""The device check of the GPU path (issue 15), about 5 minutes on one GPU; never needed by the tests.

  python scripts/gpu_check.py [OUT_DIR]            (on a GPU)
  python scripts/gpu_check.py OUT_DIR --cpu-dry-run (a tiny model, a few steps, on the CPU: checks the script itself)

A random Llama of ~85M parameters (the 1B config's shape scaled down, halluc's local toy tokenizer) saved as a plain bf16
folder, then with the shipped configs and small overrides: full fine-tune SFT for 50 steps (float32 master weights,
bf16 autocast: the weights must move and the loss fall), LoRA GRPO for 10 steps from that model (vLLM when it is
installed), and evaluation on cuda of 200 toy problems. Prints tokens/s and peak GPU memory of each stage, and writes
gpu_check.json. Exits 1 when a check fails."""
import json, sys, time
from pathlib import Path
import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM
from halluc.config import load_config
from halluc.evaluation import evaluate
from halluc.executors import GRPOExecutor, SFTExecutor
from halluc.toy import make_tokenizer

REPO = Path(__file__).resolve().parents[1]
args = [a for a in sys.argv[1:] if a != "--cpu-dry-run"]
DRY = "--cpu-dry-run" in sys.argv
out = Path(args[0] if args else "runs/gpu-check"); out.mkdir(parents=True, exist_ok=True)
if not DRY: assert torch.cuda.is_available(), "no CUDA device"
DEV = "cpu" if DRY else "cuda"
cuda = torch.cuda.is_available() and not DRY
report, ok = dict(device=torch.cuda.get_device_name(0) if cuda else "cpu", torch=torch.__version__, dry_run=DRY), True
N_SFT, N_GRPO, N_EVAL = (4, 2, 8) if DRY else (50, 10, 200)

def stage(name, fn):
    global ok
    if cuda: torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    r = fn(); r.update(seconds=round(time.time() - t0, 1), peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None)
    report[name] = r; ok &= bool(r.get("ok", True)); print(name, json.dumps(r), flush=True)

tok = make_tokenizer("llama")
H, L = (64, 2) if DRY else (768, 12)
cfg = LlamaConfig(vocab_size=len(tok), hidden_size=H, intermediate_size=H * 8 // 3, num_hidden_layers=L, num_attention_heads=H // 64,
                  num_key_value_heads=max(1, H // 64 // 3), max_position_embeddings=1024, tie_word_embeddings=True,
                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
torch.manual_seed(0)
base = out / "base"
LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(base); tok.save_pretrained(base)
report["params_m"] = round(sum(p.numel() for p in LlamaForCausalLM(cfg).parameters()) / 1e6, 1)

common = [f"trainer.logging_steps={1 if DRY else 5}", "data.source=toy", "data.eval_split=test", f"data.toy_n_test={N_EVAL}", "data.max_length=256", "eval.limit=32",
          "eval.max_new_tokens=48", f"run.root={out}", "run.overwrite=true"]

def sft():
    c = load_config(REPO / "configs/llama3.2-1b_sft_backtrack.yaml", common + [f"model.name_or_path={base}", "run.name=sft",
        "data.toy_n_train=4000", f"trainer.max_steps={N_SFT}", f"trainer.save_steps={N_SFT}", "trainer.learning_rate=3e-4",
        f"trainer.per_device_train_batch_size={4 if DRY else 32}", "trainer.gradient_accumulation_steps=1"])
    r = SFTExecutor(c).run()
    logs = [json.loads(l) for l in (out / "sft/metrics.jsonl").read_text().splitlines() if '"loss"' in l]
    b, a = load_file(base / "model.safetensors"), load_file(out / f"sft/checkpoints/checkpoint-{N_SFT}/model.safetensors")
    keys = [k for k in b if "embed" not in k]
    moved = sum((a[k].float() != b[k].float()).sum().item() for k in keys) / sum(b[k].numel() for k in keys)
    ntok = max((l.get("num_tokens") or 0) for l in logs)
    return dict(ok=moved >= 0.95 and (DRY or logs[-1]["loss"] < logs[0]["loss"]), moved=round(moved, 4), loss_first=logs[0]["loss"],
                loss_last=logs[-1]["loss"], tokens_per_s=round(ntok / r["train_seconds"]), weights=r["weights_dtype"])

def grpo():
    try: import vllm; use_vllm = "false" if DRY else "true"   # noqa: F401
    except ImportError: use_vllm = "false"
    c = load_config(REPO / "configs/llama3.2-1b_grpo.yaml", common + [f"model.name_or_path={out}/sft/model", "run.name=grpo",
        "data.toy_n_train=400", "lora.enabled=true", "lora.train_bt_rows=false", f"trainer.max_steps={N_GRPO}", f"trainer.save_steps={N_GRPO}",
        "trainer.per_device_train_batch_size=16", "trainer.gradient_accumulation_steps=1", "trainer.num_generations=8",
        "trainer.max_completion_length=64", f"trainer.use_vllm={use_vllm}", "trainer.vllm_max_model_length=512"])
    r = GRPOExecutor(c).run()
    return dict(ok=r["global_step"] == N_GRPO, vllm=use_vllm == "true", steps=r["global_step"], seconds_per_step=round(r["train_seconds"] / N_GRPO, 2))

def ev():
    t0 = time.time()
    s = evaluate(str(out / "sft/model"), ["toy_arithmetic_backtrack"], limit=N_EVAL, batch_size=64, device=DEV, output_dir=out / "eval",
                 toy_n=N_EVAL, max_new_tokens=48)
    dev = (s.get("settings") or {}).get("device")
    return dict(ok=str(dev).startswith(DEV), device=dev, problems_per_s=round(N_EVAL / (time.time() - t0), 1))

stage("sft_full_bf16_autocast", sft); stage("grpo_lora", grpo); stage("eval_cuda", ev)
(out / "gpu_check.json").write_text(json.dumps(report, indent=1))
print("gpu check", "PASSED" if ok else "FAILED", "->", out / "gpu_check.json")
sys.exit(0 if ok else 1)
