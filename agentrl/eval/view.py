"""``agentrl view RUN_DIR``: a run's trajectories as one self-contained HTML page.

Reading episodes is how most reward bugs are found, so the page shows what a reviewer needs:

* each episode's messages, with the model's tool calls and the environment's tool results in their
  own colours, and the prompt (system message, worked examples) folded away;
* the reward, its components, the advantage (training runs) and how the episode ended;
* a token view: the episode's exact token sequence, with the tokens the policy sampled (mask 1,
  the only ones the loss ever touches) marked apart from prompt and environment tokens.

It reads every ``*trajectories.jsonl`` under RUN_DIR (training, eval before/after, ``agentrl eval``).
A run on a mix of environments records each episode's environment: the page shows it, and ``env``
keeps one environment's episodes alone.
"""

from __future__ import annotations

import html
import json
import re
import warnings
from pathlib import Path
from typing import Any

from agentrl.errors import UserError
from agentrl.eval.jsonl import read_jsonl, viewable_problem

_CSS = """body{font:14px/1.45 system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
.ep{border:1px solid #ccc;border-radius:6px;margin:1em 0;padding:.6em 1em}.ep.ok{border-left:6px solid #2ca02c}
.ep.fail{border-left:6px solid #d62728}.ep.infra{border-left:6px solid #ff7f0e}
.msg{margin:.4em 0;padding:.3em .6em;border-radius:4px;white-space:pre-wrap;font-family:ui-monospace,monospace;
font-size:12.5px}.system,.user{background:#f4f4f4}.assistant{background:#eef4ff}.tool{background:#fff6e0}
.call{background:#e3d7ff;border:1px solid #a58be0;display:block;margin-top:.3em;padding:.2em .4em}
.role{font-weight:bold;font-family:system-ui;font-size:12px;color:#555}.meta{color:#555;font-size:12.5px}
.tok{white-space:pre-wrap;font-family:ui-monospace,monospace;font-size:12px;line-height:1.6}
.m1{background:#c8f0c8;border-bottom:2px solid #2ca02c}.m0{color:#777}
table{border-collapse:collapse}td{border:1px solid #ddd;padding:1px 6px;font-size:12.5px}
.ctl{color:#b00;background:#fee;font-size:11px}"""
# No script, no remote resource: if anything ever slipped past the escaping, the browser still runs nothing.
_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


def _files(run_dir: Path) -> list[Path]:
    files = sorted(p for p in run_dir.rglob("*trajectories.jsonl") if p.is_file())
    return [p for p in files if "checkpoint" not in p.parts[-2]]


def _model_name(run_dir: Path) -> str | None:
    """The run's model: from a training recipe, an evaluation's settings, or a summary."""
    for name, path in (("recipe.json", ("model", "name")), ("eval_settings.json", ("model",))):
        f = run_dir / name
        if f.is_file():
            value: Any = json.loads(f.read_text())
            for key in path:
                value = value.get(key, {}) if isinstance(value, dict) else {}
            if isinstance(value, str):
                return value
    return None


def _tokenizer(run_dir: Path, model: str | None) -> Any:
    name = model or _model_name(run_dir)
    if not name:
        return None
    try:
        from agentrl.models import load_tokenizer

        return load_tokenizer(name)
    except Exception as exc:  # the page is still useful without the token view
        warnings.warn(f"no token view: cannot load the tokenizer of {name!r}: {exc}", stacklevel=2)
        return None


# Everything on the page comes from trajectory files, which hold what the policy and its tools wrote:
# it is data, never markup. Each value is escaped, and characters that could control a page or a
# terminal (C0/C1 controls, ANSI escapes, NUL, line separators) are shown as visible ``\xNN`` marks;
# lone surrogates (undecodable bytes) become U+FFFD, so the page is always valid UTF-8.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_ROLES = ("system", "user", "assistant", "tool")


