"Config: defaults, YAML + overrides, every kind of mistake is a ConfigError naming key and fix, round-trips, TRL args."
import dataclasses, os, string, tempfile
from pathlib import Path
import pytest
from hypothesis import given, settings, assume, HealthCheck, strategies as st
from halluc.config import (Config, ConfigError, ModelConfig, LoraSection, DataConfig, RewardConfig, EvalConfig, RunConfig,
                           BacktrackConfig, SECTIONS, CONVERTER_PARAMS, REWARD_COMPONENTS, load_config, config_from_dict,
                           config_to_dict, save_config, apply_overrides, trainer_fields, yaml_load, yaml_dump)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))

def config_error(fn, *a, **k) -> ConfigError:
    with pytest.raises(ConfigError) as ei: fn(*a, **k)
    assert isinstance(ei.value, ValueError)
    return ei.value

FAST_TMP = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None  # fsync is free on tmpfs

def roundtrip(cfg: Config) -> Config:
    "save_config -> load_config, the way a run folder stores its config."
    with tempfile.TemporaryDirectory(dir=FAST_TMP) as tmp:
        p = save_config(cfg, Path(tmp) / "sub" / "config.yaml")
        assert os.listdir(p.parent) == ["config.yaml"]  # no temp file left behind
        return load_config(p)

# --- defaults, files, overrides -----------------------------------------------------------------------

def test_defaults():
    cfg = load_config()
    assert cfg == Config() == config_from_dict({}) == config_from_dict({s: None for s in SECTIONS if s != "executor"})
    assert cfg.executor == "sft" and cfg.trainer == {}
    assert cfg.model == ModelConfig("toy:llama-tiny", "float32", False, None, None, 0)
    assert cfg.backtrack == BacktrackConfig(True, "semantic", None)
    assert cfg.lora == LoraSection(False, 16, 32, 0.05, "all-linear", True)
    assert (cfg.data.source, cfg.data.converter, cfg.data.max_length, cfg.data.on_bad_record) == ("toy", "clean", 512, "error")
    assert cfg.reward.weights_start == {"outcome": 0.2, "format": 0.3, "process": 0.4, "efficiency": 0.1}
    assert cfg.reward.weights_end == {"outcome": 0.7, "format": 0.1, "process": 0.1, "efficiency": 0.1}
    assert cfg.eval == EvalConfig(["toy_arithmetic_backtrack"], None, 16, 192, None, None)
    assert cfg.run == RunConfig(None, "runs", False, False, 0)
    assert Config().reward.weights_start is not Config().reward.weights_start  # no shared mutable defaults

def test_configs_folder_has_the_toy_configs():
    assert {"toy_sft_clean.yaml", "toy_sft_backtrack.yaml"} <= {p.name for p in CONFIGS}

@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_loads(path):
    cfg = load_config(path)
    assert roundtrip(cfg) == cfg
    assert cfg.trainer_args(Path(tempfile.gettempdir()) / "halluc-test-out") is not None

def test_toy_configs_content():
    clean, bt = load_config(REPO / "configs/toy_sft_clean.yaml"), load_config(REPO / "configs/toy_sft_backtrack.yaml")
    assert clean.model.name_or_path == bt.model.name_or_path == "toy:llama-tiny" and clean.executor == bt.executor == "sft"
    assert clean.data.converter == "clean" and bt.data.converter == "numeric" and bt.data.converter_params == {"ratio": 0.5}
    assert clean.trainer == bt.trainer and clean.data.toy_difficulty == bt.data.toy_difficulty

def test_yaml_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("executor: sft\ndata:\n  converter: clean\n  max_length: 128\ntrainer:\n  learning_rate: 3e-3\n  max_steps: 10\n")
    cfg = load_config(p, ["trainer.learning_rate=1e-4", "data.converter=numeric", "lora.enabled=true",
                          "lora.target_modules=[q_proj, v_proj]", "reward.weights_end.outcome=0.9", "run.name=x",
                          "data.max_length=1", "data.max_length=64", "eval.limit=null", "backtrack.noise_std=0"])
    assert cfg.trainer == {"learning_rate": 1e-4, "max_steps": 10}
    assert cfg.data.converter == "numeric" and cfg.data.max_length == 64 and cfg.lora.enabled is True
    assert cfg.lora.target_modules == ["q_proj", "v_proj"] and cfg.run.name == "x" and cfg.eval.limit is None
    assert cfg.reward.weights_end == {"outcome": 0.9, "format": 0.1, "process": 0.1, "efficiency": 0.1}
    assert cfg.backtrack.noise_std == 0.0 and type(cfg.backtrack.noise_std) is float  # int accepted for float, stored as float
    assert roundtrip(cfg) == cfg

