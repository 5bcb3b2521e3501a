"""The small English + Japanese corpus the tiny tokenizer is trained on.

Hand-written sentences (math word problems, finance statements, XML-format reasoning, chat turns) plus
templated lines filled with seeded numbers, so that digits, \\boxed{}, kana, kanji and the XML tags all get
merges. It is code rather than a data file so that it ships with the package without package-data rules.
"""
from __future__ import annotations

import random

SENTENCES_EN = [
    "Keiko packed 36 boxes of tea in June, and then she packed twice as many boxes in July.",
    "How many boxes did Keiko pack in June and July together?",
    "Ravi is paid $15 an hour for tutoring. Last week he tutored for 40 minutes a day.",
    "Mina puts aside money for a bicycle which costs $240.",
    "Tom sends a 4-page report to 3 colleagues every week. How many pages does he send in a year?",
    "A scarf needs 3 balls of red wool and a third as much grey wool. How many balls does it need in total?",
    "Find the value of x such that 3x + 7 = 22.",
    "What is the remainder when 2024 is divided by 7?",
    "The sum of two numbers is 45 and their difference is 9. What is the larger number?",
    "A rectangle has a perimeter of 36 cm and a width of 8 cm. What is its area?",
    "Compute the derivative of f(x) = x^3 - 4x + 1 at x = 2.",
    "Simplify the fraction 84/126 to lowest terms.",
    "The probability of drawing a red ball is 3/8. How many red balls are there among 40 balls?",
    "Solve the system: x + y = 10, x - y = 2.",
    "If a train travels 180 km in 2.5 hours, what is its average speed in km/h?",
    "Net sales increased by 12.4% year on year to 1,234 million yen.",
    "Operating income for the fiscal year ended March 31, 2024 was 56,789 million yen.",
    "The company's total assets amounted to 987,654 million yen at the end of the period.",
    "Ordinary profit decreased by 3.2% compared with the previous fiscal year.",
    "Earnings per share were 123.45 yen, and the dividend per share was 40 yen.",
    "The equity ratio rose from 45.1% to 47.8% over the fiscal year.",
    "Cash flows from operating activities were 23,456 million yen.",
    "Revenue growth = (current revenue - prior revenue) / prior revenue.",
    "Return on equity is net income divided by average shareholders' equity.",
    "Let me think step by step.",
    "First, compute the total cost. Then subtract the discount.",
    "Therefore, the final answer is \\boxed{42}.",
    "The answer is \\boxed{\\frac{3}{4}}.",
    "So the area is 8 \\times 10 = 80, and the answer is \\boxed{80}.",
    "We check the result by substituting back into the equation.",
    "You are an advanced mathematical AI assistant. Your task is to solve the given math problem "
    "step-by-step and provide a final answer.",
    "Read the document pages and answer the question.",
    "Which page reports the consolidated balance sheet?",
    "According to the table on page 3, what was the operating margin?",
]

SENTENCES_JA = [
    "ナタリアは4月に48人の友達にクリップを売り、5月にはその半分の数を売りました。",
    "ナタリアは4月と5月に合わせて何個のクリップを売りましたか？",
    "ウェンはベビーシッターで1時間あたり12ドル稼ぎます。昨日は50分働きました。",
    "ベティは100ドルの新しい財布のためにお金を貯めています。",
    "3x + 7 = 22 を満たす x の値を求めなさい。",
    "2024を7で割った余りはいくつですか？",
    "二つの数の和は45で、差は9です。大きい方の数はいくつですか？",
    "長方形の周の長さは36cm、幅は8cmです。面積を求めなさい。",
    "列車は2.5時間で180km進みます。平均の速さは時速何kmですか？",
    "りんごが15個あります。3人で同じ数ずつ分けると、1人何個になりますか？",
    "売上高は前年同期比12.4%増の1,234百万円となりました。",
    "営業利益は56,789百万円、経常利益は前期比3.2%減となりました。",
    "当連結会計年度末の総資産は987,654百万円となりました。",
    "1株当たり当期純利益は123.45円、1株当たり配当金は40円です。",
    "自己資本比率は45.1%から47.8%に上昇しました。",
    "営業活動によるキャッシュ・フローは23,456百万円の収入となりました。",
    "有価証券報告書の第2部に財務諸表が記載されています。",
    "貸借対照表と損益計算書を確認してください。",
    "ステップバイステップで考えましょう。",
    "まず合計金額を計算し、次に割引額を引きます。",
    "したがって、最終的な答えは \\boxed{42} です。",
    "答えは \\boxed{\\frac{3}{4}} です。",
    "方程式に代入して結果を確かめます。",
    "あなたは高度な数学AIアシスタントです。与えられた数学問題をステップバイステップで解き、最終回答を提示してください。",
    "文書のページを読んで質問に答えてください。",
    "連結貸借対照表が記載されているのはどのページですか？",
    "3ページの表によると、営業利益率はいくらでしたか？",
    "ひらがな、カタカナ、漢字を含む日本語の文章です。",
]

