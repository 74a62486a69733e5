"""The GPU path, checked on the CPU: the shipped cluster configs really train (float32 master weights), vLLM's weight
sync has a name for every parameter halluc trains, prompts do not drift with the date, a missing start model names
the run to train first, many ranks leave one run folder with one notebook, and trackers / the Hub get what they should."""
import contextlib, json, os, subprocess, sys, time
from pathlib import Path
from types import SimpleNamespace
import pytest, torch
from safetensors.torch import load_file
from halluc.config import CHAT_DATE, ConfigError, load_config
from halluc.data import format_prompt, pinned_template_variables
from halluc.executors import GRPOExecutor, SFTExecutor, _load_pretrained
from halluc.jobs import train_job
from halluc.patcher import add_backtrack_token, load_backtrack_model, lora_config_for_backtrack, save_backtrack_model
from halluc.toy import make_model, make_tokenizer

REPO = Path(__file__).resolve().parents[1]
# the Llama-3.x template's date logic: today's date unless date_string is passed (transformers provides strftime_now)
LLAMA_LIKE = ("{%- if not date_string is defined %}{%- if strftime_now is defined %}{%- set date_string = strftime_now('%d %b %Y') %}"
              "{%- else %}{%- set date_string = '26 Jul 2024' %}{%- endif %}{%- endif %}"
              "<|system|>Cutting Knowledge Date: December 2023\nToday Date: {{ date_string }}\n"
              "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
SMALL = ["data.source=toy", "data.toy_n_train=64", "data.toy_n_test=4", "data.max_length=256", "eval.limit=2", "eval.max_new_tokens=8",
         "eval.batch_size=2", "trainer.per_device_train_batch_size=4", "trainer.gradient_accumulation_steps=1",
         "trainer.gradient_checkpointing=false", "trainer.logging_steps=1"]

@pytest.fixture(scope="module")
def bf16_folder(tmp_path_factory):
    "A plain Hugging Face folder (no halluc.json) holding a toy Llama in bfloat16 whose tokenizer has a Llama-3-style dated template."
    d = tmp_path_factory.mktemp("bf16") / "base"
    tok = make_tokenizer("llama"); tok.chat_template = LLAMA_LIKE
    make_model(tok, "tiny", seed=1).to(torch.bfloat16).save_pretrained(d); tok.save_pretrained(d)
    return d

def _moved_share(before: dict, after: dict) -> float:
    "Share of the non-embedding weights whose value changed."
    moved = total = 0
    for k, v in before.items():
        if "embed" in k or "lm_head" in k: continue
        moved += (after[k].float() != v.float()).sum().item(); total += v.numel()
    return moved / total

@pytest.mark.slow
@pytest.mark.parametrize("dtype", [None, "bfloat16"], ids=["shipped", "bf16-asked"])
def test_full_finetune_of_a_bf16_folder_moves_the_weights(tmp_path, bf16_folder, dtype):
    "configs/llama3.2-1b_sft_backtrack.yaml (lr 1e-5) on a bf16 folder: 2 steps move >= 95% of the weights (bf16 weights moved ~11%)."
    ovs = [f"model.name_or_path={bf16_folder}", "trainer.max_steps=2", "trainer.save_steps=2", f"run.root={tmp_path}", "run.name=fp32", *SMALL]
    cfg = load_config(REPO / "configs/llama3.2-1b_sft_backtrack.yaml", ovs + ([f"model.dtype={dtype}"] if dtype else []))
    assert cfg.trainer["learning_rate"] == 1e-5 and not cfg.lora.enabled
    res = SFTExecutor(cfg).run()
    assert res["weights_dtype"] == "float32"
    after = load_file(tmp_path / "fp32" / "checkpoints" / "checkpoint-2" / "model.safetensors")
    share = _moved_share(load_file(bf16_folder / "model.safetensors"), after)
    assert share >= 0.95, f"only {share:.1%} of the weights moved in 2 steps"
    # the prompt the run trained on carries the pinned date, not the day it ran, and the saved tokenizer keeps it
    model, tok, info = load_backtrack_model(tmp_path / "fp32" / "model")
    p = format_prompt("What is 2 + 3?", tok)
    assert f"Today Date: {CHAT_DATE}" in p and (time.strftime("%d %b %Y") == CHAT_DATE or time.strftime("%d %b %Y") not in p)
    assert info["chat_template_variables"] == {"date_string": CHAT_DATE} == pinned_template_variables(tok)

def test_prompts_do_not_drift_with_the_date(bf16_folder):
    "Unpinned, the Llama-3 template prints today's date; an executor pins data.chat_template_kwargs (and a fixed date)."
    from transformers import AutoTokenizer
    raw = AutoTokenizer.from_pretrained(bf16_folder)
    assert time.strftime("%d %b %Y") in format_prompt("2 + 3?", raw)
    cfg = load_config(REPO / "configs/llama3.2-1b_sft_backtrack.yaml", [f"model.name_or_path={bf16_folder}", *SMALL,
                      "data.chat_template_kwargs.date_string=01 Jan 2025", "data.chat_template_kwargs.enable_thinking=false"])
    ex = SFTExecutor(cfg); ex.run_dir = Path("runs/x"); tok, _ = ex.load_tokenizer_and_model()
    assert "Today Date: 01 Jan 2025\n" in format_prompt("2 + 3?", tok)
    assert ex.save_info()["chat_template_variables"] == {"date_string": "01 Jan 2025", "enable_thinking": False}
    qwen = load_config(REPO / "configs/qwen3-4b_grpo.yaml")
    assert qwen.data.template_variables()["enable_thinking"] is False
    with pytest.raises(ConfigError, match="data.chat_template_kwargs"):
        load_config(REPO / "configs/qwen3-4b_grpo.yaml", ["trainer.chat_template_kwargs={enable_thinking: true}"])

# --- vLLM weight sync -------------------------------------------------------------------------------------------

def _vllm_names(model) -> list[str]:
    "The parameter names TRL's vLLM weight sync sends for `model` (its own `_iter_named_params`, single process)."
    from trl.generation.vllm_generation import VLLMGeneration
    class _Dist:
        is_fsdp, fsdp_version, is_zero3 = False, None, False
        @contextlib.contextmanager
        def gather_params(self, params): yield
    fake = SimpleNamespace(model=model, _dist=_Dist(),
                           _fix_param_name_to_vllm=lambda n, extra_prefixes=None: VLLMGeneration._fix_param_name_to_vllm(None, n, extra_prefixes))
    return [n for n, _ in VLLMGeneration._iter_named_params(fake)]

@pytest.fixture(scope="module")
def qwen_sft_folder(tmp_path_factory):
    tok = make_tokenizer("qwen"); model = make_model(tok, "tiny", seed=2)
    add_backtrack_token(tok, model, init="semantic", seed=3)
    return save_backtrack_model(model, tok, tmp_path_factory.mktemp("qsft") / "model", info=dict(executor="sft", run="fixture"))

def test_vllm_sync_names_cover_the_grpo_gpu_config(qwen_sft_folder):
    "configs/qwen3-4b_grpo.yaml (LoRA + vLLM): every name the sync sends is a base-model parameter, and all of them are sent."
    cfg = load_config(REPO / "configs/qwen3-4b_grpo.yaml", [f"model.name_or_path={qwen_sft_folder}"])
    assert cfg.trainer["use_vllm"] and cfg.lora.enabled and not cfg.lora.train_bt_rows
    ex = GRPOExecutor(cfg); tok, peft_model = ex.load_tokenizer_and_model()
    assert hasattr(peft_model, "peft_config")
    base, _, _ = load_backtrack_model(qwen_sft_folder)
    want = {n for n, _ in base.named_parameters()}
    sent = _vllm_names(peft_model)
    assert set(sent) == want and len(sent) == len(want), (set(sent) ^ want)
    # the premise of the refusal: with trainable BT rows the sync sends names vLLM does not have
    from peft import get_peft_model
    bt = get_peft_model(load_backtrack_model(qwen_sft_folder)[0], lora_config_for_backtrack(base, ex.bt_id, train_bt_rows=True))
    unknown = set(_vllm_names(bt)) - want
    assert unknown and all("token_adapter" in n for n in unknown), unknown
    with pytest.raises(ConfigError, match="lora.train_bt_rows") as e:
        load_config(REPO / "configs/qwen3-4b_grpo.yaml", ["lora.train_bt_rows=true"])
    assert "lora.train_bt_rows=false" in str(e.value)

# --- the start model --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def llama_sft_folder(tmp_path_factory):
    tok = make_tokenizer("llama"); model = make_model(tok, "tiny", seed=1)
    add_backtrack_token(tok, model, init="semantic", seed=3)
    return save_backtrack_model(model, tok, tmp_path_factory.mktemp("lsft") / "model", info=dict(executor="sft", run="fixture"))

@pytest.mark.slow
def test_missing_start_model_names_the_run_then_the_failed_run_resumes(tmp_path, monkeypatch, llama_sft_folder):
    "Outside smoke mode a GRPO config whose runs/<x>/model is absent says which run to train; that run then restarts with resume."
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as e:
        train_job("grpo", str(REPO / "configs/llama3.2-1b_grpo.yaml"), ["run.name=big"])
    assert "run 'llama3.2-1b_sft_backtrack'" in str(e.value) and "halluc train sft " in str(e.value) \
        and "configs/llama3.2-1b_sft_backtrack.yaml`" in str(e.value), e.value
    ovs = ["run.name=g", "trainer.max_steps=1", "trainer.num_generations=2", "trainer.per_device_train_batch_size=2",
           "trainer.max_completion_length=8", "data.toy_n_train=8", "data.toy_n_test=2", "eval.limit=2", "eval.max_new_tokens=8"]
    with pytest.raises(FileNotFoundError) as e:
        train_job("grpo", str(REPO / "configs/toy_grpo.yaml"), ovs)
    assert "does not exist" in str(e.value) and "make run" in str(e.value), e.value   # toy_grpo.yaml starts from the main job's model
    st = json.loads((tmp_path / "runs/g/status.json").read_text())
    assert st["status"] == "failed" and st["error"]["type"] == "FileNotFoundError"
    res = train_job("grpo", str(REPO / "configs/toy_grpo.yaml"), ovs + [f"model.name_or_path={llama_sft_folder}"], resume=True)
    assert res["global_step"] == 1 and json.loads((tmp_path / "runs/g/status.json").read_text())["status"] == "finished"

def test_gated_model_error_says_log_in(monkeypatch):
    import transformers
    def gated(*a, **k):
        raise OSError("You are trying to access a gated repo.\nMake sure to have access to it at "
                      "https://huggingface.co/meta-llama/Llama-3.2-1B-Instruct.\n401 Client Error.")
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", gated)
    cfg = load_config(REPO / "configs/llama3.2-1b_sft_backtrack.yaml")
    with pytest.raises(FileNotFoundError, match="hf auth login"):
        _load_pretrained(cfg.model, "float32")

# --- config names across versions, trackers, the Hub ------------------------------------------------------------

def test_shipped_configs_use_portable_names():
    "The cluster configs say gradient_checkpointing (valid in every transformers 5.x); halluc passes the installed name."
    import warnings
    for name in ("llama3.2-1b_sft_backtrack", "llama3.2-1b_grpo", "llama3.2-1b_dpo", "qwen3-4b_sft_backtrack", "qwen3-4b_grpo"):
        cfg = load_config(REPO / f"configs/{name}.yaml")
        assert "activation_checkpointing" not in cfg.trainer and cfg.trainer["gradient_checkpointing"] is True, name
        if cfg.trainer.get("use_vllm"): assert cfg.trainer["vllm_max_model_length"] >= cfg.trainer["max_completion_length"] + 256
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)   # no deprecated name reaches transformers
            args = cfg.trainer_args("/tmp/halluc-portable", **(dict(use_vllm=False) if cfg.executor == "grpo" else {}))
        assert getattr(args, "activation_checkpointing", args.gradient_checkpointing) is True

