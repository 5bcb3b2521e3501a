"""MMLongBench-Doc style evaluation: the document's pages as images ("Page N:" before each), the question
after them, a free-form answer, a short answer extracted from it, and format-aware scoring
(`compass.evals.mmlongbench_score`).

Questions come in either schema:
- MMLongBench-Doc's samples.json (a JSON list; also JSONL): doc_id (the PDF file name), question, answer,
  answer_format, evidence_pages (a string like "[5, 7]" or a list; 1-based page numbers);
- compass DocQuestion records (the `pdf-fixtures` stage): id, doc_id (PDF stem), question, answer,
  answer_format, gold_pages (0-based page indices).
The PDFs live in one directory; a doc_id names `<dir>/<doc_id>` or `<dir>/<doc_id>.pdf`.

Pages are rendered with pypdfium2 at `dpi` (long side capped) and the first `max_pages` pages are shown;
a document with more pages is cut there, and the count of cut documents is reported (`docs_truncated`).

Short-answer extraction:
- "rule" (default, offline): the text after </think> (an unfinished <think> means no answer), the last
  \\boxed{} if any, else the last "Answer:"/"答え:" line, else the whole remaining text; an abstention
  anywhere in that answer becomes "Not answerable";
- "llm": the reference protocol's option, an LLM asked for "Extracted answer: ..." through the openai
  backend; a reply without that line is an extraction failure (wrong, counted as extraction_failures).
"""
from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from pathlib import Path

from compass.errors import CompassError
from compass.evals.data import read_json_rows, require
from compass.io import iter_json_objects
from compass.evals.mmlongbench_score import ANSWER_FORMATS, NOT_ANSWERABLE, aggregate, is_abstention, scored
from compass.generate.base import GenRequest, GenResult
from compass.vocab import COT as COT_TOKEN, after_thinking



@dataclass(frozen=True)
class DocItem:
    id: str
    doc_id: str
    question: str
    answer: str
    answer_format: str
    evidence_pages: tuple[int, ...]  # 0-based


def _pages_from(value, where: str) -> list[int]:
    """evidence_pages as MMLongBench writes it: '[5, 7]' (a string) or a list of ints; read, never eval'd."""
    if isinstance(value, list):
        numbers = value
    elif isinstance(value, str):
        if not re.fullmatch(r"\s*\[\s*(?:\d+\s*(?:,\s*\d+\s*)*)?\]\s*", value):
            raise CompassError(f"{where}: evidence_pages must look like '[1, 2]', got {value!r}")
        numbers = [int(n) for n in re.findall(r"\d+", value)]
    else:
        raise CompassError(f"{where}: evidence_pages must be a list or a '[...]' string, got {value!r}")
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in numbers):
        raise CompassError(f"{where}: evidence page numbers are 1-based integers, got {value!r}")
    return numbers


def items_from_rows(rows: list[dict], origin: str) -> list[DocItem]:
    items = []
    for index, row in enumerate(rows):
        where = f"{origin} record {index + 1}"
        require(row, ("doc_id", "question", "answer", "answer_format"), where)
        if row["answer_format"] not in ANSWER_FORMATS:
            raise CompassError(f"{where}: answer_format {row['answer_format']!r} is not one of {ANSWER_FORMATS}")
        if "gold_pages" in row:  # compass DocQuestion: 0-based
            require(row, ("id",), where)
            pages = tuple(int(p) for p in row["gold_pages"])
            item_id = str(row["id"])
        else:  # MMLongBench-Doc sample: 1-based evidence pages, no id of its own
            require(row, ("evidence_pages",), where)
            pages = tuple(p - 1 for p in _pages_from(row["evidence_pages"], where))
            item_id = f"{row['doc_id']}#{index}"
        items.append(DocItem(item_id, str(row["doc_id"]), row["question"], str(row["answer"]), row["answer_format"], pages))
    return items


def load_items(path: Path) -> list[DocItem]:
    path = Path(path)
    rows = list(iter_json_objects(path)) if path.suffix.lower() == ".jsonl" else read_json_rows(path)
    return items_from_rows(rows, str(path))


def pdf_path(docs_dir: Path, doc_id: str) -> Path:
    for candidate in (docs_dir / doc_id, docs_dir / f"{doc_id}.pdf"):
        if candidate.is_file():
            return candidate
    raise CompassError(f"no PDF for doc_id {doc_id!r} in {docs_dir} (looked for {doc_id} and {doc_id}.pdf)")


def render_pages(pdf: Path, out_dir: Path, *, dpi: float, max_long_side: int, max_pages: int) -> tuple[list[Path], int]:
    """PNG files of the first `max_pages` pages of `pdf` (rendered once into out_dir), and the page count."""
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
                scale = min(dpi / 72.0, max_long_side / max(width, height))
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


def score(items: list[DocItem], results: dict[str, GenResult], shown: dict[str, int],
          extracted: dict[str, str | None], requests_text: dict[str, str]) -> tuple[list[dict], dict]:
    rows, scored_items = [], []
    for item in items:
        result = results[item.id]
        raw = result.text if result.ok else None
        short = extracted[item.id]
        s = scored(item.answer, short, item.answer_format, len(item.evidence_pages), item.question)
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
        })
    metrics = aggregate(scored_items)
    tokens = [float(r["output_tokens"]) for r in rows if r["output_tokens"] is not None]
    metrics["mean_output_tokens"] = sum(tokens) / len(tokens) if tokens else 0.0
    metrics["extraction_failures"] = sum(1 for item in items if extracted[item.id] is None)
    return rows, metrics
