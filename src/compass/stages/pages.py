"""Render PDFs into Page records: one PNG per page (long side capped) plus the page's text layer.

Every *.pdf under the input directory (recursively) is opened with pypdfium2. A document that is
encrypted, empty or corrupt, or one of whose pages fails to load, is rejected as a whole with its
reason into rejects.jsonl and the other documents go on; the stage fails when the rejected share
passes max_reject_rate. The doc id is the PDF's path relative to the input, without '.pdf'.

`workers` processes render in parallel (pdfium is not thread-safe: processes, a few pages of one document per
task, so a long document spreads over the workers); pages.jsonl keeps the sorted file and page order whatever
the count. A shard's units are the sorted PDF files.
"""
from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path

from pydantic import Field

from compass.data.shards import DataStageConfig, ShardRun, concat_files, in_shard, merge_trees, ordered_map, sum_metrics
from compass.errors import CompassError
from compass.io import atomic_open
from compass.records import Page, Reject
from compass.stagekit import RecordSink, StageContext, check_reject_rate
from compass.stages import Port

VERSION = 1  # code version of what this stage writes: bump when the same config and inputs would give other bytes
EXAMPLE = "compass pages --pdfs work/pdfs/pdfs --out work/pages --dpi 144 --max-long-side 1400"


class Config(DataStageConfig):
    dpi: float = Field(144.0, gt=0, description="render resolution before the long-side cap")
    max_long_side: int = Field(1400, ge=16, description="cap on the longer side of a rendered page, in pixels")
    max_reject_rate: float = Field(0.25, ge=0, le=1, description="fail when more than this share of PDFs is rejected")


INPUTS = {"pdfs": Port("directory of PDF files (searched recursively), or one PDF file")}
OUTPUTS = {"pages": "pages.jsonl", "images": "images", "rejects": "rejects.jsonl"}


def pdf_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() == ".pdf")
    if not files:
        raise CompassError(f"no .pdf files under {path}")
    return files


def doc_id_of(pdf: Path, root: Path) -> str:
    rel = pdf.name if root.is_file() else pdf.relative_to(root).as_posix()
    return rel[: -len(".pdf")]


