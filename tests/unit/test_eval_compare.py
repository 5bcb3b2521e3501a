"""`compass eval compare`: reference and compass figures side by side, the best run starred by direction."""
from compass.evals.compare import compare_table, split_protocol

RUNS = [
    ("base", {"chabsa.accuracy": 0.25, "chabsa.n": 4}),  # a compass-only run: plain names are compass figures
    ("sft", {"chabsa.reference.accuracy": 0.5, "chabsa.compass.accuracy": 0.75, "chabsa.reference.prompt_version": "1.0-0.1",
             "chabsa.reference.n": 4, "chabsa.compass.n": 4}),
]


def test_protocol_columns_side_by_side_with_the_leaderboard_note():
    assert compare_table(RUNS, mark_best=True) == (
        "chabsa\n"
        "  metric          base reference  base compass  sft reference  sft compass\n"
        "  accuracy                     -         0.250          0.500       0.750*\n"
        "  n                            -             4              4            4\n"
        "  prompt_version               -             -        1.0-0.1            -\n"
        "  (reference = the benchmark's own protocol, comparable with published leaderboards)\n"
    )


def test_lower_is_better_figures_star_the_smaller_value():
    runs = [("a", {"gsm8k.accuracy": 0.5, "gsm8k.error_rate": 0.25}), ("b", {"gsm8k.accuracy": 0.25, "gsm8k.error_rate": 0.5})]
    table = compare_table(runs, mark_best=True)
    assert "accuracy    0.500*  0.250" in table and "error_rate  0.250*  0.500" in table
    assert "*" not in compare_table(runs)  # off unless asked (the CLI asks by default)


def test_split_protocol():
    assert split_protocol("reference.macro_f1") == ("reference", "macro_f1")
    assert split_protocol("compass.cot_on.accuracy") == ("compass", "cot_on.accuracy")
    assert split_protocol("cot_on.accuracy") == ("compass", "cot_on.accuracy")