def test_apply_overrides_does_not_mutate():
    d = {"data": {"converter": "clean"}}
    out = apply_overrides(d, ["data.converter=numeric", "trainer.max_steps=5"])
    assert d == {"data": {"converter": "clean"}} and out["data"]["converter"] == "numeric" and out["trainer"] == {"max_steps": 5}

def test_weights_in_a_file_replace_the_default_whole():
    cfg = config_from_dict({"reward": {"weights_start": {"outcome": 1}}})
    assert cfg.reward.weights_start == {"outcome": 1.0, "format": 0.0, "process": 0.0, "efficiency": 0.0}

def test_yaml_scientific_floats_and_quoted_strings():
    assert yaml_load("a: 1e-4\nb: '1e-4'\nc: 5") == {"a": 1e-4, "b": "1e-4", "c": 5}
    cfg = load_config(None, ["run.name='1e-4'", "model.revision='123'"])
    assert cfg.run.name == "1e-4" and cfg.model.revision == "123" and roundtrip(cfg) == cfg

# --- every kind of mistake ----------------------------------------------------------------------------

CASES = [  # (mapping, dotted key, expected suggestion or None, a fragment of the message)
    ({"modle": {}}, "modle", "model", "unknown key"),
    ({"data": {"convertr": "numeric"}}, "data.convertr", "converter", "unknown key"),
    ({"lora": {"dropuot": 0.1}}, "lora.dropuot", "dropout", "unknown key"),
    ({"trainer": {"learnin_rate": 1e-4}}, "trainer.learnin_rate", "learning_rate", "trl.SFTConfig"),
    ({"executor": "grpo", "trainer": {"num_generation": 4}}, "trainer.num_generation", "num_generations", "trl.GRPOConfig"),
    ({"trainer": {"warmup_ratio": 0.1}}, "trainer.warmup_ratio", "warmup_steps", "ratio"),
    ({"learning_rate": 1e-3}, "learning_rate", "trainer.learning_rate", "unknown key"),
    ({"data": {"dtype": "float32"}}, "data.dtype", "model.dtype", "unknown key"),
    ({"data": {"max_length": "512"}}, "data.max_length", None, "without quotes"),
    ({"eval": {"batch_size": True}}, "eval.batch_size", None, "boolean"),
    ({"data": {"toy_n_train": 1.5}}, "data.toy_n_train", None, "expected int"),
    ({"model": {"dtype": None}}, "model.dtype", None, "null"),
    ({"lora": {"target_modules": ["q_proj", 3]}}, "lora.target_modules", None, "list of str"),
    ({"trainer": {"max_steps": "300"}}, "trainer.max_steps", None, "without quotes"),
    ({"trainer": {"max_steps": True}}, "trainer.max_steps", None, "boolean"),
    ({"trainer": {"learning_rate": "fast"}}, "trainer.learning_rate", None, "expected float"),
    ({"trainer": {"lr_scheduler_type": "cosin"}}, "trainer.lr_scheduler_type", "cosine", "SchedulerType"),
    ({"trainer": {"output_dir": "x"}}, "trainer.output_dir", None, "run folder"),
    ({"trainer": [1]}, "trainer", None, "mapping"),
    ({"model": {"dtype": "bf16"}}, "model.dtype", "bfloat16", "not one of"),
    ({"model": {"name_or_path": "toy:llama-tny"}}, "model.name_or_path", "toy:llama-tiny", "toy model"),
    ({"backtrack": {"init": "semantc"}}, "backtrack.init", "semantic", "not one of"),
    ({"reward": {"schedule": "cosin"}}, "reward.schedule", "cosine", "not one of"),
    ({"data": {"on_bad_record": "skp"}}, "data.on_bad_record", "skip", "not one of"),
    ({"data": {"converter": "numerc"}}, "data.converter", "numeric", "not one of"),
    ({"data": {"toy_difficulty": 9}}, "data.toy_difficulty", None, "not one of"),
    ({"executor": "sfft"}, "executor", "sft", "not one of"),
    ({"lora": {"r": 0}}, "lora.r", None, "> 0"),
    ({"lora": {"dropout": 1.0}}, "lora.dropout", None, "< 1"),
    ({"eval": {"batch_size": -1}}, "eval.batch_size", None, "> 0"),
    ({"eval": {"limit": 0}}, "eval.limit", None, "> 0"),
    ({"eval": {"tasks": []}}, "eval.tasks", None, "at least one"),
    ({"data": {"max_length": 0}}, "data.max_length", None, "> 0"),
    ({"data": {"max_records": -5}}, "data.max_records", None, "> 0"),
    ({"model": {"seed": -1}}, "model.seed", None, ">= 0"),
    ({"backtrack": {"noise_std": float("inf")}}, "backtrack.noise_std", None, "finite"),
    ({"reward": {"step_at": 1.5}}, "reward.step_at", None, "<= 1"),
    ({"reward": {"weights_start": {"outcom": 1.0}}}, "reward.weights_start.outcom", "outcome", "reward component"),
    ({"reward": {"weights_end": {"outcome": -0.1}}}, "reward.weights_end.outcome", None, ">= 0"),
    ({"reward": {"weights_end": {"outcome": 0}}}, "reward.weights_end", None, "all weights are 0"),
    ({"data": {"converter_params": {"ratoi": 0.5}}}, "data.converter_params.ratoi", "ratio", "converter parameter"),
    ({"data": {"converter_params": {"ratio": 2}}}, "data.converter_params.ratio", None, "[0, 1]"),
    ({"data": {"eval_split": "train"}}, "data.eval_split", None, "leaks"),
    ({"data": {"split": "valid"}}, "data.split", "validation", "toy tasks"),
    ({"run": {"resume": True, "overwrite": True}}, "run.overwrite", None, "pick one"),
    ({"run": {"name": "a/b"}}, "run.name", None, "folder name"),
    ({"model": "toy:llama-tiny"}, "model", None, "mapping"),
    ({"data": {"converter_params": {"ratio": (1, 2)}}}, "data.converter_params.ratio", None, "plain YAML"),
    ({"eval": {"device": float("nan")}}, "eval.device", None, "NaN"),
    ({3: 4}, "3", None, "keys must be strings"),
]

