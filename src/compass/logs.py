"""What compass prints, and the library output it keeps out of the way.

compass's own lines go through the `compass` logger (INFO to stderr, set up by the CLI). Library noise is off
by default: Hugging Face progress bars (weight loading and shard writing take well under a second for the
models a CPU run uses, and each draws a bar), transformers' info chatter, and FutureWarnings about names the
libraries renamed inside themselves, which a compass user cannot act on. `--verbose` (or COMPASS_VERBOSE=1)
brings all of it back. The settings are environment variables where the libraries read them, so processes
started by `accelerate launch` inherit them."""
from __future__ import annotations

import logging
import math
import os
import sys
import warnings

VERBOSE_ENV = "COMPASS_VERBOSE"
LOGGER = "compass"

# read by huggingface_hub / transformers / datasets when they are imported
QUIET_ENV = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}

# (category, message regex): raised inside transformers/PEFT/TRL about their own internals
KNOWN_WARNINGS = (
    # transformers 5 renamed gradient checkpointing to activation checkpointing; PEFT still reads the old property
    (FutureWarning, r"`\w*gradient_checkpointing\w*` is deprecated and will be removed in v6"),
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated"),
)


def is_verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def configure(verbose: bool = False) -> None:
    """Called once by the CLI before any heavy import: compass's INFO lines to stderr, library noise off unless
    verbose. A user's own setting of one of the environment variables wins."""
    logger = logging.getLogger(LOGGER)
    if not any(getattr(h, "compass_cli", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.compass_cli = True
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
        return
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    quiet_libraries()


def quiet_libraries() -> None:
    """The parts that environment variables cannot reach: warning filters, and libraries already imported."""
    if is_verbose():
        return
    for category, pattern in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern, category=category)
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()


def get(name: str) -> logging.Logger:
    return logging.getLogger(f"{LOGGER}.{name}")


def number(value) -> str:
    """Compact numbers for log lines: 4 significant digits (0.0002, 1.818e-05), whole numbers without a point."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int) or (math.isfinite(value) and value == int(value) and abs(value) < 1e6):
        return str(int(value))
    return f"{value:.4g}"


def result_warnings(kind: str, metrics: dict) -> list[str]:
    """Outcomes of a finished stage that are probably not what the user meant."""
    found = []
    # task arithmetic counts the tensors that differ from the base (compass.models.merge.task_arithmetic)
    if kind == "merge" and metrics["method"] == "task_arithmetic" and metrics["changed_tensors"] == 0:
        found.append("merge changed no tensor (changed_tensors=0): the finetuned model equals the base, or the "
                     "weights are all zero; check the finetuned input")
    return found
