"""The ``agentrl`` command line: one entry point, one subcommand per job.

Every subcommand has ``--help``. Exit status:

- 0 on success;
- 2 for a user mistake (a bad argument or recipe key, a missing file or package): one line on
  stderr that says what to change, and no traceback, because the traceback would be noise;
- 1 for anything unexpected, with its full traceback: it is a bug, in agentrl or in the user's
  environment code, and hiding where it happened would make it impossible to fix.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from agentrl import __version__
from agentrl.errors import UserError


def _cmd_envs(args: argparse.Namespace) -> int:
    from agentrl.envs.registry import registry

    specs = sorted(registry().values(), key=lambda s: s.id)
    width = max((len(s.id) for s in specs), default=0)
    for s in specs:
        limit = f"  [max_turns={s.max_turns}]" if args.verbose and s.max_turns else ""
        print(f"{s.id.ljust(width)}  {s.summary}{limit}")
    return 0


def _cmd_doctor(args: argparse.Namespace) -> int:
    positional = [a for a in (args.model, *args.overrides) if a is not None]
    if args.memory:
        from agentrl.train.memory_report import memory_report
        from agentrl.train.recipe import load_recipe

        stray = [a for a in positional if "=" not in a]
        if stray:
            raise UserError(f"--memory takes the model from the recipe; {stray[0]!r} is not a key=value override")
        if args.device_memory is not None and args.device_memory <= 0:
            raise UserError(f"--device-memory must be a positive number of GiB, got {args.device_memory:g}")
        print(memory_report(load_recipe(args.memory, positional), device_memory_gib=args.device_memory))
        return 0
    if args.model is None:
        raise UserError("give a MODEL to check its chat template, or --memory RECIPE to estimate a run's memory")
    if args.overrides or args.device_memory is not None:
        raise UserError("key=value overrides and --device-memory go with --memory RECIPE")
    from agentrl.chat.doctor import format_table, run_doctor

    checks = run_doctor(
        args.model, env_id=args.env, template=args.template, enable_thinking=not args.no_thinking, mcp=args.mcp
    )
    print(format_table(checks))
    failed = [c for c in checks if not c.ok]
    if failed:
        print(
            f"agentrl doctor: {len(failed)} check(s) failed; first: {failed[0].name}: {failed[0].detail}",
            file=sys.stderr,
        )
        return 1
    print(f"\nall {len(checks)} checks passed")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from agentrl.train.recipe import load_recipe

    path, overrides = args.recipe, list(args.overrides)
    if path is not None and "=" in path and not path.endswith((".yaml", ".yml")):
        path, overrides = None, [path, *overrides]  # only overrides were given
    recipe = load_recipe(path, overrides)
    if args.print_recipe:
        import yaml

        from agentrl.redact import redact
        from agentrl.train.recipe import recipe_to_dict

        # Printed as recipe.json records it: output that is pasted into issues holds no keys.
        print(yaml.safe_dump(redact(recipe_to_dict(recipe)), sort_keys=False), end="")
        return 0
    from agentrl.quantize import import_unsloth_first

    import_unsloth_first(recipe.model.loader, recipe.model.load_in_4bit)
    from agentrl.train.trainer import Trainer

    if args.command == "sft" and not recipe.sft.enabled:
        raise UserError("the recipe has no sft stage: set sft.demonstrations (env-written) or sft.data (a JSONL file)")
    summary = Trainer(recipe).train(grpo=args.command == "train")
    if os.environ.get("RANK", "0") != "0":
        return 0  # under accelerate launch or torchrun, rank 0 reports for every rank
    _print_stages(summary)
    print(f"adapter: {summary['adapter']}\nsummary: {recipe.output_dir}/summary.json")
    if summary.get("reward_curve"):
        print(f"reward curve: {summary['reward_curve']}")
    return 0


def _print_stages(summary: dict) -> None:
    """Held-out success at each stage (base, after SFT, after GRPO) and the paired difference of each."""
    names = (("base", "eval_before"), ("sft", "eval_sft"), ("grpo", "eval_after"))
    stages = [(label, summary.get(key)) for label, key in names]
    shown = [(k, v) for k, v in stages if v]
    if len(shown) >= 2:
        path = " -> ".join(f"{v['success_rate']:.1%} ({k})" for k, v in shown)
        print(f"held-out success: {path}, n={shown[-1][1]['n']}, in {summary['wall_seconds']:.0f} s")
    labels = (("success_difference", "base -> final"), ("sft_difference", "base -> sft"),
              ("grpo_difference", "sft -> grpo"))  # fmt: skip
    for key, label in labels:
        d = summary.get(key)
        if d and (key != "success_difference" or "sft_difference" not in summary or "grpo_difference" in summary):
            print(
                f"paired difference {label} over the same {d['n']} tasks: {100 * d['difference']:+.1f} points "
                f"(95% CI {100 * d['ci95_low']:+.1f} to {100 * d['ci95_high']:+.1f})"
            )


def _cmd_eval(args: argparse.Namespace) -> int:
    from agentrl.eval.run import EvalSettings, run_eval
    from agentrl.train.recipe import parse_overrides

    env_kwargs = parse_overrides(args.env_kwargs)
    settings = EvalSettings(
        model=args.model, adapter=args.adapter, env=args.env, env_kwargs=env_kwargs, split=args.split,
        num_tasks=args.num_tasks, samples=args.k, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
        min_p=args.min_p, max_new_tokens=args.max_new_tokens, stop=args.stop, max_turns=args.max_turns,
        max_total_tokens=args.max_total_tokens, chat_template=args.chat_template, backend=args.backend,
        server_urls=args.server_url, base_url=args.base_url, api_key_env=args.api_key_env,
        max_concurrency=args.max_concurrency, load_in_4bit=args.load_in_4bit, loader=args.loader, compare=args.compare,
        seed=args.seed,
        output_dir=args.output_dir,
        run_dir=args.run_dir, overwrite=args.overwrite,
    )  # fmt: skip
    summary = run_eval(settings, show_progress=not args.no_progress)
    for label, m in summary["results"].items():
        at = "  ".join(f"pass@{k} {v['mean']:.1%}" for k, v in m["pass_at_k"].items())
        print(f"{label}: {at}  mean reward {m['mean_reward']['mean']:.3f}  (n={m['tasks']} tasks)")
        for name, e in (m.get("per_env") or {}).items():  # a mix of environments: each one alone
            at = "  ".join(f"pass@{k} {v['mean']:.1%}" for k, v in e["pass_at_k"].items())
            print(f"  {name}: {at}  mean reward {e['mean_reward']['mean']:.3f}  (n={e['tasks']} tasks)")
    comp = summary.get("comparison")
    if comp:
        for name, c in [("", comp), *(summary.get("comparison_per_env") or {}).items()]:
            d, lead = c["success"], f"  {name}: " if name else ""
            print(
                f"{lead}paired difference over the same {d['n']} tasks: {100 * d['difference']:+.1f} points "
                f"(95% CI {100 * d['ci95_low']:+.1f} to {100 * d['ci95_high']:+.1f})"
            )
    if summary.get("token_metrics"):
        api = summary["api"]
        print(f"token-level metrics: {summary['token_metrics']}")
        print(f"chat API: {api['requests']} requests, {api['failed']} failed after retries, {api['retries']} retries")
    out = summary["settings"]["output_dir"]
    print(f"summary: {out}/summary.json\nreport: {out}/report.html  {out}/report.md")
    return 0


def _cmd_view(args: argparse.Namespace) -> int:
    from agentrl.eval.view import write_view

    path = write_view(args.run_dir, out=args.output, model=args.model, limit=args.limit, task=args.task, env=args.env)
    print(f"wrote {path}")
    return 0


def _train_epilog() -> str:
    from agentrl.train.recipe import describe

    return "recipe keys (section.key = default  description):\n" + "\n".join(describe())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agentrl",
        description="Reinforcement learning for LLM agents that use tools.",
    )
    parser.add_argument("--version", action="version", version=f"agentrl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("envs", help="list registered environments", description="List registered environments.")
    p.add_argument("-v", "--verbose", action="store_true", help="also show turn limits")
    p.set_defaults(func=_cmd_envs)

    p = sub.add_parser(
        "doctor",
        help="check a model's chat format with an environment, or whether a recipe fits in memory",
        description=(
            "Check a tokenizer's chat template and an environment before training: template rendering,\n"
            "prefix preservation over multi-turn thinking conversations, tool-call round trip, stop token,\n"
            "thinking handling and the environment API contract. Prints a pass/fail table; exits 1 on any failure.\n\n"
            "With --memory RECIPE instead: estimate the peak memory of training RECIPE part by part (weights,\n"
            "LoRA and AdamW, activations, logits, the rollout KV cache, vLLM), for sequences that fill\n"
            "grpo.max_total_tokens. Prints a verdict for --device-memory, else for this machine's GPU, else for\n"
            "24 GB and 80 GB cards and for this CPU; when it does not fit, the setting that would."
        ),
        epilog=(
            "examples:\n  agentrl doctor tiny-qwen3-training --env arithmetic\n"
            "  agentrl doctor tiny-qwen3 --mcp 'python -m mcp_server_time' --mcp http://127.0.0.1:8000/mcp\n"
            "  agentrl doctor --memory recipes/qwen3-4b-arithmetic.yaml\n"
            "  agentrl doctor --memory recipes/qwen3-4b-arithmetic.yaml --device-memory 16 grpo.micro_batch_size=2"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "model",
        nargs="?",
        help="model or tokenizer: local dir, hub id, or an offline alias "
        "('tiny-qwen3', 'tiny-qwen3-training', 'smollm2-135m'); not with --memory",
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="with --memory: recipe overrides")
    p.add_argument(
        "--memory", metavar="RECIPE", help="estimate the peak memory of training RECIPE instead of checking a template"
    )
    p.add_argument(
        "--device-memory",
        type=float,
        metavar="GIB",
        help="with --memory: the GPU's memory in GiB (default: this machine's GPU, else 24 GB and 80 GB cards)",
    )
    p.add_argument("--env", default="arithmetic", help="environment id or module:Class (default: arithmetic)")
    p.add_argument(
        "--template",
        default="auto",
        help="chat template: auto (the tokenizer's), stock, training (TRL's training variant), or a .jinja path",
    )
    p.add_argument("--no-thinking", action="store_true", help="render with enable_thinking=False")
    p.add_argument(
        "--mcp",
        action="append",
        default=[],
        metavar="COMMAND|URL",
        help="also list an MCP server's tools and check that the template renders them: a stdio command line "
        "(quoted; prefix `env KEY=VALUE` for its settings) or a streamable-HTTP URL; repeatable",
    )
    p.set_defaults(func=_cmd_doctor)

    p = sub.add_parser(
        "train",
        help="train a LoRA adapter with GRPO from a recipe",
        description=(
            "Train a LoRA adapter with GRPO. RECIPE is a YAML file; key=value arguments override its entries "
            "(e.g. grpo.steps=20 env.kwargs.digits=2). Writes checkpoints, metrics.jsonl, TensorBoard logs, "
            "trajectories, the adapter and summary.json to output_dir, and resumes from its latest checkpoint."
        ),
        epilog=_train_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("recipe", nargs="?", help="recipe YAML (omit to start from the defaults)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides")
    p.add_argument("--print-recipe", action="store_true", help="print the resolved recipe and exit")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "sft",
        help="run a recipe's supervised warm start (its sft section) only",
        description=(
            "Fine-tune the recipe's LoRA adapter on tool-use demonstrations with TRL's SFTTrainer, the loss on the "
            "assistant's tokens only: solved training episodes the environment writes (sft.demonstrations=N) or a "
            "JSONL file of chat conversations (sft.data=PATH). Evaluates held-out success before and after, and "
            "writes the adapter to output_dir. `agentrl train` with the same recipe and output_dir then continues "
            "with GRPO from it; `agentrl train` alone runs both stages."
        ),
        epilog="example: agentrl sft recipes/sandbox.yaml sft.epochs=2",
    )
    p.add_argument("recipe", nargs="?", help="recipe YAML (omit to start from the defaults)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides")
    p.add_argument("--print-recipe", action="store_true", help="print the resolved recipe and exit")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "eval",
        help="evaluate a model or adapter on held-out tasks: pass@k, CIs, a report",
        description=(
            "Evaluate a model (and a LoRA adapter) on an environment's held-out split with the training rollout\n"
            "loop. Reports mean reward, pass@1..k (unbiased), pass^k, bootstrap 95% CIs, tool-call, parse-failure\n"
            "and truncation rates and per-task rows; --compare adds the paired difference between base and adapter.\n"
            "Writes trajectories.jsonl, summary.json, report.md and report.html to --output-dir. Running the same\n"
            "command again resumes: finished tasks are skipped. A training run directory passed as --adapter\n"
            "supplies the model, environment and eval settings of its recipe.\n\n"
            "Backends:\n"
            "  hf, vllm     generate in this process (token-level: token ids and logprobs in the trajectories)\n"
            "  vllm-server  generates on running vLLM servers (--server-url, repeatable), token-level too;\n"
            "               --model is the local copy of the served model, for its tokenizer\n"
            "  openai       any OpenAI-compatible chat API (--base-url, --model = the served name, the key from\n"
            "               $OPENAI_API_KEY or --api-key-env): the same environments, seeds and scoring, played\n"
            "               message by message; the report says that token-level metrics are absent. Failed\n"
            "               requests are retried, then counted as infrastructure failures (never a zero reward);\n"
            "               when more than half fail, or the server rejects a request, the run stops."
        ),
        epilog=(
            "examples:\n  agentrl eval --adapter runs/quickstart --compare\n"
            "  agentrl eval --backend vllm-server --server-url http://127.0.0.1:8000 --model Qwen/Qwen3-0.6B "
            "--adapter runs/x\n"
            "  OPENAI_API_KEY=... agentrl eval --backend openai --base-url https://api.openai.com/v1 "
            "--model gpt-4o-mini --env arithmetic -n 50"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("env_kwargs", nargs="*", metavar="key=value", help="environment kwargs, e.g. digits=2")
    p.add_argument(
        "--model",
        help="base model: hub id, local dir or alias (default: the run's, else smollm2-135m); "
        "with --backend openai, the model name the server serves (required)",
    )
    p.add_argument("--adapter", help="PEFT adapter dir, or a training run dir holding adapter/")
    p.add_argument("--env", help="environment id (default: the run's, else arithmetic)")
    p.add_argument("--split", default="test", help="split to evaluate (default: test)")
    p.add_argument("-n", "--num-tasks", type=int, help="evaluate the first N tasks (default: the run's, else all)")
    p.add_argument("-k", type=int, default=1, help="episodes per task; pass@1..k and pass^k are reported (default 1)")
    p.add_argument("--temperature", type=float, help="sampling temperature (default: 0 for k=1, else 1.0)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1.0: off)")
    p.add_argument("--top-k", type=int, default=0, help="top-k sampling (default 0: off)")
    p.add_argument("--min-p", type=float, default=0.0, help="min-p sampling (default 0: off)")
    p.add_argument("--max-new-tokens", type=int, help="tokens per turn (default: the run's, else 256)")
    p.add_argument("--stop", action="append", help="a string that ends a turn; repeatable (default: the run's)")
    p.add_argument(
        "--max-turns", type=int, help="assistant turns per episode (default: the run's, else the environment's limit)"
    )
    p.add_argument("--max-total-tokens", type=int, help="token budget per episode (default: the run's, else 4096)")
    p.add_argument("--chat-template", help="auto, stock, training or a .jinja path (default: the run's, else auto)")
    p.add_argument(
        "--backend",
        default="hf",
        choices=["hf", "vllm", "vllm-server", "openai"],
        help="hf or vllm (in this process), vllm-server (vLLM servers at --server-url), or openai "
        "(an OpenAI-compatible chat API at --base-url) (default hf)",
    )
    p.add_argument(
        "--server-url",
        action="append",
        metavar="URL",
        help="with --backend vllm-server: a vLLM server, e.g. http://127.0.0.1:8000; repeatable",
    )
    p.add_argument(
        "--base-url",
        metavar="URL",
        help="with --backend openai: the API's base URL, e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1",
    )
    p.add_argument(
        "--api-key-env",
        default="OPENAI_API_KEY",
        metavar="NAME",
        help="with --backend openai: environment variable holding the API key (default OPENAI_API_KEY; "
        "a loopback server needs none); the key is never printed or written",
    )
    p.add_argument(
        "--max-concurrency",
        type=int,
        default=8,
        metavar="N",
        help="with --backend openai: chat requests in flight at once (default 8)",
    )
    p.add_argument(
        "--load-in-4bit", action=argparse.BooleanOptionalAction, default=None,
        help="base in 4-bit NF4, or not (default: as the training run's base was, else 16-bit)",
    )  # fmt: skip
    p.add_argument(
        "--loader", choices=("auto", "unsloth", "bitsandbytes", "transformers"),
        help="who loads the base with --backend hf (default: the loader that trained the run's adapter, from its "
             "base.json, else auto)",
    )  # fmt: skip
    p.add_argument("--compare", action="store_true", help="evaluate base and adapter on the same tasks and seeds")
    p.add_argument("--seed", type=int, help="seed of resets and sampling (default: the run's, else 0)")
    p.add_argument(
        "--output-dir",
        help="results directory (default: RUN_DIR/eval, else runs/eval/ENV; with --backend openai, "
        "RUN_DIR/eval-ENV-MODEL, else runs/eval/ENV-MODEL)",
    )
    p.add_argument("--run-dir", help="training run whose reward curve goes into the report")
    p.add_argument("--overwrite", action="store_true", help="start again instead of resuming")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser(
        "view",
        help="render a run's trajectories as HTML",
        description=(
            "Render the trajectories of a training or evaluation run (every *trajectories.jsonl under RUN_DIR) as "
            "one HTML page: messages with tool calls and tool results highlighted, rewards and reward components, "
            "and the tokens that were sampled (and so trained on) marked in the token view. A run on a mix of "
            "environments shows each episode's environment; --env NAME shows one of them alone."
        ),
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a training or evaluation output directory")
    p.add_argument("-o", "--output", help="HTML file to write (default: RUN_DIR/trajectories.html)")
    p.add_argument("--model", help="tokenizer for the token view (default: the run's model)")
    p.add_argument("--limit", type=int, default=50, help="episodes per file (default 50; 0 for all)")
    p.add_argument("--task", help="only this task id")
    p.add_argument(
        "--env",
        metavar="NAME",
        help="only the episodes of this environment of a mixed run (its name in env.mix; the default is all)",
    )
    p.set_defaults(func=_cmd_view)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("agentrl: interrupted", file=sys.stderr)
        return 130
    except UserError as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"agentrl {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
