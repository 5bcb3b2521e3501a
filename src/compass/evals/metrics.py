"""Classification metrics shared by the benchmarks (scikit-learn does the arithmetic)."""
from __future__ import annotations

from collections.abc import Sequence


def _mcc(golds: Sequence, preds: Sequence) -> float:
    """Matthews correlation; 0 when golds and predictions hold a single label between them (undefined,
    sklearn's convention)."""
    from sklearn.metrics import matthews_corrcoef

    if len(set(golds) | set(preds)) < 2:
        return 0.0
    return float(matthews_corrcoef(golds, preds))


def mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else 0.0


def binary_metrics(golds: Sequence[int], preds: Sequence[int | None], positive_probs: Sequence[float] | None = None) -> dict:
    """Accuracy, F1 (positive class 1), MCC and, given P(label=1) per item and both classes present, ROC-AUC.

    An unparseable prediction (None) is wrong: it is scored as the label opposite to the gold one, so it
    lowers every metric instead of dropping out of the denominator (the EDINET-Bench reference skipped them).
    """
    from sklearn.metrics import f1_score, roc_auc_score

    if len(golds) != len(preds):
        raise ValueError(f"{len(golds)} golds but {len(preds)} predictions")
    filled = [1 - g if p is None else p for g, p in zip(golds, preds)]
    out = {
        "accuracy": mean([float(g == p) for g, p in zip(golds, preds)]),
        "f1": float(f1_score(golds, filled, pos_label=1, zero_division=0.0)) if golds else 0.0,
        "mcc": _mcc(golds, filled),
        "unparseable_rate": mean([float(p is None) for p in preds]),
    }
    if positive_probs is not None and len(set(golds)) == 2:
        out["roc_auc"] = float(roc_auc_score(golds, positive_probs))
    return out


UNPARSEABLE = "<unparseable>"


def multiclass_metrics(golds: Sequence[str], preds: Sequence[str | None], labels: Sequence[str]) -> dict:
    """Accuracy, macro-F1 over `labels` and MCC; an unparseable prediction is its own never-right class."""
    from sklearn.metrics import f1_score

    filled = [UNPARSEABLE if p is None else p for p in preds]
    return {
        "accuracy": mean([float(g == p) for g, p in zip(golds, filled)]),
        "macro_f1": float(f1_score(golds, filled, labels=list(labels), average="macro", zero_division=0.0)) if golds else 0.0,
        "mcc": _mcc(golds, filled),
        "unparseable_rate": mean([float(p is None) for p in preds]),
    }


def macro_f1(golds: Sequence[str], preds: Sequence[str], labels: Sequence[str]) -> float:
    """Mean of the per-label F1 over `labels` (labels outside it, e.g. a gold 'neutral', count as misses)."""
    from sklearn.metrics import f1_score

    return float(f1_score(golds, preds, labels=list(labels), average="macro", zero_division=0.0)) if golds else 0.0
