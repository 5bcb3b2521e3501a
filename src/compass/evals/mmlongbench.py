"""MMLongBench-Doc evaluation: a document's pages as images, the question, a free-form answer, a short answer
extracted from it, and format-aware scoring, under two protocols (`mmlongbench.protocol`: reference |
compass | both; metrics TASK.reference.* and TASK.compass.*, or TASK.* for compass alone):

- reference (the benchmark's pipeline, comparable with its leaderboard): the question then every page image
  (up to 120 pages at 144 dpi, no size cap, no page labels, as run_api.py); the benchmark's few-shot
  extraction prompt read from the user's checkout (`repo`: eval/prompt_for_answer_extraction.md), sent with
  the question and the response in an assistant turn to any served LLM (`extractor_openai`); its
  "Extracted answer: ... Answer format:" split; its scoring rules and figures
  (`compass.evals.mmlongbench_reference`);
- compass: "Page N:" before each image (up to `max_pages`), then the question; `extractor` rule or llm;
  the corrected scorer (`compass.evals.mmlongbench_score`).

Questions come in either schema:
- MMLongBench-Doc's samples.json as published (a JSON list; also JSONL): doc_id (the PDF file name), doc_type,
  question, answer, answer_format, evidence_pages (a string like "[5, 7]", 1-based; "[0]" kept as written),
  evidence_sources (a string like "['Chart']");
- compass DocQuestion records (the `pdf-fixtures` stage): id, doc_id (PDF stem), question, answer,
  answer_format, gold_pages (0-based page indices, stored here 1-based like samples.json).
The PDFs live in one directory; a doc_id names `<dir>/<doc_id>` or `<dir>/<doc_id>.pdf`.

Golds are checked before any generation (`check_golds`): a gold that does not score 1 against itself under
the scorer of each protocol run is reported by item and left out of every protocol's figures (counted).

Pages are rendered with pypdfium2 at `dpi`; a document with more pages than shown is cut, and the count of
cut documents is reported (`docs_truncated`).

Short-answer extraction under the compass protocol:
- "rule" (default, offline): the text after </think> (an unfinished <think> means no answer), the last
  \\boxed{} if any, else the last "Answer:"/"答え:" line, else the whole remaining text; an abstention
  anywhere in that answer becomes "Not answerable";
- "llm": an LLM asked, zero-shot, for "Extracted answer: ..." through the openai backend; a reply without
  that line is an extraction failure (wrong, counted as extraction_failures).
"""
from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from compass.errors import CompassError
from compass.evals.data import read_json_rows, require
from compass.io import iter_json_objects
from compass.evals.mmlongbench_score import ANSWER_FORMATS, NOT_ANSWERABLE, aggregate, is_abstention, scored
from compass.evals.registry import Benchmark, BenchmarkConfig, EvalTask, Requests, TaskOutput
from compass.generate.base import GenRequest, GenResult
from compass.generate.config import OpenAISettings
from compass.stages import Port
from compass.vocab import COT as COT_TOKEN, after_thinking



@dataclass(frozen=True)
class DocItem:
    id: str
    doc_id: str
    question: str
    answer: str
    answer_format: str
    evidence_pages: tuple[int, ...]  # page numbers as the source states them: 1-based ('[0]' stays 0)
    evidence_sources: tuple[str, ...] = ()
    doc_type: str | None = None


def _pages_from(value, where: str) -> list[int]:
    """evidence_pages as MMLongBench writes it: '[5, 7]' (a string) or a list of ints; read, never eval'd.
    Page 0 is kept as published (three rows of samples.json say '[0]'); the reference counts it as one page."""
    if isinstance(value, list):
        numbers = value
    elif isinstance(value, str):
        if not re.fullmatch(r"\s*\[\s*(?:\d+\s*(?:,\s*\d+\s*)*)?\]\s*", value):
            raise CompassError(f"{where}: evidence_pages must look like '[1, 2]', got {value!r}")
        numbers = [int(n) for n in re.findall(r"\d+", value)]
    else:
        raise CompassError(f"{where}: evidence_pages must be a list or a '[...]' string, got {value!r}")
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in numbers):
        raise CompassError(f"{where}: evidence page numbers are non-negative integers, got {value!r}")
    return numbers


