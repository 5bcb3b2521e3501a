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

from dataclasses import dataclass
from pathlib import Path

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
        from compass.data.sources.mgsm_ja import read_tsv

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



# --- registry tasks ------------------------------------------------------------------------------------


class MathSettings(BenchmarkConfig):
    """GSM8K / MGSM-ja / Problem files."""


def _load(ctx) -> list[MathItem]:
    if ctx.data_path is not None:
        items = load_items(ctx.name, ctx.data_path)
    else:
        items = items_from_rows(ctx.name, ctx.hub_rows(), f"hub {ctx.config.hub[ctx.name]}")
    return ctx.limited(items)


def _requests(ctx, items: list[MathItem]) -> Requests:
    out = Requests()
    if "compass" in ctx.protocols():
        for suffix, cot in ctx.cot_variants():
            out.generate[ctx.output_name("compass", suffix)] = build_requests(
                items, cot=cot, max_tokens=ctx.config.max_new_tokens, seed=ctx.config.seed)
    return out


def _score(ctx, items: list[MathItem], answers) -> list[TaskOutput]:
    produced = []
    if "compass" in ctx.protocols():
        for suffix, cot in ctx.cot_variants():
            name = ctx.output_name("compass", suffix)
            requests = build_requests(items, cot=cot, max_tokens=ctx.config.max_new_tokens, seed=ctx.config.seed)
            rows, metrics = score(items, answers.generated[name], {r.id: r for r in requests})
            produced.append(TaskOutput(name, rows, metrics))
    return produced


def _task(name: str, port: Port, summary: str, hub: str | None) -> EvalTask:
    return EvalTask(name=name, kind="generate", inputs={name: port}, load=_load, requests=_requests, score=_score,
                    summary=summary, hub=hub, cot=True)


BENCHMARKS = (
    Benchmark("gsm8k", MathSettings, (_task(
        "gsm8k", Port("GSM8K JSONL ({question, answer: '... #### N'}) or compass Problem JSONL", required=False),
        "GSM8K: XML reasoning prompt, \\boxed answer: accuracy, format_valid_rate, boxed_rate, mean_output_tokens",
        "openai/gsm8k:main:test"),), "GSM8K settings"),
    Benchmark("mgsm_ja", MathSettings, (_task(
        "mgsm_ja", Port("MGSM TSV (question<TAB>answer_number), JSONL {question, answer_number}, or Problem JSONL",
                        required=False),
        "MGSM-ja: the Japanese XML reasoning prompt, as gsm8k", "juletxara/mgsm:ja:test"),), "MGSM-ja settings"),
    Benchmark("problems", MathSettings, (_task(
        "problems", Port("compass Problem JSONL, e.g. held-out problems from the sources stage", required=False),
        "compass Problem JSONL (e.g. held-out reasoning-gym problems), as gsm8k", None),), "Problem-file settings"),
)
