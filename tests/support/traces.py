"""Synthetic, verified Trace records for tests and bench/ (not shipped: see tests/support/__init__.py)."""
from __future__ import annotations

import random

from compass.records import Message, Trace

_SYSTEM = "You are an advanced mathematical AI assistant. Your task is to solve the given math problem step-by-step and provide a final answer."


def synthetic_trace(index: int) -> Trace:
    """A well-formed, verified Trace number `index`, varied like real pools: integer, thousands and decimal
    answers, AQuA letters, fractions, yes/no, text answers, Japanese, and thinking with and without numbers.
    A pure function of `index`."""
    rng = random.Random(index)
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    kind = index % 8
    if kind == 0:
        problem, thinking, answer = f"Tom has {a} apples and buys {b} more. How many?", f"Start with {a}. Add {b}: {a} + {b} = {a + b}.", str(a + b)
    elif kind == 1:
        total = a * 1000 + b
        problem, thinking, answer = f"A shop sells {a},{b:03d} units a year.", f"Per year the count is {total:,}, so the total is {total:,}.", f"{total:,}"
    elif kind == 2:
        price = a + b / 100
        problem, thinking, answer = f"Each pen costs ${price:.2f}. Cost of 3 pens?", f"3 x {price:.2f} = {3 * price:.2f} dollars.", f"{3 * price:.2f}"
    elif kind == 3:
        letter = "ABCDE"[a % 5]
        problem = f"What is {a} + {b}? Options: A) {a + b} B) {a + b + 1} C) {a + b + 2} D) {a + b + 3} E) {a + b + 4}"
        thinking, answer = f"{a} + {b} = {a + b}, which is option {letter}.", letter
    elif kind == 4:
        problem, thinking, answer = f"Simplify {a}/{a * b}.", f"Divide numerator and denominator by {a}.", f"\\frac{{1}}{{{b}}}"
    elif kind == 5:
        problem, thinking, answer = f"Is {a} even?", f"{a} divided by 2 leaves remainder {a % 2}.", "Yes" if a % 2 == 0 else "No"
    elif kind == 6:
        problem, thinking, answer = "Which day follows Monday?", "The week runs Monday, then Tuesday.", "\\text{Tuesday}"
    else:
        problem, thinking, answer = f"りんごが{a}個、みかんが{b}個あります。合計は何個ですか。", f"{a}個と{b}個を足すと{a + b}個です。", str(a + b)
    text = f"<Problem>\n{problem}\n</Problem>\n\n<Thinking>\n{thinking}\n</Thinking>\n\n<Answer>\n\\boxed{{{answer}}}\n</Answer>"
    lang = "ja" if kind == 7 else "en"
    return Trace(
        id=f"synthetic/{index}#0", problem_id=f"synthetic/{index}", source="synthetic", lang=lang,
        messages=[Message(role="system", content=_SYSTEM), Message(role="user", content=problem), Message(role="assistant", content=text)],
        raw_output=text, problem_part=problem, thinking=thinking, answer_part=f"\\boxed{{{answer}}}",
        extracted_answer=answer, reference_answer=answer, verified=True, teacher="synthetic",
    )
