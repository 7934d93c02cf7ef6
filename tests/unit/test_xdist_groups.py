"""The suite's own xdist scheduling: a group's tests share one worker, the rest spread."""

from __future__ import annotations

from tests.conftest import xdist_scope


def test_grouped_tests_share_a_scope_and_the_rest_run_alone() -> None:
    training = {xdist_scope("tests/training/test_train.py::test_a"), xdist_scope("tests/training/test_serving.py::b")}
    assert training == {"training"}
    server = "tests/integration/test_sagemaker_server.py::test_stop_and_max_runtime"
    assert xdist_scope(server) == "sagemaker-server"
    alone = "tests/unit/test_cost.py::test_unpriced_and_undescribed_jobs_are_shown_not_dropped"
    assert xdist_scope(alone) == alone
