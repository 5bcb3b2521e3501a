"""One registry says which way is better for every metric name (search, leaderboard, report, compare)."""
import pytest

from compass.ledger.metric_direction import best_first, direction, is_better, lower_is_better


@pytest.mark.parametrize("metric", ["train/loss", "eval_loss", "sft.train/loss", "error_rate", "mgsm_ja.error_rate",
                                    "perplexity", "ppl", "train_runtime", "wall_time_s", "rewards/rejected", "train/grad_norm"])
def test_lower_is_better(metric):
    assert direction(metric) == "lower" and lower_is_better(metric)


@pytest.mark.parametrize("metric", ["gsm8k.accuracy", "eval_after.reward_accuracy", "rewards/chosen", "rewards/margins",
                                    "mmlongbench.cot_on.f1", "format_valid_rate", "train_samples_per_second", "tokens_per_second"])
def test_higher_is_better(metric):
    assert direction(metric) == "higher" and not lower_is_better(metric)


def test_best_first_and_is_better_follow_the_direction():
    runs = [("a", 0.5), ("b", 0.1), ("c", 0.9)]
    assert [r for r, _ in best_first("train/loss", runs)] == ["b", "a", "c"]
    assert [r for r, _ in best_first("gsm8k.accuracy", runs)] == ["c", "a", "b"]
    assert is_better("error_rate", 0.1, 0.2) and not is_better("accuracy", 0.1, 0.2)
