"""Secrets never reach the ledger: values under secret-like keys, values that look like credentials, and
the values of secret-like environment variables are replaced before anything is written (MLflow params,
tags and artifacts, the index, the full-text and meaning search)."""
from __future__ import annotations

import os
import re
from typing import Any

REDACTED = "[REDACTED]"

# a key naming a credential: api_key, apiKey, hf_token, access-token, client_secret, password, passwd, ...
SECRET_KEY = re.compile(r"(api[_-]?key|apikey|token|secret|passw(or)?d|credential|auth[_-]?key|private[_-]?key)", re.I)
# keys that contain those words but carry no secret (token counts and lengths are common figures)
NOT_SECRET_KEY = re.compile(r"(max|min|num|n|count|total|avg|mean)[_-]?(new[_-]?)?tokens?\b|tokens?[_-]?(count|per|len|s\b)|"
                            r"^tokens?$|tokenizer|special[_-]?tokens?|pad[_-]?token|eos[_-]?token|bos[_-]?token", re.I)

# values shaped like credentials of well-known services, and bearer headers
KNOWN_SECRET = re.compile(
    r"(sk-(ant-|proj-)?[A-Za-z0-9_\-]{16,}"      # OpenAI / Anthropic style
    r"|hf_[A-Za-z0-9]{20,}"                        # Hugging Face
    r"|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}"
    r"|AKIA[0-9A-Z]{16}"                           # AWS access key id
    r"|xox[abprs]-[A-Za-z0-9\-]{10,}"              # Slack
    r"|AIza[0-9A-Za-z_\-]{30,}"                    # Google
    r"|eyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,}"  # JWT
    r"|(?i:bearer)\s+[A-Za-z0-9_\-.=]{16,})"
)
# a long opaque token mixing upper case, lower case and digits (hex digests are lower case only: kept)
OPAQUE = re.compile(r"(?<![A-Za-z0-9_\-])(?=[A-Za-z0-9_\-]*[A-Z])(?=[A-Za-z0-9_\-]*[a-z])(?=[A-Za-z0-9_\-]*[0-9])[A-Za-z0-9_\-]{32,}(?![A-Za-z0-9_\-])")
MIN_ENV_SECRET = 6  # shorter env values (e.g. "1") would redact ordinary text


def is_secret_key(key: str) -> bool:
    leaf = re.split(r"[./]", key)[-1]
    return bool(SECRET_KEY.search(leaf)) and not NOT_SECRET_KEY.search(leaf)


def env_secret_values() -> list[str]:
    """Values of environment variables whose names look secret, longest first (so substrings go last)."""
    values = {value for name, value in os.environ.items() if is_secret_key(name) and len(value) >= MIN_ENV_SECRET}
    return sorted(values, key=len, reverse=True)


class Redactor:
    def __init__(self, extra_values: list[str] | None = None):
        self.values = env_secret_values() + [v for v in (extra_values or []) if len(v) >= MIN_ENV_SECRET]

    def text(self, value: str) -> str:
        for secret in self.values:
            if secret in value:
                value = value.replace(secret, REDACTED)
        value = KNOWN_SECRET.sub(REDACTED, value)
        return OPAQUE.sub(REDACTED, value)

    def value(self, value: Any, key: str = "") -> Any:
        """A JSON-like value with every secret replaced; keys named like secrets lose their whole value."""
        if key and is_secret_key(key) and value not in (None, "", [], {}):
            return REDACTED
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {k: self.value(v, str(k)) for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(v) for v in value]
        return value
