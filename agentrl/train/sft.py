"""Supervised warm start: the same LoRA, fine-tuned on tool-use demonstrations before GRPO.

A small model that never opens with a tool call gives GRPO nothing to reinforce: every episode of a
group fails the same way and the group carries no signal. A few dozen demonstrations of the format
fix that cheaply, which is why the best-known GRPO recipes start with a short SFT stage.

Demonstrations come from a JSONL file of chat conversations (``{"messages": [...], "tools": [...]}``
per line, OpenAI-style ``tool_calls`` and ``tool`` messages) or from the environment itself
(``env.demonstrations(n, split="train")``: solved episodes played through its real tools). Never from
the test split.

Each one is rendered by :func:`agentrl.chat.conversation.demonstration`, the rollouts' own token-exact
builder: the model is taught exactly the tokens GRPO will sample, and every turn is checked to parse
back to the same tool calls. The loss covers the assistant's tokens only (TRL's ``assistant_masks``):
prompts and tool results are context, not targets. Training itself is TRL's ``SFTTrainer`` on the
PEFT model the GRPO trainer goes on to update.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import torch

from agentrl.chat.conversation import DemonstrationError, TokenConversation, demonstration
from agentrl.chat.format import ChatFormat
from agentrl.envs.mix import MixedEnv, apportion
from agentrl.errors import UserError
from agentrl.models import set_training
from agentrl.train.logprobs import token_logprobs

log = logging.getLogger("agentrl")


def read_conversations(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a JSONL file: each ``{"messages": [...]}``, optionally with ``"tools"`` (JSON schemas)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"sft.data: file not found: {p}")
    rows = []
    for n, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{p}:{n}: not JSON: {exc}") from None
        if isinstance(row, list):
            row = {"messages": row}
        if not isinstance(row, dict) or not isinstance(row.get("messages"), list):
            raise UserError(f"{p}:{n}: expected an object with a 'messages' list")
        rows.append(row)
    if not rows:
        raise UserError(f"sft.data: {p} holds no conversations")
    return rows


def environment_demonstrations(env: Any, n: int) -> list[dict[str, Any]]:
    """``n`` solved training episodes written by the environment, with its tool specs. A mix of environments
    shares them out by weight, and each environment writes its own with its own tools."""
    if isinstance(env, MixedEnv):
        rows = []
        for name, k in zip(env.names, apportion(n, [c.weight for c in env.components.values()]), strict=True):
            if k:
                one = env.build(name)
                try:
                    rows += environment_demonstrations(one, k)
                except UserError as exc:
                    raise UserError(f"{exc} (environment {name!r} of env.mix)") from None
                finally:
                    one.close()
        return rows
    if not hasattr(env, "demonstrations"):
        raise UserError(f"sft.demonstrations: {type(env).__name__} cannot write demonstrations; use sft.data")
    if getattr(env, "split", "train") == "test":
        raise UserError("sft.demonstrations: demonstrations never come from the test split")
    tools = list(env.tool_specs)
    return [{"messages": msgs, "tools": tools} for msgs in env.demonstrations(n, split="train")]


def render(chat: ChatFormat, rows: list[dict[str, Any]], *, max_length: int) -> tuple[list[TokenConversation], int]:
    """Token conversations of the rows, and how many were dropped for being longer than ``max_length``."""
    out, too_long = [], 0
    for i, row in enumerate(rows):
        try:
            conv = demonstration(chat, row["messages"], row.get("tools"))
        except DemonstrationError as exc:
            raise UserError(f"demonstration {i}: {exc}") from None
        if len(conv.ids) > max_length:
            too_long += 1
            continue
        out.append(conv)
    if not out:
        raise UserError(f"every demonstration is longer than {max_length} tokens (sft.max_length)")
    return out, too_long


def _assistant_nll(model: Any, input_ids: Any, attention: Any, mask: Any) -> tuple[Any, Any]:
    """Summed negative log-likelihood of the tokens where ``mask`` is set, and their count.

    Rows are right-padded. Through :func:`agentrl.train.logprobs.token_logprobs`, as the GRPO trainer
    computes its logprobs: the system prompt and tool specs every demonstration opens with run
    through the decoder once, and only assistant positions go through the LM head (a demonstration
    is about 290 shared tokens and 60 own ones, of which the assistant's are about 70%).
    """
    lp = token_logprobs(model, input_ids, attention, mask)
    counted = mask[:, 1:].sum()  # the first token is never predicted
    return -lp.sum(), counted


@torch.no_grad()
def assistant_loss(model: Any, convs: list[TokenConversation], *, batch_size: int = 8) -> float:
    """Mean cross-entropy over the assistant tokens (the SFT objective), without gradients."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    for i in range(0, len(convs), batch_size):
        chunk = convs[i : i + batch_size]
        width = max(len(c.ids) for c in chunk)
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        attention = torch.zeros_like(ids)
        mask = torch.zeros_like(ids)
        for j, c in enumerate(chunk):
            n = len(c.ids)
            ids[j, :n] = torch.tensor(c.ids)
            attention[j, :n] = 1
            mask[j, :n] = torch.tensor(c.mask)
        nll, n_tokens = _assistant_nll(model, ids.to(device), attention.to(device), mask.to(device))
        total += float(nll)
        count += int(n_tokens)
    set_training(model, was_training)
    return total / max(count, 1)


def _cpu_trainer(base: type) -> type:
    """SFTTrainer with its loss computed by the trainer's own logprob pass, for devices without Triton.

    TRL 1.15 computes the SFT loss only through its fused LM-head kernel, which is Triton and needs a
    GPU; on a CPU every step fails with "0 active drivers". This computes the same quantity, the summed
    negative log-likelihood of the label tokens over the batch's label count (``num_items_in_batch``
    across gradient accumulation), through :func:`_assistant_nll`: the shared opening once per batch
    and the LM head on labelled positions only (value and gradient equal the full-logits loss; 2x
    faster on the sandbox recipe). The rest (data, optimizer, schedule, loop) is TRL's.
    """

    class CPUSFTTrainer(base):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            ids, labels = inputs["input_ids"], inputs["labels"]
            mask = labels != -100
            if not torch.equal(labels[mask], ids[mask]):
                raise RuntimeError("TRL's labels are not the input tokens at the labelled positions")
            attention = inputs.get("attention_mask", torch.ones_like(ids))
            nll, counted = _assistant_nll(model, ids, attention, mask.long())
            count = num_items_in_batch if num_items_in_batch is not None else counted.clamp(min=1)
            loss = nll / count
            return (loss, {"loss": loss}) if return_outputs else loss

    return CPUSFTTrainer


def _keep_the_base(model: Any) -> None:
    """Unsloth's SFT trainer, which replaces TRL's once Unsloth is imported, overwrites embedding rows it takes
    for untrained (all near zero) unless the model is on its list of names to leave alone. The base is frozen
    and the adapter saved without it, so its name goes on that list (``UNSLOTH_IGNORED_TOKENIZER_NAMES``)."""
    name = str(getattr(model.config, "_name_or_path", "") or "")
    listed = os.environ.get("UNSLOTH_IGNORED_TOKENIZER_NAMES", "")
    if name and name not in listed.split("\n"):
        os.environ["UNSLOTH_IGNORED_TOKENIZER_NAMES"] = f"{listed}\n{name}" if listed else name


def run_sft(
    model: Any,
    tokenizer: Any,
    convs: list[TokenConversation],
    section: Any,
    *,
    output_dir: Path,
    seed: int,
    on_step: Any = None,
) -> dict[str, Any]:
    """Fine-tune ``model``'s LoRA in place on ``convs`` with TRL's SFTTrainer; returns the stage's record.

    ``on_step(step, total, loss)`` is called after each optimizer step (the caller's progress bar).
    """
    from datasets import Dataset
    from transformers import PrinterCallback, ProgressCallback, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    dataset = Dataset.from_list([{"input_ids": c.ids, "assistant_masks": c.mask} for c in convs])
    device = next(model.parameters()).device
    bf16 = device.type == "cuda" and next(model.parameters()).dtype == torch.bfloat16
    steps_per_epoch = math.ceil(len(convs) / (section.batch_size * section.gradient_accumulation_steps))
    args = SFTConfig(
        output_dir=str(output_dir),
        num_train_epochs=section.epochs,
        per_device_train_batch_size=section.batch_size,
        gradient_accumulation_steps=section.gradient_accumulation_steps,
        learning_rate=section.learning_rate,
        lr_scheduler_type=section.lr_schedule,
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=seed,
        data_seed=seed,
        bf16=bf16,
        fp16=False,
        use_cpu=device.type == "cpu",
        gradient_checkpointing=False,  # the trainer's model is already set up (or not) for checkpointing
        max_length=None,  # render() has dropped what is too long; nothing is cut mid-turn
        packing=False,
        dataset_num_proc=None,
        disable_tqdm=True,  # progress goes through on_step, to the caller's own display
        # Set, not left to the defaults: with Unsloth imported, SFTConfig is Unsloth's, whose defaults are an
        # 8-bit AdamW and padding-free batches.
        optim="adamw_torch",
        padding_free=False,
    )
    _keep_the_base(model)
    before = assistant_loss(model, convs, batch_size=section.batch_size)
    cls = SFTTrainer if device.type == "cuda" else _cpu_trainer(SFTTrainer)
    trainer = cls(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    if trainer.model is not model and getattr(trainer.model, "base_model", None) is not getattr(model, "base_model", 0):
        raise RuntimeError("SFTTrainer wrapped the model in a new one; the GRPO trainer would not see its updates")
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if on_step is not None:

        class Report(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and "loss" in logs:
                    on_step(state.global_step, state.max_steps, float(logs["loss"]))

        trainer.add_callback(Report())
    # TRL turns the mask into labels; this check keeps the loss on the assistant's tokens only, exactly.
    prepared = trainer.train_dataset
    for row, conv in zip(prepared, convs, strict=True):
        want = [t if m else -100 for t, m in zip(conv.ids, conv.mask, strict=True)]
        if list(row["labels"]) != want:
            raise RuntimeError("TRL's labels differ from the assistant mask")
    result = trainer.train()
    after = assistant_loss(model, convs, batch_size=section.batch_size)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    set_training(model, True)
    return {
        "examples": len(convs),
        "assistant_tokens": sum(sum(c.mask) for c in convs),
        "epochs": section.epochs,
        "optimizer_steps": int(trainer.state.global_step),
        "steps_per_epoch": steps_per_epoch,
        "loss_before": before,
        "loss_after": after,
        "train_losses": losses,
        "train_seconds": round(float(result.metrics.get("train_runtime", 0.0)), 1),
    }


def warm_start(
    recipe: Any,
    model: Any,
    tokenizer: Any,
    chat: ChatFormat,
    make_env: Any,
    out: Path,
    *,
    step: int,
    progress: Any = None,
) -> dict[str, Any] | None:
    """The recipe's SFT stage, once per run: ``OUTPUT_DIR/sft/`` holds its adapter and ``summary.json``.

    A resumed run does not repeat it: before the first GRPO checkpoint the SFT adapter is loaded back;
    after it, the checkpoint holds the weights already. ``progress`` is the trainer's rich Progress
    (its console gets the stage's lines and a bar follows the optimizer steps), or None.
    """
    say, on_step, bar = _progress_hooks(progress)
    from agentrl.train.checkpoint import load_adapter_weights
    from agentrl.train.run_dir import read_json, write_json

    s = recipe.sft
    if not s.enabled:
        return None
    record = read_json(out / "sft" / "summary.json")
    if record is not None:
        if step == 0:
            load_adapter_weights(model, out / "sft" / "adapter")
        return record
    rows = read_conversations(s.data) if s.data else []
    if s.demonstrations:
        env = make_env()
        try:
            rows += environment_demonstrations(env, s.demonstrations)
        finally:
            env.close()
    convs, too_long = render(chat, rows, max_length=s.max_length or recipe.grpo.max_total_tokens)
    if too_long:
        log.warning("sft: %d demonstrations are longer than sft.max_length and were left out", too_long)
    say(f"sft: {len(convs)} demonstrations, {sum(sum(c.mask) for c in convs)} assistant tokens")
    record = run_sft(model, tokenizer, convs, s, output_dir=out / "sft", seed=recipe.seed, on_step=on_step)
    record["left_out_too_long"] = too_long
    model.save_pretrained(out / "sft" / "adapter")
    write_json(out / "sft" / "summary.json", record)
    say(
        f"sft: assistant-token loss {record['loss_before']:.3f} -> {record['loss_after']:.3f} "
        f"in {record['optimizer_steps']} steps ({record['train_seconds']:.0f} s)"
    )
    if bar:
        progress.remove_task(bar[0])
    return record


def _progress_hooks(progress: Any) -> tuple[Any, Any, list]:
    """``say(text)`` and ``on_step(step, total, loss)`` for a rich Progress (or the log alone), and the
    list that will hold the bar's id once the first step reports."""
    bar: list = []

    def say(text: str) -> None:
        log.info(text)
        if progress is not None:
            progress.console.print(text, markup=False, highlight=False)

    def on_step(step: int, total: int, loss: float) -> None:
        if progress is None:
            return
        if not bar:
            bar.append(progress.add_task("sft", total=total, info=""))
        progress.update(bar[0], completed=step, info=f"loss {loss:.4f}")

    return say, on_step, bar
