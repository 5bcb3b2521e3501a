"""Generate synthetic multi-page financial-report PDFs (English + Japanese) with planted questions.

Each PDF is a fictional company's annual securities report made with fpdf2: narrative pages, a
financial-highlights table, a segment table, a vector bar chart, and single-fact pages. The questions
file holds DocQuestion records (question, answer, answer_format, gold_pages) for the planted facts:
single-page, cross-page and unanswerable ones, each in English or Japanese. Same seed, same bytes.
"""
from __future__ import annotations

from pathlib import Path

from pydantic import Field

from compass.config import StageConfig
from compass.io import atomic_open, write_jsonl
from compass.stagekit import StageContext
from compass.stages import Port

VERSION = 1  # code version of what this stage writes: bump when the same config and inputs would give other bytes
EXAMPLE = "compass pdf-fixtures --out work/pdfs --n-docs 4 --seed 42"


class Config(StageConfig):
    n_docs: int = Field(4, ge=1, description="number of reports to generate")
    min_extra_pages: int = Field(1, ge=0, description="fewest filler pages (no planted fact) per report, on top of 9 fact pages")
    max_extra_pages: int = Field(3, ge=0, description="most filler pages per report")
    ja_fraction: float = Field(0.5, ge=0, le=1, description="share of questions written in Japanese")


INPUTS: dict[str, Port] = {}
OUTPUTS = {"pdfs": "pdfs", "questions": "questions.jsonl"}


def run(config: Config, ctx: StageContext) -> dict:
    out_dir = ctx.out_dir
    from compass.longdoc.synthetic_reports import generate_reports

    reports = generate_reports(config.n_docs, config.seed, config.min_extra_pages, config.max_extra_pages,
                               config.ja_fraction)
    pdf_dir = out_dir / OUTPUTS["pdfs"]
    pdf_dir.mkdir(parents=True, exist_ok=True)
    for report in reports:
        with atomic_open(pdf_dir / f"{report.doc_id}.pdf", "wb") as fh:
            fh.write(report.pdf)
    questions = [q for report in reports for q in report.questions]
    write_jsonl(out_dir / OUTPUTS["questions"], questions)
    kinds = {"single_page": 0, "cross_page": 0, "unanswerable": 0}
    for q in questions:
        kinds["unanswerable" if not q.gold_pages else "single_page" if len(q.gold_pages) == 1 else "cross_page"] += 1
    return {"docs": len(reports), "pages": sum(r.num_pages for r in reports), "questions": len(questions), **kinds}