# {a}, {b}, {c} are filled with seeded integers; {r} with a computed result.
TEMPLATES_EN = [
    "Tom has {a} apples and buys {b} more. How many apples does he have now? {a} + {b} = {r}. \\boxed{{{r}}}",
    "A shop sells pens at {a} yen each. How much do {b} pens cost? {a} \\times {b} = {r}. \\boxed{{{r}}}",
    "Sales were {a} million yen last year and {b} million yen this year.",
    "The company paid a dividend of {a} yen per share on {b} shares.",
    "What is {a} minus {b}? The answer is \\boxed{{{r}}}.",
    "A class has {a} students; {b} of them walk to school. What fraction walk?",
    "Operating expenses were {a},{c:03d} million yen, up {b}% from the prior year.",
]

TEMPLATES_JA = [
    "太郎はりんごを{a}個持っていて、さらに{b}個買いました。全部で何個ですか？ {a} + {b} = {r}。 \\boxed{{{r}}}",
    "ペンは1本{a}円です。{b}本買うといくらですか？ {a} \\times {b} = {r}。 \\boxed{{{r}}}",
    "売上高は前期の{a}百万円から{b}百万円に変化しました。",
    "1株当たり{a}円の配当を{b}株に支払いました。",
    "{a}から{b}を引くといくつですか？ 答えは \\boxed{{{r}}} です。",
    "クラスには{a}人の生徒がいて、そのうち{b}人が歩いて通学します。",
    "販売費及び一般管理費は{a},{c:03d}百万円で、前期比{b}%増加しました。",
]

XML_TRACES = [
    ("A pen costs {a} yen. How much do {b} pens cost?",
     "Each pen costs {a} yen, so {b} pens cost {a} \\times {b} = {r} yen.", "{r}"),
    ("ペンは1本{a}円です。{b}本ではいくらですか？",
     "1本{a}円なので、{b}本では {a} \\times {b} = {r} 円です。", "{r}"),
    ("Sales grew from {a} to {s} million yen. What was the increase?",
     "The increase is {s} - {a} = {b} million yen.", "{b}"),
    ("売上高は{a}百万円から{s}百万円に増えました。増加額はいくらですか？",
     "増加額は {s} - {a} = {b} 百万円です。", "{b}"),
]


def _fill(template: str, rng: random.Random, op: str) -> str:
    a, b, c = rng.randint(2, 999), rng.randint(2, 99), rng.randint(0, 999)
    r = {"+": a + b, "*": a * b, "-": a - b}[op]
    return template.format(a=a, b=b, c=c, r=r, s=a + b)


def _op_of(template: str) -> str:
    if "\\times" in template:
        return "*"
    if " + " in template:
        return "+"
    return "-"


def corpus_lines(seed: int = 0, repeats: int = 8) -> list[str]:
    """A few hundred lines, identical for the same seed (numbers and order come from random.Random(seed))."""
    rng = random.Random(seed)
    lines: list[str] = []
    for _ in range(repeats):
        lines.extend(SENTENCES_EN)
        lines.extend(SENTENCES_JA)
        for template in TEMPLATES_EN + TEMPLATES_JA:
            lines.append(_fill(template, rng, _op_of(template)))
        for problem, thinking, answer in XML_TRACES:
            op = _op_of(thinking)
            a, b = rng.randint(2, 999), rng.randint(2, 99)
            values = dict(a=a, b=b, r={"+": a + b, "*": a * b, "-": a - b}[op], s=a + b)
            lines.append(
                "<Problem>\n" + problem.format(**values) + "\n</Problem>\n\n<Thinking>\n"
                + thinking.format(**values) + "\n</Thinking>\n\n<Answer>\n\\boxed{" + answer.format(**values)
                + "}\n</Answer>"
            )
            lines.append("<think>\n" + thinking.format(**values) + "\n</think>\n\\boxed{" + answer.format(**values) + "}")
        lines.append("<image>\nRead the page. <cot> The table lists net sales by segment.")
        lines.append("<image>\nページを読んでください。<cot> 表にはセグメント別の売上高が記載されています。")
    rng.shuffle(lines)
    return lines
