"""GSM8K, MGSM-ja and compass Problem files: the XML reasoning prompt (EN/JA), the final answer from the last
\\boxed{}, equivalence by `compass.formats.answers_match`.

Metrics: accuracy (boxed answer equivalent to the reference), format_valid_rate (the whole output parses as
<Problem>/<Thinking>/<Answer> with a boxed answer), boxed_rate (some \\boxed{} found anywhere), and
mean_output_tokens. A \\boxed answer counts for accuracy even when the XML layout around it is broken: layout
and correctness are reported separately.

Accepted data, decided per record by its fields:
- GSM8K's own JSONL: {"question", "answer": "... #### 72"};
- MGSM's TSV (question<TAB>answer_number, no header) or JSONL {"question", "answer_number"};
- compass Problem records (the `sources` stage's output): {"id", "source", "question", "reference_answer", "lang"}.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field

from compass.errors import CompassError
from compass.evals.data import read_json_rows, require
from compass.evals.metrics import mean
from compass.evals.registry import Benchmark, BenchmarkConfig, EvalTask, Requests, TaskOutput
from compass.generate.base import GenRequest, GenResult
from compass.stages import Port
from compass.vocab import COT as COT_TOKEN

TASK_LANG = {"gsm8k": "en", "mgsm_ja": "ja", "problems": None}  # None: each Problem record says


@dataclass(frozen=True)
class MathItem:
    id: str
    question: str
    answer: str
    lang: str


def _gsm8k_answer(text: str, where: str) -> str:
    if "####" not in text:
        raise CompassError(f"{where}: GSM8K answer has no '#### <number>' line: {text[-60:]!r}")
    return text.rsplit("####", 1)[1].strip().replace(",", "")


def _number_text(value, where: str) -> str:
    """MGSM's answer_number (an int, or a float like 12.0 in some exports) as the answer string."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise CompassError(f"{where}: answer_number must be a number, got {value!r}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def items_from_rows(task: str, rows: list[dict], origin: str) -> list[MathItem]:
    default_lang = TASK_LANG[task]
    items = []
    for index, row in enumerate(rows):
        where = f"{origin} record {index + 1}"
        if "reference_answer" in row:  # a compass Problem
            require(row, ("id", "question", "reference_answer"), where)
            lang = row["lang"] if "lang" in row else "en"
            items.append(MathItem(str(row["id"]), row["question"], str(row["reference_answer"]), lang))
        elif "answer_number" in row:  # MGSM
            require(row, ("question",), where)
            items.append(MathItem(f"{task}/{index}", row["question"], _number_text(row["answer_number"], where),
                                  default_lang or "ja"))
        elif "answer" in row:  # GSM8K
            require(row, ("question",), where)
            items.append(MathItem(f"{task}/{index}", row["question"], _gsm8k_answer(row["answer"], where),
                                  default_lang or "en"))
        else:
            raise CompassError(f"{where}: not a GSM8K ('answer'), MGSM ('answer_number') or Problem "
                               f"('reference_answer') record; fields: {sorted(row)}")
        if items[-1].lang not in ("en", "ja"):
            raise CompassError(f"{where}: lang must be 'en' or 'ja', got {items[-1].lang!r}")
    return items


def load_items(task: str, path: Path) -> list[MathItem]:
    path = Path(path)
    if path.suffix.lower() == ".tsv":  # MGSM as url-nlp publishes it: question \t answer_number ('2,125')
        from compass.data.sources.mgsm_tsv import read_tsv

        return items_from_rows(task, read_tsv(path), str(path))
    return items_from_rows(task, read_json_rows(path), str(path))


def build_requests(items: list[MathItem], *, cot: bool, max_tokens: int, seed: int) -> list[GenRequest]:
    from compass.formats import SYSTEM_PROMPTS

    requests = []
    for item in items:
        system = SYSTEM_PROMPTS[item.lang]
        if cot:  # the control token leads the system message, as in training (docs/method.md B.4)
            system = f"{COT_TOKEN}\n{system}"
        messages = [{"role": "system", "content": system}, {"role": "user", "content": item.question}]
        requests.append(GenRequest(id=item.id, messages=messages, max_tokens=max_tokens, temperature=0.0, seed=seed))
    return requests


