"""Local batched generation with transformers: chat template, left padding, one `generate` call per batch."""
from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from compass.errors import CompassError
from compass.generate.base import GenRequest, GenResult, content_text, has_images, sampling_batches, torch_device


class TransformersBackend:
    """Text generation with a local causal LM directory (safetensors), `batch_size` prompts per call.

    Requests are batched in input order among neighbours with equal sampling settings; results come back in
    input order. Sampling (temperature > 0) seeds torch with the first request's seed of each batch, so a
    run is repeatable for a fixed batch size.
    """

    def __init__(self, model_dir: str | Path, *, batch_size: int = 8, device: str = "auto", dtype: str = "auto"):
        self.model_dir = Path(model_dir)
        if not (self.model_dir / "config.json").is_file():
            raise CompassError(f"transformers backend: {self.model_dir} is not a model directory (no config.json)")
        if batch_size < 1:
            raise CompassError(f"transformers backend: batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.device = torch_device(device)
        self.dtype = dtype
        self.name = f"transformers:{self.model_dir.name}"
        self._model = None
        self._tokenizer = None

    def _load(self) -> None:
        if self._model is not None:
            return
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir))
        if tokenizer.chat_template is None:
            raise CompassError(f"transformers backend: tokenizer in {self.model_dir} has no chat template")
        tokenizer.padding_side = "left"  # decoder-only: new tokens must follow the prompt directly
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        dtypes = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        if self.dtype not in dtypes:
            raise CompassError(f"transformers backend: dtype must be one of {sorted(dtypes)}, got {self.dtype!r}")
        dtype = dtypes[self.dtype]
        model = AutoModelForCausalLM.from_pretrained(str(self.model_dir), dtype=dtype).to(self.device)
        model.eval()
        self._tokenizer, self._model = tokenizer, model

    def generate(self, requests: Iterable[GenRequest]) -> Iterator[GenResult]:
        for batch in sampling_batches(requests, self.batch_size):
            for request in batch:
                if has_images(request.messages):
                    raise CompassError(f"transformers backend: request {request.id!r} has images; this backend is text-only "
                                       "(serve a VLM with `transformers serve` or vLLM and use the openai backend)")
            yield from self._run(batch)

    def _run(self, batch: list[GenRequest]) -> list[GenResult]:
        import torch

        self._load()
        tokenizer, model = self._tokenizer, self._model
        t0 = time.perf_counter()
        prompts = [
            tokenizer.apply_chat_template(
                [{"role": m["role"], "content": content_text(m["content"])} for m in r.messages],
                add_generation_prompt=True, tokenize=False,
            )
            for r in batch
        ]
        # the chat template writes BOS itself; adding special tokens again would double it
        encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        first = batch[0]
        sample = first.temperature > 0
        if sample and first.seed is not None:
            torch.manual_seed(first.seed)
        kwargs = dict(max_new_tokens=first.max_tokens, do_sample=sample, pad_token_id=tokenizer.pad_token_id)
        if sample:
            kwargs.update(temperature=first.temperature, top_p=first.top_p, top_k=0)
        with torch.inference_mode():
            output = model.generate(**encoded, **kwargs)
        new = output[:, encoded["input_ids"].shape[1]:]
        latency = time.perf_counter() - t0
        results = []
        for request, row in zip(batch, new.tolist()):
            finish = "length"
            if tokenizer.eos_token_id in row:
                row = row[: row.index(tokenizer.eos_token_id)]
                finish = "stop"
            text = tokenizer.decode(row, skip_special_tokens=True)
            results.append(GenResult(request.id, text, None, 1, len(row), latency, finish, request.meta))
        return results

