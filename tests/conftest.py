"""Test-wide settings: offline, one torch thread, and the session-scoped tiny models."""
import os

# Set before torch/transformers import anywhere in the test process (and inherited by subprocesses).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["TQDM_DISABLE"] = "1"
# Every stage run is recorded in the run ledger (compass.ledger): never into a developer's MLflow server
# or experiment; the workspace itself is a session temp dir (fixture `ledger_home` below).
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("MLFLOW_EXPERIMENT_NAME", None)


# --- tiny models (owned by compass.models.tiny) -------------------------------------------------------
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@dataclass(frozen=True)
class TinyModels:
    tokenizer: Path
    llm: Path
    vlm: Path
    vision: Path


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> TinyModels:
    """Tokenizer, Llama LLM, LLaVA-OneVision VLM and SigLIP vision tower, built once per session (seed 0).
    Read-only for tests: copy a directory before changing it."""
    import torch

    from compass.models.tiny import build_tiny_llm, build_tiny_tokenizer, build_tiny_vision, build_tiny_vlm

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("tiny_models")
    tokenizer = build_tiny_tokenizer(root / "tokenizer", seed=0)
    return TinyModels(
        tokenizer=tokenizer,
        llm=build_tiny_llm(root / "llm", tokenizer, seed=0),
        vlm=build_tiny_vlm(root / "vlm", tokenizer, seed=0),
        vision=build_tiny_vision(root / "vision", seed=0),
    )


@pytest.fixture(scope="session")
def tiny_families(tmp_path_factory):
    """`build(name)` -> a tiny model directory of that family (VLM families and text LLMs with real chat
    templates, see support.tiny_families), each built once per session on first use. Read-only for tests."""
    from support.tiny_families import FamilyModels

    return FamilyModels(tmp_path_factory.mktemp("tiny_families"))


# --- run ledger (owned by compass.ledger) ---------------------------------------------------------------
@pytest.fixture(scope="session", autouse=True)
def session_ledger_home(tmp_path_factory) -> Path:
    """COMPASS_HOME for what session-scoped fixtures record, before any module's own ledger is set."""
    home = tmp_path_factory.mktemp("compass-home-session")
    os.environ["COMPASS_HOME"] = str(home)
    return home


@pytest.fixture(scope="module", autouse=True)
def ledger_home(session_ledger_home, tmp_path_factory):
    """COMPASS_HOME per test module: a copy of one initialised ledger (MLflow's migrations run once per session),
    so no test writes a ./.compass ledger into the repo, and what one module does to its ledger (kills, broken
    stores, stand-in stages) cannot reach the next module's tests."""
    from support.ledger_runs import fresh_workspace, template_dir

    home = fresh_workspace(template_dir(tmp_path_factory), tmp_path_factory.mktemp("compass-home") / "home").root
    os.environ["COMPASS_HOME"] = str(home)
    yield home
    os.environ["COMPASS_HOME"] = str(session_ledger_home)


# --- test tiers (markers registered in pyproject.toml) -------------------------------------------------
MODEL_FIXTURES = {"tiny_models", "tiny_families"}  # session fixtures that build models: a test using one is tier "models"


def pytest_collection_modifyitems(config, items):
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "e2e" in parts:
            item.add_marker(pytest.mark.e2e)
        if "faults" in parts:
            item.add_marker(pytest.mark.faults)
        if MODEL_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.models)
