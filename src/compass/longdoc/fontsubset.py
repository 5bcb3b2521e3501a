"""Rebuild the shipped CJK font subset from a full Noto Sans CJK JP font (a developer task, not a stage).

    python -m compass.longdoc.fontsubset /path/to/NotoSansCJKjp-Regular.otf

The full font (16 MB) is SIL OFL 1.1: the PyPI wheel `noto-cjk-sans-jp-regular==0.0.1` carries it, as do
Debian's `fonts-noto-cjk` and Google's noto-cjk releases. The subset keeps ASCII plus every character in
compass.longdoc.synthetic_reports.vocabulary_text(), so the generated PDFs need nothing installed on the machine.
The license text ships beside the subset as fonts/OFL.txt.
Run it again whenever the fixture vocabulary gains characters (the generator fails naming them).
"""
from __future__ import annotations

import sys
from pathlib import Path

from compass.longdoc.synthetic_reports import FONT_FILE, vocabulary_text

# Full-width digits and a few CJK punctuation marks on top of the vocabulary, for hand-written variants.
ALWAYS = "０１２３４５６７８９　"


def build_subset(source: Path, target: Path = FONT_FILE) -> int:
    from fontTools import subset

    chars = sorted(set(vocabulary_text() + ALWAYS) - {"\n"})
    options = subset.Options()
    options.layout_features = []  # fpdf2 lays text out without shaping: GSUB/GPOS would only add bytes
    options.name_IDs = ["*"]  # keep the copyright and license records (OFL requires them)
    options.notdef_outline = True
    font = subset.load_font(str(source), options)
    subsetter = subset.Subsetter(options)
    subsetter.populate(unicodes=[ord(ch) for ch in chars])
    subsetter.subset(font)
    target.parent.mkdir(parents=True, exist_ok=True)
    subset.save_font(font, str(target), options)
    return len(chars)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    count = build_subset(Path(argv[0]))
    print(f"wrote {FONT_FILE} ({FONT_FILE.stat().st_size} bytes, {count} characters)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
