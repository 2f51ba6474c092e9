"""The device check's targets, their met / missed / not-measured status, and the Markdown report."""

from __future__ import annotations

import math
from typing import Any

MEMORY_TARGET = 0.5
"""(b): agentrl's peak memory at most this fraction of TRL's on the same step."""
SPEED_TARGET = 1.3
"""(b): agentrl's training tokens/s at least this multiple of TRL's."""
DECODE_TARGET = 0.5
"""(c): decoding at least this fraction of the memory-bandwidth bound."""
PREFLIGHT_TOLERANCE = 0.2
"""(d): the preflight's estimate within this fraction of the measured peak."""

TARGETS = {
    "b_memory": f"agentrl peak memory ≤ {MEMORY_TARGET}× TRL's",
    "b_speed": f"agentrl training tokens/s ≥ {SPEED_TARGET}× TRL's",
    "c_decode": f"decode tokens/s ≥ {DECODE_TARGET:.0%} of the HBM-bandwidth bound",
    "d_preflight": f"memory preflight estimate within {PREFLIGHT_TOLERANCE:.0%} of the measured peak",
}

MET, MISSED, NOT_MEASURED = "met", "missed", "not measured"


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) else None


def at_most(value: Any, limit: float) -> str:
    v = _num(value)
    return NOT_MEASURED if v is None else MET if v <= limit else MISSED


def at_least(value: Any, limit: float) -> str:
    v = _num(value)
    return NOT_MEASURED if v is None else MET if v >= limit else MISSED


def within(value: Any, tolerance: float) -> str:
    v = _num(value)
    return NOT_MEASURED if v is None else MET if abs(v - 1.0) <= tolerance else MISSED


def ratio(a: Any, b: Any) -> float | None:
    a, b = _num(a), _num(b)
    return a / b if a is not None and b else None


