"""The SFT warm start: demonstrations rendered as rollouts are, the loss on assistant tokens only,
TRL's SFTTrainer lowering it, and `agentrl train` continuing with GRPO from the SFT adapter."""

from __future__ import annotations

import json

import pytest
import torch

from agentrl import make
from agentrl.assets import qwen3_tokenizer
from agentrl.chat.conversation import DemonstrationError, TokenConversation, demonstration
from agentrl.chat.format import load_chat_format
from agentrl.chat.parsing import parse_turn
from agentrl.cli import main
from agentrl.errors import UserError
from agentrl.models import load_tokenizer
from agentrl.train.recipe import load_recipe, recipe_hash, recipe_to_dict
from agentrl.train.sft import environment_demonstrations, read_conversations, render

TINY = [
    "model.name=tiny-qwen3",
    "env.id=arithmetic",
    "env.kwargs.digits=2",
    "env.kwargs.num_ops=1",
    "sampling.max_new_tokens=24",
    "grpo.max_turns=2",
    "grpo.max_total_tokens=640",
    "grpo.tasks_per_step=2",
    "grpo.group_size=4",
    "eval.num_tasks=6",
    "sft.demonstrations=12",
    "sft.epochs=3",
    "sft.learning_rate=5e-3",
    "sft.batch_size=4",
    "report_to=[]",
]


def _chat(name: str):
    tok = qwen3_tokenizer() if name == "qwen3" else load_tokenizer(name)
    return load_chat_format(tok, "auto")


@pytest.fixture(scope="module")
def sandbox_demos():
    env = make("sandbox-puzzles", split="train")
    try:
        return env, environment_demonstrations(env, 8)
    finally:
        env.close()


@pytest.mark.parametrize("name", ["smollm2-135m", "qwen3"])
def test_the_mask_is_exactly_the_assistant_turns(name, sandbox_demos):
    _, rows = sandbox_demos
    chat = _chat(name)
    for row in rows:
        conv = demonstration(chat, row["messages"], row["tools"])
        assert [s.kind for s in conv.segments] == ["prompt", "assistant", "env", "assistant"]
        # The masked-out tokens are the prompt exactly as a rollout renders it, then the tool result's delta.
        first = next(i for i, m in enumerate(row["messages"]) if m["role"] == "assistant")
        start = TokenConversation.start(chat, row["messages"][:first], row["tools"])
        assert conv.ids[: start.prompt_length] == start.ids
        for seg in conv.segments:
            assert set(conv.mask[seg.start : seg.end]) == {1 if seg.kind == "assistant" else 0}
        tool_text = chat.tokenizer.decode(conv.ids[conv.segments[2].start : conv.segments[2].end])
        assert row["messages"][first + 1]["content"] in tool_text  # the real sandbox's output, as context only
        assert sum(conv.mask) == sum(s.end - s.start for s in conv.segments if s.kind == "assistant")
        # Each trained turn ends with the end-of-turn token, which is what stops a rollout's turn.
        for seg in conv.segments:
            if seg.kind == "assistant":
                assert conv.ids[seg.end - 1] == chat.end_of_turn_id


@pytest.mark.parametrize("name", ["smollm2-135m", "qwen3"])
def test_a_rendered_demonstration_parses_back_to_the_same_tool_calls(name, sandbox_demos):
    env, rows = sandbox_demos
    chat = _chat(name)
    kinds = set()
    for row in rows:
        conv = demonstration(chat, row["messages"], row["tools"])
        call_turn, answer_turn = conv.assistant_ids()
        parsed = parse_turn(chat.tokenizer.decode(call_turn, skip_special_tokens=False))
        want = row["messages"][[m["role"] for m in row["messages"]].index("assistant")]["tool_calls"][0]["function"]
        assert [(c.name, c.arguments) for c in parsed.calls] == [(want["name"], want["arguments"])]
        assert parse_turn(chat.tokenizer.decode(answer_turn, skip_special_tokens=False)).content.startswith("\\boxed{")
        kinds.add(env.tasks[[t.prompt for t in env.tasks].index(row["messages"][-4]["content"])].metadata["kind"])
    assert kinds == {"letters", "digit_sum", "distinct", "days"}


