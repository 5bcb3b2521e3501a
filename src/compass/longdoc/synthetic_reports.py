"""Synthetic multi-page financial reports (English + Japanese) as real PDFs, with planted facts.

Each document is a fictional company's annual securities report (有価証券報告書): a cover, narrative
pages, a financial-highlights table, a segment table, a bar chart drawn with vector shapes, and pages
that carry single facts (employees, dividend, auditor, forecast). Every fact sits on a known page, so
the generator can emit MMLongBench-style questions with their answers, answer formats and gold pages:
single-page, cross-page (two facts on two pages combined) and unanswerable ones.

Why a shipped font: fpdf2's core fonts are latin-1 only and a fresh machine has no CJK font, so the
package ships a subset of Noto Sans CJK JP (SIL Open Font License 1.1, see fonts/OFL.txt) that covers
exactly the characters this module can print (compass.longdoc.fontsubset rebuilds it). Text outside
that set fails loudly instead of rendering as blank boxes.

Same seed, same bytes: the PDF creation date is fixed, fpdf2's file id is a hash of the content, and
every choice comes from one seeded random.Random.
"""
from __future__ import annotations

import datetime as dt
import functools
import random
from dataclasses import dataclass, field
from pathlib import Path

from compass.errors import CompassError
from compass.records import DocQuestion

FONT_DIR = Path(__file__).parent / "fonts"
FONT_FILE = FONT_DIR / "NotoSansCJKjp-compass-subset.otf"
FONT_NAME = "notojp"
# A fixed date so the bytes depend on the seed only (fpdf2 otherwise stamps the current time).
CREATION_DATE = dt.datetime(2024, 6, 28, 9, 0, 0, tzinfo=dt.timezone.utc)
UNANSWERABLE = "Not answerable"

# --- vocabulary: every string that can reach a page lives here (the font subset is built from it) --------

NAME_STEMS = [
    ("Hoshino", "星野"), ("Aozora", "青空"), ("Kawase", "川瀬"), ("Minato", "港"),
    ("Sakura", "さくら"), ("Fujimi", "富士見"), ("Takara", "宝"), ("Midori", "みどり"),
    ("Asahina", "朝比奈"), ("Kirishima", "霧島"),
]
SECTORS = [
    ("Electric", "電機"), ("Logistics", "物流"), ("Foods", "食品"), ("Chemical", "化学"),
    ("Pharma", "製薬"), ("Software", "ソフトウェア"), ("Machinery", "機械"), ("Retail", "小売"),
]
CITIES = [
    ("Tokyo", "東京"), ("Osaka", "大阪"), ("Nagoya", "名古屋"), ("Fukuoka", "福岡"),
    ("Sapporo", "札幌"), ("Sendai", "仙台"), ("Kobe", "神戸"), ("Yokohama", "横浜"),
    ("Kyoto", "京都"), ("Hiroshima", "広島"),
]
SEGMENTS = [
    ("Consumer", "コンシューマー"), ("Industrial", "産業"), ("Healthcare", "ヘルスケア"),
    ("Overseas", "海外"), ("Services", "サービス"), ("Digital", "デジタル"), ("Energy", "エネルギー"),
    ("Materials", "素材"),
]
AUDITORS = [
    ("Kirin Audit LLC", "きりん監査法人"), ("Tsubame & Co. Audit Corporation", "つばめ監査法人"),
    ("Hikari Assurance LLC", "ひかり有限責任監査法人"), ("Seiryu Audit Partners", "清流監査法人"),
]
PRESIDENTS = [
    ("Kenji Tanaka", "田中健司"), ("Yuko Sato", "佐藤優子"), ("Hiroshi Suzuki", "鈴木博"),
    ("Akiko Watanabe", "渡辺明子"), ("Takeshi Ito", "伊藤武"), ("Naomi Kobayashi", "小林直美"),
]
# financial-highlights rows: key, English label, Japanese label
HIGHLIGHT_ROWS = [
    ("revenue", "Revenue", "売上高"),
    ("operating_income", "Operating income", "営業利益"),
    ("ordinary_income", "Ordinary income", "経常利益"),
    ("net_income", "Net income", "親会社株主に帰属する当期純利益"),
    ("total_assets", "Total assets", "総資産"),
    ("net_assets", "Net assets", "純資産"),
]
CHART_COLORS = [(52, 101, 164), (204, 102, 0), (78, 154, 6), (117, 80, 123), (193, 39, 45)]

