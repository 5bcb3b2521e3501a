"""Backend settings as pydantic models, for stage configs that generate text (distill, evidence, ...).

A stage config embeds `backend: Literal[...]` plus the `openai` / `transformers` sections; `make_backend`
turns them into a Backend. The API key is never a setting: only the NAME of the environment variable that
holds it is, so configs and manifests never contain the key itself.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from compass.errors import CompassError
from compass.generate.base import DEVICE_HELP

BackendKind = Literal["reference", "openai", "transformers"]


class OpenAISettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base_urls: list[str] = Field(["http://localhost:8000/v1"], min_length=1,
                                 description="OpenAI-compatible base URLs (…/v1); requests go to the least-loaded one")
    model: str | None = Field(None, description="model name the server serves (vllm serve MODEL), e.g. Qwen/Qwen3-30B-A3B")
    api_key_env: str = Field("OPENAI_API_KEY", description="name of the environment variable holding the API key "
                             "(unset: no Authorization header); the key itself is never recorded")
    concurrency: int = Field(64, ge=1, description="requests in flight at once, over all base URLs")
    timeout_s: float = Field(600.0, gt=0, description="limit on one HTTP attempt, start to last byte")
    max_retries: int = Field(5, ge=0, description="retries after the first attempt on 429/5xx/timeouts/dropped connections")
    backoff_base_s: float = Field(1.0, gt=0, description="first retry waits about this long; doubles each retry (with jitter)")
    backoff_max_s: float = Field(60.0, gt=0, description="ceiling of one backoff wait, Retry-After included")
    extra_body: dict[str, Any] = Field(default_factory=dict, description="extra request fields, e.g. "
                                       "{top_k: 20, chat_template_kwargs: {enable_thinking: false}}")


class TransformersSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_dir: str | None = Field(None, description="local model directory (config.json, safetensors, tokenizer with chat template)")
    batch_size: int = Field(8, ge=1, description="prompts per generate() call")
    device: str = Field("auto", description=DEVICE_HELP)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="weights dtype")


def make_backend(kind: BackendKind, openai: OpenAISettings, transformers: TransformersSettings):
    """The Backend a stage config asks for; a missing required setting fails with its name."""
    if kind == "reference":
        from compass.generate.reference import ReferenceBackend

        return ReferenceBackend()
    if kind == "openai":
        from compass.generate.openai_backend import OpenAIBackend

        if not openai.model:
            raise CompassError("backend 'openai' needs openai.model (the name the server serves, e.g. Qwen/Qwen3-30B-A3B)")
        return OpenAIBackend(
            openai.base_urls, openai.model, concurrency=openai.concurrency, timeout_s=openai.timeout_s,
            max_retries=openai.max_retries, backoff_base_s=openai.backoff_base_s, backoff_max_s=openai.backoff_max_s,
            api_key_env=openai.api_key_env, extra_body=openai.extra_body,
        )
    if kind == "transformers":
        from compass.generate.local import TransformersBackend

        if not transformers.model_dir:
            raise CompassError("backend 'transformers' needs transformers.model_dir (a local model directory)")
        return TransformersBackend(transformers.model_dir, batch_size=transformers.batch_size,
                                   device=transformers.device, dtype=transformers.dtype)
    raise CompassError(f"unknown backend {kind!r}; expected reference, openai or transformers")
