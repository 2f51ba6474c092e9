"""``agentrl eval``: a model (and optionally a LoRA adapter) on held-out tasks, with a report.

It runs exactly the training rollout loop (:class:`~agentrl.rollout.RolloutEngine`, the same chat
format, the same environment and scoring) with evaluation sampling. ``--compare`` evaluates the base
model and the adapter on the same tasks with the same environment seeds and reports the paired
difference, which is the number that says whether training helped.

The generation backend is in-process (``hf``, ``vllm``) or running vLLM servers (``vllm-server``),
all token-level. ``openai`` evaluates any OpenAI-compatible chat API instead, message by message on
the same environments and reset seeds (:mod:`agentrl.eval.openai_backend`); its reports say that
token-level metrics are absent.

A training run directory can stand in for the adapter: the model, environment, its kwargs, the
chat template, limits and the eval settings then default to the run's recipe, so the comparison
repeats the trainer's own before/after evaluation. A run on a mix of environments (``env.mix``) is
evaluated on the whole mix, with every metric and comparison also given per environment; ``--env
NAME`` evaluates one environment of the mix alone, with its own kwargs.

Results go to ``output_dir``: ``trajectories.jsonl`` (per model under ``base/`` and ``adapter/``
when comparing), ``summary.json``, ``report.md`` and ``report.html``. A run that stops is resumed by
running the same command again: finished tasks are read back and skipped.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentrl.envs.registry import with_mcp
from agentrl.errors import UserError
from agentrl.eval.jsonl import read_jsonl, trajectory_problem
from agentrl.eval.loop import by_env, eval_metrics, evaluate, paired_difference, per_task_reward, per_task_success
from agentrl.redact import REDACTED, redact
from agentrl.rollout.trajectory import Trajectory
from agentrl.tools.mcp_tools import close_servers
from agentrl.train.run_dir import WallClock

if TYPE_CHECKING:
    from agentrl.eval.openai_backend import APIStats


@dataclass
class EvalSettings:
    """What to evaluate and how. ``None`` means: from the training run's recipe, else the default."""

    model: str | None = None
    """Base model: hub id, local directory or offline alias (default: the run's model, else smollm2-135m)."""
    adapter: str | None = None
    """PEFT adapter directory, or a training run directory that holds one in adapter/."""
    env: str | None = None
    """Environment id (default: the run's environment, else arithmetic)."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for agentrl.make; with a run directory they update the recipe's."""
    mix: list[dict[str, Any]] | None = None
    """A mixed run's environments (its recipe's env.mix: id, weight, kwargs, name), evaluated together and reported
    per environment; set from the run directory when no env is given."""
    split: str = "test"
    """Split to evaluate on."""
    num_tasks: int | None = None
    """The first N tasks of the split (default: the run's eval.num_tasks, else all of them)."""
    samples: int = 1
    """Episodes per task (k): pass@1 ... pass@k and pass^k are reported."""
    temperature: float | None = None
    """Sampling temperature (default: 0, greedy, for one sample; 1.0 for several)."""
    top_p: float = 1.0
    """Nucleus sampling mass."""
    top_k: int = 0
    """Keep the k most likely tokens; 0 disables."""
    min_p: float = 0.0
    """Minimum probability relative to the top token; 0 disables."""
    max_new_tokens: int | None = None
    """Tokens per turn (default: the run's eval/sampling setting, else 256)."""
    stop: list[str] | None = None
    """Strings that end a turn (default: the run's sampling.stop, else none)."""
    max_turns: int | None = None
    """Assistant turns per episode (default: the run's grpo.max_turns, else the environment's own limit)."""
    max_total_tokens: int | None = None
    """Token budget of an episode (default: the run's grpo.max_total_tokens, else 4096; tool specs can be long)."""
    chat_template: str | None = None
    """auto, stock, training or a .jinja path (default: the run's, else auto)."""
    enable_thinking: bool | None = None
    """Passed to templates that support it (Qwen3)."""
    backend: str = "hf"
    """hf or vllm (in-process), vllm-server (vLLM servers at server_urls, token-level like hf and vllm),
    or openai (any OpenAI-compatible chat API at base_url, message-level: no token ids)."""
    server_urls: list[str] | None = None
    """With backend vllm-server: base URLs of the vLLM servers (http://host:port), one or more."""
    base_url: str | None = None
    """With backend openai: the API's base URL, e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1."""
    api_key_env: str = "OPENAI_API_KEY"
    """With backend openai: the environment variable that holds the API key (the key itself is never stored)."""
    max_concurrency: int = 8
    """With backend openai: chat requests in flight at once."""
    load_in_4bit: bool | None = None
    """Base in 4-bit NF4 (default: as the training run's base was, from its base.json; else 16-bit)."""
    keep_high_precision: list[str] | None = None
    """With a 4-bit base: names kept in 16-bit (default: the run's model.keep_high_precision)."""
    loader: str | None = None
    """Who loads the base (backend hf): auto, unsloth, bitsandbytes or transformers (default: the loader that
    trained the run's adapter, from its base.json; else auto)."""
    compare: bool = False
    """Evaluate the base model and the adapter on the same tasks and report the paired difference."""
    seed: int | None = None
    """Seed of environment resets and sampling (default: the run's seed, else 0)."""
    output_dir: str | None = None
    """Where results go (default: RUN_DIR/eval when given a run, else runs/eval/ENV)."""
    run_dir: str | None = None
    """A training run whose curves the report includes (default: the adapter's run directory)."""
    overwrite: bool = False
    """Start again instead of resuming when output_dir holds results of different settings."""


