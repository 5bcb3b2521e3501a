"""Secrets (keys named like credentials, values shaped like them, values of secret env variables) never
reach the ledger: not MLflow's database or artifacts, not the index, not the search text, not the store."""
import pytest

from support import ledger_runs as ledger_support  # noqa: E402
from compass.ledger.index import Index
from compass.ledger.record import add_note, tracker_for
from compass.ledger.redact import REDACTED, Redactor, is_secret_key
from compass.runner import execute_stage

OPENAI_KEY = "sk-proj-Abc123Def456Ghi789Jkl012Mno345"
ENV_SECRET = "hunter2-corp-vpn"  # nothing about it looks secret: only the variable name tells
HF_TOKEN = "hf_AbCdEfGhIjKlMnOpQrStUvWxYz123456"


@pytest.mark.parametrize("key, secret", [
    ("api_key", True), ("openai.apiKey", True), ("OPENAI_API_KEY", True), ("hf_token", True), ("access-token", True),
    ("client_secret", True), ("db_password", True), ("passwd", True), ("teacher.credentials", True),
    ("max_new_tokens", False), ("num_tokens", False), ("tokenizer", False), ("pad_token", False), ("tokens_per_second", False),
    ("learning_rate", False), ("total_tokens", False),
])
def test_secret_key_names(key, secret):
    assert is_secret_key(key) is secret


def test_values_that_look_like_credentials_are_redacted_and_hashes_are_not(monkeypatch):
    monkeypatch.setenv("CORP_PASSWORD", ENV_SECRET)
    r = Redactor()
    sha = "a" * 64
    assert r.value({"base_url": f"http://x/?k={OPENAI_KEY}", "hash": sha, "run": "0123456789abcdef0123456789abcdef",
                    "auth": f"Bearer {'x' * 20}", "note": f"pw is {ENV_SECRET}!", "nested": {"api_key": "short"},
                    "aws": "AKIAABCDEFGHIJKLMNOP", "opaque": "Zx9" * 12, "lr": 0.1, "tags": [HF_TOKEN]}) == {
        "base_url": f"http://x/?k={REDACTED}", "hash": sha, "run": "0123456789abcdef0123456789abcdef",
        "auth": REDACTED, "note": f"pw is {REDACTED}!", "nested": {"api_key": REDACTED},
        "aws": REDACTED, "opaque": REDACTED, "lr": 0.1, "tags": [REDACTED]}
    assert r.value({"api_key": None}) == {"api_key": None}


def test_secrets_never_reach_any_ledger_file(tmp_path, tmp_path_factory, monkeypatch):
    ws = ledger_support.workspace_for_test(tmp_path_factory, tmp_path / "home", monkeypatch)
    monkeypatch.setenv("CORP_PASSWORD", ENV_SECRET)
    config = ledger_support.SourcesConfig(api_key=OPENAI_KEY, base_url=f"http://{ENV_SECRET}@127.0.0.1:1/v1?t={HF_TOKEN}")
    result = execute_stage("sources", config, {}, tmp_path / "src", name="teacher-run")
    index = Index(ws.index_db)
    run = index.run(result.manifest.run_id)
    add_note(ws, run, f"used key {OPENAI_KEY} and {ENV_SECRET}")
    assert run.config["api_key"] == REDACTED
    assert run.config["base_url"] == f"http://{REDACTED}@127.0.0.1:1/v1?t={REDACTED}"
    assert index.run(run.run_id).note == f"used key {REDACTED} and {REDACTED}"
    mlflow_run = tracker_for(ws).client.get_run(run.mlflow_run_id)
    assert mlflow_run.data.params["api_key"] == REDACTED
    assert mlflow_run.data.tags["mlflow.note.content"] == f"used key {REDACTED} and {REDACTED}"
    index.close()
    # every byte the ledger wrote: MLflow db (+WAL), artifacts, index (+WAL), store
    files = [p for p in ws.root.rglob("*") if p.is_file()]
    assert any(p.name == "manifest.json" for p in files) and any(p.name.startswith("index.db") for p in files)
    for path in files:
        data = path.read_bytes()
        for secret in (OPENAI_KEY, ENV_SECRET, HF_TOKEN):
            assert secret.encode() not in data, f"{secret} found in {path}"
