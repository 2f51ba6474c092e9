"""The rollout pipeline on its own: the staleness bound, the overlap, errors and closing."""

from __future__ import annotations

import threading
import time

import pytest

from agentrl.train.async_rollouts import RolloutPipeline


class FakeTrainer:
    """Serves adapter version = steps trained; sampling and training each take ``cost`` seconds."""

    def __init__(self, cost: float = 0.05):
        self.version, self.cost = 0, cost
        self.sampled: list[tuple[int, int]] = []  # (step, version that sampled it)
        self.lock = threading.Lock()

    def sample(self, step: int):
        with self.lock:
            version = self.version
        time.sleep(self.cost)
        self.sampled.append((step, version))
        return f"batch-{step}", version


@pytest.mark.parametrize("bound", [1, 2])
def test_no_batch_is_older_than_the_bound_and_sampling_overlaps_training(bound):
    trainer = FakeTrainer()
    pipeline = RolloutPipeline(trainer.sample, start=0, stop=6, max_off_policy=bound)
    waited = []
    for step in range(6):
        produced = pipeline.get(step)
        assert produced.batch == f"batch-{step}"
        assert 0 <= step - produced.version <= bound
        waited.append(produced.waited)
        time.sleep(trainer.cost)  # the update
        with trainer.lock:
            trainer.version = step + 1
        pipeline.trained(step + 1)
    pipeline.close()
    # Once the pipeline is primed, batches are stale by up to the bound, and ready before they are asked for.
    assert max(step - version for step, version in trainer.sampled) == bound
    assert sum(waited[bound:]) < 0.5 * trainer.cost * (6 - bound)


def test_a_sampling_error_reaches_the_trainer():
    def sample(step):
        if step == 1:
            raise ConnectionError("server gone")
        return step, 0

    pipeline = RolloutPipeline(sample, start=0, stop=3, max_off_policy=1)
    assert pipeline.get(0).batch == 0
    pipeline.trained(1)
    with pytest.raises(ConnectionError, match="server gone"):
        pipeline.get(1)


def test_close_stops_the_producer_and_a_resumed_run_starts_at_its_step():
    trainer = FakeTrainer(cost=0.01)
    trainer.version = 4  # a run resumed at step 4 serves the adapter of step 4
    pipeline = RolloutPipeline(trainer.sample, start=4, stop=100, max_off_policy=1)
    assert pipeline.get(4).batch == "batch-4"
    time.sleep(0.05)
    pipeline.close()
    assert [s for s, _ in trainer.sampled] == [4, 5]  # step 6 waits for step 5's update, which never came
    with pytest.raises(RuntimeError, match="closed"):
        pipeline.get(6)


def test_zero_is_the_synchronous_loop_and_not_this_class():
    with pytest.raises(ValueError, match="at least 1"):
        RolloutPipeline(lambda s: (s, 0), start=0, stop=1, max_off_policy=0)