@pytest.mark.parametrize("d,key,suggestion,fragment", CASES, ids=[c[1] + ":" + c[3] for c in CASES])
def test_each_mistake_names_key_and_fix(d, key, suggestion, fragment):
    e = config_error(config_from_dict, d, source="my.yaml")
    msg = str(e)
    assert e.key == key and f"my.yaml: {key}:" in msg and fragment in msg, msg
    if suggestion: assert f"did you mean {suggestion!r}?" in msg and e.problems[0].suggestion == suggestion, msg

def test_all_problems_reported_at_once():
    e = config_error(config_from_dict, {"modle": {}, "lora": {"r": -1}, "trainer": {"learnin_rate": 1}})
    assert [p.key for p in e.problems] == ["modle", "lora.r", "trainer.learnin_rate"] and "3 problems" in str(e)

def test_errors_name_the_override(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("data:\n  max_lenght: 128\n")
    e = config_error(load_config, p, ["data.max_length=abc", "trainer.learnin_rate=1e-4"])
    srcs = {q.key: q.source for q in e.problems}
    assert srcs == {"data.max_lenght": str(p), "data.max_length": "override 'data.max_length=abc'",
                    "trainer.learnin_rate": "override 'trainer.learnin_rate=1e-4'"}, srcs
    assert "did you mean 'max_length'?" in str(e) and "did you mean 'learning_rate'?" in str(e)

@pytest.mark.parametrize("ov", ["lora.enabled", "=3", "a..b=1", " .x=1", "model.dtype.x=1", "trainer.x=[1, 2", 42])
def test_bad_override_strings(ov):
    e = config_error(load_config, None, [ov])
    assert repr(ov) in str(e) or str(ov) in str(e)

def test_file_problems(tmp_path):
    e = config_error(load_config, tmp_path / "missing.yaml")
    assert "missing.yaml" in str(e) and "no such" in str(e)
    for text, frag in [("- a\n- b\n", "top level must be a mapping"), ("model: [1\n", "not valid YAML"),
                       ("model:\n  dtype: float32\nmodel: {}\n", "twice"), ("5", "top level must be a mapping"),
                       ("a: &x [*x]\n", "levels"), ("a: !!int abc\n", "not valid YAML")]:
        p = tmp_path / "f.yaml"; p.write_text(text)
        e = config_error(load_config, p)
        assert str(p) in str(e) and frag in str(e), (text, str(e))
    empty = tmp_path / "empty.yaml"; empty.write_text("# nothing\n")
    assert load_config(empty) == Config()

@pytest.mark.parametrize("tag", ["!!python/object/apply:os.system ['touch {m}']", "!!python/object:halluc.config.Config {{}}",
                                 "!!python/name:os.system", "!!python/object/new:os.system ['touch {m}']"])
def test_python_tags_refused(tmp_path, tag):
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.yaml"
    p.write_text("model:\n  name_or_path: " + tag.format(m=marker) + "\n")
    e = config_error(load_config, p)
    assert "refusing the YAML tag" in str(e) and "python/" in str(e) and str(p) in str(e)
    e = config_error(load_config, None, ["model.name_or_path=" + tag.format(m=marker)])
    assert "refusing" in str(e) and "override" in str(e)
    assert not marker.exists()

def test_save_refuses_an_invalid_config(tmp_path):
    cfg = Config(); cfg.model.dtype = "fp8"
    e = config_error(save_config, cfg, tmp_path / "c.yaml")
    assert "model.dtype" in str(e) and not (tmp_path / "c.yaml").exists() and os.listdir(tmp_path) == []

# --- TRL --------------------------------------------------------------------------------------------

def test_trainer_args_sft_on_cpu(monkeypatch, tmp_path):
    import torch, trl
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = load_config(None, ["trainer.max_steps=7", "trainer.learning_rate=1e-4", "trainer.bf16=true", "run.seed=3",
                             "trainer.per_device_train_batch_size=4"])
    with pytest.warns(UserWarning, match="bf16"): args = cfg.trainer_args(tmp_path / "out")
    assert type(args) is trl.SFTConfig and args.output_dir == str(tmp_path / "out")
    assert args.use_cpu is True and args.bf16 is False and args.fp16 is False
    assert args.max_steps == 7 and args.learning_rate == 1e-4 and args.per_device_train_batch_size == 4
    assert args.seed == 3 and args.report_to in ("none", [], ["none"])
    import importlib.util
    if importlib.util.find_spec("tensorboard") is not None:   # the track extra
        set_ = load_config(None, ["trainer.seed=11", "trainer.report_to=tensorboard"]).trainer_args(tmp_path / "o2")
        assert set_.seed == 11 and set_.report_to in ("tensorboard", ["tensorboard"])
    else:   # refused when the config is read, not at the first logging step
        assert ".[track]" in str(config_error(load_config, None, ["trainer.report_to=tensorboard"]))
    set_ = load_config(None, ["trainer.seed=11", "trainer.report_to=none"]).trainer_args(tmp_path / "o2")
    assert set_.seed == 11
    assert cfg.trainer_args(tmp_path / "o3", max_steps=2).max_steps == 2
    e = config_error(cfg.trainer_args, tmp_path / "o4", max_stepz=2)
    assert "trainer_args(**extra)" in str(e) and "did you mean 'max_steps'?" in str(e)

def test_trainer_args_other_executors(tmp_path):
    import trl
    d = load_config(None, ["executor=dpo", "trainer.beta=0.2"]).trainer_args(tmp_path / "d")
    assert type(d) is trl.DPOConfig and d.beta == 0.2
    g = load_config(None, ["executor=grpo", "trainer.num_generations=4", "trainer.per_device_train_batch_size=4"]).trainer_args(tmp_path / "g")
    assert type(g) is trl.GRPOConfig and g.num_generations == 4

def test_trl_refusal_is_a_config_error(tmp_path):
    cfg = load_config(None, ["executor=grpo", "trainer.num_generations=3", "trainer.per_device_train_batch_size=4"])
    e = config_error(cfg.trainer_args, tmp_path / "g")
    assert e.key in ("trainer.num_generations", "trainer.per_device_train_batch_size") and "GRPOConfig refused" in str(e)
    assert "override 'trainer." in str(e) and e.__cause__ is None and isinstance(e.original, ValueError)

# --- properties -------------------------------------------------------------------------------------

SECTION_KEYS = {s: [f.name for f in dataclasses.fields(t)] for s, t in SECTIONS.items() if dataclasses.is_dataclass(t)}
TRAINER_SAMPLE = ["learning_rate", "max_steps", "lr_scheduler_type", "logging_steps", "bf16", "report_to", "save_total_limit",
                  "warmup_steps", "optim", "lr_scheduler_kwargs", "include_num_input_tokens_seen", "debug", "max_length",
                  "trackio_static_space_id", "gradient_checkpointing_kwargs", "eval_steps", "packing"]
VALID_KEYS = [(k,) for k in ("executor",)] + [(s, k) for s, ks in SECTION_KEYS.items() for k in ks] + [("trainer", k) for k in TRAINER_SAMPLE] \
    + [("reward", "weights_start", c) for c in REWARD_COMPONENTS] + [("data", "converter_params", c) for c in CONVERTER_PARAMS]

scalars = st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True, allow_infinity=True) \
    | st.text(max_size=8) | st.sampled_from(["float32", "cosine", "toy:qwen-small", "1e-4", "", "all-linear", "test", "yes"])