TEXT = {
    "report_title": "Annual Securities Report",
    "report_title_ja": "有価証券報告書",
    "fiscal_year": "Fiscal year ended March 31, {end}",
    "fiscal_year_ja": "第{term}期（自 {start}年4月1日 至 {end}年3月31日）",
    "submitted": "Submitted to the Director-General of the Kanto Local Finance Bureau",
    "submitted_ja": "関東財務局長に提出",
    "page_footer": "{name} / {name_ja} - Annual Securities Report FY{fy}",
    "overview_h": "1. Business Overview / 事業の概況",
    "overview_en": (
        "{name} was founded in {founded} and operates {n_seg} business segments: {segs}. "
        "The head office of the company is located in {city}. The Group serves customers in Japan and abroad "
        "and aims at steady growth through investment in products and people."
    ),
    "overview_ja": "当社は{founded}年に設立され、{segs_ja}の{n_seg}つの事業セグメントを営んでいます。本社所在地は{city_ja}です。",
    "highlights_h": "2. Financial Highlights / 主要な経営指標等の推移",
    "highlights_note": "(Consolidated, millions of yen / 連結、単位：百万円)",
    "highlights_item": "Item / 項目",
    "fy_col": "FY{fy}",
    "segments_h": "3. Segment Information / セグメント情報",
    "segments_note": "Segment operating income and segment assets, FY{fy} (millions of yen)",
    "segments_cols": ("Segment / セグメント", "Operating income / 営業利益", "Segment assets / 資産"),
    "segments_text": "Segment revenue is shown in the chart on another page of this report.",
    "chart_h": "4. Revenue by Segment / セグメント別売上高",
    "chart_title": "Revenue by segment, FY{fy} (millions of yen)",
    "chart_note": "The bar chart shows the external revenue of each reportable segment.",
    "employees_h": "5. Employees / 従業員の状況",
    "employees_en": (
        "As of March 31, {end}, the Group had {employees} employees. The average age of employees was "
        "{age} years and the average length of service was {service} years."
    ),
    "employees_ja": "{end}年3月31日現在の従業員数は{employees}名、平均年齢は{age}歳です。",
    "employees_table_h": "Employees by segment / セグメント別従業員数",
    "employees_cols": ("Segment / セグメント", "Employees / 従業員数"),
    "dividend_h": "6. Dividend Policy / 配当政策",
    "dividend_en": (
        "The company regards the return of profits to shareholders as an important management issue. "
        "For FY{fy}, the annual dividend per share was {dividend} yen, consisting of an interim dividend "
        "and a year-end dividend."
    ),
    "dividend_ja": "当期の1株当たり年間配当金は{dividend}円です。",
    "shares_en": "The total number of issued shares was {shares} as of the end of the fiscal year.",
    "governance_h": "7. Corporate Governance / コーポレート・ガバナンスの状況",
    "governance_en": (
        "The Board of Directors consists of {board} directors, of whom {outside} are outside directors. "
        "The representative director and president is {president}. The independent auditor of the "
        "company is {auditor}."
    ),
    "governance_ja": "代表取締役社長は{president_ja}、会計監査人は{auditor_ja}です。",
    "outlook_h": "8. Management Policy and Outlook / 経営方針及び今後の見通し",
    "outlook_en": (
        "For FY{next_fy}, the company forecasts consolidated revenue of {forecast} million yen, supported "
        "by demand in its core segments. Capital expenditure is planned at {capex} million yen."
    ),
    "outlook_ja": "次期の連結売上高は{forecast}百万円を見込んでいます。",
    "filler_h": (
        "Business Risks / 事業等のリスク", "Sustainability / サステナビリティに関する考え方",
        "Research and Development / 研究開発活動", "Facilities / 設備の状況",
        "Status of Shares / 株式等の状況", "Internal Control / 内部統制",
    ),
    "filler_en": (
        "The Group monitors changes in economic conditions, exchange rates and raw material prices.",
        "Management reviews the risk register every quarter and reports to the Board of Directors.",
        "The company promotes diversity and invests in training programs for its staff.",
        "Information security measures are reviewed by an internal committee each year.",
        "Environmental targets include a reduction of greenhouse gas emissions across all plants.",
        "The company maintains business continuity plans for natural disasters such as earthquakes.",
        "Compliance training is provided to all officers and staff of the Group.",
        "Facilities are inspected regularly and maintenance is planned on a multi-year basis.",
    ),
    "filler_ja": (
        "当社グループは、経済情勢や為替相場の変動を注視しています。",
        "リスク管理委員会を設置し、定期的に取締役会へ報告しています。",
        "人材育成と多様性の推進に取り組んでいます。",
        "温室効果ガス排出量の削減に向けた取り組みを進めています。",
        "大規模な自然災害に備えて事業継続計画を整備しています。",
    ),
}

