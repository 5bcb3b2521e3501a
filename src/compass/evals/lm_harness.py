"""lm-evaluation-harness as a reference engine (the `lm-eval` extra: pip install 'compass-vlm[lm-eval]').

The reference protocols that published tables use (japanese-lm-fin-harness, lm-eval's gsm8k and
mgsm_native_cot_ja) run through lm-eval itself on the local model: its HFLM loads the model directory once,
`simple_evaluate` runs the tasks (lm-eval's own, or task files under an include path), and per-item samples
come back for the predictions files. Nothing here re-implements lm-eval's prompting or metrics.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

from compass.errors import CompassError

EXTRA_HINT = "pip install 'lm-eval[hf]==0.4.13' (the compass 'lm-eval' extra)"


def require_lm_eval() -> None:
    if importlib.util.find_spec("lm_eval") is None:
        raise CompassError(f"the reference protocol runs lm-evaluation-harness, which is not installed: {EXTRA_HINT}")


def load_hflm(model_dir: Path, *, device: str, dtype: str, batch_size: int):
    """lm-eval's HF backend on a local model directory, with its own defaults (no add_bos_token override)."""
    require_lm_eval()
    from lm_eval.models.huggingface import HFLM

    from compass.generate.base import torch_device

    return HFLM(pretrained=str(model_dir), device=torch_device(device), dtype=dtype, batch_size=batch_size)


def run_job(lm, job, *, seed: int) -> dict:
    """simple_evaluate on one LmEvalJob: {'results': {task: {metric,filter: value}}, 'samples': {task: [...]},
    'configs': {...}} as lm-eval returns them."""
    require_lm_eval()
    import lm_eval
    from lm_eval.tasks import TaskManager

    for directory in job.extra_imports:
        if str(directory) not in sys.path:
            sys.path.insert(0, str(directory))
    if job.setup is not None:
        job.setup()
    if not job.builtin_tasks and job.include_path is None:
        raise CompassError(f"lm-eval job {job.tasks}: builtin_tasks=False needs an include_path of task files")
    manager = TaskManager(include_path=str(job.include_path) if job.include_path is not None else None,
                          include_defaults=job.builtin_tasks)
    unknown = [t for t in job.tasks if t not in manager.all_tasks]
    if unknown:
        raise CompassError(f"lm-eval knows no task(s) {unknown}" + (f" (task files under {job.include_path})"
                                                                    if job.include_path is not None else ""))
    results = lm_eval.simple_evaluate(
        model=lm, tasks=list(job.tasks), num_fewshot=job.num_fewshot, limit=job.limit, task_manager=manager,
        log_samples=True, apply_chat_template=job.apply_chat_template, bootstrap_iters=0,
        random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed)
    if results is None:  # lm-eval returns None on non-zero ranks only
        raise CompassError("lm-eval returned no results")
    return results
