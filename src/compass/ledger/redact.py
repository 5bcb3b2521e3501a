"""Secrets never reach a file compass writes: values under secret-like keys, values that look like credentials,
the password part of URLs (http://user:pw@host), secret-named query parameters and `key=value` pairs in text,
and the values of secret-like environment variables are replaced before anything is written: the ledger
(MLflow params, tags and artifacts, the index, the search text), manifests, stage state files, reject details
and error messages.

By key: `token`, `api_key`, `hf_token`, `password`, ... are secrets; counts and vocabulary words that merely
contain "token" (`max_tokens`, `output_tokens`, `pad_token`, `tokenizer`) are not, nor are `*_env` keys: they
hold the NAME of an environment variable (`api_key_env: OPENAI_API_KEY`), which a reproduction needs."""
from __future__ import annotations

import os
import re
from typing import Any

REDACTED = "[REDACTED]"

# a key naming a credential: api_key, apiKey, hf_token, access-token, client_secret, password, passwd, ...
SECRET_KEY = re.compile(r"(api[_-]?key|apikey|token|secret|passw(or)?d|credential|auth[_-]?key|private[_-]?key)", re.I)
# keys that contain those words but carry no secret: token counts and lengths (every `*_tokens`), vocabulary
# tokens (pad_token, eos_token_id), the tokenizer, and `*_env`: the name of a variable, not its value
NOT_SECRET_KEY = re.compile(
    r"tokens$|tokens?[_-]?(count|per|len|rate|ids?\b)|(max|min|num|n|count|total|avg|mean)[_-]?(new[_-]?)?tokens?$"
    r"|tokeniz|(special|pad|eos|bos|unk|sep|cls|mask|image|video|audio|think|start|end)[_-]?tokens?([_-]?ids?)?$"
    r"|[_-]env$", re.I)

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
# the userinfo of a URL (scheme://user:password@host, or a bare token before @): all of it goes
URL_USERINFO = re.compile(r"(?<=://)[^/?#@\s'\"]+@")
# `name=value` / `name: value` / `'name': 'value'` in text (query strings, error messages, reprs) whose name is secret
KEY_VALUE = re.compile(r"(?P<key>[A-Za-z][A-Za-z0-9_.\-]*)(?P<sep>['\"]?\s*[:=]\s*['\"]?)(?P<value>[^\s'\",;&?#}\])]+)")


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
        value = URL_USERINFO.sub(REDACTED + "@", value)
        value = KEY_VALUE.sub(_redact_pair, value)
        return OPAQUE.sub(REDACTED, value)

    def value(self, value: Any, key: str = "", *, under_secret: bool = False) -> Any:
        """A JSON-like value with every secret replaced: every text under a key named like a secret (at any depth
        below it) is replaced whole, other texts by pattern. Numbers, booleans and null are kept: no credential
        is a number, and metrics such as `mean_token_accuracy` must survive."""
        secret = under_secret or (bool(key) and is_secret_key(key))
        if isinstance(value, str):
            return REDACTED if secret and value else self.text(value)
        if isinstance(value, dict):
            return {k: self.value(v, str(k), under_secret=secret) for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(v, under_secret=secret) for v in value]
        return value


def _redact_pair(match: re.Match) -> str:
    if not is_secret_key(match["key"]) or match["value"] == REDACTED:
        return match[0]
    return f"{match['key']}{match['sep']}{REDACTED}"


def redact_text(text: str) -> str:
    """`text` with every secret replaced (a fresh Redactor: the environment is read now)."""
    return Redactor().text(text)


def redact_value(value: Any) -> Any:
    """A JSON-like value with every secret replaced (see Redactor.value)."""
    return Redactor().value(value)
