"""Train in this process and print its peak resident memory as JSON (used by test_memory.py).

    python peak_rss_train.py key=value ...

Run as its own process, so that its peak resident memory (``VmHWM``) is this run's and nothing else's. Prints one JSON
line: the peak in bytes, and the longest sequence and turn the run produced (the estimate assumes
the token budget is reached; the test checks that it was).
"""

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")


class DistinctPromptsEnv:
    """A single-turn environment whose prompts differ from their first token on, task by task.

    The trainer runs the prompt opening that all rows of a micro-batch share only once; the memory
    estimate, a worst case, assumes no such sharing. Here rows of different tasks share nothing past
    the chat template's first few tokens, so the run is the case the estimate describes. The reward
    is always 0 (run it with grpo.zero_variance=keep).
    """

    def __new__(cls, split: str = "train", num_tasks: int = 64, **kwargs):
        from agentrl.envs.tasks import Task
        from agentrl.envs.tool_env import ToolEnv

        class _Distinct(ToolEnv):
            def score(self, task, answer, messages):
                return 0.0

        def prompt(i: int) -> list[dict[str, str]]:
            return [{"role": "system", "content": f"{i} is your number."}, {"role": "user", "content": "Go on."}]

        offset = 0 if split == "train" else num_tasks  # distinct numbers across splits too
        tasks = [Task(id=f"{split}-{i}", prompt=prompt(offset + i)) for i in range(num_tasks)]
        return _Distinct(tasks, **kwargs)


def main() -> int:
    from agentrl.train.recipe import load_recipe
    from agentrl.train.trainer import Trainer

    recipe = load_recipe(None, sys.argv[1:])
    Trainer(recipe, show_progress=False).train()
    from agentrl.train.memory import peak_rss

    peak = peak_rss()
    with open(os.path.join(recipe.output_dir, "trajectories.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    lengths = [len(r["ids"]) for r in rows]
    print(json.dumps({"peak_rss": peak, "max_len": max(lengths), "min_len": min(lengths), "episodes": len(rows)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
