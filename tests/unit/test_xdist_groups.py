"""The suite's own xdist scheduling: a group's tests share one worker, the rest spread."""

from __future__ import annotations

from types import SimpleNamespace

from tests.conftest import xdist_scope


def test_grouped_tests_share_a_scope_and_the_rest_run_alone() -> None:
    training = {xdist_scope("tests/training/test_train.py::test_a"), xdist_scope("tests/training/test_serving.py::b")}
    assert training == {"training"}
    server = "tests/integration/test_sagemaker_server.py::test_stop_and_max_runtime"
    assert xdist_scope(server) == "sagemaker-server"
    alone = "tests/unit/test_cost.py::test_unpriced_and_undescribed_jobs_are_shown_not_dropped"
    assert xdist_scope(alone) == alone


class Worker:
    """What the scheduler sees of an xdist worker: the tests it is sent."""

    shutting_down = False

    def __init__(self, name: str, collection: list[str]) -> None:
        self.gateway = SimpleNamespace(id=name)
        self.collection, self.sent = collection, []

    def send_runtest_some(self, indexes: list[int]) -> None:
        self.sent += [self.collection[i] for i in indexes]

    def shutdown(self) -> None:
        self.shutting_down = True


def test_the_longest_scopes_are_handed_out_first() -> None:
    """Each worker takes scopes ahead of time: the longest go first, so none is left to run
    alone at the end; a group stays whole and in order."""
    from tests.conftest import pytest_xdist_make_scheduler

    collection = [
        "tests/e2e/test_chaos.py::test_runs_survive_host_crashes_at_random_moments",
        "tests/e2e/test_llm.py::test_a_tiny_decoder_learns",
        "tests/e2e/test_llm.py::test_the_llm_demo_tunes_smollm2",
        "tests/e2e/test_local_cloud.py::test_make_demo_runs_the_whole_loop",
        "tests/training/test_smollm2.py::test_the_packaged_gguf_converts",
        "tests/training/test_smollm2.py::test_a_lora_adapter",
        "tests/unit/test_cost.py::test_a",
    ]
    options = SimpleNamespace(loadscopereorder=True)
    config = SimpleNamespace(getvalue=lambda name: ["2*popen"], option=options)
    scheduler = pytest_xdist_make_scheduler(config, None)  # type: ignore[arg-type]
    workers = [Worker("gw0", collection), Worker("gw1", collection)]
    for worker in workers:
        scheduler.add_node(worker)
        scheduler.add_node_collection(worker, collection)
    scheduler.schedule()
    first, second = workers[0].sent, workers[1].sent
    assert first[:1] == [collection[2]] and second[:1] == [collection[1]]  # the LLM demo, then the tiny decoder
    assert first[1:3] == collection[4:6]  # SmolLM2's group, whole and in order
    assert second == [collection[1], collection[3]]  # then the next longest; chaos and the unit test wait