def _sources_from(value, where: str) -> tuple[str, ...]:
    """evidence_sources as samples.json writes it ("['Chart', 'Table']"), read as a literal, never eval'd."""
    import ast

    if isinstance(value, list):
        sources = value
    else:
        try:
            sources = ast.literal_eval(value) if isinstance(value, str) else None
        except (ValueError, SyntaxError):
            sources = None
    if not isinstance(sources, list) or not all(isinstance(x, str) for x in sources):
        raise CompassError(f"{where}: evidence_sources must be a list of names like \"['Chart']\", got {value!r}")
    return tuple(sources)


def items_from_rows(rows: list[dict], origin: str) -> list[DocItem]:
    items = []
    for index, row in enumerate(rows):
        where = f"{origin} record {index + 1}"
        require(row, ("doc_id", "question", "answer", "answer_format"), where)
        if row["answer_format"] not in ANSWER_FORMATS:
            raise CompassError(f"{where}: answer_format {row['answer_format']!r} is not one of {ANSWER_FORMATS}")
        if "gold_pages" in row:  # compass DocQuestion: 0-based
            require(row, ("id",), where)
            pages = tuple(int(p) + 1 for p in row["gold_pages"])
            item_id = str(row["id"])
            sources, doc_type = (), None
        else:  # MMLongBench-Doc sample: 1-based evidence pages, no id of its own (its index is the id)
            require(row, ("evidence_pages",), where)
            pages = tuple(_pages_from(row["evidence_pages"], where))
            item_id = f"{row['doc_id']}#{index}"
            sources = _sources_from(row["evidence_sources"], where) if "evidence_sources" in row else ()
            doc_type = str(row["doc_type"]) if "doc_type" in row else None
        items.append(DocItem(item_id, str(row["doc_id"]), row["question"], str(row["answer"]), row["answer_format"],
                             pages, sources, doc_type))
    return items


def load_items(path: Path) -> list[DocItem]:
    path = Path(path)
    rows = list(iter_json_objects(path)) if path.suffix.lower() == ".jsonl" else read_json_rows(path)
    return items_from_rows(rows, str(path))


# --- gold checks (before any generation) ---------------------------------------------------------------


@dataclass(frozen=True)
class GoldProblem:
    """A gold answer that a protocol cannot score: it is reported and kept out of both protocols' figures."""

    id: str
    answer: str
    answer_format: str
    reason: str


PROTOCOLS = ("reference", "compass")


def gold_problem(item: DocItem, protocols: tuple[str, ...] = PROTOCOLS) -> str | None:
    """Why the gold of `item` is unscorable under the given protocols, or None. A gold is scorable when it scores
    1 against itself under each protocol's scorer: the reference's (an Int gold 'yes', '14:04 CET', '21%' or
    'GPT-4' fails int() and scores 0 for every answer, as does '1,250'; two empty lists crash it) and compass's
    (a gold that does not state what its format needs is a data error). With both protocols one rule for both
    keeps the two figures over the same questions; a compass-only run is not narrowed by the reference's limits."""
    from compass.evals import mmlongbench_reference as reference
    from compass.evals.mmlongbench_score import score_answer

    unknown = set(protocols) - set(PROTOCOLS)
    if unknown:
        raise CompassError(f"unknown protocol(s) {sorted(unknown)}; expected some of {PROTOCOLS}")
    reasons = []
    if "reference" in protocols:
        try:
            ref = reference.score(item.answer, item.answer, item.answer_format)
            if ref != 1.0:
                reasons.append(f"the reference scorer gives it {ref:g} against itself")
        except reference.ReferenceCrash as err:
            reasons.append(f"the reference scorer raises on it ({err})")
    if "compass" in protocols:
        try:
            own = score_answer(item.answer, item.answer, item.answer_format, item.question)
            if own != 1.0:
                reasons.append(f"compass's scorer gives it {own:g} against itself")
        except CompassError as err:
            reasons.append(f"compass's scorer cannot read it ({err})")
    return "; ".join(reasons) or None


def check_golds(items: list[DocItem], protocols: tuple[str, ...] = PROTOCOLS) -> tuple[list[DocItem], list[GoldProblem]]:
    """(the items to evaluate, the unscorable golds) under the protocols of the run -- before any generation."""
    kept, problems = [], []
    for item in items:
        reason = gold_problem(item, protocols)
        if reason is None:
            kept.append(item)
        else:
            problems.append(GoldProblem(item.id, item.answer, item.answer_format, reason))
    return kept, problems


