"""The ``agentrl`` command line: one entry point, one subcommand per job.

Every subcommand has ``--help``. Exit status is 0 on success; on failure it is non-zero and the
last line printed to stderr says why, in one line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from agentrl import __version__


def _cmd_envs(args: argparse.Namespace) -> int:
    from agentrl.registry import registry

    specs = sorted(registry().values(), key=lambda s: s.id)
    width = max((len(s.id) for s in specs), default=0)
    for s in specs:
        limit = f"  [max_turns={s.max_turns}]" if args.verbose and s.max_turns else ""
        print(f"{s.id.ljust(width)}  {s.summary}{limit}")
    return 0


def _cmd_doctor(args: argparse.Namespace) -> int:
    from agentrl.doctor import format_table, run_doctor

    checks = run_doctor(args.model, env_id=args.env, template=args.template, enable_thinking=not args.no_thinking)
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
    from agentrl.recipe import load_recipe

    path, overrides = args.recipe, list(args.overrides)
    if path is not None and "=" in path and not path.endswith((".yaml", ".yml")):
        path, overrides = None, [path, *overrides]  # only overrides were given
    recipe = load_recipe(path, overrides)
    if args.print_recipe:
        import yaml

        from agentrl.recipe import recipe_to_dict

        print(yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False), end="")
        return 0
    from agentrl.trainer import Trainer

    summary = Trainer(recipe).train()
    before, after = summary.get("eval_before"), summary.get("eval_after")
    if before and after:
        delta = 100 * (after["success_rate"] - before["success_rate"])
        print(
            f"held-out success: {before['success_rate']:.1%} -> {after['success_rate']:.1%} "
            f"({delta:+.1f} points, n={after['n']}) in {summary['wall_seconds']:.0f} s"
        )
    diff = summary.get("success_difference")
    if diff:
        print(
            f"paired difference over the same {diff['n']} tasks: {100 * diff['difference']:+.1f} points "
            f"(95% CI {100 * diff['ci95_low']:+.1f} to {100 * diff['ci95_high']:+.1f})"
        )
    print(f"adapter: {summary['adapter']}\nsummary: {recipe.output_dir}/summary.json")
    if summary.get("reward_curve"):
        print(f"reward curve: {summary['reward_curve']}")
    return 0


def _train_epilog() -> str:
    from agentrl.recipe import describe

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
        help="check that a model's chat format and an environment work together",
        description=(
            "Check a tokenizer's chat template and an environment before training: template rendering, "
            "prefix preservation over multi-turn thinking conversations, tool-call round trip, stop token, "
            "thinking handling and the environment API contract. Prints a pass/fail table; exits 1 on any failure."
        ),
    )
    p.add_argument(
        "model",
        help="model or tokenizer: local dir, hub id, or an offline alias "
        "('tiny-qwen3', 'tiny-qwen3-training', 'smollm2-135m')",
    )
    p.add_argument("--env", default="arithmetic", help="environment id or module:Class (default: arithmetic)")
    p.add_argument(
        "--template",
        default="auto",
        help="chat template: auto (the tokenizer's), stock, training (TRL's training variant), or a .jinja path",
    )
    p.add_argument("--no-thinking", action="store_true", help="render with enable_thinking=False")
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
    except Exception as exc:  # one line for users; the traceback is noise for a bad argument
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"agentrl {args.command}: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
