"Jobs and the CLI: bad input fails clearly, a failing notebook keeps its partial copy and marks the run failed."
import json, subprocess, sys
from pathlib import Path
import nbformat, pytest
from halluc.jobs import run_notebook, train_job
from halluc.runs import check_run_name

REPO = Path(__file__).resolve().parents[1]
HALLUC = str(Path(sys.executable).parent / "halluc")  # the console script installed with the package

def make_nb(path, body):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("config = None\noverrides = []\nrun_name = None\nroot = 'runs'\nx = 1"),
                                         nbformat.v4.new_code_cell(body)])
    nb.cells[0].metadata["tags"] = ["parameters"]
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "python3", "language": "python"}}
    nbformat.write(nb, path); return path

@pytest.mark.slow
def test_failing_notebook_keeps_partial_and_marks_failed(tmp_path):
    nb = make_nb(tmp_path / "job.ipynb", "print('before'); assert x == 2, 'x must be 2'")
    with pytest.raises(RuntimeError, match="partial notebook is kept"):
        run_notebook(str(nb), root=str(tmp_path / "runs"), run_name="fails", parameters={"x": 3})
    out = tmp_path / "runs" / "fails"
    assert (out / "job.ipynb").exists() and "before" in (out / "job.ipynb").read_text()
    st = json.loads((out / "status.json").read_text())
    assert st["status"] == "failed" and "x must be 2" in json.dumps(st)

@pytest.mark.slow
def test_notebook_parameters_are_injected(tmp_path):
    nb = make_nb(tmp_path / "ok.ipynb", "assert x == 2 and run_name == 'ok-run'")
    out = run_notebook(str(nb), root=str(tmp_path / "runs"), run_name="ok-run", parameters={"x": 2})
    assert out == tmp_path / "runs" / "ok-run" / "ok.ipynb" and out.exists()

@pytest.mark.parametrize("name", ["a/b", "../x", "x/../../y", ""])
def test_bad_run_names(name):
    with pytest.raises(ValueError):
        check_run_name(name)

def test_missing_paths_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        train_job("sft", str(tmp_path / "nope.yaml"))
    with pytest.raises(FileNotFoundError, match="missing.ipynb"):
        run_notebook(str(tmp_path / "missing.ipynb"))
    with pytest.raises(ValueError, match="unknown executor"):
        train_job("ppo", None)

@pytest.mark.slow
def test_cli_help_and_errors(tmp_path):
    h = subprocess.run([HALLUC, "--help"], capture_output=True, text=True)
    assert h.returncode == 0 and all(c in h.stdout for c in ("train", "eval", "run", "runs", "experiment"))
    bad = subprocess.run([HALLUC, "train", "sft", "configs/toy_sft_clean.yaml", "trainer.learnin_rate=1"],
                         capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2 and "learnin_rate" in bad.stderr and "learning_rate" in bad.stderr and "Traceback" not in bad.stderr
    wrong_type = subprocess.run([HALLUC, "train", "sft", "configs/toy_sft_clean.yaml", "trainer.max_steps=many"],
                                capture_output=True, text=True, cwd=REPO)
    assert wrong_type.returncode == 2 and "trainer.max_steps" in wrong_type.stderr

def test_library_ignores_in_test(monkeypatch):
    "Smoke mode is a parameter: nbdev-test's IN_TEST is read by the job notebooks, never by the library."
    import halluc
    hits = [p.name for p in Path(halluc.__file__).parent.glob("*.py") if "IN_TEST" in p.read_text()]
    assert hits == []
    nbs = [p.name for p in (REPO / "nbs").glob("*.ipynb") if "IN_TEST" in p.read_text() and "parameters" in p.read_text()]
    assert sorted(nbs) == ["eval.ipynb", "experiment.ipynb", "train_dpo.ipynb", "train_grpo.ipynb", "train_sft.ipynb"]

@pytest.mark.slow
@pytest.mark.parametrize("kw,msg", [(dict(overrides=5), "overrides"), (dict(overrides=[3]), "overrides"),
                                    (dict(resume="yes"), "resume"), (dict(run_name=7), "run_name")])
def test_wrong_parameter_types(kw, msg):
    with pytest.raises(TypeError, match=msg):
        train_job("sft", None, **kw)

def test_overrides_accept_yaml_list_string():
    from halluc.jobs import as_overrides
    assert as_overrides("[a.b=1, c=2]") == ["a.b=1", "c=2"] and as_overrides("a=1") == ["a=1"] and as_overrides(None) == []
