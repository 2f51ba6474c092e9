"""Evaluation reports: ``report.md`` for reading in a repository, ``report.html`` to open anywhere.

Both come from ``summary.json`` and the trajectories. The HTML file is self-contained (figures are
embedded as PNG data, styles inline, no script), so it can be attached or mailed as one file. The
figures: reward histogram, pass@k curve, per-turn statistics, and the training curve when a
training run directory is known.
"""

from __future__ import annotations

import base64
import html
import re
import warnings
from pathlib import Path
from typing import Any

from agentrl.rollout.trajectory import Trajectory

# Task ids, error messages and settings in a report can come from data, remote servers or the model's
# tools. Both reports show them as text: control characters (ANSI escapes, NUL, newlines that would
# break a table row) become visible ``\xNN`` marks, so a report read with ``cat`` cannot drive the
# terminal; lone surrogates become U+FFFD, so the files are valid UTF-8; and markup is escaped for
# each format (HTML entities; in markdown also the characters of raw HTML, links and table cells).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_MD_SPECIAL = re.compile(r"([\\|\[\]])")


def _visible(text: Any) -> str:
    def mark(m: re.Match) -> str:
        code = ord(m.group())
        if 0xD800 <= code <= 0xDFFF:
            return "\ufffd"
        return f"\\x{code:02x}" if code < 256 else f"\\u{code:04x}"

    return _CONTROL.sub(mark, str(text))


def _md(text: Any) -> str:
    """Text for one markdown line or table cell."""
    text = _MD_SPECIAL.sub(r"\\\1", str(text)).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _visible(text)


def _esc(text: Any) -> str:
    """Text for HTML, attributes included."""
    return html.escape(_visible(text), quote=True)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _ci(m: dict[str, float], pct: bool = True) -> str:
    f = _pct if pct else (lambda v: f"{v:.3f}")
    return f"{f(m['mean'])} [{f(m['ci95_low'])}, {f(m['ci95_high'])}]"


def _figures(out: Path, summary: dict[str, Any], trajs: dict[str, list[Trajectory]], run_dir: Path | None):
    """Draw the figures into out/figures; a figure that fails is skipped with a warning, never fatal."""
    from agentrl.eval import plots
    from agentrl.train.curve import reward_curve

    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    results = summary["results"]
    jobs = [
        ("Reward histogram", "rewards.png", lambda p: plots.reward_histogram(
            {k: [t.reward for t in v if t.valid] for k, v in trajs.items()}, p)),
        ("pass@k", "pass_at_k.png", lambda p: plots.pass_at_k_curve(results, p)),
        ("Per-turn statistics", "per_turn.png", lambda p: plots.per_turn_plot(results, p)),
    ]  # fmt: skip
    if run_dir is not None and (Path(run_dir) / "metrics.jsonl").is_file():
        jobs.append(("Training curve", "training.png", lambda p: reward_curve(run_dir, p)))
    made = []
    for title, name, draw in jobs:
        try:
            made.append((title, draw(fig_dir / name)))
        except Exception as exc:
            warnings.warn(f"could not draw {name}: {exc}", stacklevel=2)
    return made


