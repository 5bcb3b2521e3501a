"""The stage kit's pure helpers: whole-run training figures after a resume."""
import pytest

from compass.errors import CompassError
from compass.stagekit import whole_run_training_figures


def test_a_resumed_run_reports_the_whole_runs_loss_mean_and_tokens():
    # 6 steps with per-step losses 6..1, logged every 2 steps; resumed from the checkpoint at step 4
    history = [{"step": 2, "loss": 5.5}, {"step": 4, "loss": 3.5}]
    figures = whole_run_training_figures(history, session_loss_mean=1.5, global_step=6, resume_step=4,
                                         tokens_seen=600, resume_tokens_seen=400, runtime_s=2.0)
    assert figures == {"train_tokens": 600, "train_tokens_this_run": 200, "train_tokens_per_s": 100.0,
                       "train_steps_this_run": 2, "train_loss_mean": pytest.approx(3.5)}


def test_an_unresumed_run_keeps_the_trainers_mean_and_a_gap_uses_the_last_log():
    assert whole_run_training_figures([], 2.0, 5, 0, 50, 0, 1.0)["train_loss_mean"] == 2.0
    # checkpoint at 3, last log at 2: step 3 counts at the last logged mean
    figures = whole_run_training_figures([{"step": 2, "loss": 4.0}], 1.0, 4, 3, 40, 30, 1.0)
    assert figures["train_loss_mean"] == pytest.approx((4.0 * 2 + 4.0 + 1.0) / 4)
    with pytest.raises(CompassError, match="no training loss before it"):
        whole_run_training_figures([{"step": 5, "loss": 1.0}], 1.0, 6, 3, 1, 0, 1.0)


def test_a_server_failure_in_the_resume_journal_is_asked_again_by_the_next_run(tmp_path):
    from compass.longdoc.streaming import NONE, OK, REJECT, TRANSIENT, Journal

    path = tmp_path / "j.jsonl"
    journal = Journal(path, "fp")
    journal.add(0, 0, "ok", {"x": 1})
    journal.add(1, 0, TRANSIENT, {"reason": "backend_error"})
    journal.add(2, 0, "reject", {"reason": "malformed"})
    assert list(journal.state) == [OK, REJECT, REJECT]  # in this run the failure is a reject ...
    with open(path, "rb") as fh:
        assert journal.read(1, fh) == ("reject", {"reason": "backend_error"})
    journal.close()
    again = Journal(path, "fp")
    assert list(again.state) == [OK, NONE, REJECT] and again.resumed == 2  # ... the next run sends it again
    assert again.needs(1, 0) and not again.needs(2, 0)
    again.add(1, 0, "ok", {"x": 2})
    again.close()
    third = Journal(path, "fp")
    assert list(third.state) == [OK, OK, REJECT]
    with open(path, "rb") as fh:
        assert third.read(1, fh) == ("ok", {"x": 2})
    third.close()
