"""Words as search sees them, the same for the index and for a query: Japanese segmented by a real
morphological analyser (MeCab through fugashi, with the packaged UniDic-lite dictionary: nothing to
download), other text split into identifier-like tokens; stopwords of both languages dropped; and the
small bilingual vocabulary that query understanding reads (stage words, superlatives, figure words).

fugashi is imported only when a text has Japanese in it (it loads in well under 0.1 s), and the CJK
character classes are compiled only then: sre expands a class range by range, character by character, which
takes about 10 ms for these, more than the rest of reading an English query.
"""
from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

CJK_CLASS = "\u3040-\u30ff\u3400-\u9fff\uf900-\ufaff\uff66-\uff9f"
# identifier-like tokens keep '_', '.', '/', '-' inside (tamper_answer, train/loss, 0.33, 5e-06), so a number
# is one token: "0" never matches inside "0.33"
LATIN_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_./\-+]*[A-Za-z0-9]|[A-Za-z0-9]")
PART_SPLIT = re.compile(r"[_./\-]+")

ENGLISH_STOPWORDS = frozenset("""
a an the of on in into with without for to from by at as and or but not no nor so than then that this these those
there here it its is are was were be been being am do does did done has have had having i me my we our you your
he she they them their which who whom whose what when where why how all any some each every one ones
run runs ran running used use using uses show find give list me please about which whose
trained training made make where whose while was get got also just only very more most model models
""".split())
# particles, auxiliaries and symbols are dropped by part of speech; these are content-poor words beyond them
JAPANESE_STOPWORDS = frozenset("""
こと もの ため よう とき 時 場合 ところ これ それ あれ どれ この その あの どの する した して します され される
ある あっ いる い なる なっ れる られる できる 実行 ラン 結果 やつ もの 時点 方 際 際に 使う 使っ 使用 用いる モデル
""".split())
DROPPED_POS = frozenset({"助詞", "助動詞", "補助記号", "空白"})
# verbs that mostly serve as auxiliaries (UniDic's 非自立可能): した, すぎた, している carry no content
LIGHT_VERBS = frozenset({"為る", "居る", "有る", "成る", "過ぎる", "出来る", "来る", "行く", "見る", "仕舞う", "置く", "貰う", "呉れる"})


@lru_cache(maxsize=None)
def _cjk_patterns() -> tuple[re.Pattern, re.Pattern, re.Pattern]:
    """(one CJK character, a run of them for splitting, a katakana or kanji that continues a compound noun)."""
    return (re.compile(f"[{CJK_CLASS}]"), re.compile(f"([{CJK_CLASS}\u30fc]+)"),
            re.compile("[\u30a0-\u30ff\u3400-\u9fff]"))


def has_cjk(text: str) -> bool:
    return not text.isascii() and _cjk_patterns()[0].search(text) is not None


def _chunks(text: str) -> list[str]:
    """`text` split into alternating runs without and with CJK (re.split with a group: CJK runs at odd places)."""
    return [text] if text.isascii() else _cjk_patterns()[1].split(text)


@lru_cache(maxsize=1)
def _tagger():
    import fugashi  # MeCab with the packaged unidic-lite dictionary

    return fugashi.Tagger()


def _normalize(text: str) -> str:
    """NFKC (full-width digits and letters become ASCII: ７ -> 7, ＤＰＯ -> DPO), lower case."""
    return unicodedata.normalize("NFKC", text).lower()


def japanese_words(chunk: str) -> list[str]:
    """Content words of a run of Japanese: each morpheme's surface and, when different, its dictionary
    form (試し -> 試す), without particles, auxiliaries and stopwords."""
    out: list[str] = []
    for word in _tagger()(chunk):
        pos = word.feature.pos1
        if pos in DROPPED_POS or (word.feature.pos2 == "非自立可能" and word.feature.lemma in LIGHT_VERBS):
            continue  # particles, auxiliaries, punctuation; light verbs (し/為る, すぎ/過ぎる, いる/居る)
        surface = word.surface
        lemma = word.feature.lemma
        lemma = lemma.split("-")[0] if lemma else None  # unidic writes loan words as ページ-page
        for form in (surface, lemma):
            if len(form or "") == 1 and "\u3040" <= form <= "\u309f":
                continue  # a lone hiragana (で, が read as conjunctions) is grammar, not a word
            if form and form not in JAPANESE_STOPWORDS and form not in out[-2:]:
                out.append(form)
    return out


def latin_words(chunk: str) -> list[str]:
    return [t for t in LATIN_TOKEN.findall(chunk)]


def words(text: str, *, keep_stopwords: bool = False) -> list[str]:
    """Search words of `text`, in order: Japanese by morphological analysis, the rest by identifier tokens."""
    out: list[str] = []
    for chunk in _chunks(_normalize(text)):
        if not chunk:
            continue
        if has_cjk(chunk):
            out += japanese_words(chunk)
        else:
            out += [t for t in latin_words(chunk) if keep_stopwords or t not in ENGLISH_STOPWORDS]
    return out


