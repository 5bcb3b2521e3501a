"""MMLongBench-Doc answer scoring by answer format (docs/method.md B.6), with the reference scorer's faults fixed.

The protocol: a free-form answer is reduced to a short answer, then scored against the gold answer by the
gold's `answer_format` (Int, Float, Str, List, None), and the run reports accuracy (mean score), F1 (recall
over answerable questions, precision over answered questions) and single-page / cross-page / unanswerable
splits. What this module does differently from the reference `eval/eval_score.py`, fault by fault:

- Nothing is executed. Lists are parsed by a small tokenizer (quoted items, bare items, commas), never eval().
- Numbers are numbers: '8,802' is 8802 (thousands separators), full-width digits are NFKC-normalised,
  '8.9' is not the integer 8 (no truncation), '13.0' equals '13'.
- Units and scale words really are handled: '300 million' matches a gold '300' (the unit stripped) and a
  gold '300000000' (the scale applied); '$', '¥', '円', '%', 'people', ... around a single number are units.
- Float: within 1% relative. The x100 and /100 variants apply only in a percentage context (a '%' or
  'percent' on exactly one side, or a question that asks for a percentage), so a price 49.99 never matches
  4999 and a count never matches its hundredth. A bare 0 matches only a gold 0 (no rounding to 2 places).
- Exact types are exact: URLs, e-mail addresses, file names, phone numbers (digit sequence), clock times
  (10:30 a.m. == 10:30 AM == 10:30; 3 p.m. == 15:00) and dates (2020-03-05 == 2020/3/5 == 2020年3月5日) are
  compared after normalising their presentation, never by ANLS, so a wrong digit scores 0, not ~0.8.
  Strings made of digits and punctuation ('2015-2016', '29-65+') are exact too. In a mixed string
  ('Regulation 13', '0-375 miles') the numbers must agree exactly and the rest is scored by ANLS.
- Abstention ('Not answerable', 'unanswerable', 'The document does not mention ...', '回答できません') is
  recognised once, by `is_abstention`, and that one decision drives the score of unanswerable questions and
  both the precision and the recall of F1 (the reference scored "Not answerable" by ANLS and compared raw
  strings for precision, so its two halves counted different sets).
- Lists: same length required; items are paired by the best one-to-one matching of item scores (not by
  sorting strings side by side), each item is scored as a scalar (numbers as numbers), the list scores the
  worst matched pair; items are never joined ('18','29-65+' can't pass for '18-29','65+'). Empty lists work.
- A gold answer that cannot be parsed for its declared format is a data error and raises (with the value).
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from compass.errors import CompassError

ANSWER_FORMATS = ("Int", "Float", "Str", "List", "None")
ANLS_THRESHOLD = 0.5
FLOAT_REL_TOL = Decimal("0.01")
NOT_ANSWERABLE = "Not answerable"

# --- normalisation ------------------------------------------------------------------------------------

_DASHES = str.maketrans({"\u2212": "-", "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-",
                         "\ufe63": "-", "\u301c": "~", "\uff5e": "~"})
_QUOTES = "\"'`“”‘’「」『』"


def normalize_text(text: str) -> str:
    """NFKC (full-width digits and letters to ASCII), unified dashes, lower case, collapsed spaces, no
    wrapping quotes or markdown emphasis, no trailing sentence period."""
    text = unicodedata.normalize("NFKC", text).translate(_DASHES).lower()
    text = re.sub(r"\s+", " ", text).strip()
    for _ in range(3):  # '"**Europe**."' takes a few layers
        before = text
        text = text.strip("*").strip()
        if len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES:
            text = text[1:-1].strip()
        text = re.sub(r"[.。]+$", "", text).strip()
        if text == before:
            break
    return text


# --- abstention ---------------------------------------------------------------------------------------

_ABSTAIN_PREFIX = re.compile(
    r"^(?:"
    r"not answerable|unanswerable|no answer\b|"
    r"(?:the )?(?:question )?(?:i |we |it )?(?:is |was |am |are |'m )?"
    r"(?:cannot|can ?not|can't|could not|couldn't|not able to|unable to) "
    r"(?:be )?(?:answer(?:ed)?|determin(?:e|ed)|infer(?:red)?|find|found)|"
    r"(?:there is |there's )?(?:insufficient|not enough|no (?:relevant |such )?)(?:information|data|evidence|mention)|"
    r"(?:the )?(?:provided )?(?:document|documents|report|text|pages?|images?|slides?) (?:does|do|did) not "
    r"(?:mention|contain|provide|specify|include|state|show|say|give)|"
    r"(?:it is |this is )?not (?:mentioned|provided|specified|stated|available|given|shown|found|answerable)"
    r")"
)
_ABSTAIN_JA = re.compile(
    r"(?:回答できません|回答できない|回答不能|答えられません|答えられない|判断できません|判断できない|"
    r"記載がありません|記載されていません|記載はありません|情報がありません|情報はありません|わかりません|分かりません)"
)
_ABSTAIN_WHOLE = {"n/a", "na", "不明", "回答なし", "該当なし"}


def is_abstention(text: str | None) -> bool:
    """True when a (short) answer says the question cannot be answered from the document. An empty or
    missing answer is not an abstention: it is an answer that is wrong. A bracketed abstention (the
    extraction prompt's '[answer]' placeholder copied: '[Not answerable]', "['Not answerable']") is one."""
    if text is None:
        return False
    norm = normalize_text(text)
    if len(norm) >= 2 and norm[0] == "[" and norm[-1] == "]":
        norm = normalize_text(norm[1:-1])
    if not norm:
        return False
    if norm in _ABSTAIN_WHOLE or _ABSTAIN_PREFIX.match(norm):
        return True
    return bool(_ABSTAIN_JA.search(norm)) and len(norm) <= 40


# --- numbers ------------------------------------------------------------------------------------------

_SCALES = {"thousand": Decimal(10) ** 3, "million": Decimal(10) ** 6, "billion": Decimal(10) ** 9,
           "trillion": Decimal(10) ** 12, "bn": Decimal(10) ** 9, "千": Decimal(10) ** 3,
           "万": Decimal(10) ** 4, "億": Decimal(10) ** 8, "兆": Decimal(10) ** 12}
_NUMBER_WORDS = {w: Decimal(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}
# a signed decimal number with optional thousands separators; the sign counts only at a token start, so the
# dash in '2015-2016' is not a minus. '△'/'▲' are the Japanese accounting minus.
_NUMBER_TOKEN = re.compile(
    r"(?P<sign>(?<![\w.])[-+△▲])?(?<![\w.,])(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)(?![\d])"
)
_UNSIGNED = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+")
_PERCENT = re.compile(r"%|\bpercent\b|\bper cent\b|\bpct\b|パーセント")
_PERCENT_QUESTION = re.compile(r"%|percent|per cent|percentage|パーセント|割合|比率|\brate\b")


@dataclass(frozen=True)
class Number:
    """A single number read from an answer: its value, an optional scale word after it, and a percent mark."""

    value: Decimal
    scale: Decimal | None
    percent: bool

    def candidates(self) -> set[Decimal]:
        """The value as written and, when a scale word follows it, the scaled value ('300 million')."""
        values = {self.value}
        if self.scale is not None:
            values.add(self.value * self.scale)
        return values


def parse_number(text: str) -> Number | None:
    """The one number an answer states ('8,802', '$49.99', '18.29%', '300 million', 'about 5 people',
    'three'), or None when it states none or several ('3 to 5', '2015-2016')."""
    norm = normalize_text(text)
    tokens = list(_NUMBER_TOKEN.finditer(norm))
    if len(tokens) != 1:
        if not tokens:
            words = [w for w in re.findall(r"[a-z]+", norm) if w in _NUMBER_WORDS]
            if len(words) == 1 and not re.search(r"\d", norm):
                return Number(_NUMBER_WORDS[words[0]], None, bool(_PERCENT.search(norm)))
        return None
    token = tokens[0]
    rest = norm[: token.start()] + " " + norm[token.end():]
    if re.search(r"\d", rest):
        return None
    try:
        value = Decimal(token.group("num").replace(",", ""))
    except InvalidOperation:  # pragma: no cover - the regex admits only decimal digits
        return None
    if token.group("sign") in ("-", "△", "▲"):
        value = -value
    after = norm[token.end():].lstrip()
    scale = None
    if scale_match := re.match(r"(?:(thousand|million|billion|trillion|bn)s?\b|(千|万|億|兆))", after):
        scale = _SCALES[scale_match.group(1) or scale_match.group(2)]
    return Number(value, scale, bool(_PERCENT.search(rest)))


def numbers_in(text: str) -> list[Decimal]:
    """Every unsigned number in a string, in order ('0-375 miles' -> [0, 375]); separators removed."""
    return [Decimal(m.group(0).replace(",", "")) for m in _UNSIGNED.finditer(normalize_text(text))]


def _is_integral(value: Decimal) -> bool:
    return value == value.to_integral_value()


def _close(pred: Decimal, gold: Decimal) -> bool:
    if gold == 0:
        return pred == 0
    return abs(pred - gold) <= FLOAT_REL_TOL * abs(gold)


def _gold_number(gold: str, fmt: str) -> Number:
    number = parse_number(gold)
    if number is None:
        raise CompassError(f"gold answer {gold!r} of format {fmt} does not state exactly one number")
    return number


_INTEGER_GOLD = re.compile(r"[-+△▲]?(?:\d{1,3}(?:,\d{3})+|\d+)")


def score_int(gold: str, pred: str) -> float:
    """Exact integer: '8,802' == '8802' == '8802.0' == '8802 people'; '8.9' != '8' (no truncation).
    The gold must be an integer (thousands separators allowed): 'GPT-4' or '21%' filed as Int is a data error."""
    if not _INTEGER_GOLD.fullmatch(normalize_text(gold)):
        raise CompassError(f"gold answer {gold!r} of format Int is not an integer")
    return _integer_match(_gold_number(gold, "Int"), pred)


def _integer_match(g: Number, pred: str) -> float:
    p = parse_number(pred)
    if p is None:
        return 0.0
    preds = {v for v in p.candidates() if _is_integral(v)}
    return float(bool(preds & g.candidates()))


def score_float(gold: str, pred: str, question: str | None = None) -> float:
    """Within 1% relative of the gold value; x100 and /100 only in a percentage context, 0 only for 0."""
    g = _gold_number(gold, "Float")
    p = parse_number(pred)
    if p is None:
        return 0.0
    preds = set(p.candidates())
    percent_context = g.percent or p.percent or (question is not None and bool(_PERCENT_QUESTION.search(question.lower())))
    if percent_context and not (g.percent and p.percent):
        # one side is a percentage, the other may be the same quantity as a fraction (21% vs 0.21)
        if g.percent or not p.percent:
            preds |= {v * 100 for v in p.candidates()}
        if p.percent or not g.percent:
            preds |= {v / 100 for v in p.candidates()}
    return float(any(_close(pv, gv) for pv in preds for gv in g.candidates()))


# --- strings ------------------------------------------------------------------------------------------


def levenshtein(a: str, b: str) -> int:
    if len(a) > len(b):
        a, b = b, a
    previous = list(range(len(a) + 1))
    for j, cb in enumerate(b, 1):
        current = [j]
        for i, ca in enumerate(a, 1):
            current.append(min(previous[i] + 1, current[i - 1] + 1, previous[i - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def anls(gold: str, pred: str, threshold: float = ANLS_THRESHOLD) -> float:
    """1 - normalised edit distance, or 0 when it is not above the threshold."""
    longest = max(len(gold), len(pred))
    if longest == 0:
        return 1.0
    value = 1.0 - levenshtein(gold, pred) / longest
    return value if value > threshold else 0.0


_URL = re.compile(r"^(?:https?://|www\.)\S+$|^[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,}(?:/\S*)?$")
_EMAIL = re.compile(r"^[a-z0-9._%+-]+@[a-z0-9.-]+\.[a-z]{2,}$")
_FILE = re.compile(r"^\S+\.(?:py|ipynb|pdf|csv|json|jsonl|txt|xlsx?|docx?|pptx?|png|jpe?g|html?|md|ya?ml|sh|zip)$")
_PHONE = re.compile(r"^(?:tel[.:]?\s*|phone[.:]?\s*)?\+?[\d\s().-]+$")
_TIME = re.compile(
    r"^(?P<h>\d{1,2})(?::(?P<m>\d{2}))?(?::(?P<s>\d{2}))?\s*(?P<ampm>a\.?\s?m\.?|p\.?\s?m\.?)?$|"
    r"^(?P<jampm>午前|午後)?(?P<jh>\d{1,2})時(?:(?P<jm>\d{1,2})分)?$"
)
_MONTHS = {m: i for i, m in enumerate(
    "january february march april may june july august september october november december".split(), 1)}
_MONTHS.update({m[:3]: i for m, i in list(_MONTHS.items())})
_MONTHS["sept"] = 9


def _phone_digits(text: str) -> str | None:
    norm = normalize_text(text)
    if not _PHONE.match(norm):
        return None
    digits = re.sub(r"\D", "", norm)
    # '03-1234-5678', '(555) 123-4567', '+81 3 1234 5678': two separator groups, a '+' or an area code in
    # parentheses; '2015-2016' (one separator) is a numeric string, not a phone number
    groups = len(re.findall(r"\d[\s.-]+(?=\d)", norm))
    marked = norm.startswith(("+", "tel", "phone")) or "(" in norm
    return digits if len(digits) >= 7 and (groups >= 2 or marked) else None


def _clock(text: str) -> tuple[int, int, int] | None:
    match = _TIME.match(normalize_text(text))
    if match is None:
        return None
    if match.group("jh") is not None:
        hour, minute, second, ampm = int(match.group("jh")), int(match.group("jm") or 0), 0, match.group("jampm")
        ampm = {"午前": "a", "午後": "p", None: None}[ampm]
    else:
        if match.group("m") is None and match.group("ampm") is None:
            return None  # a bare number is not a time
        hour, minute, second = int(match.group("h")), int(match.group("m") or 0), int(match.group("s") or 0)
        ampm = match.group("ampm")[0] if match.group("ampm") else None
    if hour > 23 or minute > 59 or second > 59 or (ampm and not 1 <= hour <= 12):
        return None
    if ampm == "p" and hour != 12:
        hour += 12
    elif ampm == "a" and hour == 12:
        hour = 0
    return hour, minute, second


def _date(text: str) -> tuple[int, ...] | None:
    norm = normalize_text(text).replace(",", " ")
    norm = re.sub(r"\s+", " ", norm).strip()
    if m := re.fullmatch(r"(\d{4})[-/. ](\d{1,2})(?:[-/. ](\d{1,2}))?", norm):
        parts = [int(x) for x in m.groups() if x is not None]
    elif m := re.fullmatch(r"(\d{4})年(\d{1,2})月(?:(\d{1,2})日)?", norm.replace(" ", "")):
        parts = [int(x) for x in m.groups() if x is not None]
    elif m := re.fullmatch(r"([a-z]+)\.? (\d{1,2})(?:st|nd|rd|th)? (\d{4})", norm):
        if m.group(1) not in _MONTHS:
            return None
        parts = [int(m.group(3)), _MONTHS[m.group(1)], int(m.group(2))]
    elif m := re.fullmatch(r"(\d{1,2})(?:st|nd|rd|th)? ([a-z]+)\.? (\d{4})", norm):
        if m.group(2) not in _MONTHS:
            return None
        parts = [int(m.group(3)), _MONTHS[m.group(2)], int(m.group(1))]
    elif m := re.fullmatch(r"([a-z]+)\.? (\d{4})", norm):
        if m.group(1) not in _MONTHS:
            return None
        parts = [int(m.group(2)), _MONTHS[m.group(1)]]
    else:
        return None
    if not 1 <= parts[1] <= 12 or (len(parts) == 3 and not 1 <= parts[2] <= 31):
        return None
    return tuple(parts)


def _url_key(text: str) -> str:
    norm = normalize_text(text)
    norm = re.sub(r"^https?://", "", norm)
    norm = re.sub(r"^www\.", "", norm)
    return norm.rstrip("/")


def _strip_for_anls(text: str) -> str:
    """Reference-style cleaning for free strings: no parenthetical asides, no leading '$', no trailing '%'."""
    norm = normalize_text(text)
    norm = re.sub(r"\s*\([^)]*\)", "", norm).strip()
    norm = norm.lstrip("$").strip().rstrip("%").strip()
    return norm


def string_kind(gold: str) -> str:
    """How a gold string is compared: url, email, file, phone, time, date, numeric (digits and punctuation
    only), mixed (words with numbers), or text (ANLS)."""
    norm = normalize_text(gold)
    if _EMAIL.match(norm):
        return "email"
    if _FILE.match(norm):
        return "file"
    if _URL.match(norm) and not re.fullmatch(r"[\d.]+", norm):
        return "url"
    if _clock(gold) is not None:
        return "time"
    if _date(gold) is not None:
        return "date"
    if _phone_digits(gold) is not None:
        return "phone"
    if re.search(r"\d", norm):
        return "mixed" if re.search(r"[^\W\d_]", norm) else "numeric"
    return "text"


def score_str(gold: str, pred: str) -> float:
    kind = string_kind(gold)
    if kind in ("url", "email", "file"):
        return float(_url_key(gold) == _url_key(pred))
    if kind == "phone":
        return float(_phone_digits(pred) == _phone_digits(gold))
    if kind == "time":
        return float(_clock(pred) == _clock(gold))
    if kind == "date":
        return float(_date(pred) == _date(gold))
    if kind == "numeric":
        key = lambda s: re.sub(r"\s+", "", normalize_text(s)).replace(",", "")  # noqa: E731
        return float(key(gold) == key(pred))
    if kind == "mixed":
        if numbers_in(_strip_for_anls(gold)) != numbers_in(_strip_for_anls(pred)):
            return 0.0
    return anls(_strip_for_anls(gold), _strip_for_anls(pred))


# --- lists --------------------------------------------------------------------------------------------


class ListParseError(CompassError):
    """A bracketed list answer that does not tokenize (an unclosed quote, text after a quoted item)."""


def parse_list(text: str, *, lenient: bool = False) -> list[str]:
    """Items of a list answer without executing anything: "['a', \"b\", 13]" (Python/JSON style, quotes
    with backslash escapes), or a bare 'a, b; c' / one item per line. A non-list answer is one item.
    Commas inside numbers ('1,234', also bare in brackets: '[1,500, 8,000]') do not split.

    `lenient` (model answers): a bracketed list whose quotes do not tokenize because an item holds an
    unescaped apostrophe ("['Men's health', 'Women's health']") is split at quote-comma-quote boundaries
    instead, the way a reader sees it. Golds are read strictly: a malformed gold is a data error."""
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        try:
            return _parse_bracketed(text[1:-1])
        except ListParseError:
            if not lenient:
                raise
            return _split_quoted_items(text[1:-1])
    parts = re.split(r"\s*(?:;|\n|、|,(?!\d{3}(?!\d))|(?<!\d),)\s*", text)
    items = [p.strip().lstrip("-*• ").strip() for p in parts]
    return [i for i in items if i]


def _split_quoted_items(body: str) -> list[str]:
    """A quoted-item list read by its item boundaries only: "'a's', 'b'" -> ["a's", "b"]."""
    body = body.strip()
    if len(body) < 2 or body[0] not in "'\"" or body[-1] not in "'\"":
        raise ListParseError(f"list answer does not tokenize: [{body}]")
    return [part for part in re.split(r"""['"]\s*,\s*['"]""", body[1:-1])]


def _parse_bracketed(body: str) -> list[str]:
    items: list[str] = []
    i, n = 0, len(body)
    while i < n:
        while i < n and body[i] in " \t\n,":
            i += 1
        if i >= n:
            break
        if body[i] in "'\"":
            quote, i, chars = body[i], i + 1, []
            while i < n and body[i] != quote:
                if body[i] == "\\" and i + 1 < n:
                    i += 1
                chars.append(body[i])
                i += 1
            if i >= n:
                raise ListParseError(f"list answer has an unclosed quote: [{body}]")
            items.append("".join(chars))
            i += 1
            while i < n and body[i] != ",":
                if not body[i].isspace():
                    raise ListParseError(f"list answer has text after a quoted item: [{body}]")
                i += 1
        else:  # a bare item runs to the next comma outside brackets that is not a thousands separator
            start = i
            depth = 0
            while i < n and (body[i] != "," or depth > 0 or _thousands_comma(body, i)):
                depth += body[i] in "([{"
                depth -= body[i] in ")]}"
                i += 1
            items.append(body[start:i].strip())
    return items


def _thousands_comma(body: str, i: int) -> bool:
    """A comma between a digit and exactly three digits, with no space: '1,500' (a list separator is ', ')."""
    return (i > 0 and body[i - 1].isdigit() and re.match(r",\d{3}(?!\d)", body[i:]) is not None
            and re.search(r"(?:^|[\s,])[-+$]?\d{1,3}(?:,\d{3})*$", body[:i]) is not None)


def _item_score(gold: str, pred: str) -> float:
    """One list item: numbers as numbers (integers exact, decimals within 1%), else the string rules. An item
    is a number when it is digits and punctuation ('10%', '$5') or starts with its one number ('5 people');
    'COVID-19' is a string whose number must agree."""
    g = parse_number(gold)
    kind = string_kind(gold)
    starts_with_number = bool(re.match(r"^[-+$¥€£△▲]?\s?[\d.]", normalize_text(gold)))
    if g is not None and (kind == "numeric" or (kind == "mixed" and starts_with_number)):
        if all(_is_integral(v) for v in g.candidates()) and not g.percent:
            return _integer_match(g, pred)  # '5 people' as a list item: the number is the item
        return score_float(gold, pred)
    return score_str(gold, pred)


def _has_perfect_matching(allowed: list[list[bool]]) -> bool:
    """Kuhn's augmenting paths: can every gold item be paired with a distinct predicted item?"""
    size = len(allowed)
    owner = [-1] * size

    def augment(g: int, seen: list[bool]) -> bool:
        for p in range(size):
            if allowed[g][p] and not seen[p]:
                seen[p] = True
                if owner[p] == -1 or augment(owner[p], seen):
                    owner[p] = g
                    return True
        return False

    return all(augment(g, [False] * size) for g in range(size))


def score_list(gold: str | list[str], pred: str | list[str]) -> float:
    golds = parse_list(gold) if isinstance(gold, str) else list(gold)  # a malformed gold is a data error
    try:
        preds = parse_list(pred, lenient=True) if isinstance(pred, str) else list(pred)
    except ListParseError:
        return 0.0  # a malformed list answer is a wrong answer, like any unparseable one
    if len(golds) != len(preds) and isinstance(pred, str) and not pred.strip().startswith("["):
        # prose lists end in 'and': 'Circle and Rectangle', 'a, b, and c'
        preds = [part for item in preds for part in re.split(r"\s*,?\s+(?:and|&)\s+", item) if part.strip()]
    if len(golds) != len(preds):
        return 0.0
    if not golds:
        return 1.0
    scores = [[_item_score(g, p) for p in preds] for g in golds]
    # the best pairing's worst pair: the largest threshold at which a perfect matching still exists
    for threshold in sorted({s for row in scores for s in row if s > 0}, reverse=True):
        if _has_perfect_matching([[s >= threshold for s in row] for row in scores]):
            return threshold
    return 0.0


# --- one answer, and a run ----------------------------------------------------------------------------


def gold_is_unanswerable(gold: str, answer_format: str) -> bool:
    """Gold answers are curated: unanswerable means format None or the literal 'Not answerable' (the broad
    abstention patterns are for model answers; a gold 'not available' is an answer)."""
    return answer_format == "None" or normalize_text(gold) == NOT_ANSWERABLE.lower()


def pred_abstains(gold: str, pred: str | None, answer_format: str) -> bool:
    """The one abstention decision for a prediction, used for its score and for F1's precision and recall.
    A prediction that repeats an answerable gold which merely looks like an abstention (a Str gold 'N/A':
    the document says N/A) is that answer, not an abstention."""
    if not is_abstention(pred):
        return False
    return gold_is_unanswerable(gold, answer_format) or normalize_text(pred) != normalize_text(gold)


def score_answer(gold: str, pred: str | None, answer_format: str, question: str | None = None) -> float:
    """Score in [0, 1] of a short predicted answer against the gold answer of the given format."""
    if answer_format not in ANSWER_FORMATS:
        raise CompassError(f"unknown answer_format {answer_format!r}; expected one of {ANSWER_FORMATS}")
    gold_abstains = gold_is_unanswerable(gold, answer_format)
    if pred is None or not pred.strip():
        return 0.0
    if gold_abstains:
        return float(is_abstention(pred))
    if pred_abstains(gold, pred, answer_format):
        return 0.0
    if answer_format == "Int":
        return score_int(gold, pred)
    if answer_format == "Float":
        return score_float(gold, pred, question)
    if answer_format == "List":
        return score_list(gold, pred)
    return score_str(gold, pred)


@dataclass(frozen=True)
class Scored:
    """One scored question, with the facts the aggregate needs."""

    score: float
    gold_abstains: bool
    pred_abstains: bool
    evidence_pages: int
    evidence_sources: tuple[str, ...] = ()
    doc_type: str | None = None


def scored(gold: str, pred: str | None, answer_format: str, evidence_pages: int, question: str | None = None,
           evidence_sources: tuple[str, ...] = (), doc_type: str | None = None) -> Scored:
    return Scored(
        score=score_answer(gold, pred, answer_format, question),
        gold_abstains=gold_is_unanswerable(gold, answer_format),
        pred_abstains=pred_abstains(gold, pred, answer_format),
        evidence_pages=evidence_pages,
        evidence_sources=tuple(evidence_sources),
        doc_type=doc_type,
    )


def group_key(name: str) -> str:
    """A group name as a metric key part: 'Pure-text (Plain-text)' -> 'pure_text_plain_text'."""
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def aggregate(items: list[Scored]) -> dict[str, float | int]:
    """Accuracy, F1 (precision and recall from the same abstention decision), and the three splits.

    recall = sum of scores on answerable questions / number of answerable questions;
    precision = the same sum / number of questions the model answered (did not abstain on). An abstention on
    an answerable question scores 0, so the sum counts only questions that were both answerable and answered.
    Splits: single-page = answerable with 1 evidence page; cross-page = answerable with 2 or more;
    unanswerable = gold abstains; and, where the items carry them, one group per evidence source
    (source.<name>, an item is in each of its sources) and per document type (doc_type.<name>).
    """
    answerable = [s for s in items if not s.gold_abstains]
    answered = [s for s in items if not s.pred_abstains]
    correct = sum(s.score for s in answerable)
    recall = correct / len(answerable) if answerable else 0.0
    precision = correct / len(answered) if answered else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    single = [s.score for s in answerable if s.evidence_pages == 1]
    cross = [s.score for s in answerable if s.evidence_pages >= 2]
    unanswerable = [s.score for s in items if s.gold_abstains]
    return {
        "accuracy": _mean([s.score for s in items]),
        "f1": f1,
        "precision": precision,
        "recall": recall,
        "single_page.accuracy": _mean(single),
        "cross_page.accuracy": _mean(cross),
        "unanswerable.accuracy": _mean(unanswerable),
        "n": len(items),
        "single_page.n": len(single),
        "cross_page.n": len(cross),
        "unanswerable.n": len(unanswerable),
        "answered.n": len(answered),
        **_groups(items),
    }


def _groups(items: list[Scored]) -> dict[str, float | int]:
    members: dict[str, list[float]] = {}
    for s in items:
        for source in s.evidence_sources:
            members.setdefault(f"source.{group_key(source)}", []).append(s.score)
        if s.doc_type is not None:
            members.setdefault(f"doc_type.{group_key(s.doc_type)}", []).append(s.score)
    out: dict[str, float | int] = {}
    for name in sorted(members):
        out[f"{name}.accuracy"] = _mean(members[name])
        out[f"{name}.n"] = len(members[name])
    return out
