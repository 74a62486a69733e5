"Nothing a model or a dataset produced is executed or unpickled; remote code only when a config asks for it."
import ast
from pathlib import Path
import pytest

PKG = Path(__file__).resolve().parents[1] / "halluc"
SOURCES = sorted(PKG.rglob("*.py"))

def calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
            base = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else None
            yield node, name, base

@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_no_eval_exec_pickle(path):
    tree = ast.parse(path.read_text())
    for node, name, base in calls(tree):
        where = f"{path.name}:{node.lineno}"
        assert not (isinstance(node.func, ast.Name) and name in ("eval", "exec", "compile")), f"{where}: {name}() call"
        assert not (base in ("pickle", "dill", "marshal") and name in ("load", "loads")), f"{where}: {base}.{name}"
        assert not (base == "yaml" and name in ("unsafe_load", "full_load")), f"{where}: yaml.{name}"
        if base == "yaml" and name == "load":  # only with a SafeLoader subclass (config._Loader); tests/test_config checks tags are refused
            loader = {k.arg: k.value for k in node.keywords}.get("Loader")
            lname = getattr(loader, "id", None) or getattr(loader, "attr", None)
            assert lname and lname not in ("Loader", "UnsafeLoader", "FullLoader"), f"{where}: yaml.load with an unsafe Loader"
        if base == "torch" and name == "load":
            kw = {k.arg: k.value for k in node.keywords}
            assert "weights_only" in kw and getattr(kw["weights_only"], "value", None) is True, f"{where}: torch.load without weights_only=True"

@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_trust_remote_code_never_hardcoded_on(path):
    tree = ast.parse(path.read_text())
    for node, name, base in calls(tree):
        for k in node.keywords:
            if k.arg == "trust_remote_code":
                assert not (isinstance(k.value, ast.Constant) and k.value.value is True), f"{path.name}:{node.lineno}: trust_remote_code=True"

def test_from_pretrained_passes_trust_remote_code_explicitly():
    "Every from_pretrained that loads a model or tokenizer by name forwards the config's trust_remote_code."
    offenders = []
    for path in SOURCES:
        tree = ast.parse(path.read_text())
        for node, name, base in calls(tree):
            if name == "from_pretrained" and base in ("AutoModelForCausalLM", "AutoTokenizer", "AutoConfig"):
                if not any(k.arg in ("trust_remote_code", None) for k in node.keywords):
                    offenders.append(f"{path.name}:{node.lineno}")
    assert not offenders, f"from_pretrained without trust_remote_code: {offenders}"
