"""Render PDFs into Page records: one PNG per page (long side capped) plus the page's text layer.

Every *.pdf under the input directory (recursively) is opened with pypdfium2. A document that is
encrypted, empty or corrupt, or one of whose pages fails to load, is rejected as a whole with its
reason into rejects.jsonl and the other documents go on; the stage fails when the rejected share
passes max_reject_rate. The doc id is the PDF's path relative to the input, without '.pdf'.
"""
from __future__ import annotations

from pathlib import Path

from pydantic import Field

from compass.config import StageConfig
from compass.errors import CompassError
from compass.io import atomic_open, dumps_record
from compass.records import Page, Reject
from compass.stages import Port

VERSION = 1  # code version of what this stage writes: bump when the same config and inputs would give other bytes
EXAMPLE = "compass pages --pdfs work/pdfs/pdfs --out work/pages --dpi 144 --max-long-side 1400"


class Config(StageConfig):
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


def render_document(path: Path, doc_id: str, config: Config, image_root: Path) -> list[Page]:
    """Render all pages of one PDF into image_root/<doc_id>/page-NNNN.png; any page failure rejects the document."""
    import pypdfium2 as pdfium

    doc = open_pdf(path)
    pages: list[Page] = []
    written: list[Path] = []
    try:
        for index in range(len(doc)):
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
        for file in written:  # a rejected document leaves no images behind
            file.unlink()
        raise
    finally:
        doc.close()
    return pages


def run(config: Config, inputs: dict[str, Path], out_dir: Path) -> dict:
    from tqdm import tqdm

    root = inputs["pdfs"]
    files = pdf_files(root)
    image_root = out_dir / OUTPUTS["images"]
    image_root.mkdir(parents=True, exist_ok=True)
    rejects: list[Reject] = []
    n_pages = 0
    with atomic_open(out_dir / OUTPUTS["pages"], "w") as out:
        for pdf in tqdm(files, desc="pages", unit="pdf"):
            doc_id = doc_id_of(pdf, root)
            try:
                pages = render_document(pdf, doc_id, config, image_root)
            except Rejected as err:
                rejects.append(Reject(id=doc_id, reason=err.reason, detail=err.detail, record={"path": str(pdf.name)}))
                continue
            for page in pages:  # one document's pages at a time: memory stays at one document's text
                out.write(dumps_record(page) + "\n")
            n_pages += len(pages)
    with atomic_open(out_dir / OUTPUTS["rejects"], "w") as fh:
        for reject in rejects:
            fh.write(dumps_record(reject) + "\n")
    fraction = len(rejects) / len(files)
    if fraction > config.max_reject_rate:
        reasons = ", ".join(f"{r.id}: {r.reason}" for r in rejects[:5])
        raise CompassError(f"{len(rejects)}/{len(files)} PDFs rejected ({fraction:.0%} > max_reject_rate "
                           f"{config.max_reject_rate:.0%}): {reasons}; see {out_dir / OUTPUTS['rejects']}")
    return {"documents": len(files) - len(rejects), "pages": n_pages, "rejected": len(rejects),
            "reject_reasons": {reason: sum(r.reason == reason for r in rejects) for reason in sorted({r.reason for r in rejects})}}
