"""Secrets in configs and in the environment never reach a file compass writes: real stages run through the CLI
(a recipe and a single stage, one of them failing) with a password in a base URL, `api_key` and `token` in
extra_body and secret environment variables; then every file under the workdir, the --out directories and the
ledger (MLflow's database and artifacts, the index, the store, the hash cache) is read byte by byte, with what
the commands printed. The NAME of the key's variable (api_key_env) survives, so `runs reproduce` works."""
from __future__ import annotations

import base64
import socket
from pathlib import Path

import pytest
import yaml
from cli_cases import run_cli
from support.scripted_server import ScriptedServer

from compass.io import write_jsonl
from compass.ledger.index import Index
from compass.ledger.redact import REDACTED, Redactor, is_secret_key
from compass.ledger.workspace import find_workspace
from compass.manifest import read_manifest
from compass.records import Problem

URL_PASSWORD = "Pa55-w0rd-in-url"
EXTRA_API_KEY = "extra-body-key-value"
EXTRA_TOKEN = "plain-token-value-x"
ENV_PASSWORD = "env-pass-value-42"
TEACHER_KEY = "sk-proj-TeacherKey0123456789abcdefXYZ"  # sent as the Bearer header, from the variable api_key_env names
SECRETS = (URL_PASSWORD, f"alice:{URL_PASSWORD}", base64.b64encode(f"alice:{URL_PASSWORD}".encode()).decode(),
           EXTRA_API_KEY, EXTRA_TOKEN, ENV_PASSWORD, TEACHER_KEY)


def reply(body: dict) -> str:
    question = body["messages"][-1]["content"]
    return f"<Problem>\n{question}\n</Problem>\n\n<Thinking>\n1 + 1 = 2\n</Thinking>\n\n<Answer>\n\\boxed{{2}}\n</Answer>"


@pytest.mark.parametrize("key, secret", [
    ("token", True), ("hf_token", True), ("openai.extra_body.token", True), ("api_key", True), ("password", True),
    ("api_key_env", False), ("key_env", False), ("max_tokens", False), ("output_tokens", False), ("train_tokens", False),
    ("tokens", False), ("eos_token_id", False), ("pad_token", False), ("tokenizer", False), ("maxNewTokens", False),
])
def test_secret_key_names(key, secret):
    assert is_secret_key(key) is secret


@pytest.mark.parametrize("text, redacted", [
    ("http://alice:pw@host:8000/v1", f"http://{REDACTED}@host:8000/v1"),
    ("https://tok@example.org/x", f"https://{REDACTED}@example.org/x"),
    ("GET /v1?api_key=abc123&model=m", f"GET /v1?api_key={REDACTED}&model=m"),
    ("{'password': 'hunter2', 'max_tokens': 5}", f"{{'password': '{REDACTED}', 'max_tokens': 5}}"),
    ("token=abc, tokens=12, api_key_env=OPENAI_API_KEY", f"token={REDACTED}, tokens=12, api_key_env=OPENAI_API_KEY"),
    ("http://localhost:8000/v1 and a sha 0123456789abcdef", "http://localhost:8000/v1 and a sha 0123456789abcdef"),
])
def test_secret_values_in_text(text, redacted):
    assert Redactor().text(text) == redacted


def every_file(*roots: Path) -> list[Path]:
    return [p for root in roots if root.exists() for p in root.rglob("*") if p.is_file()]


