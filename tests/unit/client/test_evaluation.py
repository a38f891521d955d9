"""Which `evaluate=` result a client reports to the coordinator as its loss.

Only a metric named as a loss: a bare float may be an accuracy, and an
accuracy drawn on the dashboard's loss curve would mislead.
"""

from __future__ import annotations

from fedgrpc.client.evaluation import GlobalEval, latest_loss


def test_the_newest_named_loss_is_reported_with_its_version() -> None:
    history = [
        GlobalEval(1, {"loss": 2.0}),
        GlobalEval(2, {"val_loss": 1.5, "acc": 0.7}),
    ]
    assert latest_loss(history) == (2, 1.5)


def test_nothing_is_reported_without_a_loss_named_as_such() -> None:
    assert latest_loss([]) is None
    assert latest_loss([GlobalEval(3, {"metric": 0.93})]) is None  # a bare float
    assert (
        latest_loss([GlobalEval(1, {"loss": 2.0}), GlobalEval(2, {"acc": 0.5})]) is None
    )
