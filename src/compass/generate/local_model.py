"""A local model directory, loaded once, for what the HTTP and text-only backends can't do: log-likelihoods of
continuations (multiple-choice and label scoring) and batched generation with page images on a VLM.

Text generation on a plain LLM goes through `compass.generate.TransformersBackend`; this module serves the
rest with the same `generate(requests) -> iterator of GenResult` interface. Images travel as file paths in
`GenRequest.meta["images"]` (one per {"type": "image"} part, in order), so the request carries no pixels.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from compass.errors import CompassError
from compass.generate.base import GenRequest, GenResult, sampling_batches, torch_device

DTYPES = ("auto", "float32", "bfloat16", "float16")


def read_model_config(model_dir: Path) -> dict:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise CompassError(f"{model_dir} is not a model directory (no config.json)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CompassError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None


def is_vlm(model_dir: Path) -> bool:
    """A vision-language model directory (LLaVA-OneVision, Qwen-VL, ...) has a vision sub-config."""
    return "vision_config" in read_model_config(model_dir)


def _torch_dtype(name: str):
    import torch

    if name not in DTYPES:
        raise CompassError(f"dtype must be one of {DTYPES}, got {name!r}")
    return {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


@dataclass(frozen=True)
class LogLikelihood:
    """Sum of the continuation's token log-probabilities, its token count, and whether greedy decoding
    would have produced exactly it."""

    logprob: float
    tokens: int
    greedy: bool


class LocalModel:
    """One model directory on one device; loads lazily on first use."""

    def __init__(self, model_dir: str | Path, *, device: str = "auto", dtype: str = "auto", batch_size: int = 8):
        self.model_dir = Path(model_dir)
        self.vlm = is_vlm(self.model_dir)
        if batch_size < 1:
            raise CompassError(f"batch_size must be >= 1, got {batch_size}")
        self.device, self.dtype, self.batch_size = torch_device(device), dtype, batch_size
        self.name = f"local:{self.model_dir.name}"
        self._model = None
        self._tokenizer = None
        self._processor = None

    def _load(self) -> None:
        if self._model is not None:
            return
        from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer

        dtype = _torch_dtype(self.dtype)
        if self.vlm:
            self._processor = load_vlm_processor(self.model_dir)
            self._tokenizer = self._processor.tokenizer
            model = AutoModelForImageTextToText.from_pretrained(str(self.model_dir), dtype=dtype)
        else:
            self._tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir))
            model = AutoModelForCausalLM.from_pretrained(str(self.model_dir), dtype=dtype)
        if self._tokenizer.pad_token_id is None:
            self._tokenizer.pad_token = self._tokenizer.eos_token
        self._model = model.to(self.device).eval()
        self._stop_ids = stop_token_ids(model.generation_config, self._tokenizer,
                                        self._processor if self.vlm else self._tokenizer)

    @property
    def tokenizer(self):
        self._load()
        return self._tokenizer

    def chat_prompt(self, messages: list[dict]) -> str:
        """The prompt text the chat template makes of `messages`, ending with the assistant's turn start."""
        self._load()
        if self._tokenizer.chat_template is None:
            raise CompassError(f"{self.model_dir}: the tokenizer has no chat template")
        if self.vlm:  # VLM templates take lists of parts (Mistral-Small-3.1's fails on a string system prompt)
            messages = [{**m, "content": [{"type": "text", "text": m["content"]}]} if isinstance(m["content"], str)
                        else m for m in messages]
            return self._processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return self._tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    # --- log-likelihood ---------------------------------------------------------------------------------

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Token ids of context and continuation, split exactly as lm-evaluation-harness's HF backend (0.4.13)
        does, so compass's log-likelihoods equal lm-eval's per item: trailing whitespace of the context (spaces
        and newlines) moves to the continuation; strings are encoded with the tokenizer's own special-token
        default (a BOS only where the tokenizer adds one; none where the text already starts with it, e.g. a
        chat prompt); the whole string is encoded once and the continuation is what follows the context's
        token count; an empty context is the prefix token (BOS, else EOS)."""
        tok = self._tokenizer
        n_trailing = len(context) - len(context.rstrip())
        if n_trailing:
            continuation = context[-n_trailing:] + continuation
            context = context[:-n_trailing]

        def encode(text: str) -> list[int]:
            if tok.bos_token is not None and text.startswith(tok.bos_token):
                return tok.encode(text, add_special_tokens=False)
            return tok.encode(text)

        if not context:
            prefix = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
            ctx, cont = [prefix], encode(continuation)
        else:
            ctx = encode(context)
            cont = encode(context + continuation)[len(ctx):]
        if not cont:
            raise CompassError(f"continuation {continuation!r} encodes to no tokens")
        return ctx, cont

    def loglikelihoods(self, pairs: list[tuple[str, str]], progress=None) -> list[LogLikelihood]:
        """log P(continuation | context) for each (context, continuation), batched; order kept."""
        import torch

        self._load()
        encoded = [self._encode_pair(c, x) for c, x in pairs]
        limit = _max_positions(read_model_config(self.model_dir))
        results: list[LogLikelihood] = []
        for start in range(0, len(encoded), self.batch_size):
            chunk = encoded[start:start + self.batch_size]
            rows = []
            for ctx, cont in chunk:
                ids = ctx + cont
                if len(ids) > limit:  # keep the continuation and the end of the context
                    ids = ids[-limit:]
                rows.append((ids, len(cont)))
            width = max(len(ids) for ids, _ in rows)
            pad = self._tokenizer.pad_token_id
            input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in rows], device=self.device)
            mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows], device=self.device)
            with torch.inference_mode():
                logits = self._model(input_ids=input_ids, attention_mask=mask).logits.float()
            logprobs = torch.log_softmax(logits, dim=-1)
            for row, (ids, n_cont) in enumerate(rows):
                end = len(ids)
                # tokens [end - n_cont, end) are predicted by positions [end - n_cont - 1, end - 1)
                positions = torch.arange(end - n_cont - 1, end - 1, device=self.device)
                targets = input_ids[row, end - n_cont:end]
                token_lp = logprobs[row, positions, targets]
                greedy = bool((logprobs[row, positions].argmax(-1) == targets).all())
                results.append(LogLikelihood(float(token_lp.sum()), n_cont, greedy))
            if progress is not None:
                progress.update(len(chunk))
        return results

    # --- generation (VLM, or text on a VLM) -------------------------------------------------------------

    def generate(self, requests: Iterable[GenRequest]) -> Iterator[GenResult]:
        for batch in sampling_batches(requests, self.batch_size):
            yield from self._generate_batch(batch)

    def _generate_batch(self, batch: list[GenRequest]) -> list[GenResult]:
        import torch

        self._load()
        t0 = time.perf_counter()
        prompts, images = [], []
        fits: dict[str, dict] = {}
        for request in batch:
            paths = request.meta["images"] if "images" in request.meta else []
            n_parts = sum(1 for m in request.messages if not isinstance(m["content"], str)
                          for p in m["content"] if p["type"] == "image")
            if n_parts != len(paths):
                raise CompassError(f"request {request.id!r}: {n_parts} image parts but {len(paths)} image paths")
            if paths and not self.vlm:
                raise CompassError(f"request {request.id!r} has images but {self.model_dir} is not a VLM")
            pages = [_page_image(p) for p in paths]
            prompt = self.chat_prompt(request.messages)
            if pages:
                prompt, pages, fits[request.id] = self._fit(request, prompt, pages)
            prompts.append(prompt)
            images.append(pages)
        tokenizer = self._tokenizer
        tokenizer.padding_side = "left"  # new tokens must follow each prompt directly
        if self.vlm:
            kwargs = {"images": images} if any(images) else {}
            # the rendered chat already holds the template's BOS (Gemma, Llama): the tokenizer must not add a second
            encoded = self._processor(text=prompts, padding=True, return_tensors="pt", add_special_tokens=False, **kwargs)
        else:
            encoded = tokenizer(prompts, padding=True, return_tensors="pt", add_special_tokens=False)
        encoded = encoded.to(self.device)
        first = batch[0]
        sample = first.temperature > 0
        if sample and first.seed is not None:
            torch.manual_seed(first.seed)
        options = dict(max_new_tokens=first.max_tokens, do_sample=sample, pad_token_id=tokenizer.pad_token_id,
                       eos_token_id=self._stop_ids)
        if sample:
            options.update(temperature=first.temperature, top_p=first.top_p, top_k=0)
        with torch.inference_mode():
            output = self._model.generate(**encoded, **options)
        new = output[:, encoded["input_ids"].shape[1]:].tolist()
        latency = time.perf_counter() - t0
        results = []
        for request, row in zip(batch, new):
            finish = "length"
            stops = [i for i, token in enumerate(row) if token in self._stop_ids]
            if stops:  # the answer ends before the first stop token; what follows is batch padding
                row = row[: stops[0]]
                finish = "stop"
            text = tokenizer.decode(row, skip_special_tokens=True)
            meta = request.meta
            if request.id in fits:  # what the pages cost, and how they were capped to fit (None: not at all)
                meta = {**meta, **fits[request.id]}
            results.append(GenResult(request.id, text, None, 1, len(row), latency, finish, meta))
        return results

    def _fit(self, request: GenRequest, prompt: str, pages: list) -> tuple[str, list, dict]:
        """The prompt and page images, capped (resolution first, then the last pages) so that prompt + answer fit
        the model's positions, and figures for the result's meta: prompt_tokens (exact, from the processor),
        tokens_per_page (image tokens per shown page) and image_fit (the cap, or None when nothing changed)."""
        from dataclasses import asdict

        from compass.models.processors import fit_images

        budget = _max_positions(read_model_config(self.model_dir)) - request.max_tokens

        def prompt_for(n: int) -> str:
            if n == len(pages):
                return prompt
            seen = 0
            messages = []
            for message in request.messages:
                if isinstance(message["content"], str):
                    messages.append(message)
                    continue
                parts = []
                for part in message["content"]:
                    if part["type"] == "image":
                        seen += 1
                        if seen > n:
                            continue
                    parts.append(part)
                messages.append({**message, "content": parts})
            return self.chat_prompt(messages)

        from compass.models.processors import prompt_tokens

        kept, fit = fit_images(self._processor, prompt_for, pages, budget, add_special_tokens=False)  # as encoded above
        capped = fit.max_long_side is not None or fit.images_kept != len(pages)
        text_only = prompt_tokens(self._processor, prompt_for(0), [], add_special_tokens=False)
        figures = {"prompt_tokens": fit.tokens,
                   "tokens_per_page": (fit.tokens - text_only) / fit.images_kept if fit.images_kept else 0.0,
                   "image_fit": asdict(fit) if capped else None}
        return (prompt_for(fit.images_kept) if capped else prompt), kept, figures


@lru_cache(maxsize=64)
def _page_image(path: str):
    """A decoded page image; cached because the questions of one document show the same pages one after
    another (64 pages at most, about 400 MB of pixels at 1400 px)."""
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB")


def _max_positions(config: dict) -> int:
    text = config["text_config"] if "text_config" in config else config
    if "max_position_embeddings" not in text:
        raise CompassError("model config has no max_position_embeddings; cannot bound the scored length")
    return int(text["max_position_embeddings"])


def load_vlm_processor(model_dir: Path):
    """The VLM's processor: the stock one with torchvision, else the family's torchvision-free class."""
    from compass.models.processors import load_processor

    return load_processor(model_dir)


def stop_token_ids(generation_config, tokenizer, renderer) -> list[int]:
    """Every id generation stops at: generation_config.eos_token_id (an int or a list: Gemma3 lists <eos> and
    <end_of_turn>), the tokenizer's eos, and the special token the chat template closes an assistant turn with
    (e.g. <|im_end|>, <end_of_turn>, <|eot_id|>), found by rendering one turn."""
    configured = generation_config.eos_token_id
    ids = [configured] if isinstance(configured, int) else list(configured or [])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    ids.extend(end_of_turn_ids(tokenizer, renderer))
    return sorted(set(ids))


END_OF_TURN_PROBE = "compass-end-of-turn-probe"


def end_of_turn_ids(tokenizer, renderer) -> list[int]:
    """The special token right after an assistant message's text in the rendered chat, if there is one."""
    from transformers import ProcessorMixin

    if renderer.chat_template is None:
        return []
    if isinstance(renderer, ProcessorMixin):  # processors' templates take lists of parts
        messages = [{"role": "user", "content": [{"type": "text", "text": "hi"}]},
                    {"role": "assistant", "content": [{"type": "text", "text": END_OF_TURN_PROBE}]}]
    else:
        messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": END_OF_TURN_PROBE}]
    text = renderer.apply_chat_template(messages, tokenize=False)
    after = text.split(END_OF_TURN_PROBE, 1)[1]
    ids = tokenizer.encode(after, add_special_tokens=False)
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    return [ids[0]] if ids and ids[0] in special else []