def pdf_path(docs_dir: Path, doc_id: str) -> Path:
    for candidate in (docs_dir / doc_id, docs_dir / f"{doc_id}.pdf"):
        if candidate.is_file():
            return candidate
    raise CompassError(f"no PDF for doc_id {doc_id!r} in {docs_dir} (looked for {doc_id} and {doc_id}.pdf)")


def render_pages(pdf: Path, out_dir: Path, *, dpi: float, max_long_side: int | None, max_pages: int) -> tuple[list[Path], int]:
    """PNG files of the first `max_pages` pages of `pdf` (rendered once into out_dir), and the page count.
    `max_long_side` caps a page's longer side in pixels (None: no cap, as the reference renders)."""
    import pypdfium2 as pdfium

    try:
        doc = pdfium.PdfDocument(pdf)
    except pdfium.PdfiumError as err:
        raise CompassError(f"{pdf}: cannot open PDF ({err})") from None
    try:
        total = len(doc)
        if total == 0:
            raise CompassError(f"{pdf}: the PDF has no pages")
        out_dir.mkdir(parents=True, exist_ok=True)
        files = []
        for index in range(min(total, max_pages)):
            target = out_dir / f"page-{index + 1:04d}.png"
            if not target.is_file():
                page = doc[index]
                width, height = page.get_size()
                scale = dpi / 72.0 if max_long_side is None else min(dpi / 72.0, max_long_side / max(width, height))
                image = page.render(scale=scale).to_pil()
                page.close()
                tmp = target.with_suffix(".tmp.png")
                image.save(tmp, format="PNG")
                tmp.replace(target)
            files.append(target)
    finally:
        doc.close()
    return files, total