values = st.recursive(scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3), max_leaves=6)

def nest(path, value):
    d = node = {}
    for p in path[:-1]: node[p] = {}; node = node[p]
    node[path[-1]] = value
    return d

@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([(), ("model",), ("backtrack",), ("lora",), ("data",), ("reward",), ("eval",), ("run",), ("trainer",),
                        ("reward", "weights_end"), ("data", "converter_params")]),
       st.text(alphabet=string.ascii_letters + "_", min_size=1, max_size=14), values)
def test_random_unknown_keys_always_config_error(path, name, value):
    valid = {(): [f.name for f in dataclasses.fields(Config)], ("trainer",): list(trainer_fields("sft")),
             ("reward", "weights_end"): list(REWARD_COMPONENTS), ("data", "converter_params"): list(CONVERTER_PARAMS)}
    assume(name not in valid.get(path, SECTION_KEYS.get(path[0]) if path else []))
    e = config_error(config_from_dict, nest(path + (name,), value), source="h.yaml")
    assert ".".join(path + (name,)) in str(e)

@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(VALID_KEYS), values), min_size=1, max_size=3))
def test_random_values_give_config_or_config_error(items):
    d = {}
    for path, v in items:
        node = d
        for p in path[:-1]: node = node.setdefault(p, {}) if isinstance(node.get(p, {}), dict) else {}
        node[path[-1]] = v
    try:
        cfg = config_from_dict(d, source="h.yaml")
    except ConfigError as e:
        assert all(p.source == "h.yaml" and p.key for p in e.problems) and "h.yaml" in str(e)
        return
    assert roundtrip(cfg) == cfg

@settings(max_examples=150, deadline=None)
@given(st.sampled_from(VALID_KEYS), st.text(max_size=20))
def test_random_overrides_give_config_or_config_error(path, raw):
    ov = ".".join(path) + "=" + raw
    try: cfg = load_config(None, [ov])
    except ConfigError as e:
        assert "override" in str(e) or any(p.source.startswith("override") for p in e.problems), str(e)
        return
    assert roundtrip(cfg) == cfg

@settings(max_examples=100, deadline=None)
@given(st.text(max_size=40))
def test_random_text_never_escapes(text):
    try: load_config(None, [text])
    except ConfigError: pass
    try: yaml_load(text, "t")
    except ConfigError: pass