def _visible(match: re.Match) -> str:
    c = match.group()
    if "\ud800" <= c <= "\udfff":
        return "\ufffd"
    code = ord(c)
    mark = f"\\x{code:02x}" if code < 256 else f"\\u{code:04x}"
    return f"<span class='ctl'>{mark}</span>"


def _text(value: Any) -> str:
    """Any value as HTML text: escaped (quotes too, so it is safe in attributes), controls made visible."""
    return _CONTROL.sub(_visible, html.escape(str(value), quote=True))


def _num(value: Any, spec: str) -> str:
    """A number formatted with ``spec``; anything else, escaped as text."""
    if isinstance(value, (int, float)):
        return format(value, spec)
    return _text(value)


def _message(m: dict[str, Any]) -> str:
    role = str(m.get("role", "?"))
    body = _text(m.get("content") or "")
    if m.get("reasoning_content"):
        body = f"<i>[thinking] {_text(m['reasoning_content'])}</i>\n" + body
    for c in m.get("tool_calls") or []:
        fn = c.get("function", c) if isinstance(c, dict) else {"name": c}
        fn = fn if isinstance(fn, dict) else {"name": fn}
        args = fn.get("arguments")
        args = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
        body += f"<span class='call'>tool call: <b>{_text(fn.get('name'))}</b>({_text(args)})</span>"
    name = f" · {_text(m['name'])}" if m.get("name") else ""
    cls = role if role in _ROLES else "other"  # the class comes from a fixed list, never from the data
    return f"<div class='msg {cls}'><span class='role'>{_text(role)}{name}</span>\n{body}</div>"


def _token_view(row: dict[str, Any], tokenizer: Any) -> str:
    """The exact token sequence, cut into runs of equal mask; sampled (trained-on) runs are marked."""
    ids, mask = row.get("ids") or [], row.get("mask") or []
    if not ids or tokenizer is None:
        return ""
    spans, start = [], 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or mask[i] != mask[start]:
            text = tokenizer.decode(ids[start:i], skip_special_tokens=False)
            spans.append(f"<span class='m{1 if mask[start] == 1 else 0}'>{_text(text)}</span>")
            start = i
    trained = sum(1 for m in mask if m == 1)
    note = f"{trained} of {len(ids)} tokens sampled by the policy (marked green; the loss sees only these)"
    if row.get("advantage") in (0, 0.0):
        note += "; advantage 0, so this episode moved no weights"
    elif "advantage" in row and row["advantage"] is None:
        note += "; no advantage (its group was dropped), so this episode moved no weights"
    return f"<details><summary>token view: {note}</summary><div class='tok'>{''.join(spans)}</div></details>"


def _solved(row: dict[str, Any]) -> bool:
    comps = row.get("reward_components") or {}
    success = comps.get("success", comps.get("correct", row.get("reward", 0))) if isinstance(comps, dict) else 0
    return isinstance(success, (int, float)) and success >= 1