def test_no_secret_in_any_file_compass_writes(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TEACHER_KEY_FOR_TEST", TEACHER_KEY)
    monkeypatch.setenv("CORP_PASSWORD", ENV_PASSWORD)
    problems = tmp_path / "problems.jsonl"
    write_jsonl(problems, [Problem(id=f"p{i}", source="toy", question=f"What is 1+1? ({i})",
                                   reference_answer="2") for i in range(3)])
    printed = []
    with ScriptedServer(reply) as server:
        openai = {"base_urls": [f"http://alice:{URL_PASSWORD}@127.0.0.1:{server.port}/v1"], "model": "scripted",
                  "api_key_env": "TEACHER_KEY_FOR_TEST", "extra_body": {"api_key": EXTRA_API_KEY, "token": EXTRA_TOKEN},
                  "max_retries": 0, "backoff_base_s": 0.01, "concurrency": 2}
        recipe = tmp_path / "r.yaml"
        recipe.write_text(yaml.safe_dump({"name": "secrets", "stages": [
            {"name": "teacher", "stage": "distill", "inputs": {"problems": str(problems)},
             "config": {"backend": "openai", "openai": openai}}]}))
        result = run_cli(["run", recipe, "--workdir", tmp_path / "work"], capsys)
        printed += [result.out, result.err]
        assert result.code == 0, result.err
        # the URL's userinfo did reach the server (httpx sends it as Basic auth, in place of the Bearer key)
        assert server.headers_seen[0]["authorization"] == "Basic " + base64.b64encode(f"alice:{URL_PASSWORD}".encode()).decode()
        # a failing single-stage run: a dead port (server_error details name the URL) and a reject-rate error
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            dead = sock.getsockname()[1]
        config = tmp_path / "dead.yaml"
        config.write_text(yaml.safe_dump({"backend": "openai", "openai": {
            **openai, "base_urls": [f"http://alice:{URL_PASSWORD}@127.0.0.1:{dead}/v1"]}}))
        failed = run_cli(["distill", "--problems", problems, "--config", config, "--out", tmp_path / "dead"], capsys)
        printed += [failed.out, failed.err]
        assert failed.code == 2 and "server_error" in failed.err
        # config errors that echo the bad value: a secret there is not printed
        for flag, value in (("--n", ENV_PASSWORD), ("--openai", f"{{base_urls: 'http://alice:{URL_PASSWORD}@h/v1'}}")):
            bad = run_cli(["distill", "--problems", problems, "--out", tmp_path / "bad", flag, value], capsys)
            printed += [bad.out, bad.err]
            assert bad.code == 2 and REDACTED in bad.err, bad.err

    manifest = read_manifest(tmp_path / "work" / "teacher")
    assert manifest.config["openai"]["api_key_env"] == "TEACHER_KEY_FOR_TEST"
    assert manifest.config["openai"]["extra_body"] == {"api_key": REDACTED, "token": REDACTED}
    assert manifest.config["openai"]["base_urls"] == [f"http://{REDACTED}@127.0.0.1:{server.port}/v1"]
    index = Index(find_workspace() / "index.db", create=False)
    try:
        recorded = index.run(manifest.run_id).config["openai"]
    finally:
        index.close()
    assert recorded["api_key_env"] == "TEACHER_KEY_FOR_TEST" and recorded["extra_body"]["token"] == REDACTED

    files = every_file(tmp_path / "work", tmp_path / "dead", tmp_path / "bad", find_workspace())
    assert any(p.name.startswith("mlflow.db") for p in files) and any(p.name == ".distill-journal.jsonl" for p in files)  # the failed run's resume journal
    assert any("rejects.jsonl" == p.name for p in files)
    for path in files:
        data = path.read_bytes()
        for secret in SECRETS:
            assert secret.encode() not in data, f"{secret!r} found in {path}"
    for text in printed:
        for secret in SECRETS:
            assert secret not in text, f"{secret!r} printed: {text}"


def test_reproduce_of_an_openai_run_keeps_the_key_variable_name(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TEACHER_KEY_FOR_TEST", TEACHER_KEY)
    problems = tmp_path / "problems.jsonl"
    write_jsonl(problems, [Problem(id="p0", source="toy", question="What is 1+1?", reference_answer="2")])
    with ScriptedServer(reply) as server:
        config = tmp_path / "teacher.yaml"
        config.write_text(yaml.safe_dump({"backend": "openai", "temperature": 0, "openai": {
            "base_urls": [server.base_url], "model": "scripted", "api_key_env": "TEACHER_KEY_FOR_TEST"}}))
        first = run_cli(["distill", "--problems", problems, "--config", config, "--out", tmp_path / "out"], capsys)
        assert first.code == 0, first.err
        run_id = read_manifest(tmp_path / "out").run_id
        again = run_cli(["runs", "reproduce", run_id[:12], "--out", tmp_path / "repro", "--allow-code-change"], capsys)
        assert again.code == 0, again.out + again.err
        assert server.completed == 2 and all(h["authorization"] == f"Bearer {TEACHER_KEY}" for h in server.headers_seen)


def test_numbers_under_token_like_keys_are_figures_not_secrets():
    assert Redactor().value({"mean_token_accuracy": 0.5, "train_tokens_this_run": 3, "token": "abc",
                             "credentials": {"user": "u", "retries": 1}, "api_key": None}) == {
        "mean_token_accuracy": 0.5, "train_tokens_this_run": 3, "token": REDACTED,
        "credentials": {"user": REDACTED, "retries": 1}, "api_key": None}


def test_reproduce_refuses_a_config_the_redactor_changed_and_names_the_field(tmp_path, capsys):
    """A URL whose password was redacted is not "[REDACTED]" as a whole: reproducing with it would send the
    marker as the user name. The field is named, with the --set that gives it again, and nothing is sent."""
    problems = tmp_path / "problems.jsonl"
    write_jsonl(problems, [Problem(id="p0", source="toy", question="What is 1+1?", reference_answer="2")])
    with ScriptedServer(reply) as server:
        url = f"http://alice:{URL_PASSWORD}@127.0.0.1:{server.port}/v1"
        config = tmp_path / "teacher.yaml"
        config.write_text(yaml.safe_dump({"backend": "openai", "temperature": 0, "openai": {
            "base_urls": [url], "model": "scripted", "extra_body": {"note": "mode=fast password=hunter22"}}}))
        first = run_cli(["distill", "--problems", problems, "--config", config, "--out", tmp_path / "out"], capsys)
        assert first.code == 0, first.err
        run_id = read_manifest(tmp_path / "out").run_id
        asked = len(server.requests_seen)
        refused = run_cli(["runs", "reproduce", run_id[:12], "--out", tmp_path / "repro", "--allow-code-change"], capsys)
        assert refused.code == 2, refused.out + refused.err
        line = refused.err.strip()
        assert "config field(s) openai.base_urls, openai.extra_body.note were redacted as secrets" in line
        assert "--set openai.base_urls=VALUE" in line and URL_PASSWORD not in line and "\n" not in line
        assert len(server.requests_seen) == asked and not (tmp_path / "repro").exists()


def test_redacted_fields_finds_markers_inside_texts_lists_and_sections():
    from compass.commands.reproduce import redacted_fields

    config = {"seed": 1, "token": REDACTED, "openai": {"base_urls": ["http://h/v1", f"http://{REDACTED}@h/v1"],
                                                         "api_key_env": "OPENAI_API_KEY", "extra_body": {}},
              "mix": [{"path": "a.jsonl"}, {"url": f"https://x?api_key={REDACTED}"}], "name": "REDACTED word"}
    assert redacted_fields(config) == ["token", "openai.base_urls", "mix"]
