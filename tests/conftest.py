import os
from pathlib import Path
import pytest

REPO = Path(__file__).resolve().parents[1]
GSM8K_DIR = Path(os.environ.get("GSM8K_DIR", REPO.parent / "shared" / "data" / "gsm8k"))

@pytest.fixture(scope="session")
def gsm8k_dir():
    if not (GSM8K_DIR / "train.jsonl").exists():
        pytest.fail(f"GSM8K data not found at {GSM8K_DIR} (set GSM8K_DIR)")
    return GSM8K_DIR

@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    "Two shared cores: one torch thread is several times faster for the tiny toy models than two fighting for them."
    import torch
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