# ----- resolving settings ----------------------------------------------------------------------
def _find_adapter(path: str) -> tuple[Path, Path | None]:
    """``(adapter_dir, run_dir or None)`` for an adapter directory or a training run directory."""
    p = Path(path)
    if (p / "adapter_config.json").is_file():
        run = p.parent if (p.parent / "recipe.json").is_file() else None
        return p, run
    if (p / "adapter" / "adapter_config.json").is_file():
        return p / "adapter", p
    if not p.exists():
        raise UserError(f"adapter {path!r} does not exist")
    raise UserError(f"{path!r} holds no adapter_config.json (nor adapter/adapter_config.json)")


def _trained_base(run: Path | None, model: str | None, r_model: dict[str, Any]) -> tuple[bool, str]:
    """``(4-bit, loader)`` of the run's base: an adapter is evaluated on the base it was trained on, loaded the
    same way (Unsloth's base is not bitsandbytes' even at the same precision). Another model: 16-bit, auto."""
    if run is None or (model and model != r_model.get("name")):
        return False, "auto"
    info = json.loads((run / "base.json").read_text()) if (run / "base.json").is_file() else {}
    four = bool(info.get("load_in_4bit", r_model.get("load_in_4bit")))
    return four, str(info.get("loader") or r_model.get("loader") or "auto")


def _env_turn_limit(env_id: str) -> int:
    """The registered turn limit of ``env_id`` (a game needs more turns than a tool call and an answer)."""
    from agentrl.envs.registry import spec

    return spec(env_id).max_turns or 8


BACKENDS = ("hf", "vllm", "vllm-server", "openai")


def _check_backend(s: EvalSettings) -> None:
    """The options each backend needs, and the ones that belong to another backend, in one line each."""
    if s.backend not in BACKENDS:
        raise UserError(f"--backend must be one of {', '.join(BACKENDS)}, got {s.backend!r}")
    if s.backend == "vllm-server" and not s.server_urls:
        raise UserError("--backend vllm-server needs --server-url URL (repeat it for several servers)")
    if s.server_urls and s.backend != "vllm-server":
        raise UserError("--server-url goes with --backend vllm-server")
    if s.base_url and s.backend != "openai":
        raise UserError("--base-url goes with --backend openai")
    if s.backend != "openai":
        return
    if not s.base_url:
        raise UserError("--backend openai needs --base-url URL (e.g. http://127.0.0.1:8000/v1)")
    if not s.model:
        raise UserError("--backend openai needs --model NAME, the model name the server serves")
    if s.adapter or s.compare:
        raise UserError(
            "--adapter and --compare need a local model; to evaluate an adapter through an API, "
            "serve it under its own name and pass that name as --model"
        )
    if s.max_concurrency < 1:
        raise UserError(f"--max-concurrency must be at least 1, got {s.max_concurrency}")


