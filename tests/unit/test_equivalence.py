"""Answer equivalence, table-driven: what must match and what must NOT."""
import threading

import pytest

from compass.errors import CompassError
from compass.formats import answers_match, normalize_answer
from compass.formats.equivalence import choice_letter, parse_number
from fractions import Fraction

MATCH = [
    # integers, decimals, commas
    ("72", "72"),
    ("72.0", "72"),
    ("72.00", "72"),
    ("1,234", "1234"),
    ("1,234,567", "1234567"),
    ("1234.50", "1,234.5"),
    (".5", "0.5"),
    ("007", "7"),
    ("+5", "5"),
    # negatives (ASCII and unicode minus)
    ("-5", "-5"),
    ("\u22125", "-5"),
    ("-0.25", "-1/4"),
    # currency and units
    ("$18", "18"),
    ("$18.00", "18"),
    ("18 dollars", "18"),
    ("$1,200", "1200"),
    ("-$5", "-5"),
    ("1,200円", "1200"),
    ("12個", "12"),
    ("3人", "3"),
    ("5 apples", "5"),
    ("60 km/h", "60"),
    ("12 cm^2", "12"),
    ("3 million", "3000000"),
    ("2万", "20000"),
    ("5 m", "5"),
    # percent
    ("25%", "25"),
    ("25\\%", "25"),
    ("25 percent", "25"),
    ("25%", "0.25"),
    ("50%", "1/2"),
    ("２５％", "25"),
    # fractions
    ("3/4", "0.75"),
    ("6/8", "3/4"),
    ("\\frac{3}{4}", "0.75"),
    ("\\dfrac{3}{4}", "3/4"),
    ("\\frac34", "\\frac{3}{4}"),
    ("\\frac{144}{2}", "72"),
    # LaTeX through math-verify
    ("2\\sqrt{2}", "\\sqrt{8}"),
    ("\\sqrt{4}", "2"),
    ("x+1", "1+x"),
    ("\\pi", "\\pi"),
    ("2\\pi", "\\pi \\cdot 2"),
    ("\\{1, 2\\}", "\\{2, 1\\}"),
    ("(1, 2)", "(1,2)"),
    ("\\text{yes}", "yes"),
    ("\\text{72 apples}", "72"),
    ("$\\frac{1}{2}$", "0.5"),
    ("\\boxed{72}", "72"),
    ("\\left(3, 4\\right)", "(3,4)"),
    ("x = 72", "72"),
    ("9 \\text{ cm}", "9"),
    # multiple choice (AQuA-RAT)
    ("C", "C"),
    ("(C)", "C"),
    ("C)", "C"),
    ("C) 25", "C"),
    ("(C) 25 km", "C"),
    ("Option C", "C"),
    ("c", "C"),
    ("C", "(C)"),
    # full-width digits and Japanese text around numbers
    ("１２３", "123"),
    ("１，２３４", "1234"),
    ("１２個", "12"),
    # words
    ("Yes", "yes"),
    ("Tuesday.", "tuesday"),
    ("火曜日", "火曜日"),
]

NO_MATCH = [
    ("72", "720"),
    ("72", "73"),
    ("7.2", "72"),
    ("-5", "5"),
    ("5", "-5"),
    ("1/2", "2"),
    ("1/3", "0.33"),
    ("0.25", "25"),
    ("25%", "2.5"),
    ("1,23", "123"),
    ("5x", "5"),
    ("5k", "5"),
    ("3 million", "3"),
    ("12 apples", "13"),
    ("\\frac{1}{2}", "\\frac{1}{3}"),
    ("\\sqrt{2}", "2"),
    ("x+1", "x+2"),
    ("2\\pi", "\\pi"),
    ("C", "D"),
    ("(C)", "B"),
    ("25", "C"),
    ("C) 25", "D"),
    ("E", "B"),
    ("", "0"),
    ("0", ""),
    ("   ", "5"),
    ("yes", "no"),
    ("sey", "yes"),
    ("yes", "5"),
    ("１２３", "124"),
    ("1/0", "0"),
    ("\\boxed{5", "5"),
    # hedged or listed answers are not the answer
    ("72 or 73", "72"),
    ("72, 73", "72"),
    ("(1,2)", "(2,1)"),
    ("\\{1,2\\}", "\\{1,2,3\\}"),
]


@pytest.mark.parametrize(("predicted", "reference"), MATCH)
def test_match(predicted, reference):
    assert answers_match(predicted, reference) is True


@pytest.mark.parametrize(("predicted", "reference"), NO_MATCH)
def test_no_match(predicted, reference):
    assert answers_match(predicted, reference) is False


def test_enough_cases():
    assert len(MATCH) + len(NO_MATCH) >= 60
    assert len(NO_MATCH) >= 25


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$\\boxed{\\text{72}}$", "72"),
        ("１２，３４５．５", "12,345.5"),
        ("\\(x\\)", "x"),
        ("72.", "72"),
        ("3\\,000", "3,000"),  # LaTeX digit grouping is a thousands separator
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1,234.5", (Fraction(2469, 2), False)),
        ("-$3", (Fraction(-3), False)),
        ("12.5%", (Fraction(25, 2), True)),
        ("2/3", (Fraction(2, 3), False)),
        ("1.5/2", None),
        ("5x", None),
        ("x", None),
        ("$$5", None),
    ],
)
def test_parse_number(text, expected):
    assert parse_number(text) == expected


@pytest.mark.parametrize(("text", "expected"), [("(B)", "B"), ("B) 12", "B"), ("answer: b", "B"), ("12", None), ("BC", None)])
def test_choice_letter(text, expected):
    assert choice_letter(text) == expected


def test_bad_arguments_fail_fast():
    with pytest.raises(CompassError, match="two strings"):
        answers_match(72, "72")
    with pytest.raises(CompassError, match="timeout_s"):
        answers_match("1", "1", timeout_s=0)


def test_math_verify_path_refuses_other_threads():
    """math-verify's time limit is signal.alarm: off the main thread it would silently run without one."""
    errors = []

    def worker():
        try:
            answers_match("\\frac{1}{2}", "\\sqrt{1/4}")
        except CompassError as err:
            errors.append(str(err))

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert errors and "main thread" in errors[0]
    # the plain-number path needs no time limit and works anywhere
    result = []
    thread = threading.Thread(target=lambda: result.append(answers_match("1,000", "1000")))
    thread.start()
    thread.join()
    assert result == [True]