def index_words(text: str) -> list[str]:
    """What the word index holds for `text`: its words, and the parts of identifiers (tamper_answer ->
    tamper_answer tamper answer; train/loss -> train/loss train loss) so either form of a query finds it.
    Numbers stay whole."""
    out: list[str] = []
    for word in words(text, keep_stopwords=True):
        out.append(word)
        if PART_SPLIT.search(word) and not _is_number(word):
            out += [p for p in PART_SPLIT.split(word) if p and not _is_number(p)]
    return out


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


# --- the vocabulary query understanding reads ------------------------------------------------------------

# words (after normalisation) that name a stage kind; a stage kind's own name is always one too
STAGE_WORDS: dict[str, str] = {
    "source": "sources", "sources": "sources", "ソース": "sources", "データソース": "sources", "データ取得": "sources",
    "pair": "pairs", "pairs": "pairs", "ペア": "pairs", "選好ペア": "pairs",
    "decontaminate": "decontaminate", "decontamination": "decontaminate", "decontam": "decontaminate",
    "decontaminated": "decontaminate", "汚染除去": "decontaminate", "除染": "decontaminate", "重複除去": "decontaminate",
    "sft": "sft", "fine-tune": "sft", "finetune": "sft", "fine-tuning": "sft", "fine-tuned": "sft", "finetuned": "sft", "ファインチューニング": "sft", "教師あり学習": "sft",
    "dpo": "dpo", "選好学習": "dpo", "選好最適化": "dpo",
    "eval": "eval", "evals": "eval", "evaluation": "eval", "evaluations": "eval", "評価": "eval", "benchmark": "eval", "ベンチマーク": "eval",
    "merge": "merge", "merged": "merge", "マージ": "merge", "統合": "merge",
    "distill": "distill", "distillation": "distill", "蒸留": "distill",
}

# superlatives: word -> "best" | "worst" | "highest" | "lowest"
SUPERLATIVES: dict[str, str] = {
    "best": "best", "top": "best", "ベスト": "best", "一番良い": "best", "一番いい": "best", "最も良い": "best", "最良": "best",
    "worst": "worst", "最悪": "worst", "一番悪い": "worst", "最も悪い": "worst",
    "highest": "highest", "largest": "highest", "biggest": "highest", "maximum": "highest", "max": "highest",
    "most": "highest", "一番高い": "highest", "最も高い": "highest", "最大": "highest", "最高": "highest", "一番大きい": "highest",
    "lowest": "lowest", "smallest": "lowest", "minimum": "lowest", "min": "lowest", "least": "lowest", "最小": "lowest",
    "一番低い": "lowest", "最も低い": "lowest", "最低": "lowest", "一番小さい": "lowest", "最少": "lowest",
}

# figure words in either language -> the English word that figure names contain
FIGURE_WORDS: dict[str, str] = {
    "精度": "accuracy", "正解率": "accuracy", "正答率": "accuracy", "acc": "accuracy",
    "損失": "loss", "ロス": "loss", "報酬": "reward", "rewards": "reward", "マージン": "margin", "margins": "margin",
    "誤り率": "error_rate", "エラー率": "error_rate", "誤差": "error", "パープレキシティ": "perplexity",
    "シード": "seed", "乱数シード": "seed", "学習率": "learning_rate", "lr": "learning_rate", "ベータ": "beta",
    "しきい値": "threshold", "閾値": "threshold", "温度": "temperature", "ステップ数": "max_steps", "steps": "max_steps",
    "重み": "weights", "件数": "records", "レコード数": "records",
}
# comparison words between a figure and a number
COMPARISONS: dict[str, str] = {
    "above": ">", "over": ">", "greater": ">", "more": ">", "exceeds": ">", "超": ">", "より大きい": ">",
    "below": "<", "under": "<", "less": "<", "fewer": "<", "未満": "<", "以上": ">=", "以下": "<=",
}


def phrase_hits(text: str, table: dict[str, str], *, heads_only: bool = False) -> list[tuple[int, int, str]]:
    """(start, end, meaning) of every entry of `table` in normalised `text`: Japanese entries by substring
    (they may be several morphemes), the others as whole words. Longest first, no overlaps. `heads_only`:
    a Japanese entry that a compound noun continues is a modifier, not the head (評価セット is a set, not
    an evaluation)."""
    low = _normalize(text)
    found: list[tuple[int, int, str]] = []
    taken = [False] * len(low)
    for phrase in sorted(table, key=len, reverse=True):
        if phrase not in low:
            continue
        for match in _phrase_pattern(phrase).finditer(low):
            if any(taken[match.start():match.end()]):
                continue
            # a katakana or kanji after the entry: the compound noun goes on
            if heads_only and has_cjk(phrase) and _cjk_patterns()[2].match(low, match.end()):
                continue
            for i in range(match.start(), match.end()):
                taken[i] = True
            found.append((match.start(), match.end(), table[phrase]))
    return sorted(found)


@lru_cache(maxsize=4096)
def _phrase_pattern(phrase: str) -> re.Pattern:
    # ASCII word boundaries: in "のSFT" the particle is a \w character, yet SFT is a word of its own
    return re.compile(re.escape(phrase) if has_cjk(phrase) else rf"(?<![A-Za-z0-9_\-]){re.escape(phrase)}(?![A-Za-z0-9_\-])")


def normalize(text: str) -> str:
    return _normalize(text)