def resolve(s: EvalSettings) -> tuple[EvalSettings, Path | None]:
    """Fill the unset settings from the training run's recipe (when there is one) and the defaults."""
    from agentrl.eval.openai_backend import check_base_url

    _check_backend(s)
    adapter_dir, run = (None, None)
    if s.adapter:
        adapter_dir, run = _find_adapter(s.adapter)
    if s.run_dir:
        run = Path(s.run_dir)
        if not (run / "metrics.jsonl").is_file():
            raise UserError(f"{s.run_dir!r} is not a training run directory (no metrics.jsonl)")
    recipe: dict[str, Any] = {}
    if run is not None and (run / "recipe.json").is_file():
        recipe = json.loads((run / "recipe.json").read_text())
    r_model, r_env = recipe.get("model", {}), recipe.get("env", {})
    r_mix = list(r_env.get("mix") or [])
    picked = next((e for e in r_mix if s.env is not None and s.env == (e.get("name") or e.get("id"))), None)
    if picked is not None:  # one environment of a mixed run, alone, with its own kwargs
        r_env = {**r_env, "id": picked["id"], "kwargs": picked.get("kwargs") or {}, "mcp": picked.get("mcp") or []}
    mix = r_mix if r_mix and s.env is None else None
    if mix and s.env_kwargs:
        names = ", ".join(e["name"] for e in mix)
        raise UserError(
            "environment kwargs cannot apply to every environment of a mix; give --env NAME to evaluate one of the "
            f"run's environments ({names}) alone with them"
        )
    from_run = bool(recipe) and (s.env is None or picked is not None or s.env == r_env.get("id"))
    # The run's limits and eval settings belong to its environment; another one gets its own defaults.
    r_grpo, r_eval, r_sampling = (
        (recipe.get("grpo", {}), recipe.get("eval", {}), recipe.get("sampling", {})) if from_run else ({}, {}, {})
    )
    env_kwargs = {**(with_mcp(r_env.get("kwargs", {}), r_env.get("mcp")) if from_run else {}), **s.env_kwargs}
    unrecorded = [k for k, v in env_kwargs.items() if REDACTED in json.dumps(v, default=str)]
    if unrecorded:
        raise UserError(
            f"the run's env.kwargs.{unrecorded[0]} held a key, which its recipe.json does not record; "
            f"give it again: agentrl eval ... {unrecorded[0]}=VALUE"
        )
    for e in mix or []:
        held = [k for k, v in (e.get("kwargs") or {}).items() if isinstance(v, str) and REDACTED in v]
        if held:
            raise UserError(
                f"the run's environment {e['name']!r} held a key in kwargs.{held[0]}, which its recipe.json does "
                f"not record; evaluate it alone, the key given again: agentrl eval --env {e['name']} {held[0]}=VALUE"
            )
    samples = max(1, int(s.samples))
    env_id = (picked or {}).get("id") or s.env or r_env.get("id") or "arithmetic"
    trained_4bit, trained_loader = _trained_base(run, s.model, r_model)
    out = EvalSettings(
        model=s.model or r_model.get("name") or "smollm2-135m",
        adapter=str(adapter_dir) if adapter_dir else None,
        env="+".join(e["name"] for e in mix) if mix else env_id,
        env_kwargs=env_kwargs,
        mix=mix,
        split=s.split,
        num_tasks=s.num_tasks if s.num_tasks is not None else (r_eval.get("num_tasks") if from_run else None),
        samples=samples,
        temperature=s.temperature if s.temperature is not None else (0.0 if samples == 1 else 1.0),
        top_p=s.top_p,
        top_k=s.top_k,
        min_p=s.min_p,
        max_new_tokens=s.max_new_tokens or r_eval.get("max_new_tokens") or r_sampling.get("max_new_tokens") or 256,
        stop=list(s.stop) if s.stop is not None else list(r_sampling.get("stop") or []),
        max_turns=s.max_turns or r_grpo.get("max_turns") or _env_turn_limit(env_id),
        max_total_tokens=s.max_total_tokens or r_grpo.get("max_total_tokens") or 4096,
        chat_template=s.chat_template or r_model.get("chat_template") or "auto",
        enable_thinking=s.enable_thinking if s.enable_thinking is not None else r_model.get("enable_thinking"),
        backend=s.backend,
        server_urls=[u.rstrip("/") for u in s.server_urls] if s.server_urls else None,
        base_url=check_base_url(s.base_url) if s.base_url else None,
        api_key_env=s.api_key_env,
        max_concurrency=s.max_concurrency,
        load_in_4bit=s.load_in_4bit if s.load_in_4bit is not None else trained_4bit,
        loader=s.loader or trained_loader,
        keep_high_precision=s.keep_high_precision
        if s.keep_high_precision is not None
        else r_model.get("keep_high_precision"),
        compare=s.compare,
        seed=s.seed if s.seed is not None else int(recipe.get("seed", 0)),
        output_dir=s.output_dir,
        run_dir=str(run) if run is not None else None,
        overwrite=s.overwrite,
    )
    if out.compare and not out.adapter:
        raise UserError("--compare needs --adapter (an adapter directory or a training run directory)")
    if out.samples > 1 and out.temperature == 0:
        raise UserError(f"-k {out.samples} with temperature 0 would sample the same episode {out.samples} times")
    if out.output_dir is None:
        hosted = f"{out.env}-{_slug(out.model)}"  # a hosted model's results never mix with a local model's
        if run is not None:
            # One environment of a mixed run alone gets a directory of its own (by its name), beside the mix's.
            other = f"eval-{picked['name']}" if picked else f"eval-{out.env}"
            name = f"eval-{hosted}" if out.backend == "openai" else "eval" if from_run and not picked else other
            out.output_dir = str(run / name)
        elif out.backend == "openai":
            out.output_dir = str(Path("runs") / "eval" / hosted)
        else:
            out.output_dir = str(Path("runs") / "eval" / out.env)
    return out, run


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name).strip("-.") or "model"