# Questions: (kind, English template, Japanese template). Answers and gold pages are filled in from the facts.
QUESTION_TEXT = {
    "highlight": ("What was {company}'s {metric_en} in FY{fy}, in millions of yen?",
                  "{company_ja}の{fy}年度の{metric_ja}は何百万円ですか？"),
    "employees": ("How many employees did {company} have at the end of FY{fy}?",
                  "{company_ja}の{fy}年度末の従業員数は何名ですか？"),
    "age": ("What was the average age of {company}'s employees, in years?",
            "{company_ja}の従業員の平均年齢は何歳ですか？"),
    "dividend": ("What was {company}'s annual dividend per share for FY{fy}, in yen?",
                 "{company_ja}の{fy}年度の1株当たり年間配当金は何円ですか？"),
    "city": ("In which city is the head office of {company} located?",
             "{company_ja}の本社所在地はどの都市ですか？"),
    "auditor": ("Who is the independent auditor of {company}?",
                "{company_ja}の会計監査人はどこですか？"),
    "segments_above": ("Which segments of {company} had revenue above {threshold} million yen in FY{fy}?",
                       "{company_ja}の{fy}年度の売上高が{threshold}百万円を超えたセグメントはどれですか？"),
    "forecast_growth": ("By how many million yen does {company}'s revenue forecast for FY{next_fy} exceed its "
                        "FY{fy} revenue?",
                        "{company_ja}の{next_fy}年度の売上高予想は{fy}年度の売上高を何百万円上回りますか？"),
    "top_segment_employees": ("How many employees work in {company}'s segment with the highest revenue in FY{fy}?",
                              "{company_ja}の{fy}年度に売上高が最も大きいセグメントの従業員数は何名ですか？"),
    "unanswerable_patents": ("How many patents did {company} hold at the end of FY{fy}?",
                             "{company_ja}の{fy}年度末の保有特許数はいくつですか？"),
    "unanswerable_old_revenue": ("What was {company}'s revenue in FY{old_fy}, in millions of yen?",
                                 "{company_ja}の{old_fy}年度の売上高は何百万円ですか？"),
}

EXTRA_PUNCTUATION = "、。・（）「」：％〜／－＋，．"


def vocabulary_text() -> str:
    """Every character this module can print: the font subset is built from this (plus ASCII)."""
    chunks: list[str] = [EXTRA_PUNCTUATION, "".join(chr(c) for c in range(0x20, 0x7F))]

    def walk(value) -> None:
        if isinstance(value, str):
            chunks.append(value)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)

    for constant in (NAME_STEMS, SECTORS, CITIES, SEGMENTS, AUDITORS, PRESIDENTS, HIGHLIGHT_ROWS, TEXT,
                     "株式会社"):
        walk(constant)
    return "".join(chunks)


@functools.cache
def font_characters() -> frozenset[str]:
    from fontTools.ttLib import TTFont

    if not FONT_FILE.is_file():
        raise CompassError(f"the shipped CJK font subset is missing: {FONT_FILE} (rebuild with compass.longdoc.fontsubset)")
    with TTFont(str(FONT_FILE)) as font:
        return frozenset(chr(code) for code in font.getBestCmap())


# --- facts ---------------------------------------------------------------------------------------------


@dataclass
class Segment:
    name: str
    name_ja: str
    revenue: int
    operating_income: int
    assets: int
    employees: int


