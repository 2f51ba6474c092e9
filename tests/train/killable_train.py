"""Run ``agentrl train`` in this process and SIGKILL it at a chosen point (used by test_resume.py).

    python killable_train.py POINT N EVENTS_FILE key=value ...

POINT is where the N-th occurrence kills the process, the way a crash, an OOM kill or a pre-empted
machine would (no cleanup, no ``finally``):

- ``rollout``: after a generation batch of a training step, before its episodes are finished;
- ``update``: after a micro-batch's loss is computed, before the optimizer step;
- ``after_step``: right after a step's metrics are logged, before any checkpoint of that step;
- ``checkpoint``: inside a checkpoint write, after the adapter is saved and before the checkpoint is complete;
- ``none``: run to the end.

EVENTS_FILE receives one JSON line per event (start, evaluations, the kill, the end) with its time.
"""

import json
import os
import signal
import sys
import time


def main() -> int:
    point, nth, events = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    overrides = sys.argv[4:]

    def record(event: str) -> None:
        with open(events, "a") as f:
            f.write(json.dumps({"event": event, "time": time.time(), "pid": os.getpid()}) + "\n")

    seen = {"n": 0}

    def hit(name: str) -> None:
        if name == point:
            seen["n"] += 1
            if seen["n"] == nth:
                record(f"kill:{point}")
                os.kill(os.getpid(), signal.SIGKILL)

    import torch

    import agentrl.train.trainer as trainer_module
    from agentrl.cli import main as cli
    from agentrl.rollout.hf_backend import HFBackend
    from agentrl.train.metrics import MetricsLogger

    Trainer = trainer_module.Trainer
    state = {"training": False}

    def wrap(owner, name, before=None, after=None):
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            if before:
                before(*args, **kwargs)
            out = original(*args, **kwargs)
            if after:
                after(*args, **kwargs)
            return out

        setattr(owner, name, wrapper)

    wrap(Trainer, "__init__", before=lambda *a, **k: record("start"))
    wrap(Trainer, "evaluate", before=lambda self, *, base, **k: record("eval_before" if base else "eval_after"))
    wrap(
        Trainer,
        "train_step",
        before=lambda *a: state.update(training=True),
        after=lambda *a: state.update(training=False),
    )
    wrap(HFBackend, "generate", after=lambda *a, **k: state["training"] and hit("rollout"))
    wrap(trainer_module, "grpo_loss", after=lambda *a, **k: hit("update"))
    wrap(MetricsLogger, "log", after=lambda *a, **k: hit("after_step"))
    wrap(torch, "save", before=lambda *a, **k: hit("checkpoint"))  # the adapter is already on disk by then
    code = cli(["train", *overrides])
    record("end")
    return code


if __name__ == "__main__":
    sys.exit(main())