# ----- files ---------------------------------------------------------------------------------
def read_rows(path: Path) -> list[dict[str, Any]]:
    """The saved trajectory rows of a run being resumed.

    A last line cut short by a crash (not JSON, or bytes that are not UTF-8) is dropped with a warning
    naming the file and line: its task simply runs again. Any other corrupt line (in the middle of the
    file, or JSON that is not a trajectory row) is refused with a UserError naming the line, because
    resuming rewrites this file with the rows it keeps: a damaged file is left for the user to look at
    instead of being quietly cut down.
    """
    try:
        return read_jsonl(path, check=trajectory_problem, strict=True)
    except UserError as exc:
        raise UserError(f"{exc}; fix or delete that line, or start again with --overwrite") from None


def _finished(rows: list[dict[str, Any]], samples: int) -> set[str]:
    """Tasks with all their samples on disk and no infrastructure failure; the others run again."""
    by: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by.setdefault(r["task_id"], []).append(r)
    return {k for k, v in by.items() if len(v) == samples and all(r.get("infra_error") is None for r in v)}


def _write_rows(path: Path, rows: list[dict[str, Any]], mode: str) -> None:
    with path.open(mode) as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _rows(trajs: list[Trajectory], tokenizer: Any) -> list[dict[str, Any]]:
    if tokenizer is None:  # a chat API's episodes are messages only
        return [t.to_dict() for t in trajs]
    return [{**t.to_dict(), "text": tokenizer.decode(t.ids, skip_special_tokens=False)} for t in trajs]


def _check_settings(out: Path, s: EvalSettings) -> None:
    """Resuming is only sound when the settings are the ones the saved episodes were made with."""
    path = out / "eval_settings.json"
    keys = [f.name for f in fields(EvalSettings) if f.name not in ("output_dir", "overwrite", "run_dir", "num_tasks")]
    new = redact({k: v for k, v in asdict(s).items() if k in keys})  # written to disk: no keys
    # How requests are sent does not change the episodes; results saved before a setting existed had its default.
    same = {"max_concurrency", "api_key_env"}
    defaults = {**asdict(EvalSettings()), "loader": "auto"}  # results saved before --loader existed: auto
    if path.is_file() and not s.overwrite:
        old = redact(json.loads(path.read_text()))  # results saved before keys were redacted compare equal
        changed = [k for k in keys if k not in same and old.get(k, defaults[k]) != new.get(k)]
        if changed:
            k = changed[0]
            raise UserError(
                f"{out} holds results made with {k}={old.get(k)!r}, not {new.get(k)!r}; "
                "pass --overwrite to start again, or another --output-dir"
            )
    if s.overwrite:
        for name in ("trajectories.jsonl", "base/trajectories.jsonl", "adapter/trajectories.jsonl", "wall.json"):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(new, indent=2))


