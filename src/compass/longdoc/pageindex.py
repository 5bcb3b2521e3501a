"""Random access to the Page records of one document in a pages.jsonl, without holding every text layer."""
from __future__ import annotations

import json
from pathlib import Path

from compass.errors import CompassError
from compass.records import Page


class PageIndex:
    """doc id -> byte offsets of its Page lines in pages.jsonl, so a document's pages are read on demand
    (memory: a few integers per page, not the text layers)."""

    def __init__(self, path: Path):
        if path.is_dir():
            raise CompassError(f"pages input must be the pages.jsonl file, got a directory: {path}")
        self.path = path
        self.offsets: dict[str, list[tuple[int, int]]] = {}
        with open(path, "rb") as fh:
            offset = 0
            for lineno, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        head = json.loads(line)
                        key = (head["doc_id"], head["page_index"])
                    except (json.JSONDecodeError, KeyError, TypeError):
                        raise CompassError(f"{path}:{lineno}: not a Page record") from None
                    self.offsets.setdefault(key[0], []).append((key[1], offset))
                offset += len(line)
        for doc_id, entries in self.offsets.items():
            entries.sort()
            indices = [i for i, _ in entries]
            if indices != list(range(len(indices))):
                raise CompassError(f"{path}: document {doc_id!r} has page indices {indices[:10]}..., expected 0..{len(indices) - 1}")
        self._cached: tuple[str, list[Page]] | None = None

    def __contains__(self, doc_id: str) -> bool:
        return doc_id in self.offsets

    def pages(self, doc_id: str) -> list[Page]:
        if self._cached is not None and self._cached[0] == doc_id:
            return self._cached[1]
        pages = []
        with open(self.path, "rb") as fh:
            for _, offset in self.offsets[doc_id]:
                fh.seek(offset)
                pages.append(Page.model_validate_json(fh.readline()))
        self._cached = (doc_id, pages)  # questions usually come grouped by document
        return pages