def test_report_to_needs_the_track_extra():
    import importlib.util
    if importlib.util.find_spec("wandb") is not None: pytest.skip("wandb is installed (the track extra)")
    with pytest.raises(ConfigError, match=r"\.\[track\]"):
        load_config(None, ["trainer.report_to=[wandb]"])

@pytest.mark.slow
def test_push_to_hub_pushes_model_with_halluc_json(tmp_path, monkeypatch):
    "trainer.push_to_hub: TRL pushes nothing (no checkpoints/); model/ with halluc.json goes to hub_model_id; the run name reaches the trackers."
    import huggingface_hub
    calls = []
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, repo, **k: calls.append(("create", repo)) or SimpleNamespace(repo_id=repo))
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder",
                        lambda self, repo_id, folder_path, **k: calls.append(("upload", repo_id, sorted(os.listdir(folder_path)))))
    cfg = load_config(None, ["trainer.max_steps=1", "trainer.push_to_hub=true", "trainer.hub_model_id=me/bt", f"run.root={tmp_path}",
                             "run.name=pushrun", "data.toy_n_train=8", "data.toy_n_test=2", "eval.limit=2", "eval.max_new_tokens=8"])
    ex = SFTExecutor(cfg); res = ex.run()
    assert ex.trainer.args.push_to_hub is False and ex.trainer.args.run_name == "pushrun"
    assert calls[0] == ("create", "me/bt") and calls[1][:2] == ("upload", "me/bt") and "halluc.json" in calls[1][2]
    assert res["pushed_to"] == "me/bt"