# ----- the run -------------------------------------------------------------------------------
def run_eval(settings: EvalSettings, *, show_progress: bool = True) -> dict[str, Any]:
    """Evaluate, write trajectories, summary.json and the reports; return the summary."""
    from agentrl.envs.tasks import split_task_ids
    from agentrl.eval.openai_backend import api_key
    from agentrl.eval.report import write_report

    s, run = resolve(settings)
    if s.backend == "hf":
        from agentrl.quantize import import_unsloth_first

        import_unsloth_first(s.loader or "auto", s.load_in_4bit)
    out = Path(s.output_dir)
    start = time.time()

    make_env = env_factory(s)

    # The key stays in this function's hands: never in the settings, which are written to disk.
    key = api_key(s.base_url, s.api_key_env) if s.backend == "openai" else None
    task_ids = split_task_ids(make_env)
    task_ids = task_ids[: s.num_tasks] if s.num_tasks else task_ids
    _check_settings(out, s)
    # wall_seconds counts every invocation that worked on these results, like a resumed training run's.
    clock = WallClock(out / "wall.json", started=start)
    clock.start()
    try:
        summary, trajectories = _evaluate_all(s, out, task_ids, make_env, show_progress, key)
    finally:
        clock.stop()
        close_servers()  # MCP servers the environments started end with the evaluation
    summary["wall_seconds"] = round(clock.seconds, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    summary["reports"] = [str(p) for p in write_report(out, summary, trajectories, run_dir=run)]
    return summary


def env_factory(s: EvalSettings) -> Callable[[], Any]:
    """``make_env`` of the settings' split: the environment, or a mixed run's environments behind a ``MixedEnv``."""
    from agentrl.envs.mix import Component, MixedEnv
    from agentrl.envs.registry import make

    if not s.mix:
        return functools.partial(make, s.env, split=s.split, **s.env_kwargs)
    components = [
        Component(
            e["name"],
            functools.partial(make, e["id"], split=s.split, **with_mcp(e.get("kwargs") or {}, e.get("mcp"))),
            e["weight"],
        )
        for e in s.mix
    ]
    return functools.partial(MixedEnv, components, split=s.split)


# A player runs one label's episodes: (label, task ids, on_chunk, on_progress) -> trajectories.
Player = Callable[[str, list[str], Callable[[list[Trajectory]], None], Callable[[int], None]], list[Trajectory]]


def _engine_player(s: EvalSettings, make_env: Any) -> tuple[Player, Any]:
    """The token-level rollout engine on an hf, vllm or vllm-server backend, and its tokenizer."""
    from agentrl.chat.format import load_chat_format
    from agentrl.models import load_tokenizer
    from agentrl.rollout.backends import make_backend
    from agentrl.rollout.engine import RolloutConfig, RolloutEngine
    from agentrl.rollout.generation import SamplingParams

    if s.backend == "vllm-server":  # the servers hold the weights; the local model gives the tokenizer
        backend = make_backend("vllm-server", s.model, server_urls=list(s.server_urls or []), adapter=s.adapter,
                               seed=s.seed)  # fmt: skip
    else:
        backend = make_backend(
            s.backend, s.model, adapter=s.adapter, max_model_len=s.max_total_tokens + s.max_new_tokens, seed=s.seed,
            load_in_4bit=bool(s.load_in_4bit), keep_high_precision=s.keep_high_precision, loader=s.loader or "auto",
        )  # fmt: skip
    tokenizer = backend.tokenizer if hasattr(backend, "tokenizer") else load_tokenizer(s.model)
    chat = load_chat_format(tokenizer, s.chat_template, enable_thinking=s.enable_thinking)
    sampling = SamplingParams(
        temperature=s.temperature,
        top_p=s.top_p,
        top_k=s.top_k,
        min_p=s.min_p,
        max_new_tokens=s.max_new_tokens,
        stop=list(s.stop or []),
    )
    config = RolloutConfig(
        group_size=s.samples, max_turns=s.max_turns, max_total_tokens=s.max_total_tokens, sampling=sampling, seed=s.seed
    )
    engine = RolloutEngine(backend, chat, make_env, config)

    def play(label, todo, on_chunk, on_progress):
        with backend.use_adapter(label == "adapter"):
            _, new = evaluate(engine, todo, samples=s.samples, seed=s.seed, on_chunk=on_chunk, on_progress=on_progress)
        return new

    return play, tokenizer


def _chat_api_player(s: EvalSettings, make_env: Any, key: str | None, stats: APIStats) -> Player:
    """Message-level episodes through an OpenAI-compatible chat API (no tokenizer: the server's is unknown)."""
    from agentrl.eval.openai_backend import ChatAPI, evaluate_chat_api

    api = ChatAPI(
        base_url=s.base_url or "", model=s.model or "", api_key=key, temperature=float(s.temperature or 0.0),
        top_p=s.top_p, top_k=s.top_k, min_p=s.min_p, max_tokens=int(s.max_new_tokens or 256), stop=list(s.stop or []),
        max_concurrency=s.max_concurrency,
    )  # fmt: skip

    def play(label, todo, on_chunk, on_progress):
        return evaluate_chat_api(
            api, make_env, todo, samples=s.samples, seed=int(s.seed or 0), max_turns=int(s.max_turns or 8),
            max_total_tokens=int(s.max_total_tokens or 4096), stats=stats, on_chunk=on_chunk, on_progress=on_progress,
        )  # fmt: skip

    return play


def _evaluate_all(
    s: EvalSettings, out: Path, task_ids: list[str], make_env: Any, show_progress: bool, key: str | None = None
) -> tuple[dict[str, Any], dict[str, list[Trajectory]]]:
    """Every label's episodes (resumed from disk where finished) and their metrics."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from agentrl.eval.openai_backend import TOKEN_METRICS_ABSENT, APIStats

    stats = APIStats()
    if s.backend == "openai":
        play, tokenizer = _chat_api_player(s, make_env, key, stats), None
    else:
        play, tokenizer = _engine_player(s, make_env)
    wanted = set(task_ids)
    labels = ["base", "adapter"] if s.compare else ["adapter" if s.adapter else "base"]

    results: dict[str, dict[str, Any]] = {}
    trajectories: dict[str, list[Trajectory]] = {}
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, TextColumn("{task.fields[info]}"), disable=not show_progress) as progress:
        for label in labels:
            path = out / label / "trajectories.jsonl" if s.compare else out / "trajectories.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            rows = read_rows(path)
            done = _finished(rows, s.samples)
            done &= wanted
            kept = [r for r in rows if r["task_id"] in done]
            # Rewrite the file with only the finished tasks, so a half-written task is never counted twice.
            _write_rows(path, kept, "w")
            todo = [tid for tid in task_ids if tid not in done]
            bar = progress.add_task(f"eval {label}", total=len(task_ids), completed=len(task_ids) - len(todo), info="")
            new = play(
                label,
                todo,
                lambda trajs, p=path: _write_rows(p, _rows(_labelled(s, trajs), tokenizer), "a"),
                lambda n, b=bar: progress.advance(b, n),
            )
            trajectories[label] = [Trajectory.from_dict(r) for r in kept] + new
            results[label] = eval_metrics(trajectories[label], k=s.samples, seed=s.seed)
            sr = results[label]["success_rate"]
            progress.console.print(
                f"{label}: success {sr['mean']:.1%} (95% CI {sr['ci95_low']:.1%} to {sr['ci95_high']:.1%}, "
                f"n={results[label]['tasks']} tasks x {s.samples})"
            )

    # The settings go into summary.json and both reports; a key given as an env kwarg stays out of them.
    summary: dict[str, Any] = {"settings": redact(asdict(s)), "results": results}
    if s.backend == "openai":
        summary["token_metrics"] = TOKEN_METRICS_ABSENT
        summary["api"] = stats.to_dict()
        if stats.without_usage:  # a count the server did not report is unknown, not zero
            for m in results.values():
                m["mean_generated_tokens"] = None
    if s.compare:
        b, a, seed = trajectories["base"], trajectories["adapter"], int(s.seed or 0)
        summary["comparison"] = _comparison(b, a, seed)
        if s.mix:  # each environment's own: one environment's gain can hide another's loss
            after = by_env(a)
            summary["comparison_per_env"] = {n: _comparison(e, after.get(n, []), seed) for n, e in by_env(b).items()}
    return summary, trajectories


def _comparison(base: list[Trajectory], adapter: list[Trajectory], seed: int) -> dict[str, Any]:
    return {
        "success": paired_difference(per_task_success(base), per_task_success(adapter), seed=seed),
        "mean_reward": paired_difference(per_task_reward(base), per_task_reward(adapter), seed=seed),
    }


def _labelled(s: EvalSettings, trajs: list[Trajectory]) -> list[Trajectory]:
    """On a mix, each episode labelled with its environment (before it is written, so the rows record it)."""
    if s.mix:
        from agentrl.envs.mix import label

        label(trajs)
    return trajs