@dataclass
class Company:
    doc_id: str
    name: str
    name_ja: str
    city: tuple[str, str]
    fy: int  # fiscal year label: FY2023 ends March 31, 2024
    founded: int
    segments: list[Segment]
    highlights: dict[str, list[int]]  # metric -> values for fy-2, fy-1, fy
    employees: int
    avg_age: float
    avg_service: float
    dividend: float
    shares: int
    auditor: tuple[str, str]
    president: tuple[str, str]
    board: int
    outside: int
    forecast: int
    capex: int
    page_of: dict[str, int] = field(default_factory=dict)  # section -> 0-based page index


def make_company(rng: random.Random, doc_id: str, used_names: set[str]) -> Company:
    while True:
        stem, sector = rng.choice(NAME_STEMS), rng.choice(SECTORS)
        name = f"{stem[0]} {sector[0]} Co., Ltd."
        if name not in used_names:
            break
    used_names.add(name)
    name_ja = f"{stem[1]}{sector[1]}株式会社"
    fy = rng.randint(2019, 2024)
    n_seg = rng.randint(3, 5)
    segments = []
    revenues = rng.sample(range(800, 9000), n_seg)  # distinct, so "highest" and thresholds are unambiguous
    for (seg_en, seg_ja), revenue in zip(rng.sample(SEGMENTS, n_seg), revenues):
        segments.append(Segment(seg_en, seg_ja, revenue, operating_income=revenue * rng.randint(3, 15) // 100,
                                assets=revenue * rng.randint(80, 160) // 100, employees=rng.randint(120, 2500)))
    revenue = sum(s.revenue for s in segments)
    highlights: dict[str, list[int]] = {}
    growth = [rng.uniform(0.86, 0.97), rng.uniform(0.92, 1.0), 1.0]
    margins = {"operating_income": rng.uniform(0.04, 0.14)}
    margins["ordinary_income"] = margins["operating_income"] * rng.uniform(0.95, 1.1)
    margins["net_income"] = margins["operating_income"] * rng.uniform(0.55, 0.75)
    asset_ratio = rng.uniform(0.9, 1.8)
    equity_ratio = rng.uniform(0.35, 0.65)
    highlights["revenue"] = [round(revenue * g) for g in growth]
    highlights["revenue"][2] = revenue
    for key, margin in margins.items():
        highlights[key] = [round(r * margin * rng.uniform(0.9, 1.1)) for r in highlights["revenue"]]
    highlights["total_assets"] = [round(r * asset_ratio * rng.uniform(0.97, 1.03)) for r in highlights["revenue"]]
    highlights["net_assets"] = [round(a * equity_ratio) for a in highlights["total_assets"]]
    board = rng.randint(7, 12)
    return Company(
        doc_id=doc_id, name=name, name_ja=name_ja, city=rng.choice(CITIES), fy=fy,
        founded=rng.randint(1920, 1995), segments=segments, highlights=highlights,
        employees=sum(s.employees for s in segments) + rng.randint(40, 300),  # plus head-office staff
        avg_age=round(rng.uniform(35.0, 46.0), 1), avg_service=round(rng.uniform(8.0, 19.0), 1),
        dividend=round(rng.uniform(10, 120) * 2) / 2, shares=rng.randint(20, 400) * 1_000_000,
        auditor=rng.choice(AUDITORS), president=rng.choice(PRESIDENTS), board=board,
        outside=rng.randint(2, board // 2), forecast=round(revenue * rng.uniform(1.02, 1.12)),
        capex=round(revenue * rng.uniform(0.03, 0.08)),
    )


def fmt_int(value: int) -> str:
    return f"{value:,}"


def fmt_float(value: float) -> str:
    """Shortest exact decimal: 45.0 -> '45', 45.5 -> '45.5'."""
    return f"{value:.1f}".rstrip("0").rstrip(".")


# --- PDF -----------------------------------------------------------------------------------------------


class ReportPDF:
    """A thin layer over fpdf2 with one font, checked glyph coverage, and one page per section."""

    PAGE_W, PAGE_H, MARGIN = 210.0, 297.0, 18.0

    def __init__(self, company: Company):
        from fpdf import FPDF

        self.company = company
        self.pdf = FPDF(orientation="P", unit="mm", format="A4")
        self.pdf.set_creation_date(CREATION_DATE)
        self.pdf.set_title(f"{company.name} Annual Securities Report FY{company.fy}")
        self.pdf.set_author(company.name)
        self.pdf.set_auto_page_break(False)
        self.pdf.set_margins(self.MARGIN, self.MARGIN, self.MARGIN)
        self.pdf.add_font(FONT_NAME, fname=str(FONT_FILE))
        self.chars = font_characters()

    def check(self, text: str) -> str:
        missing = sorted(set(text) - self.chars - {"\n"})
        if missing:
            raise CompassError(f"text has characters outside the shipped font subset {missing}: {text[:80]!r}")
        return text

    def footer(self) -> None:
        """Drawn last on each page, so the text layer reads heading first, footer last."""
        pdf = self.pdf
        pdf.set_font(FONT_NAME, size=8)
        pdf.set_xy(self.MARGIN, self.PAGE_H - 12)
        pdf.cell(text=self.check(TEXT["page_footer"].format(name=self.company.name, name_ja=self.company.name_ja,
                                                                 fy=self.company.fy)))

    def new_page(self, heading: str) -> None:
        pdf = self.pdf
        if pdf.page:
            self.footer()
        pdf.add_page()
        pdf.set_text_color(20, 20, 20)
        pdf.set_font(FONT_NAME, size=14)
        pdf.multi_cell(self.PAGE_W - 2 * self.MARGIN, 8, self.check(heading))
        pdf.ln(4)

    def paragraph(self, text: str, size: float = 10.5) -> None:
        self.pdf.set_font(FONT_NAME, size=size)
        self.pdf.multi_cell(self.PAGE_W - 2 * self.MARGIN, size * 0.55, self.check(text))
        self.pdf.ln(3)
        self.fits()

    def table(self, rows: list[list[str]], widths: list[float], size: float = 9.5) -> None:
        pdf = self.pdf
        pdf.set_font(FONT_NAME, size=size)
        for r, row in enumerate(rows):
            pdf.set_x(self.MARGIN)
            if r == 0:
                pdf.set_fill_color(225, 232, 240)
            for c, (cell, width) in enumerate(zip(row, widths)):
                pdf.cell(width, 7, self.check(cell), border=1, align="L" if c == 0 else "R", fill=r == 0)
            pdf.ln(7)
        pdf.ln(3)
        self.fits()

    def bar_chart(self, title: str, labels: list[str], values: list[int]) -> None:
        """A vector bar chart: axes, one bar per value, the value above each bar, the label below."""
        pdf = self.pdf
        x0, y_top, width, height = self.MARGIN + 12, pdf.get_y() + 10, self.PAGE_W - 2 * self.MARGIN - 20, 90.0
        pdf.set_font(FONT_NAME, size=11)
        pdf.set_xy(self.MARGIN, y_top - 10)
        pdf.cell(text=self.check(title))
        y_base = y_top + height
        pdf.set_draw_color(60, 60, 60)
        pdf.line(x0, y_top, x0, y_base)
        pdf.line(x0, y_base, x0 + width, y_base)
        top = max(values) * 1.15
        slot = width / len(values)
        pdf.set_font(FONT_NAME, size=8.5)
        for i, (label, value) in enumerate(zip(labels, values)):
            bar_h = height * value / top
            bx = x0 + slot * i + slot * 0.2
            pdf.set_fill_color(*CHART_COLORS[i % len(CHART_COLORS)])
            pdf.rect(bx, y_base - bar_h, slot * 0.6, bar_h, style="F")
            pdf.set_xy(bx - slot * 0.2, y_base - bar_h - 6)
            pdf.cell(slot, 5, self.check(fmt_int(value)), align="C")
            pdf.set_xy(bx - slot * 0.2, y_base + 1.5)
            pdf.cell(slot, 5, self.check(label), align="C")
        pdf.set_y(y_base + 12)
        self.fits()

    def fits(self) -> None:
        if self.pdf.get_y() > self.PAGE_H - 16:
            raise CompassError(f"{self.company.doc_id}: page {self.pdf.page} overflows (y={self.pdf.get_y():.1f} mm)")

    def output(self) -> bytes:
        self.footer()
        return bytes(self.pdf.output())


def render_report(company: Company, rng: random.Random, extra_pages: int) -> bytes:
    """Lay the sections out one per page (cover first, the rest shuffled with filler pages) and render."""
    c = company
    fy, end = c.fy, c.fy + 1
    sections = ["overview", "highlights", "segments", "chart", "employees", "dividend", "governance", "outlook"]
    sections += [f"filler{i}" for i in range(extra_pages)]
    rng.shuffle(sections)
    sections.insert(0, "cover")
    c.page_of = {name: index for index, name in enumerate(sections)}
    seg_names = ", ".join(s.name for s in c.segments)
    seg_names_ja = "、".join(s.name_ja for s in c.segments)
    doc = ReportPDF(c)
    for name in sections:
        if name == "cover":
            doc.new_page(f"{TEXT['report_title']}\n{TEXT['report_title_ja']}")
            doc.paragraph(f"{c.name}\n{c.name_ja}", size=16)
            doc.paragraph(TEXT["fiscal_year"].format(end=end))
            doc.paragraph(TEXT["fiscal_year_ja"].format(term=fy - c.founded, start=fy, end=end))
            doc.paragraph(f"{TEXT['submitted']}\n{TEXT['submitted_ja']}", size=9)
        elif name == "overview":
            doc.new_page(TEXT["overview_h"])
            doc.paragraph(TEXT["overview_en"].format(name=c.name, founded=c.founded, n_seg=len(c.segments),
                                                     segs=seg_names, city=c.city[0]))
            doc.paragraph(TEXT["overview_ja"].format(founded=c.founded, segs_ja=seg_names_ja,
                                                     n_seg=len(c.segments), city_ja=c.city[1]))
        elif name == "highlights":
            doc.new_page(TEXT["highlights_h"])
            doc.paragraph(TEXT["highlights_note"], size=9)
            rows = [[TEXT["highlights_item"]] + [TEXT["fy_col"].format(fy=y) for y in (fy - 2, fy - 1, fy)]]
            for key, label, label_ja in HIGHLIGHT_ROWS:
                label_cell = f"{label} / {label_ja}" if len(label_ja) <= 5 else label
                rows.append([label_cell] + [fmt_int(v) for v in c.highlights[key]])
            doc.table(rows, [78, 32, 32, 32])
        elif name == "segments":
            doc.new_page(TEXT["segments_h"])
            doc.paragraph(TEXT["segments_note"].format(fy=fy), size=9)
            rows = [list(TEXT["segments_cols"])]
            rows += [[f"{s.name} / {s.name_ja}", fmt_int(s.operating_income), fmt_int(s.assets)] for s in c.segments]
            doc.table(rows, [70, 52, 52])
            doc.paragraph(TEXT["segments_text"], size=9)
        elif name == "chart":
            doc.new_page(TEXT["chart_h"])
            doc.bar_chart(TEXT["chart_title"].format(fy=fy), [s.name for s in c.segments],
                          [s.revenue for s in c.segments])
            doc.paragraph(TEXT["chart_note"], size=9)
        elif name == "employees":
            doc.new_page(TEXT["employees_h"])
            doc.paragraph(TEXT["employees_en"].format(end=end, employees=fmt_int(c.employees),
                                                      age=fmt_float(c.avg_age), service=fmt_float(c.avg_service)))
            doc.paragraph(TEXT["employees_ja"].format(end=end, employees=fmt_int(c.employees),
                                                      age=fmt_float(c.avg_age)))
            doc.paragraph(TEXT["employees_table_h"], size=9.5)
            doc.table([list(TEXT["employees_cols"])] + [[s.name, fmt_int(s.employees)] for s in c.segments], [70, 50])
        elif name == "dividend":
            doc.new_page(TEXT["dividend_h"])
            doc.paragraph(TEXT["dividend_en"].format(fy=fy, dividend=fmt_float(c.dividend)))
            doc.paragraph(TEXT["dividend_ja"].format(dividend=fmt_float(c.dividend)))
            doc.paragraph(TEXT["shares_en"].format(shares=fmt_int(c.shares)))
        elif name == "governance":
            doc.new_page(TEXT["governance_h"])
            doc.paragraph(TEXT["governance_en"].format(board=c.board, outside=c.outside, president=c.president[0],
                                                       auditor=c.auditor[0]))
            doc.paragraph(TEXT["governance_ja"].format(president_ja=c.president[1], auditor_ja=c.auditor[1]))
        elif name == "outlook":
            doc.new_page(TEXT["outlook_h"])
            doc.paragraph(TEXT["outlook_en"].format(next_fy=fy + 1, forecast=fmt_int(c.forecast), capex=fmt_int(c.capex)))
            doc.paragraph(TEXT["outlook_ja"].format(forecast=fmt_int(c.forecast)))
        else:  # filler: narrative with no planted fact
            doc.new_page(rng.choice(TEXT["filler_h"]))
            for _ in range(rng.randint(2, 4)):
                doc.paragraph(" ".join(rng.sample(TEXT["filler_en"], 3)))
                doc.paragraph("".join(rng.sample(TEXT["filler_ja"], 2)))
    return doc.output()


# --- questions -----------------------------------------------------------------------------------------


def make_questions(c: Company, rng: random.Random, ja_fraction: float) -> list[DocQuestion]:
    """One question per template, each in English or Japanese (seeded); answers in MMLongBench format."""
    fy = c.fy
    values = dict(company=c.name, company_ja=c.name_ja, fy=fy, next_fy=fy + 1, old_fy=fy - 6)
    metric_key, metric_en, metric_ja = rng.choice(HIGHLIGHT_ROWS)
    year_index = rng.randrange(3)
    by_revenue = sorted(c.segments, key=lambda s: s.revenue)
    cut = rng.randint(1, len(by_revenue) - 1)  # at least one segment on each side of the threshold
    threshold = (by_revenue[cut - 1].revenue + by_revenue[cut].revenue) // 2
    above = [s.name for s in c.segments if s.revenue > threshold]
    top = by_revenue[-1]
    page = c.page_of
    specs = [
        # kind, answer, answer_format, gold pages, extra template values
        ("highlight", str(c.highlights[metric_key][year_index]), "Int", [page["highlights"]],
         dict(metric_en=metric_en.lower(), metric_ja=metric_ja, fy=fy - 2 + year_index)),
        ("employees", str(c.employees), "Int", [page["employees"]], {}),
        ("age", fmt_float(c.avg_age), "Float", [page["employees"]], {}),
        ("dividend", fmt_float(c.dividend), "Float", [page["dividend"]], {}),
        ("city", c.city[0], "Str", [page["overview"]], {}),
        ("auditor", c.auditor[0], "Str", [page["governance"]], {}),
        ("segments_above", repr(above), "List", [page["chart"]], dict(threshold=fmt_int(threshold))),
        ("forecast_growth", str(c.forecast - c.highlights["revenue"][2]), "Int",
         sorted([page["outlook"], page["highlights"]]), {}),
        ("top_segment_employees", str(top.employees), "Int", sorted([page["chart"], page["employees"]]), {}),
        ("unanswerable_patents", UNANSWERABLE, "None", [], {}),
        ("unanswerable_old_revenue", UNANSWERABLE, "None", [], {}),
    ]
    questions = []
    for kind, answer, answer_format, gold, extra in specs:
        lang = "ja" if rng.random() < ja_fraction else "en"
        template = QUESTION_TEXT[kind][1 if lang == "ja" else 0]
        questions.append(DocQuestion(
            id=f"{c.doc_id}/{kind}", doc_id=c.doc_id, question=template.format(**{**values, **extra}),
            answer=answer, answer_format=answer_format, gold_pages=gold,
        ))
    return questions


@dataclass
class Report:
    doc_id: str
    pdf: bytes
    questions: list[DocQuestion]
    num_pages: int


def generate_reports(n_docs: int, seed: int, min_extra_pages: int, max_extra_pages: int,
                     ja_fraction: float) -> list[Report]:
    """`n_docs` reports; same arguments, same bytes."""
    if not 0 <= min_extra_pages <= max_extra_pages:
        raise CompassError(f"need 0 <= min_extra_pages <= max_extra_pages, got {min_extra_pages}, {max_extra_pages}")
    if n_docs > len(NAME_STEMS) * len(SECTORS):
        raise CompassError(f"n_docs={n_docs} exceeds the {len(NAME_STEMS) * len(SECTORS)} distinct company names")
    rng = random.Random(seed)
    used: set[str] = set()
    reports = []
    for index in range(n_docs):
        doc_id = f"report-{index:04d}"
        company = make_company(rng, doc_id, used)
        pdf = render_report(company, rng, rng.randint(min_extra_pages, max_extra_pages))
        questions = make_questions(company, rng, ja_fraction)
        reports.append(Report(doc_id, pdf, questions, num_pages=len(company.page_of)))
    return reports