def _episode(row: dict[str, Any], tokenizer: Any) -> str:
    comps = row.get("reward_components") or {}
    comps = comps if isinstance(comps, dict) else {}
    kind = "infra" if row.get("infra_error") else ("ok" if _solved(row) else "fail")
    meta = [f"task <b>{_text(row.get('task_id'))}</b>", f"sample {_text(row.get('group_index', 0))}"]
    if row.get("env") is not None:
        meta.insert(0, f"env <b>{_text(row['env'])}</b>")
    if row.get("step") is not None:
        meta.append(f"step {_text(row['step'])}")
    meta.append(f"reward <b>{_num(row.get('reward', 0.0), '.3f')}</b>")
    if row.get("advantage") is not None:
        meta.append(f"advantage {_num(row['advantage'], '+.3f')}")
    meta.append(f"{_text(row.get('turns', 0))} turns, {_text(row.get('tool_calls', 0))} tool calls")
    if row.get("truncated"):
        meta.append(f"truncated by {_text(row.get('truncated_by'))}")
    if row.get("infra_error"):
        meta.append(f"<b>infrastructure failure (not scored)</b>: {_text(row['infra_error'])}")
    table = "".join(f"<tr><td>{_text(k)}</td><td>{_num(v, '.4g')}</td></tr>" for k, v in comps.items())
    turn_rewards = row.get("turn_rewards")
    if isinstance(turn_rewards, list) and len(turn_rewards) > 1:
        shown = ", ".join(_num(r, ".3g") for r in turn_rewards)
        table += f"<tr><td>per-turn rewards</td><td>{shown}</td></tr>"
    msgs = [m for m in row.get("messages") or [] if isinstance(m, dict)]
    turns = row.get("turns") if isinstance(row.get("turns"), int) else 0
    # The prompt (system, worked examples, question) is everything before the episode's own first turn;
    # the episode's turns are its last ``turns`` assistant messages.
    own = [i for i, m in enumerate(msgs) if m.get("role") == "assistant"][-turns or len(msgs) :]
    n_prompt = own[0] if turns and own else len(msgs)
    prompt = "".join(_message(m) for m in msgs[:n_prompt])
    body = "".join(_message(m) for m in msgs[n_prompt:])
    folded = f"<details><summary>prompt ({n_prompt} messages)</summary>{prompt}</details>" if n_prompt else ""
    return (
        f"<div class='ep {kind}'><div class='meta'>{' · '.join(meta)}</div><table>{table}</table>"
        f"{folded}{body}{_token_view(row, tokenizer)}</div>"
    )


def write_view(
    run_dir: str | Path,
    *,
    out: str | Path | None = None,
    model: str | None = None,
    limit: int = 50,
    task: str | None = None,
    env: str | None = None,
) -> Path:
    """Render RUN_DIR's trajectories to HTML (``RUN_DIR/trajectories.html`` by default); return the path.
    ``task`` and ``env`` keep only the episodes of one task, or of one environment of a mixed run."""
    run = Path(run_dir)
    if not run.is_dir():
        raise UserError(f"{run_dir!r} is not a directory")
    files = _files(run)
    if not files:
        raise UserError(f"no *trajectories.jsonl under {run_dir!r}; is it a training or evaluation run?")
    tokenizer = _tokenizer(run, model)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><meta http-equiv='Content-Security-Policy' "
             f"content=\"{_CSP}\"><title>trajectories: {_text(run.name)}</title>"
             f"<style>{_CSS}</style></head><body><h1>Trajectories of {_text(run)}</h1>"]  # fmt: skip
    seen_envs: set[str] = set()
    matched = 0
    for f in files:
        # A corrupt line (cut short by a crash, damaged, not shaped like a trajectory) is skipped with a
        # warning that names the file and line: the rest of the run is still worth reading.
        rows = read_jsonl(f, check=viewable_problem, replace_surrogates=True)
        seen_envs |= {str(row["env"]) for row in rows if row.get("env") is not None}
        rows = [row for row in rows if env is None or row.get("env") == env]
        matched += len(rows)
        rows = [row for row in rows if task is None or row["task_id"] == task]
        shown = rows if not limit else rows[-limit:]  # the latest episodes: the end of training is most telling
        solved = sum(1 for r in rows if _solved(r))
        parts.append(
            f"<h2>{html.escape(str(f.relative_to(run)))}</h2><p class='meta'>{len(rows)} episodes, {solved} solved; "
            f"showing {len(shown)}</p>"
        )
        parts += [_episode(r, tokenizer) for r in shown]
    if env is not None and not matched:  # a typo would otherwise give an empty page without a word
        known = f"its environments are {', '.join(sorted(seen_envs))}" if seen_envs else "it is not a mixed run"
        raise UserError(f"no episodes of environment {env!r} under {run_dir!r}; {known}")
    parts.append("</body></html>")
    path = Path(out) if out else run / "trajectories.html"
    path.write_text("\n".join(parts), encoding="utf-8", errors="replace")  # a path may hold undecodable bytes
    return path