def score(items: list[MathItem], results: dict[str, GenResult], requests: dict[str, GenRequest]) -> tuple[list[dict], dict]:
    from compass.formats import extract_boxed, validate_reasoning
    from compass.formats.equivalence import check_answer

    rows = []
    for item in items:
        result = results[item.id]
        raw = result.text if result.ok else None
        extracted = extract_boxed(raw) if raw is not None else None
        correct, why = check_answer(extracted, item.answer) if extracted is not None else (False, None)
        rows.append({
            "id": item.id,
            "input": requests[item.id].messages,
            "raw_output": raw,
            "error": result.error,
            "extracted": extracted,
            "reference": item.answer,
            "score": float(correct),
            "check": why,  # why the answer could not be compared (too long, too deep, ...), else None
            "format_valid": raw is not None and not validate_reasoning(raw),
            "output_tokens": result.output_tokens,
        })
    metrics = {
        "accuracy": mean([r["score"] for r in rows]),
        "format_valid_rate": mean([float(r["format_valid"]) for r in rows]),
        "boxed_rate": mean([float(r["extracted"] is not None) for r in rows]),
        "mean_output_tokens": mean([float(r["output_tokens"]) for r in rows if r["output_tokens"] is not None]),
        "error_rate": mean([float(r["error"] is not None) for r in rows]),
        "n": len(rows),
    }
    return rows, metrics



# --- the reference protocol: lm-eval's gsm8k / mgsm_native_cot_ja ----------------------------------------

# the lm-eval task each benchmark's published figures come from, and what a checkout of its repository holds
LM_EVAL_TASKS = {"gsm8k": ("gsm8k", "gsm8k/gsm8k.yaml"), "mgsm_ja": ("mgsm_native_cot_ja", "mgsm/native_cot/mgsm_native_cot_ja.yaml")}
REPO_FILES = {"gsm8k": {"test": "grade_school_math/data/test.jsonl", "train": "grade_school_math/data/train.jsonl"},
              "mgsm_ja": {"test": "mgsm/mgsm_ja.tsv"}}
LM_EVAL_FILTERS = {"strict-match": "exact_match_strict", "flexible-extract": "exact_match_flexible"}


def _reference_data(ctx) -> dict[str, Path] | None:
    """Local files for lm-eval's task ({split: path}), from the task's input or the checkout; None: lm-eval reads
    the hub dataset its task names (openai/gsm8k, juletxara/mgsm) itself."""
    files = {}
    if ctx.settings.repo is not None:
        files = {split: Path(ctx.settings.repo) / rel for split, rel in REPO_FILES[ctx.name].items()}
        missing = [str(f) for f in files.values() if not f.is_file()]
        if missing:
            raise CompassError(f"{ctx.name}.repo: {missing} not found (expected a checkout of "
                               + ("openai/grade-school-math" if ctx.name == "gsm8k" else "google-research/url-nlp") + ")")
    if ctx.data_path is not None:
        files["test"] = ctx.data_path
    if not files:
        return None
    if ctx.name == "gsm8k" and "train" not in files:
        raise CompassError("gsm8k reference protocol: lm-eval's gsm8k is 5-shot from GSM8K train; give gsm8k.repo "
                           "(a checkout of openai/grade-school-math) or no --gsm8k file (lm-eval then reads the hub)")
    return files


def _as_jsonl(task: str, split_file: Path, dest: Path) -> Path:
    """A data file as JSONL in the hub schema lm-eval's task reads (the MGSM TSV converted; GSM8K JSONL as is)."""
    import json

    if split_file.suffix.lower() == ".tsv":
        from compass.data.sources.mgsm_tsv import read_tsv

        rows = [{**r, "answer_number": float(r["answer_number"]) if "." in r["answer_number"] else int(r["answer_number"])}
                for r in read_tsv(split_file)]
        dest.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        return dest
    return split_file.resolve()


