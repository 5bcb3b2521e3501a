"""A real OpenAI-compatible server for the fault tests: `transformers serve` on the tiny LLM, one per session."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest


@dataclass(frozen=True)
class Served:
    root: str  # http://127.0.0.1:PORT
    model: str  # the name the server answers to: the model directory it was started with

    @property
    def base_url(self) -> str:
        return f"{self.root}/v1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def served_tiny_llm(tiny_models, tmp_path_factory) -> Served:
    cli = Path(sys.executable).parent / "transformers"
    if not cli.is_file():
        cli = Path(shutil.which("transformers") or "transformers")
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    with open(log, "wb") as fh:
        proc = subprocess.Popen([str(cli), "serve", "--host", "127.0.0.1", "--port", str(port), "--device", "cpu",
                                 str(tiny_models.llm)], stdout=fh, stderr=subprocess.STDOUT, env=env)
    root = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"transformers serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{root}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"transformers serve not ready after 90 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.25)
        yield Served(root, str(tiny_models.llm))
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