def _data_url(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def build_request(item: DocItem, pages: list[Path], *, cot: bool, for_http: bool, max_tokens: int, seed: int) -> GenRequest:
    """User turn: 'Page N:' + image for each page, then the question; the system message is the <cot> control
    token when cot is on, absent otherwise (the vision branch has no system prompt, docs/method.md B.3)."""
    parts: list[dict] = []
    for number, page in enumerate(pages, 1):
        # the label on its own line before the image, as in the SFT examples doc-traces writes
        parts.append({"type": "text", "text": f"Page {number}:\n"})
        parts.append({"type": "image_url", "image_url": {"url": _data_url(page)}} if for_http else {"type": "image"})
    parts.append({"type": "text", "text": item.question})
    messages = ([{"role": "system", "content": COT_TOKEN}] if cot else []) + [{"role": "user", "content": parts}]
    meta = {} if for_http else {"images": [str(p) for p in pages]}
    return GenRequest(id=item.id, messages=messages, max_tokens=max_tokens, temperature=0.0, seed=seed, meta=meta)


# --- short-answer extraction ---------------------------------------------------------------------------

_ANSWER_LINE = re.compile(
    r"^\s*(?:\*\*)?(?:final answer|short answer|extracted answer|answer|最終回答|最終的な答え|答え|回答)"
    r"\s*(?:\*\*)?\s*[:：]\s*(?:\*\*)?\s*(.+?)\s*$",
    re.IGNORECASE | re.MULTILINE,
)


def rule_extract(text: str | None) -> str:
    """The short answer of a free-form output (see the module docstring); '' when there is none."""
    from compass.formats import extract_boxed

    if text is None:
        return ""
    answer = after_thinking(text)
    if not answer:
        return ""
    boxed = extract_boxed(answer)
    if boxed is not None:
        candidate = boxed
    else:
        lines = _ANSWER_LINE.findall(answer)
        candidate = lines[-1] if lines else " ".join(answer.split())
    if is_abstention(candidate) or is_abstention(re.split(r"(?<=[.。!?])\s", answer, maxsplit=1)[0]):
        return NOT_ANSWERABLE
    return candidate.strip()


EXTRACTOR_PROMPT = (
    "You read a model's free-form answer to a question about a document and write down only its final answer, "
    "in the shortest form: an integer, a float, a string, or a list written like ['a', 'b']. If the answer says "
    "the question cannot be answered from the document, write Not answerable. If it only says it could not read "
    "or understand the document, write Fail to answer. Reply in exactly two lines:\n"
    "Extracted answer: <answer>\nAnswer format: <Integer|Float|String|List|None>"
)
_EXTRACTED = re.compile(r"^\s*extracted answer\s*:\s*(.*?)\s*$", re.IGNORECASE | re.MULTILINE)


def extractor_request(item: DocItem, output: str, *, max_tokens: int, seed: int) -> GenRequest:
    user = f"Question: {item.question}\nAnswer to read:\n{output}"
    return GenRequest(id=item.id, messages=[{"role": "system", "content": EXTRACTOR_PROMPT}, {"role": "user", "content": user}],
                      max_tokens=max_tokens, temperature=0.0, seed=seed)


def parse_extractor_reply(reply: str | None) -> str | None:
    """The 'Extracted answer:' of an extractor reply; None when the reply has no such line."""
    if reply is None:
        return None
    found = _EXTRACTED.findall(reply)
    return found[-1] if found else None


# --- scoring -------------------------------------------------------------------------------------------


FIT_KEYS = ("prompt_tokens", "tokens_per_page", "image_fit")  # what the local VLM generator measures per prompt


def page_fit(result: GenResult) -> dict | None:
    """The prompt's exact token count, image tokens per page and how its pages were capped to fit the model
    (compass.generate.local_model); None for a served model, whose server does the counting."""
    return {key: result.meta[key] for key in FIT_KEYS} if "prompt_tokens" in result.meta else None


def fit_metrics(rows: list[dict]) -> dict:
    """Over the rows whose pages compass sized: how many were capped, and the mean image tokens per page."""
    fits = [r["page_fit"] for r in rows if r["page_fit"] is not None]
    if not fits:
        return {}
    return {"capped_to_fit": sum(1 for f in fits if f["image_fit"] is not None),
            "mean_tokens_per_page": sum(f["tokens_per_page"] for f in fits) / len(fits),
            "max_prompt_tokens": max(f["prompt_tokens"] for f in fits)}


def score(items: list[DocItem], results: dict[str, GenResult], shown: dict[str, int],
          extracted: dict[str, str | None], requests_text: dict[str, str]) -> tuple[list[dict], dict]:
    rows, scored_items = [], []
    for item in items:
        result = results[item.id]
        raw = result.text if result.ok else None
        short = extracted[item.id]
        s = scored(item.answer, short, item.answer_format, len(item.evidence_pages), item.question,
                   item.evidence_sources, item.doc_type)
        scored_items.append(s)
        rows.append({
            "id": item.id,
            "input": {"doc_id": item.doc_id, "question": item.question, "pages_shown": shown[item.id],
                      "prompt": requests_text[item.id]},
            "raw_output": raw,
            "error": result.error,
            "extracted": short,
            "reference": item.answer,
            "answer_format": item.answer_format,
            "evidence_pages": list(item.evidence_pages),
            "abstained": s.pred_abstains,
            "score": s.score,
            "output_tokens": result.output_tokens,
            "page_fit": page_fit(result),
        })
    metrics = aggregate(scored_items)
    tokens = [float(r["output_tokens"]) for r in rows if r["output_tokens"] is not None]
    metrics["mean_output_tokens"] = sum(tokens) / len(tokens) if tokens else 0.0
    metrics.update(fit_metrics(rows))
    metrics["extraction_failures"] = sum(1 for item in items if extracted[item.id] is None)
    return rows, metrics


# --- the reference protocol ----------------------------------------------------------------------------

EXTRACTION_PROMPT_FILE = Path("eval") / "prompt_for_answer_extraction.md"
REFERENCE_MAX_PAGES = 120  # run_api.py's and run_lvlm.py's --max_pages default
REFERENCE_EXTRACTOR_MAX_TOKENS = 256  # eval/extract_answer.py
REFERENCE_FAILED_RESPONSE = "Failed"  # what the reference hands the extractor when generation failed


def load_extraction_prompt(repo: Path) -> str:
    """The benchmark's few-shot extraction prompt, read from the user's checkout (never copied into compass)."""
    path = Path(repo) / EXTRACTION_PROMPT_FILE
    if not path.is_file():
        raise CompassError(f"{repo} is not a checkout of MMLongBench-Doc: no {EXTRACTION_PROMPT_FILE} "
                           "(git clone https://github.com/mayubo2333/MMLongBench-Doc)")
    return path.read_text(encoding="utf-8")


def reference_request(item: DocItem, pages: list[Path], *, cot: bool, for_http: bool, max_tokens: int,
                      seed: int | None = None) -> GenRequest:
    """The reference's model prompt (run_api.py): one user turn, the question first, then every page image,
    no page labels; temperature 0 and no seed, as it calls the API. <cot> in the system message when cot is on
    (the recipe's switch, not the benchmark's). `seed` is accepted for a common signature and not sent."""
    parts: list[dict] = [{"type": "text", "text": item.question}]
    parts += [{"type": "image_url", "image_url": {"url": _data_url(page)}} if for_http else {"type": "image"}
              for page in pages]
    messages = ([{"role": "system", "content": COT_TOKEN}] if cot else []) + [{"role": "user", "content": parts}]
    meta = {} if for_http else {"images": [str(p) for p in pages]}
    return GenRequest(id=item.id, messages=messages, max_tokens=max_tokens, temperature=0.0, seed=None, meta=meta)


def reference_extractor_request(item: DocItem, response: str | None, prompt: str) -> GenRequest:
    """eval/extract_answer.py's request: the benchmark's prompt as the user turn, then the question and the
    model's whole response in an assistant turn; temperature 0, 256 tokens, top_p 1, no seed. A failed
    generation is sent as the reference sends it, the word 'Failed'."""
    analysis = REFERENCE_FAILED_RESPONSE if response is None else response
    messages = [{"role": "user", "content": prompt},
                {"role": "assistant", "content": f"\n\nQuestion:{item.question}\nAnalysis:{analysis}\n"}]
    return GenRequest(id=item.id, messages=messages, max_tokens=REFERENCE_EXTRACTOR_MAX_TOKENS, temperature=0.0,
                      top_p=1.0, seed=None)


def score_reference(items: list[DocItem], results: dict[str, GenResult], replies: dict[str, GenResult],
                    shown: dict[str, int]) -> tuple[list[dict], dict]:
    """Rows and the reference's figures (accuracy, F1, page splits, evidence sources, document types)."""
    from compass.evals import mmlongbench_reference as reference

    rows, ref_rows = [], []
    for item in items:
        result, reply = results[item.id], replies[item.id]
        reply_text = reply.text if reply.ok else None
        extracted = reference.parse_extraction(reply_text)
        out = reference.outcome(item.answer, extracted, item.answer_format)
        ref_rows.append(reference.ReferenceRow(item.answer, out.pred, out.score, item.evidence_pages,
                                               item.evidence_sources, item.doc_type or ""))
        rows.append({
            "id": item.id,
            "input": {"doc_id": item.doc_id, "question": item.question, "pages_shown": shown[item.id]},
            "raw_output": result.text if result.ok else None,
            "error": result.error,
            "extractor_reply": reply_text,
            "extractor_error": reply.error,
            "extracted": extracted,
            "pred": out.pred,
            "reference": item.answer,
            "answer_format": item.answer_format,
            "evidence_pages": list(item.evidence_pages),
            "score": out.score,
            "scoring_error": out.error,
            "output_tokens": result.output_tokens,
            "page_fit": page_fit(result),
        })
    metrics = reference.aggregate(ref_rows)
    tokens = [float(r["output_tokens"]) for r in rows if r["output_tokens"] is not None]
    metrics["mean_output_tokens"] = sum(tokens) / len(tokens) if tokens else 0.0
    metrics.update(fit_metrics(rows))
    metrics["extraction_failures"] = sum(1 for r in rows if r["extracted"] is None)
    metrics["scoring_failures"] = sum(1 for r in rows if r["scoring_error"] is not None and r["extracted"] is not None)
    return rows, metrics


# --- registry task -------------------------------------------------------------------------------------

PAGES_DIR = ".pages"  # rendered page images under the run's directory: a cache, hidden from the manifest's hashes


class MMLongBenchSettings(BenchmarkConfig):
    """MMLongBench-Doc. protocol reference: the benchmark's pipeline (question then all pages up to
    `reference_max_pages`, its few-shot extraction prompt from `repo` through `extractor_openai`, its scoring
    rules and figures); compass: 'Page N:' labelled pages up to `max_pages`, `extractor` (rule or LLM), the
    corrected scorer."""

    repo: Path | None = Field(None, description="checkout of MMLongBench-Doc (github.com/mayubo2333/MMLongBench-Doc); "
                              "the reference protocol reads eval/prompt_for_answer_extraction.md from it")
    dpi: float = Field(144.0, gt=0, description="page rendering resolution (both protocols; the reference's default)")
    max_long_side: int = Field(1400, ge=16, description="cap on a rendered page's longer side, pixels (compass protocol; "
                               "the reference renders without a cap)")
    max_pages: int = Field(32, ge=1, description="pages shown per document under the compass protocol (the first N)")
    reference_max_pages: int = Field(REFERENCE_MAX_PAGES, ge=1, description="pages shown per document under the "
                                     "reference protocol (its --max_pages default)")
    extractor: Literal["rule", "llm"] = Field("rule", description="compass protocol's short-answer extraction: "
                                              "rule-based, or an LLM through `extractor_openai`")
    extractor_openai: OpenAISettings = Field(default_factory=OpenAISettings, description="server of the LLM extractor "
                                             "(any served LLM; the reference protocol always uses it)")
    extractor_max_tokens: int = Field(256, ge=1, description="token limit of one compass-protocol extractor reply")

    @model_validator(mode="after")
    def _extractor_server(self):
        reference = self.protocol in ("reference", "both")
        if (self.extractor == "llm" or reference) and not self.extractor_openai.model:
            raise ValueError(("protocol " + self.protocol if reference else "extractor 'llm'")
                             + " needs extractor_openai.model (the LLM that extracts short answers)")
        if reference and self.repo is None:
            raise ValueError(f"protocol {self.protocol} needs repo: a checkout of MMLongBench-Doc (--mmlongbench-repo DIR)")
        return self


def _report_gold_problems(problems: list[GoldProblem]) -> None:
    import sys

    for p in problems:
        print(f"mmlongbench: gold of {p.id} ({p.answer_format} {p.answer!r}) is unscorable and left out: {p.reason}",
              file=sys.stderr)


def _load(ctx) -> list[DocItem]:
    items, problems = check_golds(ctx.limited(load_items(ctx.inputs["mmlongbench"])), tuple(ctx.protocols()))
    _report_gold_problems(problems)
    docs_dir, s = ctx.inputs["mmlongbench_docs"], ctx.settings
    layouts = {"compass": (ctx.out_dir / PAGES_DIR, s.max_long_side, s.max_pages),
               "reference": (ctx.out_dir / PAGES_DIR / "reference", None, s.reference_max_pages)}
    pages: dict[str, dict[str, list[Path]]] = {}
    truncated: dict[str, int] = {}
    for protocol in ctx.protocols():
        root, cap, limit = layouts[protocol]
        pages[protocol], truncated[protocol] = {}, 0
        for doc_id in sorted({item.doc_id for item in items}):
            files, total = render_pages(pdf_path(docs_dir, doc_id), root / doc_id.replace("/", "_"),
                                        dpi=s.dpi, max_long_side=cap, max_pages=limit)
            pages[protocol][doc_id] = files
            truncated[protocol] += total > len(files)
    prompt = load_extraction_prompt(s.repo) if "reference" in ctx.protocols() else None
    ctx.state.update(pages=pages, truncated=truncated, gold_problems=problems, extraction_prompt=prompt)
    return items


def _requests(ctx, items: list[DocItem]) -> Requests:
    for_http = ctx.config.backend == "openai"
    build = {"compass": build_request, "reference": reference_request}
    out = Requests()
    for protocol in ctx.protocols():
        pages = ctx.state["pages"][protocol]
        for suffix, cot in ctx.cot_variants():
            out.generate[ctx.output_name(protocol, suffix)] = [
                build[protocol](item, pages[item.doc_id], cot=cot, for_http=for_http,
                                max_tokens=ctx.config.max_new_tokens, seed=ctx.config.seed) for item in items]
    return out


def _extract(ctx, items: list[DocItem], results: dict[str, GenResult], desc: str) -> dict[str, str | None]:
    def text(item):
        return results[item.id].text if results[item.id].ok else None

    if ctx.settings.extractor == "rule":
        return {item.id: rule_extract(text(item)) for item in items}
    from compass.generate.config import TransformersSettings, make_backend

    extractor = make_backend("openai", ctx.settings.extractor_openai, TransformersSettings())
    answered = [item for item in items if text(item) is not None]
    requests = [extractor_request(item, after_thinking(text(item)) or "", max_tokens=ctx.settings.extractor_max_tokens,
                                  seed=ctx.config.seed) for item in answered]
    replies = ctx.collect(extractor, requests, f"{desc} extraction")
    extracted: dict[str, str | None] = {item.id: None for item in items}
    for item in answered:
        reply = replies[item.id]
        extracted[item.id] = parse_extractor_reply(reply.text if reply.ok else None)
    return extracted


def _reference_replies(ctx, items: list[DocItem], results: dict[str, GenResult], desc: str) -> dict[str, GenResult]:
    from compass.generate.config import TransformersSettings, make_backend

    extractor = make_backend("openai", ctx.settings.extractor_openai, TransformersSettings())
    requests = [reference_extractor_request(item, results[item.id].text if results[item.id].ok else None,
                                            ctx.state["extraction_prompt"]) for item in items]
    return ctx.collect(extractor, requests, f"{desc} extraction")


def _score(ctx, items: list[DocItem], answers) -> list[TaskOutput]:
    from compass.vocab import IMAGE_TOKEN

    produced = []
    for protocol in ctx.protocols():
        pages = ctx.state["pages"][protocol]
        shown = {item.id: len(pages[item.doc_id]) for item in items}
        for suffix, cot in ctx.cot_variants():
            name = ctx.output_name(protocol, suffix)
            results = answers.generated[name]
            if protocol == "reference":
                rows, metrics = score_reference(items, results, _reference_replies(ctx, items, results, name), shown)
            else:
                extracted = _extract(ctx, items, results, name)
                prompts = {item.id: (f"{COT_TOKEN} | " if cot else "") + "".join(
                    f"Page {n}:{IMAGE_TOKEN} " for n in range(1, len(pages[item.doc_id]) + 1)) + item.question
                    for item in items}
                rows, metrics = score(items, results, shown, extracted, prompts)
            metrics["docs_truncated"] = ctx.state["truncated"][protocol]
            metrics["unscorable_golds"] = len(ctx.state["gold_problems"])
            produced.append(TaskOutput(name, rows, metrics))
    problems = ctx.state["gold_problems"]
    produced.append(TaskOutput(f"{ctx.name}.unscorable_golds",
                               [{"id": p.id, "answer": p.answer, "answer_format": p.answer_format, "reason": p.reason}
                                for p in problems], {"n": len(problems)}))
    return produced


def _check(ctx) -> None:
    if "mmlongbench" not in ctx.inputs or "mmlongbench_docs" not in ctx.inputs:
        raise CompassError("task mmlongbench needs --mmlongbench QUESTIONS and --mmlongbench-docs PDF_DIR")
    if "reference" in ctx.protocols():
        load_extraction_prompt(ctx.settings.repo)  # a wrong checkout fails here, before any generation
    if ctx.config.backend == "local":
        from compass.generate.local_model import is_vlm

        if not is_vlm(ctx.inputs["model"]):
            raise CompassError(f"mmlongbench needs a vision-language model; {ctx.inputs['model']} is a text-only LLM")


BENCHMARK = Benchmark("mmlongbench", MMLongBenchSettings, (EvalTask(
    name="mmlongbench", kind="generate", load=_load, requests=_requests, score=_score, check=_check, cot=True,
    protocols=("reference", "compass"),
    inputs={"mmlongbench": Port("MMLongBench-Doc samples.json, or DocQuestion JSONL (pdf-fixtures stage)", required=False),
            "mmlongbench_docs": Port("directory of the PDFs the mmlongbench questions refer to", required=False)},
    summary="MMLongBench-Doc: PDF pages as images, short-answer extraction, format-aware scoring: accuracy, f1, "
            "single/cross-page/unanswerable, evidence-source and document-type groups; reference: the benchmark's "
            "extraction prompt and scoring rules"),), "MMLongBench-Doc settings")