def test_a_turn_that_parses_differently_is_refused():
    chat = _chat("smollm2-135m")
    # Written as plain text, but the parser would read a tool call in it: SFT would teach the wrong thing.
    fake = '<tool_call>\n{"name": "python", "arguments": {"code": "1"}}\n</tool_call>'
    with pytest.raises(DemonstrationError, match="parsed back"):
        demonstration(chat, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": fake}])
    with pytest.raises(DemonstrationError, match="assistant message"):
        demonstration(chat, [{"role": "user", "content": "hi"}])
    with pytest.raises(DemonstrationError, match="end with an assistant"):
        demonstration(chat, [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                             {"role": "user", "content": "c"}])  # fmt: skip


def test_jsonl_conversations_with_openai_style_arguments(tmp_path):
    call = {"id": "c1", "type": "function", "function": {"name": "calculator", "arguments": '{"expression": "2 + 2"}'}}
    msgs = [
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "name": "calculator", "content": "4"},
        {"role": "assistant", "content": "\\boxed{4}"},
    ]
    path = tmp_path / "demos.jsonl"
    path.write_text(json.dumps({"messages": msgs}) + "\n\n" + json.dumps(msgs) + "\n")
    rows = read_conversations(path)
    assert len(rows) == 2
    convs, dropped = render(_chat("smollm2-135m"), rows, max_length=4096)
    assert dropped == 0 and convs[0].ids == convs[1].ids
    with pytest.raises(UserError, match="longer than"):
        render(_chat("smollm2-135m"), rows, max_length=10)
    path.write_text("{not json\n")
    with pytest.raises(UserError, match="not JSON"):
        read_conversations(path)
    with pytest.raises(UserError, match="not found"):
        read_conversations(tmp_path / "missing.jsonl")


def test_demonstrations_never_come_from_the_test_split():
    env = make("sandbox-puzzles", split="test")
    try:
        with pytest.raises(UserError, match="test split"):
            environment_demonstrations(env, 2)
    finally:
        env.close()


def test_a_mix_shares_its_demonstrations_by_weight_each_with_its_own_tools():
    import functools

    from agentrl.envs.mix import Component, MixedEnv

    def part(env_id, split="train"):
        return functools.partial(make, env_id, split=split)

    env = MixedEnv([Component("calc", part("arithmetic"), 2.0), Component("py", part("sandbox-puzzles"), 1.0)])
    rows = environment_demonstrations(env, 6)
    tools = [[t["function"]["name"] for t in r["tools"]] for r in rows]
    assert tools == [["calculator"]] * 4 + [["python"]] * 2
    assert all(r["messages"][-1]["role"] == "assistant" for r in rows)
    test = MixedEnv([Component("calc", part("arithmetic", "test"))], split="test")
    with pytest.raises(UserError, match="test split"):
        environment_demonstrations(test, 2)


def test_recipes_without_a_warm_start_keep_their_hash():
    recipe = load_recipe(None, ["grpo.steps=3"])
    legacy = recipe_to_dict(recipe)
    legacy.pop("sft")
    legacy["eval"].pop("after_sft")
    assert recipe_hash(recipe) == recipe_hash(legacy)
    assert recipe_hash(load_recipe(None, ["grpo.steps=3", "sft.demonstrations=4"])) != recipe_hash(recipe)


def test_sft_without_a_stage_says_so(capsys):
    assert main(["sft", "grpo.steps=1"]) == 2
    assert "no sft stage" in capsys.readouterr().err


@pytest.mark.slow
def test_agentrl_sft_lowers_the_loss_then_train_continues_from_its_adapter(tmp_path, capsys):
    from safetensors.torch import load_file

    from agentrl.train.trainer import Trainer

    out = tmp_path / "run"
    # zero_variance=keep and a KL term: the tiny random model scores 0 everywhere, and GRPO must still move.
    args = [*TINY, "grpo.steps=1", "grpo.zero_variance=keep", "grpo.beta=0.5", f"output_dir={out}"]
    assert main(["sft", *args]) == 0
    printed = capsys.readouterr().out
    assert "(base) ->" in printed and "(sft)" in printed and "base -> sft" in printed
    record = json.loads((out / "sft" / "summary.json").read_text())
    assert record["examples"] == 12 and record["optimizer_steps"] == 9
    assert record["loss_after"] < record["loss_before"] - 0.5, record
    assert record["train_losses"][-1] < record["train_losses"][0]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 0 and summary["eval_sft"]["n"] == 6 and "sft_difference" in summary
    sft_weights = load_file(str(out / "sft" / "adapter" / "adapter_model.safetensors"))

    # The same recipe and directory: GRPO starts from the SFT adapter, and nothing before it is redone.
    trainer = Trainer(load_recipe(None, args), show_progress=False)
    calls, started = [], {}
    original, warm = trainer.evaluate, trainer._warm_start
    trainer.evaluate = lambda **kw: calls.append(kw.get("name") or kw["base"]) or original(**kw)

    def spy(progress):
        record = warm(progress)
        started.update({k: v.detach().clone() for k, v in trainer.model.state_dict().items() if "lora_" in k})
        return record

    trainer._warm_start = spy
    from agentrl.train import sft as sft_module

    redo = sft_module.run_sft
    sft_module.run_sft = lambda *a, **k: pytest.fail("the SFT stage ran twice")
    try:
        summary = trainer.train()
    finally:
        sft_module.run_sft = redo
    assert calls == [False]  # only the final evaluation: before and after-SFT were saved
    assert summary["steps"] == 1 and {"eval_before", "eval_sft", "eval_after"} <= set(summary)
    assert {"success_difference", "sft_difference", "grpo_difference"} <= set(summary)
    assert summary["sft"]["loss_after"] == record["loss_after"]
    # GRPO started from the SFT adapter's weights, and changed them.
    assert len(started) == len(sft_weights)
    for name, value in sft_weights.items():
        match = [k for k in started if k.replace(".default", "") == name]
        assert len(match) == 1 and torch.equal(started[match[0]], value), name
    final = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    moved = [k for k in final if not torch.equal(final[k], sft_weights[k])]
    assert moved, "GRPO did not change the SFT adapter"