def step_ratios(variants: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """agentrl over TRL for each agentrl variant: memory (lower is better) and tokens/s (higher is better)."""
    trl = variants.get("trl", {})
    out = {}
    for name, v in variants.items():
        if name == "trl":
            continue
        ok = v.get("status") == "ok" and trl.get("status") == "ok"
        mem = ratio(v.get("peak_bytes"), trl.get("peak_bytes")) if ok else None
        speed = ratio(v.get("tokens_per_s"), trl.get("tokens_per_s")) if ok else None
        out[name] = {
            "memory_ratio": mem,
            "memory_status": at_most(mem, MEMORY_TARGET),
            "speed_ratio": speed,
            "speed_status": at_least(speed, SPEED_TARGET),
        }
    return out


# ----- formatting ---------------------------------------------------------------------------------------------------
def gib(n: Any) -> str:
    v = _num(n)
    return "–" if v is None else f"{v / 2**30:.2f} GiB" if v >= 2**27 else f"{v / 2**20:.1f} MiB"


def num(x: Any, digits: int = 1) -> str:
    v = _num(x)
    return "–" if v is None else f"{v:,.{digits}f}"


def times(x: Any) -> str:
    v = _num(x)
    return "–" if v is None else f"{v:.2f}×"


def status_of(unit: dict[str, Any] | None) -> str:
    """A unit's outcome in a few words: ok, skipped (why), error (what), not run (why)."""
    if not unit:
        return "not run"
    s = unit.get("status", "error")
    if s == "ok":
        return "ok"
    why = unit.get("reason") or unit.get("error") or ""
    why = why.replace("|", "/").splitlines()[0][:160] if why else ""
    if s == "skipped" and why.startswith("skipped"):
        return why
    return f"{s}: {why}" if why else s


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render(results: dict[str, Any]) -> str:
    d = results["device"]
    parts = results["parts"]
    out = [f"# Device check: {d['name']}", ""]
    when = f"{results['started_at']}, {results['seconds']:.0f} s of a {results['budget_seconds']:.0f} s budget"
    out.append(f"Run {when}. Packages: " + ", ".join(f"{k} {v}" for k, v in d["packages"].items()) + ".")
    if d.get("missing"):
        out += ["", "**Missing here** (benchmarks/gpu/wheels.txt lists what the wheel set must add): "
                + "; ".join(m.replace("|", "/") for m in d["missing"]) + "."]  # fmt: skip
    if d["dry_run"]:
        out += ["", "**Dry run** on the CPU with a tiny model: it exercises the code paths; its numbers say nothing "
                "about the targets, which are for a GPU run."]  # fmt: skip
    if results.get("not_run"):
        out += ["", "Not run (time budget): " + ", ".join(results["not_run"]) + "."]
    out += ["", "## Targets", "", _targets(parts)]
    out += ["", "## (a) CUDA tests", "", _part_a(parts.get("a_cuda_tests"))]
    out += ["", "## (b) One GRPO optimizer step", "", _part_b(parts.get("b_grpo_step"))]
    out += ["", "## (c) Decode speed", "", _part_c(parts.get("c_decode"))]
    out += ["", "## (d) Memory preflight", "", _part_d(parts.get("d_preflight"))]
    out += ["", "## (e) agentrl train, resume and eval, end to end", "", _part_e(parts.get("e_train"))]
    return "\n".join(out) + "\n"


def _targets(parts: dict[str, Any]) -> str:
    counts: dict[str, list[str]] = {k: [] for k in TARGETS}
    b = parts.get("b_grpo_step") or {}
    for model in (b.get("models") or {}).values():
        for r in (model.get("ratios") or {}).values():
            counts["b_memory"].append(r["memory_status"])
            counts["b_speed"].append(r["speed_status"])
    c = parts.get("c_decode") or {}
    counts["c_decode"].append(c.get("target_status", NOT_MEASURED))
    for row in (parts.get("d_preflight") or {}).get("rows", []):
        counts["d_preflight"].append(row["status"])
    rows = []
    for key, text in TARGETS.items():
        got = counts[key] or [NOT_MEASURED]
        summary = ", ".join(f"{s} {got.count(s)}" for s in (MET, MISSED, NOT_MEASURED) if got.count(s))
        rows.append([f"({key[0]})", text, summary])
    return table(["part", "target", "status (count of cases)"], rows)


def _not_run(part: dict[str, Any] | None) -> str | None:
    if not part:
        return "Not run."
    if part.get("status") == "not run":
        return f"Not run: {part.get('reason', 'time budget')}."
    return None


def _part_a(a: dict[str, Any] | None) -> str:
    if (skip := _not_run(a)) or a is None:
        return skip or "Not run."
    c = a.get("counts", {})
    row = [f"`{a.get('command', '')}`"] + [str(c.get(k, 0)) for k in ("passed", "failed", "skipped", "deselected")]
    row += [str(c.get("errors", 0)), num(a.get("seconds")), status_of(a)]
    text = table(["command", "passed", "failed", "skipped", "deselected", "errors", "seconds", "status"], [row])
    if a.get("collection_errors"):
        text += "\n\nModules that could not be collected: " + ", ".join(f"`{m}`" for m in a["collection_errors"])
    if a.get("skipped") and not a.get("note"):  # on a GPU every skip is listed; a dry run skips them all
        text += "\n\nSkipped: " + "; ".join(r.replace("|", "/") for r in a["skipped"])
    return text + ("\n\n" + a["note"] if a.get("note") else "")


def _part_b(b: dict[str, Any] | None) -> str:
    if (skip := _not_run(b)) or b is None:
        return skip or "Not run."
    s = b.get("batch", {})
    head = (f"{s.get('sequences')} sequences of {s.get('seq_len')} tokens (prompts of {s.get('prompt_len_range')} "
            f"tokens), LoRA r=16 on every projection, 4-bit base, gradient checkpointing, dapo, one warm-up step "
            f"then one timed step. Memory: {b.get('memory_measure', '')}. Configurations from "
            f"{b.get('config_source', '?')}.")  # fmt: skip
    rows, ratio_rows = [], []
    for name, m in (b.get("models") or {}).items():
        if m.get("build", {}).get("status") not in (None, "ok"):
            rows.append([name, "(build)", "–", "–", "–", "–", "–", "–", "–", status_of(m["build"])])
        for variant, v in (m.get("variants") or {}).items():
            loader = (v.get("base") or {}).get("loader", "transformers+bitsandbytes" if variant == "trl" else "–")
            rows.append([name, variant, loader, gib(v.get("peak_bytes")), num(v.get("tokens_per_s")),
                         num(v.get("loss"), 4), num(v.get("grad_norm"), 4), num(v.get("load_seconds")),
                         num(v.get("step_seconds"), 2), status_of(v)])  # fmt: skip
        for variant, r in (m.get("ratios") or {}).items():
            ratio_rows.append([name, variant, times(r["memory_ratio"]), r["memory_status"], times(r["speed_ratio"]),
                               r["speed_status"]])  # fmt: skip
    header = ["model", "variant", "loader", "peak memory", "tokens/s", "loss", "grad norm", "load s", "step s",
              "status"]  # fmt: skip
    out = [head, "", table(header, rows)]
    if ratio_rows:
        out += ["", "agentrl against TRL on the same step:", ""]
        out.append(table(["model", "agentrl variant", "memory / TRL", f"target ≤ {MEMORY_TARGET}×",
                          "tokens/s / TRL", f"target ≥ {SPEED_TARGET}×"], ratio_rows))  # fmt: skip
    return "\n".join(out)


def _part_c(c: dict[str, Any] | None) -> str:
    if (skip := _not_run(c)) or c is None:
        return skip or "Not run."
    if c.get("status") != "ok":
        return f"{c.get('model', '')}: {status_of(c)}"
    rate = c["bandwidth_bytes_per_s"]
    bw = f"{rate / 1e12:.2f} TB/s" if rate >= 1e11 else f"{rate / 1e9:.1f} GB/s"
    bw += f" ({c['bandwidth_source']})"
    row = [c.get("model", ""), c["backend"], str(c["batch"]), f"{c['prompt_len']} + {c['new_tokens']}",
           num(c["tokens_per_s"]), num(c["bound_tokens_per_s"]), f"{c['fraction_of_bound']:.1%}", bw,
           c["target_status"]]  # fmt: skip
    header = ["model", "backend", "batch", "prompt + new tokens", "tokens/s", "bound tokens/s", "of bound",
              "bandwidth", f"target ≥ {DECODE_TARGET:.0%}"]  # fmt: skip
    note = (
        f"Backend: {c['backend_reason']}. Bound: bandwidth / (weights {gib(c['weight_bytes'])} + KV cache "
        f"{c['kv_bytes_per_token']:,} B per token of context × batch) per step, summed over the steps."
    )
    return table(header, [row]) + "\n\n" + note


def _part_d(d: dict[str, Any] | None) -> str:
    if (skip := _not_run(d)) or d is None:
        return skip or "Not run."
    if d.get("status") != "ok":
        return status_of(d)
    rows = [[r["model"], r["variant"], gib(r.get("estimate_bytes")), gib(r.get("estimate_total_bytes")),
             gib(r.get("measured_bytes")), times(r.get("ratio")),
             r["status"] + (f" ({r['note']})" if r.get("note") else "")] for r in d.get("rows", [])]  # fmt: skip
    text = table(["model", "variant", "estimate compared", "estimate total", "measured peak", "compared / measured",
                  f"target within {PREFLIGHT_TOLERANCE:.0%}"], rows)  # fmt: skip
    return text + ("\n\n" + d["note"] if d.get("note") else "")


def _part_e(e: dict[str, Any] | None) -> str:
    if (skip := _not_run(e)) or e is None:
        return skip or "Not run."
    head = (f"{e.get('model', '?')}, random weights, the exact Qwen3 tokenizer; `agentrl train` for "
            f"{e.get('steps', '?')} steps (hf backend, LatinLettersEnv, 2 tasks x 4 episodes a step, a checkpoint "
            f"after each), killed with SIGKILL after step {e.get('killed_after', '?')}'s checkpoint, the same "
            "command again to resume, then `agentrl eval --adapter RUN`.")  # fmt: skip
    if not e.get("loaders"):
        return head + "\n\n" + status_of(e)
    rows = []
    for loader, r in e["loaders"].items():
        cmds = r.get("commands", {})
        rows.append([loader, "on" if r.get("gradient_checkpointing") else "off",
                     num(cmds.get("train", {}).get("seconds")), num(cmds.get("resume", {}).get("seconds")),
                     num(cmds.get("eval", {}).get("seconds")), str(r.get("steps_logged", "–")),
                     num(r.get("infra_failure_rate"), 2), num(r.get("logprob_gap"), 4),
                     " / ".join(num(x, 4) for x in r.get("loss") or []) or "–", str(r.get("eval_loader", "–")),
                     status_of(r)])  # fmt: skip
    header = ["loader", "checkpointing", "train s (killed)", "resume s", "eval s", "steps logged",
              "infra failures", "max logprob gap", "loss per step", "eval loader", "status"]  # fmt: skip
    out = [head, "", table(header, rows)]
    if e.get("not_covered"):
        out += ["", "Not covered here: " + "; ".join(e["not_covered"]) + "."]
    return "\n".join(out)
