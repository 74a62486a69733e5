"""The package's shape: each module imports only from the layers above it (function-local imports included),
and each shared idea has one home. Read from the source with `ast`, so these hold for code paths no test runs."""
import ast, re
from pathlib import Path
import pytest

PKG = Path(__file__).resolve().parents[1] / "halluc"
LAYERS = ["core", "io", "config", "grading", "toy", "patcher", "data", "generate", "measure", "onpolicy", "reward", "runs",
          "executors", "evaluation", "report", "jobs", "cli"]
"The layer order of DESIGN.md and nbs/ (the notebooks are numbered in it)."


def _modules():
    return {p.stem: p for p in PKG.glob("*.py") if not p.stem.startswith("_")}


def _halluc_imports(path: Path, name: str) -> list[tuple[int, str]]:
    "Every `halluc.X` a module imports, at any depth of its code: (line, X)."
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1: mods = [node.module] if node.module else [a.name for a in node.names]
            elif node.level == 0 and node.module and node.module.split(".")[0] == "halluc":
                parts = node.module.split(".")
                mods = [parts[1]] if len(parts) > 1 else [a.name for a in node.names]
            else: continue
        elif isinstance(node, ast.Import):
            mods = [a.name.split(".")[1] for a in node.names if a.name.startswith("halluc.")]
        else: continue
        out += [(node.lineno, m.split(".")[0]) for m in mods if m and m.split(".")[0] in LAYERS and m.split(".")[0] != name]
    return out


def test_every_module_has_a_layer():
    assert set(_modules()) == set(LAYERS), "add the new module to LAYERS (and to DESIGN.md's layer list)"


def test_imports_only_go_up_the_layers():
    bad = []
    for name, path in _modules().items():
        for line, dep in _halluc_imports(path, name):
            if LAYERS.index(dep) > LAYERS.index(name): bad.append(f"halluc/{path.name}:{line} imports halluc.{dep}")
    assert not bad, "a module imports a layer below it:\n" + "\n".join(bad)


def test_the_layer_rule_sees_lazy_imports(tmp_path):
    p = tmp_path / "core.py"
    p.write_text("def f():\n    from halluc.jobs import train_job\n    from .data import x\n")
    assert _halluc_imports(p, "core") == [(2, "jobs"), (3, "data")]


def _calls(pattern: str) -> dict[str, int]:
    rx = re.compile(pattern)
    return {n: len(rx.findall(p.read_text())) for n, p in _modules().items() if rx.search(p.read_text())}


@pytest.mark.parametrize("pattern, home", [
    (r"\bos\.replace\(", "io"),                                   # atomic moves
    (r"\.generate\(", "generate"),                                # one model.generate loop
    (r"re\.compile\(.*(?:ANSWER_PREFIX|[Aa]nswer is)", "grading"),  # one answer-line pattern
    (r"\bmkstemp\(", "io"),
])
def test_one_home(pattern, home):
    assert set(_calls(pattern)) == {home}, f"{pattern!r} outside halluc.{home}: {_calls(pattern)}"