def _tables(summary: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) for every table of the report."""
    results = summary["results"]
    labels = list(results)
    head = ["metric", *labels]
    k = max(m["samples_per_task"] for m in results.values())
    rows = [
        ["tasks", *[str(results[x]["tasks"]) for x in labels]],
        ["episodes", *[str(results[x]["episodes"]) for x in labels]],
        ["success rate (pass@1) [95% CI]", *[_ci(results[x]["success_rate"]) for x in labels]],
        ["mean reward [95% CI]", *[_ci(results[x]["mean_reward"], pct=False) for x in labels]],
        ["tool-call rate (episodes)", *[_pct(results[x]["tool_call_rate"]) for x in labels]],
        ["parse-failure rate (episodes)", *[_pct(results[x]["parse_failure_rate"]) for x in labels]],
        ["truncation rate", *[_pct(results[x]["truncation_rate"]) for x in labels]],
        ["mean turns", *[f"{results[x]['mean_turns']:.2f}" for x in labels]],
        ["infra failures (excluded)", *[str(results[x]["infra_failures"]) for x in labels]],
    ]
    tables = [("Results", head, rows)]
    pk = [[f"pass@{j}", *[_ci(results[x]["pass_at_k"][str(j)]) for x in labels]] for j in range(1, k + 1)]
    pk += [[f"pass^{j}", *[_ci(results[x]["pass_hat_k"][str(j)]) for x in labels]] for j in range(2, k + 1)]
    tables.append(("pass@k and pass^k [95% CI]", head, pk))
    comp = summary.get("comparison")
    if comp:
        crow = []
        for name, d in comp.items():
            scale, unit = (100, " points") if name == "success" else (1, "")
            crow.append([name, f"{scale * d['difference']:+.3g}{unit}",
                         f"[{scale * d['ci95_low']:+.3g}, {scale * d['ci95_high']:+.3g}]", str(d["n"])])  # fmt: skip
        tables.append(("Paired difference, adapter minus base", ["metric", "difference", "95% CI", "tasks"], crow))
    tables += _env_tables(summary)
    turn_rows = []
    for x in labels:
        for r in results[x]["per_turn"]:
            turn_rows.append([x, str(r["turn"]), str(r["episodes"]), _pct(r["tool_call_fraction"]),
                              f"{r['mean_step_reward']:.3f}", _pct(r["ended_here"])])  # fmt: skip
    tables.append(
        ("Per turn", ["model", "turn", "episodes", "tool calls", "mean step reward", "ended here"], turn_rows)
    )
    task_rows = []
    for x in labels:
        for r in results[x]["per_task"]:
            task_rows.append([x, r["task_id"], str(r["n"]), str(r["successes"]), f"{r['mean_reward']:.3f}",
                              f"{r['pass^k']:.2f}", f"{r['turns']:.1f}", f"{r['tool_calls']:.1f}"])  # fmt: skip
    tables.append(("Per task", ["model", "task", "n", "successes", "mean reward", f"pass^{k}", "turns", "tool calls"],
                   task_rows))  # fmt: skip
    return tables


def _env_tables(summary: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """On a mix of environments: each environment's results, and its own paired difference when comparing."""
    results = summary["results"]
    rows = []
    for x, m in results.items():
        for name, e in (m.get("per_env") or {}).items():
            rows.append([name, x, str(e["tasks"]), _ci(e["success_rate"]), _ci(e["mean_reward"], pct=False),
                         _pct(e["tool_call_rate"]), _pct(e["truncation_rate"]), str(e["infra_failures"])])  # fmt: skip
    if not rows:
        return []
    rows.sort(key=lambda r: r[0])  # environment by environment, the models side by side
    head = ["environment", "model", "tasks", "success rate [95% CI]", "mean reward [95% CI]", "tool-call rate",
            "truncation rate", "infra failures"]  # fmt: skip
    tables = [("Per environment", head, rows)]
    diffs = [[name, f"{100 * c['success']['difference']:+.3g} points",
              f"[{100 * c['success']['ci95_low']:+.3g}, {100 * c['success']['ci95_high']:+.3g}]",
              f"{c['mean_reward']['difference']:+.3g}", str(c["success"]["n"])]
             for name, c in (summary.get("comparison_per_env") or {}).items()]  # fmt: skip
    if diffs:
        head = ["environment", "success", "95% CI", "mean reward", "tasks"]
        tables.append(("Paired difference per environment, adapter minus base", head, diffs))
    return tables


INTERVALS = (
    "Intervals are 95%: Wilson score intervals for rates of 0/1 outcomes, Newcombe's paired score interval for "
    "paired differences of 0/1 outcomes, and the percentile bootstrap over tasks otherwise."
)


def _settings_line(summary: dict[str, Any]) -> str:
    s = summary["settings"]
    kw = ", ".join(f"{k}={v}" for k, v in s["env_kwargs"].items())
    model = s["model"] + (f" + adapter {s['adapter']}" if s.get("adapter") else "")
    if s.get("backend") == "openai":
        model += f" via the chat API at {s['base_url']}"
    elif s.get("backend") == "vllm-server":
        model += f" served by {', '.join(s.get('server_urls') or [])}"
    env = f"{s['env']}({kw})"
    if s.get("mix"):  # each environment of the mix with its own id and kwargs
        env = "a mix of " + ", ".join(
            f"{e['name']}={e['id']}({', '.join(f'{k}={v}' for k, v in (e.get('kwargs') or {}).items())}) "
            f"weight {e.get('weight', 1):g}"
            for e in s["mix"]
        )
    return (
        f"{model} on {env} split={s['split']}, {s['samples']} sample(s) per task, "
        f"temperature {s['temperature']}, max_turns {s['max_turns']}, seed {s['seed']}"
    )