class Rejected(Exception):
    """A document that cannot be used; the reason goes to rejects.jsonl."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def open_pdf(path: Path):
    """Open with pdfium, turning its failures into a reject reason (encrypted / empty / corrupt)."""
    import pypdfium2 as pdfium
    import pypdfium2.raw as pdfium_c

    if path.stat().st_size == 0:
        raise Rejected("empty", "the file has 0 bytes")
    try:
        doc = pdfium.PdfDocument(path)
    except pdfium.PdfiumError as err:
        if err.err_code == pdfium_c.FPDF_ERR_PASSWORD:
            raise Rejected("encrypted", "the PDF needs a password to open") from None
        raise Rejected("corrupt", str(err)) from None
    if len(doc) == 0:
        doc.close()
        raise Rejected("empty", "the PDF has no pages")
    return doc


def render_scale(width_pt: float, height_pt: float, dpi: float, max_long_side: int) -> float:
    """Points -> pixels at `dpi`, shrunk so that the longer side is at most `max_long_side` pixels."""
    scale = dpi / 72.0
    long_side = max(width_pt, height_pt)
    return min(scale, max_long_side / long_side)


def render_pages(path: Path, doc_id: str, config: Config, image_root: Path, start: int, stop: int) -> list[Page]:
    """Render pages [start, stop) of one PDF into image_root/<doc_id>/page-NNNN.png; a page failure rejects the
    document (the pages of this range written so far are removed; the caller removes the other ranges')."""
    import pypdfium2 as pdfium

    doc = open_pdf(path)
    pages: list[Page] = []
    written: list[Path] = []
    try:
        for index in range(start, stop):
            try:
                page = doc[index]
                width_pt, height_pt = page.get_size()
                bitmap = page.render(scale=render_scale(width_pt, height_pt, config.dpi, config.max_long_side))
                image = bitmap.to_pil()
                textpage = page.get_textpage()
                text = textpage.get_text_range().replace("\r\n", "\n").replace("\r", "\n")
                textpage.close()
                page.close()
            except pdfium.PdfiumError as err:
                raise Rejected("corrupt", f"page {index}: {err}") from None
            rel = Path("images") / doc_id / f"page-{index:04d}.png"
            with atomic_open(image_root.parent / rel, "wb") as fh:
                image.save(fh, format="PNG")
            written.append(image_root.parent / rel)
            pages.append(Page(doc_id=doc_id, page_index=index, image=rel.as_posix(), width=image.width,
                              height=image.height, text=text))
    except Rejected:
        for file in written:
            file.unlink()
        raise
    finally:
        doc.close()
    return pages


PAGES_PER_TASK = 4  # a worker task is a few pages of one document: long documents spread over the workers too


def render_task(task: tuple, config: Config, image_root: Path) -> tuple:
    """("pages", doc_id, [Page]) or ("reject", doc_id, Reject) for one page range, in whichever process (a pool
    returns the reject; it does not raise). A reject known before rendering passes through."""
    if task[0] == "reject":
        return task
    _, doc_id, pdf, start, stop = task
    try:
        return "pages", doc_id, render_pages(Path(pdf), doc_id, config, image_root, start, stop)
    except Rejected as err:
        return "reject", doc_id, Reject(id=doc_id, reason=err.reason, detail=err.detail, record={"path": Path(pdf).name})


def render_tasks(jobs: list[tuple[str, str]]) -> Iterator[tuple]:
    """Page ranges of each document in order, and each document's last range marked (it closes the document).
    A document that does not open (encrypted, empty, corrupt) is one passed-through reject."""
    for pdf, doc_id in jobs:
        try:
            doc = open_pdf(Path(pdf))
        except Rejected as err:
            yield "reject", doc_id, Reject(id=doc_id, reason=err.reason, detail=err.detail, record={"path": Path(pdf).name})
            continue
        count = len(doc)
        doc.close()
        for start in range(0, count, PAGES_PER_TASK):
            yield "range", doc_id, pdf, start, min(start + PAGES_PER_TASK, count)


def run(config: Config, ctx: StageContext) -> dict:
    inputs, out_dir = ctx.inputs, ctx.out_dir
    from tqdm import tqdm

    root = inputs["pdfs"]
    files = pdf_files(root)
    shard = config.shard_spec()
    jobs = [(str(pdf), doc_id_of(pdf, root)) for pdf in in_shard(files, len(files), shard)]
    image_root = out_dir / OUTPUTS["images"]
    image_root.mkdir(parents=True, exist_ok=True)
    tasks = list(render_tasks(jobs))  # one small tuple per range; opening each PDF once here counts its pages
    last_of_doc = {task[1]: i for i, task in enumerate(tasks)}  # the index of each document's last task
    workers = min(config.worker_count(), max(1, len(tasks)))
    rendered = ordered_map(partial(render_task, config=config, image_root=image_root), tasks, workers)
    current: list[Page] = []  # the pages of the document being joined: memory stays at one document's text
    failed: Reject | None = None
    first_rejects: list[Reject] = []  # named in the gate's message
    with RecordSink("pages", out_dir, OUTPUTS["pages"], OUTPUTS["rejects"]) as sink, \
            tqdm(total=len(jobs), desc="pages", unit="pdf") as bar:
        for index, (kind, doc_id, value) in enumerate(rendered):
            if kind == "reject":
                failed = failed or value  # the first failing range holds the document's first failing page
            else:
                current += value
            if last_of_doc[doc_id] != index:
                continue
            if failed is not None:
                sink.reject(failed)
                if len(first_rejects) < 5:
                    first_rejects.append(failed)
                for page in current:  # a rejected document leaves no images behind
                    (out_dir / page.image).unlink()
            else:
                for page in current:
                    sink.record(page)
            current, failed = [], None
            bar.update(1)
        metrics = {"documents": len(jobs) - sink.rejected, "pages": sink.kept, "rejected": sink.rejected,
                   "reject_reasons": sink.sorted_reasons()}
        if shard is None:  # a shard's share is checked with the others' at gather
            sink.check(config.max_reject_rate, what="PDFs", total=len(jobs), reasons=reject_summary(first_rejects))
    return metrics


def reject_summary(rejects: list[Reject]) -> str:
    return ", ".join(f"{r.id}: {r.reason}" for r in rejects[:5])


def check_pdf_reject_rate(config: Config, metrics: dict, rejects: list[Reject], out_dir: Path) -> None:
    total = metrics["documents"] + metrics["rejected"]
    check_reject_rate("pages", metrics["rejected"], total, config.max_reject_rate, what="PDFs",
                      reasons=reject_summary(rejects), rejects_path=out_dir / OUTPUTS["rejects"])


def gather(config: Config, shards: list[ShardRun], out_dir: Path) -> dict:
    """The shards' pages and rejects in shard order, their images side by side: the unsharded output."""
    from compass.io import read_jsonl

    metrics = sum_metrics([s.metrics for s in shards], ["documents", "pages", "rejected", "reject_reasons"])
    metrics["reject_reasons"] = dict(sorted(metrics["reject_reasons"].items()))
    rejects = [r for s in shards for r in read_jsonl(s.out_dir / OUTPUTS["rejects"], Reject)]
    check_pdf_reject_rate(config, metrics, rejects, out_dir)  # before anything is written
    for name in ("pages", "rejects"):
        concat_files([s.out_dir / OUTPUTS[name] for s in shards], out_dir / OUTPUTS[name])
    merge_trees([s.out_dir / OUTPUTS["images"] for s in shards], out_dir / OUTPUTS["images"])
    return metrics