@pytest.mark.slow
def test_the_labels_trl_trains_on_are_the_assistant_mask(tmp_path):
    from agentrl.train import sft as sft_module
    from agentrl.train.model import load_lora_model

    lora = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    model, tok, _ = load_lora_model("tiny-qwen3", lora=lora, device="cpu")
    chat = load_chat_format(tok, "auto")
    env = make("arithmetic", split="train", digits=2, num_ops=1)
    convs, _ = render(chat, environment_demonstrations(env, 4), max_length=2048)
    env.close()
    seen = {}
    from trl import SFTTrainer

    original = SFTTrainer.train

    def spy(self, *a, **k):
        seen["labels"] = [list(r["labels"]) for r in self.train_dataset]
        return original(self, *a, **k)

    SFTTrainer.train = spy
    try:
        section = load_recipe(None, ["sft.demonstrations=4", "sft.batch_size=2"]).sft
        record = sft_module.run_sft(model, tok, convs, section, output_dir=tmp_path, seed=0)
    finally:
        SFTTrainer.train = original
    for labels, conv in zip(seen["labels"], convs, strict=True):
        kept = [i for i, x in enumerate(labels) if x != -100]
        assert kept == [i for i, m in enumerate(conv.mask) if m]
        assert [labels[i] for i in kept] == [conv.ids[i] for i in kept]
    assert record["optimizer_steps"] == 2


def test_the_cpu_loss_equals_the_full_logits_loss_in_value_and_gradient(sandbox_demos):
    """On a CPU the SFT loss runs the shared opening once and the LM head on labelled positions only;
    it must be the plain full-logits cross-entropy, in value and in every LoRA gradient."""
    from agentrl.train import sft as sft_module
    from agentrl.train.logprobs import _shared_prefix_length
    from agentrl.train.model import load_lora_model

    lora = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj", "down_proj"]}
    model, tok, _ = load_lora_model("tiny-qwen3", lora=lora, device="cpu")
    torch.manual_seed(0)
    with torch.no_grad():  # a non-zero adapter, so that its gradients are not trivially equal
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    convs, _ = render(load_chat_format(tok, "auto"), sandbox_demos[1][:4], max_length=4096)
    width = max(len(c.ids) for c in convs)
    ids = torch.zeros(len(convs), width, dtype=torch.long)
    attention, labels = torch.zeros_like(ids), torch.full_like(ids, -100)
    for j, c in enumerate(convs):  # right-padded, as TRL's collator pads
        ids[j, : len(c.ids)], attention[j, : len(c.ids)] = torch.tensor(c.ids), 1
        labels[j, : len(c.ids)] = torch.tensor([t if m else -100 for t, m in zip(c.ids, c.mask, strict=True)])
    assert _shared_prefix_length(ids, attention, (labels != -100).long()) > 100  # the shared pass is taken
    trainable = [p for p in model.parameters() if p.requires_grad]

    def full_logits_loss():
        logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                                ignore_index=-100, reduction="sum")  # fmt: skip
        return nll / (labels[:, 1:] != -100).sum()

    want = full_logits_loss()
    want_grads = torch.autograd.grad(want, trainable)
    cls = sft_module._cpu_trainer(object)
    got = cls.compute_loss(None, model, {"input_ids": ids, "attention_mask": attention, "labels": labels})
    got_grads = torch.autograd.grad(got, trainable)
    assert float(got) == pytest.approx(float(want), rel=1e-5)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)
    assert sft_module.assistant_loss(model, convs, batch_size=3) == pytest.approx(float(want), rel=1e-5)
    bad = labels.clone()
    bad[labels != -100] = 0  # labels that are not the tokens they label: refused, not trained on
    with pytest.raises(RuntimeError, match="labels"):
        cls.compute_loss(None, model, {"input_ids": ids, "attention_mask": attention, "labels": bad})