def _notes(summary: dict[str, Any]) -> list[str]:
    """What a reader must know before trusting the numbers: missing token-level data, failed requests."""
    notes = []
    if summary.get("token_metrics"):
        notes.append(f"Token-level metrics: {summary['token_metrics']}.")
    api = summary.get("api")
    if api:
        line = f"Chat API: {api['requests']} requests, {api['failed']} failed after retries, {api['retries']} retries"
        notes.append(line + (f"; last error: {api['last_error']}." if api.get("last_error") else "."))
    return notes


def _markdown(summary: dict[str, Any], figures: list[tuple[str, Path]], out: Path, max_task_rows: int = 50) -> str:
    lines = ["# Evaluation report", "", _md(_settings_line(summary)), ""]
    lines += [x for note in _notes(summary) for x in (_md(note), "")]
    for title, head, rows in _tables(summary):
        shown = rows[:max_task_rows] if title == "Per task" else rows
        lines += [f"## {title}", "", "| " + " | ".join(_md(h) for h in head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(_md(c) for c in r) + " |" for r in shown]
        if len(shown) < len(rows):
            lines.append(f"\n({len(rows) - len(shown)} more rows in report.html and summary.json)")
        lines.append("")
    for title, path in figures:
        lines += [f"## {title}", "", f"![{title}]({path.relative_to(out).as_posix()})", ""]
    lines += [INTERVALS, "", f"Wall time {summary.get('wall_seconds', 0):.0f} s."]
    return "\n".join(lines) + "\n"


_CSS = """body{font:14px/1.45 system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee}code{background:#f6f6f6;padding:1px 4px}
details{margin-bottom:1.5em}"""
# The page is self-contained and has no script: a policy that forbids scripts and remote resources
# costs nothing, and nothing would run even if some text slipped past the escaping.
_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


def _html(summary: dict[str, Any], figures: list[tuple[str, Path]]) -> str:
    e = _esc
    head = (
        f"<!doctype html><html><head><meta charset='utf-8'><meta http-equiv='Content-Security-Policy' "
        f'content="{_CSP}"><title>agentrl evaluation</title><style>{_CSS}</style>'
    )
    parts = [head + "</head><body><h1>Evaluation report</h1>", f"<p><code>{e(_settings_line(summary))}</code></p>"]
    parts += [f"<p><b>{e(note)}</b></p>" for note in _notes(summary)]
    for title, head, rows in _tables(summary):
        table = "<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>"
        table += "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows) + "</table>"
        if title in ("Per task", "Per turn"):
            parts.append(f"<details><summary><b>{e(title)}</b> ({len(rows)} rows)</summary>{table}</details>")
        else:
            parts.append(f"<h2>{e(title)}</h2>{table}")
    for title, path in figures:
        data = base64.b64encode(path.read_bytes()).decode()
        parts.append(f"<h2>{e(title)}</h2><img alt='{e(title)}' src='data:image/png;base64,{data}'>")
    parts.append(f"<p>{e(INTERVALS)}</p><p>Wall time {summary.get('wall_seconds', 0):.0f} s.</p></body></html>")
    return "\n".join(parts)


def write_report(
    out: str | Path, summary: dict[str, Any], trajectories: dict[str, list[Trajectory]], *, run_dir: str | Path | None
) -> list[Path]:
    """Write ``report.md``, ``report.html`` and ``figures/*.png`` into ``out``; return the report paths."""
    out = Path(out)
    figures = _figures(out, summary, trajectories, Path(run_dir) if run_dir else None)
    md, page = out / "report.md", out / "report.html"
    md.write_text(_markdown(summary, figures, out), encoding="utf-8")
    page.write_text(_html(summary, figures), encoding="utf-8")
    return [md, page]
