"""Generation backends behind one interface: OpenAI-compatible HTTP (vLLM, SGLang, any server), local
transformers, and the dataset's own reference solution.

    backend.generate(requests: Iterable[GenRequest]) -> Iterator[GenResult]   # in completion order

Importing this package is cheap: torch/transformers load only when a TransformersBackend first generates.
"""
from compass.generate.base import Backend, GenRequest, GenResult, content_text, has_images
from compass.generate.config import BackendKind, OpenAISettings, TransformersSettings, make_backend
from compass.generate.local import TransformersBackend
from compass.generate.openai_backend import OpenAIBackend
from compass.generate.reference import ReferenceBackend

__all__ = [
    "Backend",
    "BackendKind",
    "GenRequest",
    "GenResult",
    "OpenAIBackend",
    "OpenAISettings",
    "ReferenceBackend",
    "TransformersBackend",
    "TransformersSettings",
    "content_text",
    "has_images",
    "make_backend",
]
