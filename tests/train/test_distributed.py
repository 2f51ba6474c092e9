"""Training in two processes (gloo, on the CPU) does what training in one does, and rank 0 alone writes the run.

- The update: two ranks launched by ``torchrun`` each take their share of the same fixed batch
  (:mod:`distributed_update`); the adapter after the update, the loss and every metric equal a
  single-process update of the same batch, and both ranks hold the very same weights.
- The command line: ``accelerate launch -m agentrl train`` runs two ranks end to end (evaluations,
  two steps, checkpoints); each step's groups come from both ranks, and every file is written once.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from distributed_update import CASES, GROUPS, G, groups, run_case

from agentrl.testing import toy_policy_path
from agentrl.train.distributed import Distributed
from agentrl.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[2]
LAUNCHER_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _launch(cmd: list[str], *, ok: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_ENV}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", CUDA_VISIBLE_DEVICES="")
    env["AGENTRL_DIST_TIMEOUT"] = "120"  # a rank left waiting fails the test instead of hanging it
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert (proc.returncode == 0) == ok, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def _accelerate_train(*overrides: str, ok: bool = True) -> subprocess.CompletedProcess:
    """``accelerate launch -m agentrl train`` in two processes; ``--multi_gpu`` is what starts several of them
    (torchrun) on a machine without GPUs, where ``--cpu`` would start one."""
    return _launch([
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes=2",
        f"--main_process_port={_free_port()}", "--num_machines=1", "--mixed_precision=no", "--dynamo_backend=no",
        "-m", "agentrl", "train", *overrides,
    ], ok=ok)  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("two_ranks")
    script = Path(__file__).with_name("distributed_update.py")
    _launch(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), str(out)]
    )
    return out


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("n", [0, 1, 5, 7, 12])
def test_each_rank_trains_whole_micro_batches_of_the_one_process_batch(world, n):
    items, size = list(range(n)), 3
    one = [items[i : i + size] for i in range(0, n, size)]  # what one process trains
    shares = [Distributed(rank=r, world=world).shard(items, size) for r in range(world)]
    again = [[s[i : i + size] for i in range(0, len(s), size)] for s in shares]  # how each rank cuts its share
    assert sorted(c for chunks in again for c in chunks) == one  # the same micro-batches, each once
    assert all(chunks == one[r::world] for r, chunks in enumerate(again))


@pytest.mark.slow  # the two ranks and the reference: about a minute
@pytest.mark.parametrize("case", list(CASES))
def test_two_ranks_update_the_adapter_as_one_process_does(case, two_ranks, tmp_path):
    one = run_case(case, tmp_path / case)
    ranks = [torch.load(two_ranks / case / f"rank{r}.pt") for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2]
    lr = one["lr"]
    loose = elements = 0
    for name, weight in one["weights"].items():
        # Both ranks took the same AdamW step on the same summed gradients: bit for bit the same adapter.
        assert torch.equal(ranks[0]["weights"][name], ranks[1]["weights"][name]), name
        # The ranks add the micro-batches' gradients in another order than one process does (and with other
        # thread counts). AdamW divides by |g| + eps, so where a gradient is near eps, or the difference of
        # larger terms, that last-bit difference grows. Every element stays within 1% of one optimizer step
        # (the learning rate), and all but 0.1% of them within 1e-4 of a step. The loss, the global gradient
        # norm and every metric below are compared at 1e-5: they catch a wrong sum, scale or normaliser.
        off = (ranks[0]["weights"][name] - weight).abs() / lr
        assert float(off.max()) <= 1e-2, (name, float(off.max()))
        loose += int((off > 1e-4).sum())
        elements += off.numel()
        assert not torch.equal(weight, _initial(name, weight)), name  # the update moved every tensor
    assert loose <= 1e-3 * elements, f"{loose} of {elements} elements differ by more than 1e-4 of a step"
    for r in ranks:
        assert r["last_update"]["loss"] == pytest.approx(one["last_update"]["loss"], rel=1e-5, abs=1e-8)
        assert r["last_update"]["grad_norm"] == pytest.approx(one["last_update"]["grad_norm"], rel=1e-5)
        assert r["metrics"].keys() == one["metrics"].keys()
        for key, value in one["metrics"].items():  # global counts, clip fractions, KL, correction statistics
            assert r["metrics"][key] == pytest.approx(value, rel=1e-5, abs=1e-8), key
        # A step whose groups were all dropped: no update, no collective, and the schedule moves on alike.
        assert r["empty"] == one["empty"] == {"trained_sequences": 0.0, "updates": 0.0, "skipped_updates": 0.0}
        assert r["lr"] == lr
    metrics = one["metrics"]
    assert metrics["trained_sequences"] == G * GROUPS
    assert max(one["last_update"]["grad_norm"]) > one["max_grad_norm"]  # clipping acted, on the global norm
    if case == "dr_grpo_corrected":
        sampled = sum(sum(t.mask) for g in groups() for t in g.trajectories)
        assert metrics["rollout_is_clipped_fraction"] > 0 and metrics["trained_tokens"] < sampled  # masked truncations
    if case == "bnpo_kl_two_passes":
        assert metrics["kl"] > 0 and metrics["clip_low_fraction"] + metrics["clip_high_fraction"] > 0


def _initial(name: str, like: torch.Tensor) -> torch.Tensor:
    import zlib

    gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    return 0.05 * torch.randn(like.shape, generator=gen)


@pytest.mark.slow  # about 40 s
def test_accelerate_launch_trains_on_two_ranks_and_rank_0_writes_the_run(tmp_path):
    out = tmp_path / "run"
    steps, tasks, group = 2, 4, 4
    proc = _accelerate_train(
        f"model.name={toy_policy_path()}", "env.id=agentrl.testing:LatinLettersEnv", "backend=hf",
        f"grpo.steps={steps}", f"grpo.tasks_per_step={tasks}", f"grpo.group_size={group}", "grpo.max_turns=1",
        "grpo.micro_batch_size=4", "grpo.zero_variance=keep", "sampling.max_new_tokens=12",
        "sampling.stop=[.]", "lora.r=8", "lora.alpha=16", "eval.num_tasks=4", "eval.temperature=1.0",
        "save_every=1", "report_to=[tensorboard]", f"output_dir={out}",
    )  # fmt: skip
    assert "adapter:" in proc.stdout

    # One metrics line per step, with the whole step's numbers: both ranks' groups, gathered.
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        assert row["ranks"] == 2 and row["groups"] == tasks and row["episodes"] == tasks * group
        assert row["trained_sequences"] == tasks * group and row["grad_norm"] > 0 and "loss" in row
    # Every trajectory once: each step's four tasks (two sampled on each rank), each with its whole group.
    lines = [json.loads(line) for line in (out / "trajectories.jsonl").read_text().splitlines()]
    assert len(lines) == steps * tasks * group
    for step in (1, 2):
        ids = [t["task_id"] for t in lines if t["step"] == step]
        assert len(set(ids)) == tasks and all(ids.count(i) == group for i in set(ids))
    # Evaluations, checkpoints, the adapter, the summary: written once, by rank 0.
    for name in ("eval_before", "eval_after"):
        assert json.loads((out / f"{name}.json").read_text())["summary"]["n"] == 4
        assert len((out / f"{name}_trajectories.jsonl").read_text().splitlines()) == 4
    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert checkpoints == ["step-000001", "step-000002"]  # no half-written copies beside them
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == steps and summary["eval_after"]["n"] == 4
    assert len(json.loads((out / "wall.json").read_text())["sessions"]) == 1  # rank 0's clock alone
    assert len(list((out / "tensorboard").rglob("events.out.tfevents.*"))) == 1
    from safetensors.torch import load_file

    final = load_file(out / "adapter" / "adapter_model.safetensors")
    saved = load_file(out / "checkpoints" / "step-000002" / "adapter" / "adapter_model.safetensors")
    assert final.keys() == saved.keys() and all(torch.equal(final[k], saved[k]) for k in final)
    assert any(k.endswith("lora_B.weight") and final[k].abs().sum() > 0 for k in final)  # it trained


@pytest.mark.slow  # about 20 s
def test_a_mix_of_environments_trains_on_two_ranks_with_each_environments_whole_step(tmp_path):
    """Every rank draws the same tasks from the mix; the per-environment metrics are of the gathered step."""
    out = tmp_path / "run"
    mix = (
        "env.mix=[{id: 'agentrl.testing:LatinLettersEnv', name: latin, weight: 3}, "
        "{id: 'agentrl.testing:ShortRepliesEnv', name: short}]"
    )
    _accelerate_train(
        f"model.name={toy_policy_path()}", mix, "backend=hf", "grpo.steps=2", "grpo.tasks_per_step=4",
        "grpo.group_size=4", "grpo.max_turns=1", "grpo.micro_batch_size=4", "grpo.zero_variance=keep",
        "sampling.max_new_tokens=12", "sampling.stop=[.]", "lora.r=8", "eval.num_tasks=4", "eval.temperature=1.0",
        "report_to=[]", f"output_dir={out}",
    )  # fmt: skip
    for row in read_metrics(out):  # weights 3:1 of four tasks: three groups and one, over both ranks' shares
        assert row["ranks"] == 2 and (row["env/latin/groups"], row["env/short/groups"]) == (3, 1)
        assert row["env/latin/episodes"] + row["env/short/episodes"] == row["episodes"] == 16
    lines = [json.loads(line) for line in (out / "trajectories.jsonl").read_text().splitlines()]
    assert sorted((r["step"], r["env"]) for r in lines) == sorted(
        [(s, "latin") for s in (1, 2) for _ in range(12)] + [(s, "short") for s in (1, 2) for _ in range(4)]
    )
    summary = json.loads((out / "summary.json").read_text())
    assert {k: v["n"] for k, v in summary["eval_after"]["per_env"].items()} == {"latin": 3, "short": 1}


@pytest.mark.slow  # about 10 s: the ranks stop before loading a model
def test_a_refusal_on_rank_0_stops_every_rank_with_its_reason(tmp_path):
    (tmp_path / "notes.txt").write_text("not a run")  # rank 0 refuses to claim this output_dir
    proc = _accelerate_train("model.name=tiny-qwen3", "env.id=agentrl.testing:LatinLettersEnv",
                             f"output_dir={tmp_path}", ok=False)  # fmt: skip
    reason = f"agentrl train: error: output_dir {tmp_path} is not empty and holds no agentrl run"
    assert proc.stderr.count(reason) == 2  # rank 1 was told rank 0's reason; neither was left waiting
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@pytest.mark.slow  # about a minute, on the shared loopback server
def test_two_ranks_share_a_vllm_server_and_rank_0_loads_each_version_once(vllm_server, tmp_path):
    out = tmp_path / "run"
    proc = _accelerate_train(
        "model.name=tiny-qwen3", "env.id=agentrl.testing:LatinLettersEnv", "backend=vllm-server",
        f"server_urls=[{vllm_server.url}]", "grpo.steps=2", "grpo.tasks_per_step=2", "grpo.group_size=4",
        "grpo.max_turns=1", "grpo.learning_rate=1e-2", "sampling.max_new_tokens=16", "sampling.stop=[' ']",
        "grpo.zero_variance=keep", "lora.r=8", "lora.alpha=16", "eval.before=false", "eval.num_tasks=4",
        "report_to=[]", f"output_dir={out}",
    )  # fmt: skip
    assert proc.stdout.count("adapter:") == 1  # rank 0 reports for both
    rows = read_metrics(out)
    assert [r["ranks"] for r in rows] == [2.0, 2.0]
    for row in rows:
        # Both ranks' episodes were sampled by the server with the adapter rank 0 loaded, and scored.
        assert row["episodes"] == 8 and row["infra_failure_rate"] == 0.0 and row["logprob_gap"] < 1e-3
    assert json.loads((out / "summary.json").read_text())["eval_after"]["n"] == 4
    # Rollout adapter directories are written by rank 0 alone, and only the versions still in use are kept: in the
    # synchronous loop, the last one.
    assert sorted(p.name for p in (out / "rollout_adapter").iterdir()) == ["step-000002"]


@pytest.mark.slow  # about a minute, on the shared loopback server
def test_asynchronous_rollouts_on_two_ranks_gather_on_the_main_thread_and_keep_each_version(vllm_server, tmp_path):
    # grpo.max_off_policy_steps=1: each rank samples its share on a thread while its trainer updates. The
    # collectives (the gather of every rank's groups among them) must all run on the main thread, and each
    # trajectory must keep the version that sampled it: rank 1 is made to sample one version later than rank 0.
    script = Path(__file__).with_name("async_ranks.py")
    _launch([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
             vllm_server.url, str(tmp_path)])  # fmt: skip
    for rank in (0, 1):
        threads = json.loads((tmp_path / f"threads-rank{rank}.json").read_text())
        assert threads and set(threads) == {"MainThread"}, sorted(set(threads))
    rows = [json.loads(line) for line in (tmp_path / "run" / "trajectories.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1] * 8 + [2] * 8 + [3] * 8  # two tasks of four episodes per step
    for step in (2, 3):
        mine = [r for r in rows if r["step"] == step]
        rank0, rank1 = mine[:4], mine[4:]  # tasks[0::2] were rank 0's, tasks[1::2] rank 1's
        assert {r["policy_version"] for r in rank0} == {step - 2}  # sampled ahead, one step stale
        assert {r["policy_version"] for r in rank1} == {step - 1}  # sampled with the newest adapter
    metrics = read_metrics(tmp_path / "run")
    assert [m["policy_staleness_max"] for m in metrics[1:]] == [1.0, 1.0]
    assert [m["policy_staleness_mean"] for m in metrics[1:]] == [0.5, 0.5]
    assert all(m["ranks"] == 2 and m["infra_failure_rate"] == 0 for m in metrics)
    # One step behind at most: the files of the last two versions are kept, for servers that must load them again.
    assert sorted(p.name for p in (tmp_path / "run" / "rollout_adapter").iterdir()) == ["step-000002", "step-000003"]


def test_backend_auto_with_several_processes_resolves_to_one_they_can_share(monkeypatch):
    # On CUDA, auto means an in-process vLLM engine, which several ranks cannot each start beside their trainers:
    # with several processes it is the recipe's vLLM servers when there are some, else each rank's own model.
    from agentrl.rollout import backends

    monkeypatch.setattr(backends, "vllm_available", lambda: True)
    assert backends.auto_backend("cuda") == "vllm"
    assert backends.auto_backend("cuda", processes=2) == "hf"
    assert backends.auto_backend("cuda", processes=2, server_urls=["http://10.0.0.2:8000"]) == "vllm-server"
    assert backends.auto_backend("cpu") == "hf"
    monkeypatch.setattr(backends, "vllm_available", lambda: False)
    assert backends.auto_backend("cuda") == "hf"