def _reference_job(ctx) -> "LmEvalJob":
    from compass.evals.registry import LmEvalJob

    lm_task, builtin = LM_EVAL_TASKS[ctx.name]
    files = _reference_data(ctx)
    if files is None:
        return LmEvalJob(tasks=(lm_task,), limit=ctx.config.limit)
    import lm_eval

    folder = ctx.out_dir / ".lm_eval_tasks" / ctx.name
    folder.mkdir(parents=True, exist_ok=True)
    data = {split: str(_as_jsonl(ctx.name, path, folder / f"{split}.jsonl")) for split, path in files.items()}
    lines = [f"include: {json.dumps(str(Path(lm_eval.__file__).parent / 'tasks' / builtin))}",
             f"task: {lm_task}_local", "tag: []", "dataset_path: json", "dataset_name: null",
             f"dataset_kwargs: {json.dumps({'data_files': data})}"]
    if "train" not in data:
        lines.append("training_split: null")  # 0-shot: the published task takes no examples from train
    (folder / f"{lm_task}_local.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    # the local variant includes lm-eval's own task file by path, so lm-eval's task index is not needed
    return LmEvalJob(tasks=(f"{lm_task}_local",), include_path=folder, limit=ctx.config.limit, builtin_tasks=False)


def reference_output(task: str, result: dict) -> tuple[list[dict], dict]:
    """lm-eval's figures (exact match after its strict and flexible extraction) and its samples as rows."""
    (name,) = result["results"]
    figures = result["results"][name]
    metrics = {ours: float(figures[f"exact_match,{theirs}"]) for theirs, ours in LM_EVAL_FILTERS.items()
               if f"exact_match,{theirs}" in figures}
    by_doc: dict[int, dict] = {}
    for sample in result["samples"][name]:
        row = by_doc.setdefault(sample["doc_id"], {
            "id": f"{task}/{sample['doc_id']}", "input": sample["arguments"][0][0], "raw_output": sample["resps"][0][0],
            "reference": sample["target"], "output_tokens": None})
        key = LM_EVAL_FILTERS[sample["filter"]]
        row[f"extracted_{key.removeprefix('exact_match_')}"] = sample["filtered_resps"][0]
        row[key] = float(sample["exact_match"])
    rows = [by_doc[d] for d in sorted(by_doc)]
    for row in rows:
        row["score"] = row["exact_match_strict"] if "exact_match_strict" in row else 0.0
    metrics["n"] = len(rows)
    return rows, metrics


# --- registry tasks ------------------------------------------------------------------------------------


class MathSettings(BenchmarkConfig):
    """compass Problem files: the compass protocol only."""


class GSM8KSettings(BenchmarkConfig):
    """GSM8K. protocol reference: lm-eval's `gsm8k` (5-shot from train, its strict and flexible extraction),
    what published tables report; compass: the recipe's XML reasoning prompt with a \\boxed answer."""

    repo: Path | None = Field(None, description="a checkout of openai/grade-school-math (reference protocol: its "
                              "train.jsonl gives the 5 shots, test.jsonl the items; without it lm-eval reads the hub)")


class MGSMSettings(BenchmarkConfig):
    """MGSM-ja. protocol reference: lm-eval's `mgsm_native_cot_ja` (its Japanese step-by-step prompt, strict
    '答えは...です。' and flexible extraction); compass: the Japanese XML reasoning prompt."""

    repo: Path | None = Field(None, description="a checkout of google-research/url-nlp (reference protocol reads "
                              "mgsm/mgsm_ja.tsv; without it lm-eval reads the hub's juletxara/mgsm)")


def _load(ctx) -> list[MathItem]:
    if ctx.data_path is not None:
        items = load_items(ctx.name, ctx.data_path)
    elif "compass" not in ctx.protocols():
        return []
    elif ctx.settings.protocol != "compass" and ctx.settings.repo is not None:
        items = load_items(ctx.name, Path(ctx.settings.repo) / REPO_FILES[ctx.name]["test"])
    else:
        items = items_from_rows(ctx.name, ctx.hub_rows(), f"hub {ctx.config.hub[ctx.name]}")
    return ctx.limited(items)


def _requests(ctx, items: list[MathItem]) -> Requests:
    out = Requests()
    if "compass" in ctx.protocols():
        for suffix, cot in ctx.cot_variants():
            out.generate[ctx.output_name("compass", suffix)] = build_requests(
                items, cot=cot, max_tokens=ctx.config.max_new_tokens, seed=ctx.config.seed)
    if "reference" in ctx.protocols():
        out.lm_eval[ctx.output_name("reference")] = _reference_job(ctx)
    return out


def _score(ctx, items: list[MathItem], answers) -> list[TaskOutput]:
    produced = []
    if "reference" in ctx.protocols():
        name = ctx.output_name("reference")
        rows, metrics = reference_output(ctx.name, answers.lm_eval[name])
        produced.append(TaskOutput(name, rows, metrics))
    if "compass" in ctx.protocols():
        for suffix, cot in ctx.cot_variants():
            name = ctx.output_name("compass", suffix)
            requests = build_requests(items, cot=cot, max_tokens=ctx.config.max_new_tokens, seed=ctx.config.seed)
            rows, metrics = score(items, answers.generated[name], {r.id: r for r in requests})
            produced.append(TaskOutput(name, rows, metrics))
    return produced


def _check(ctx) -> None:
    if "reference" in ctx.protocols():
        from compass.evals.lm_harness import require_lm_eval

        require_lm_eval()
        if "model" not in ctx.inputs:
            raise CompassError(f"{ctx.name} protocol {ctx.settings.protocol}: lm-eval runs the local model: give --model DIR")
        _reference_data(ctx)
    if "compass" in ctx.protocols() and ctx.data_path is None and ctx.name not in ctx.config.hub and (
            ctx.name == "problems" or ctx.settings.repo is None):
        raise CompassError(f"task {ctx.name}: give its data with --{ctx.name.replace('_', '-')} PATH (no hub id configured)")


def _task(name: str, port: Port, summary: str, hub: str | None, protocols: tuple[str, ...]) -> EvalTask:
    return EvalTask(name=name, kind="generate", inputs={name: port}, load=_load, requests=_requests, score=_score,
                    summary=summary, hub=hub, cot=True, protocols=protocols, check=_check)


BENCHMARKS = (
    Benchmark("gsm8k", GSM8KSettings, (_task(
        "gsm8k", Port("GSM8K JSONL ({question, answer: '... #### N'}) or compass Problem JSONL", required=False),
        "GSM8K: XML reasoning prompt, \\boxed answer: accuracy, format_valid_rate, boxed_rate, mean_output_tokens; "
        "reference: lm-eval gsm8k (5-shot, exact_match strict/flexible)",
        "openai/gsm8k:main:test", ("reference", "compass")),), "GSM8K settings"),
    Benchmark("mgsm_ja", MGSMSettings, (_task(
        "mgsm_ja", Port("MGSM TSV (question<TAB>answer_number), JSONL {question, answer_number}, or Problem JSONL",
                        required=False),
        "MGSM-ja: the Japanese XML reasoning prompt, as gsm8k; reference: lm-eval mgsm_native_cot_ja",
        "juletxara/mgsm:ja:test", ("reference", "compass")),), "MGSM-ja settings"),
    Benchmark("problems", MathSettings, (_task(
        "problems", Port("compass Problem JSONL, e.g. held-out problems from the sources stage", required=False),
        "compass Problem JSONL (e.g. held-out reasoning-gym problems), as gsm8k", None, ("compass",)),),
        "Problem-file settings"),
)