# --- many ranks, one writer -------------------------------------------------------------------------------------

def test_slurm_script_has_no_string_built_commands():
    s = (REPO / "scripts/slurm_papermill.sh").read_text()
    code = [l for l in s.splitlines() if not l.lstrip().startswith("#")]
    assert not any("bash -c" in l or "nvidia-smi" in l or "WANDB_MODE" in l for l in code) and "SLURM_GPUS_ON_NODE" in s
    subprocess.run(["bash", "-n", str(REPO / "scripts/slurm_papermill.sh")], check=True)

@pytest.mark.slow
def test_slurm_script_two_ranks_one_run_folder(tmp_path):
    """scripts/slurm_papermill.sh with a pass-through `srun`, 2 CPU ranks (ddp_cpu.yaml) running nbs/train_sft.ipynb through
    `halluc run`: one run folder, one executed notebook, status finished, both ranks trained (world size 2)."""
    for d in (".venv", "nbs", "configs", "scripts"): (tmp_path / d).symlink_to(REPO / d)
    bin_ = tmp_path / "bin"; bin_.mkdir()
    (bin_ / "srun").write_text('#!/usr/bin/env bash\nwhile [[ "$1" == --* ]]; do shift; done\nSLURM_NODEID=0 exec "$@"\n')
    (bin_ / "srun").chmod(0o755)
    cfg = load_config(REPO / "configs/toy_sft_backtrack.yaml", ["data.toy_n_train=64", "data.toy_n_test=4", "eval.limit=2",
                      "eval.max_new_tokens=16", "trainer.max_steps=3", "trainer.logging_steps=1", "trainer.save_steps=100",
                      "trainer.per_device_train_batch_size=4"])
    from halluc.config import save_config
    save_config(cfg, tmp_path / "tiny.yaml")
    env = dict(os.environ, PATH=f"{bin_}:{os.environ['PATH']}", SLURM_SUBMIT_DIR=str(tmp_path), SLURM_GPUS_ON_NODE="2",
               SLURM_NNODES="1", OMP_NUM_THREADS="1", SLURM_JOB_NODELIST="localhost")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT", "MASTER_ADDR", "HALLUC_JOB"): env.pop(k, None)
    p = subprocess.run(["bash", str(REPO / "scripts/slurm_papermill.sh"), "nbs/train_sft.ipynb", "tiny.yaml", "ddp-nb",
                        "configs/accelerate/ddp_cpu.yaml"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-4000:]
    runs = tmp_path / "runs"
    assert sorted(x.name for x in runs.iterdir()) == ["ddp-nb"], "one run folder, no partial notebooks left"
    run = runs / "ddp-nb"
    assert [x.name for x in run.glob("*.ipynb")] == ["train_sft.ipynb"]
    assert json.loads((run / "status.json").read_text())["status"] == "finished"
    res = json.loads((run / "result.json").read_text())
    assert res["world_size"] == 2 and res["global_step"] == 3
    steps = [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]
    assert steps == sorted(set(steps)), f"rank 0 alone writes metrics: {steps}"

def test_python_m_halluc_cli_is_the_halluc_command(tmp_path):
    "Launchers start a module (`accelerate launch -m halluc.cli …`): it must run the command, not import and exit 0 silently."
    p = subprocess.run([sys.executable, "-m", "halluc.cli", "runs", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "no runs under" in p.stdout, (p.stdout, p.stderr[-2000:])

def test_lowest_pins_are_the_declared_floors():
    "requirements/lowest.txt (what `make test-compat` installs) pins exactly pyproject.toml's lower bounds, so the floors are the tested ones."
    import re, tomllib
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    floors = {m[1].lower().replace("-", "_"): m[2] for d in deps if (m := re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9.]+)", d))}
    pins = dict(re.fullmatch(r"([A-Za-z0-9_.-]+)==([0-9.]+)", l).groups() for l in (REPO / "requirements/lowest.txt").read_text().splitlines()
                if l.strip() and not l.startswith("#"))
    assert pins and all(floors.get(k.lower().replace("-", "_")) is not None for k in pins), (pins, floors)
    for k, v in pins.items():
        f = floors[k.lower().replace("-", "_")]
        assert tuple(map(int, v.split("."))) [:len(f.split("."))] == tuple(map(int, f.split("."))), (k, v, f)
    assert {"transformers", "trl", "peft"} <= set(pins)

@pytest.mark.slow
def test_gpu_check_script_runs_as_a_cpu_dry_run(tmp_path):
    "scripts/gpu_check.py (the device check) with --cpu-dry-run: the same stages on a tiny model, so the prepared script is not broken."
    p = subprocess.run([sys.executable, str(REPO / "scripts/gpu_check.py"), str(tmp_path), "--cpu-dry-run"], capture_output=True,
                       text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    rep = json.loads((tmp_path / "gpu_check.json").read_text())
    assert rep["dry_run"] and rep["sft_full_bf16_autocast"]["moved"] >= 0.95 and rep["grpo_lora"]["steps"] == 2
