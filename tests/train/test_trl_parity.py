"""agentrl's Trainer against TRL's GRPOTrainer over whole optimizer steps, with TRL as the oracle.

The same rollout (prompt ids, completion ids, rewards, and the rollout engine's logprobs) and the same
starting LoRA weights go into a real ``trl.GRPOTrainer`` running its own ``train()`` loop and into
``agentrl.train.Trainer.update``. Both take two optimizer steps on that one batch (``num_iterations=2``:
the second step sees a policy that has moved, so the PPO clip and the KL act), each of two accumulated
micro-batches. For every case the test asserts, step by step: equal micro-batch losses, equal clipped
LoRA gradients, equal LoRA weights after each optimizer step, and equal clip fractions, KL and
importance weights. The cases cover all four loss types with ``beta > 0``, a group whose rewards tie
(zero advantages, kept: ``zero_variance: keep``), GSPO, the rollout-engine correction in two modes, and
masked truncated completions.

How the two are lined up:

- TRL's rollout comes from a ``rollout_func`` that returns the fixed ids; its reward function returns
  the fixed rewards. TRL's shuffle of the generation batch is replaced by the identity, so both split
  the step into micro-batches the same way.
- TRL applies its engine correction only with ``use_vllm=True``. For those cases the test sets
  ``use_vllm`` after construction (with a no-op weight sync), so TRL takes the rollout's logprobs as
  vLLM's and corrects exactly as it would on a GPU.
- ``use_bias_correction_kl=False``: TRL 1.15 multiplies the k3 KL by the importance ratio by default;
  agentrl's KL is plain k3, as in TRL before 1.15 and in the GRPO paper.
- Layout differs: TRL left-pads prompts, agentrl right-pads whole sequences. RoPE is relative, so the
  two agree to float rounding; that and TRL's Triton logprob kernel set the tolerance.

Why a subprocess: TRL 1.15 computes logprobs with a Triton kernel, and Triton has no CPU backend. Its
interpreter runs the same kernel on the CPU, but it is selected by ``TRITON_INTERPRET=1`` before Triton
is first imported, so the TRL side runs as this file executed as a script in a fresh process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow  # about a minute: the TRL process runs every case under Triton's interpreter

VOCAB = 128
PAD, EOS, UNK = 0, 1, 2
G = 4  # num_generations
PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13], [14, 15]]  # one per group; unequal lengths
COMPLETIONS = [  # G per prompt; some end with EOS, some are cut off (truncated)
    [20, 21, 22, EOS],
    [23, 24],
    [25, 26, 27, 28, 29, EOS],
    [47, 48, 49],
    [30, 31, 32],
    [33, EOS],
    [34, 35, 36, 37, 38],
    [50, 51, 52, 53, EOS],
    [40, 41, 42, 43],
    [44, 45, EOS],
    [46],
    [54, 55],
]
REWARDS = [1.0, 0.0, 0.5, 0.0, 2.0, -1.0, 0.25, 1.5, 0.7, 0.7, 0.7, 0.7]  # the last group ties: zero advantages
B = len(COMPLETIONS)
MICRO = 6  # two micro-batches per optimizer step, which split groups
MAX_COMPLETION_LENGTH = 12  # dr_grpo's normaliser; larger than any completion
TEMPERATURE = 0.7
EPSILON_LOW, EPSILON_HIGH = 0.2, 0.28
LEARNING_RATE = 0.02  # large enough that the second step's ratios leave the clip range
CAP = 2.0
LORA = dict(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])

CASES = {
    "grpo": dict(loss_type="grpo", beta=0.1),
    "dr_grpo": dict(loss_type="dr_grpo", beta=0.1),
    "dapo": dict(loss_type="dapo", beta=0.1),
    "bnpo": dict(loss_type="bnpo", beta=0.1),
    "dapo_no_kl": dict(loss_type="dapo", beta=0.0),
    "gspo": dict(loss_type="grpo", beta=0.0, level="sequence"),
    "token_truncate": dict(loss_type="dapo", beta=0.0, correction="token_truncate"),
    "sequence_mask": dict(loss_type="grpo", beta=0.1, correction="sequence_mask"),
    "mask_truncated": dict(loss_type="dapo", beta=0.0, mask_truncated=True),
}


def tiny_model() -> torch.nn.Module:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=64,
        initializer_range=0.1,  # less flat than the default, so logprobs respond to the updates
        tie_word_embeddings=True,
        pad_token_id=PAD,
        bos_token_id=EOS,
        eos_token_id=EOS,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return Qwen3ForCausalLM(config).float()


def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": PAD, "<eos>": EOS, "<unk>": UNK} | {f"w{i}": i for i in range(3, VOCAB)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    tok.chat_template = "{% for m in messages %}{{ m['content'] }} <eos> {% endfor %}"  # agentrl wants one
    return tok


def engine_noise(row: int, pos: int) -> float:
    """The rollout engine's logprob minus the trainer's, per token: as a 16-bit engine against a 4-bit
    trainer might differ, and large enough that some importance weights pass the cap."""
    return 0.9 * (((7 * row + 3 * pos) % 11) / 5.0 - 1.0)


# ----- the TRL side, run as a script under TRITON_INTERPRET=1 ----------------------------------------------------
def _trl_case(spec: dict, model_dir: Path, workdir: Path) -> dict:
    from types import SimpleNamespace

    import trl.trainer.grpo_trainer as grpo_module
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    grpo_module.shuffle_sequence_dict = lambda batch: batch  # split the step in generation order, as agentrl
    prompt_texts = [f"prompt {k}" for k in range(len(PROMPTS))]
    saved: dict = {"micro_batches": [], "grads": [], "weights": [], "order": []}

    def rollout(prompts, trainer):
        groups = [prompt_texts.index(p) for p in prompts]
        saved["order"] = groups[::G]
        assert groups == [g for g in saved["order"] for _ in range(G)]
        rows = [COMPLETIONS.index(c) for g in saved["order"] for c in COMPLETIONS[g * G : (g + 1) * G]]
        prompt_ids = [PROMPTS[g] for g in groups]
        completion_ids = [COMPLETIONS[r] for r in rows]
        # The engine's logprobs: the trainer's own (weights at generation) plus a known per-token offset.
        model = trainer.model
        logprobs = []
        with torch.no_grad():
            for p, c, r in zip(prompt_ids, completion_ids, rows, strict=True):
                ids = torch.tensor([p + c])
                logits = model(input_ids=ids).logits[0, len(p) - 1 : -1].float() / TEMPERATURE
                lp = torch.log_softmax(logits, -1).gather(-1, torch.tensor(c)[:, None])[:, 0]
                logprobs.append([float(x) + engine_noise(r, j) for j, x in enumerate(lp)])
        saved["engine_logprobs"] = {r: lp for r, lp in zip(rows, logprobs, strict=True)}
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": logprobs}

    def fixed_reward(prompts, completions, completion_ids, **kwargs):
        return [REWARDS[COMPLETIONS.index(list(ids))] for ids in completion_ids]

    correction = spec.get("correction")
    args = GRPOConfig(
        output_dir=str(workdir),
        report_to="none",
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        use_vllm=False,
        save_strategy="no",
        logging_steps=1,
        seed=0,
        max_steps=2,
        num_generations=G,
        per_device_train_batch_size=MICRO,
        gradient_accumulation_steps=B // MICRO,
        num_iterations=2,
        shuffle_dataset=False,
        max_completion_length=MAX_COMPLETION_LENGTH,
        temperature=TEMPERATURE,
        learning_rate=LEARNING_RATE,
        lr_scheduler_type="constant",
        warmup_steps=0,
        optim="adamw_torch",
        weight_decay=0.0,
        max_grad_norm=1.0,
        loss_type=spec["loss_type"],
        beta=spec["beta"],
        epsilon=EPSILON_LOW,
        epsilon_high=EPSILON_HIGH,
        importance_sampling_level=spec.get("level", "token"),
        mask_truncated_completions=spec.get("mask_truncated", False),
        scale_rewards="group",
        use_bias_correction_kl=False,
        vllm_importance_sampling_mode=correction or "token_truncate",
        vllm_importance_sampling_clip_max=CAP,
    )
    trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
        reward_funcs=fixed_reward,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": prompt_texts}),
        processing_class=tokenizer(),
        rollout_func=rollout,
        # A fresh adapter from peft_config: TRL's reference is then the adapter-disabled model, as agentrl's.
        peft_config=LoraConfig(**LORA, bias="none", task_type="CAUSAL_LM", init_lora_weights=False),
    )
    if correction:  # TRL corrects only for vLLM: treat the rollout's logprobs as vLLM's
        trainer.use_vllm = True
        trainer.vllm_generation = SimpleNamespace(sync_weights=lambda: None)
        trainer._last_loaded_step = 0
    model = trainer.model
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    saved["initial"] = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    compute_loss = trainer.compute_loss

    def recording_compute_loss(model, inputs, *args, **kwargs):
        loss = compute_loss(model, inputs, *args, **kwargs)
        record = {k: v.detach().clone() for k, v in inputs.items() if isinstance(v, torch.Tensor)}
        metrics = {k: v[-1] for k, v in trainer._metrics["train"].items() if v}
        saved["micro_batches"].append(record | {"loss": loss.detach().clone(), "metrics": metrics})
        return loss

    trainer.compute_loss = recording_compute_loss

    class Recorder(TrainerCallback):
        def on_pre_optimizer_step(self, *args, **kwargs):  # gradients after clipping, as they go into AdamW
            params = dict(model.named_parameters())
            saved["grads"].append({n: params[n].grad.detach().clone() for n in trainable})

        def on_optimizer_step(self, *args, **kwargs):
            params = dict(model.named_parameters())
            saved["weights"].append({n: params[n].detach().clone() for n in trainable})

    trainer.add_callback(Recorder())
    trainer.train()
    assert len(saved["micro_batches"]) == 2 * (B // MICRO) and len(saved["weights"]) == 2
    return saved


def _trl_main(model_dir: Path, out_dir: Path) -> None:
    results = {name: _trl_case(spec, model_dir, out_dir / name) for name, spec in CASES.items()}
    torch.save(results, out_dir / "results.pt")


# ----- the agentrl side ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("parity_model")
    tiny_model().save_pretrained(path)
    tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def trl_results(model_dir, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("trl_parity")
    env = {
        **os.environ,
        "TRITON_INTERPRET": "1",
        "TRL_EXPERIMENTAL_SILENCE": "1",
        "HF_HUB_OFFLINE": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "TOKENIZERS_PARALLELISM": "false",
    }
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), str(model_dir), str(out)],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, f"TRL side failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return torch.load(out / "results.pt")


def _batch(trl: dict) -> list:
    """The rollout as agentrl's trajectories, in the order TRL generated it."""
    from agentrl.rollout.trajectory import Group, Trajectory

    groups = []
    for g in trl["order"]:
        trajs = []
        for i, row in enumerate(range(g * G, (g + 1) * G)):
            p, c = PROMPTS[g], COMPLETIONS[row]
            trajs.append(
                Trajectory(
                    task_id=f"prompt {g}",
                    group_index=i,
                    ids=p + c,
                    mask=[0] * len(p) + [1] * len(c),
                    logprobs=[None] * len(p) + trl["engine_logprobs"][row],
                    prompt_length=len(p),
                    reward=REWARDS[row],
                    truncated=c[-1] != EOS,  # cut by the completion budget, as TRL sees it
                    truncated_by=None if c[-1] == EOS else "max_new_tokens",
                )
            )
        groups.append(Group(f"prompt {g}", trajs))
    return groups


def _close(ours: torch.Tensor, theirs: torch.Tensor, what: str, rtol: float) -> float:
    """Equal to ``rtol`` relative to the size of TRL's tensor; returns the relative error."""
    scale = theirs.abs().max().clamp(min=1e-12)
    err = float((ours - theirs).abs().max() / scale)
    assert err <= rtol, f"{what}: max relative diff {err:.2e} (max |TRL| {float(scale):.2e})"
    return err


@pytest.mark.parametrize("case", list(CASES))
def test_a_whole_update_matches_trl(case, model_dir, trl_results, tmp_path, monkeypatch):
    import agentrl.train.trainer as trainer_module
    from agentrl.train.recipe import load_recipe
    from agentrl.train.trainer import Trainer

    spec, trl = CASES[case], trl_results[case]
    recipe = load_recipe(
        None,
        [
            f"model.name={model_dir}",
            "env.id=agentrl.testing:LatinLettersEnv",
            f"sampling.temperature={TEMPERATURE}",
            f"grpo.loss_type={spec['loss_type']}",
            f"grpo.beta={spec['beta']}",
            f"grpo.epsilon_low={EPSILON_LOW}",
            f"grpo.epsilon_high={EPSILON_HIGH}",
            f"grpo.importance_sampling_level={spec.get('level', 'token')}",
            f"grpo.rollout_correction={spec.get('correction', 'none')}",
            f"grpo.rollout_correction_cap={CAP}",
            f"grpo.mask_truncated={str(spec.get('mask_truncated', False)).lower()}",
            "grpo.num_iterations=2",
            f"grpo.micro_batch_size={MICRO}",
            f"grpo.learning_rate={LEARNING_RATE}",
            "grpo.lr_schedule=constant",
            "grpo.max_grad_norm=1.0",
            "grpo.zero_variance=keep",
            "grpo.advantage=grpo",
            f"grpo.max_total_tokens={MAX_COMPLETION_LENGTH}",
            f"lora.r={LORA['r']}",
            f"lora.alpha={LORA['lora_alpha']}",
            f"lora.target_modules=[{','.join(LORA['target_modules'])}]",
            "backend=hf",
            f"output_dir={tmp_path}",
        ],
    )
    trainer = Trainer(recipe, show_progress=False)
    params = dict(trainer.model.named_parameters())
    trainable = [n for n, p in params.items() if p.requires_grad]
    assert sorted(trainable) == sorted(trl["initial"]) and all("lora_" in n for n in trainable)
    with torch.no_grad():  # start from TRL's (random, non-zero) initial adapter
        for n in trainable:
            params[n].copy_(trl["initial"][n])

    grads, weights, losses, corrections = [], [], [], []
    trainer.optimizer.register_step_pre_hook(
        lambda *_: grads.append({n: params[n].grad.detach().clone() for n in trainable})
    )
    trainer.optimizer.register_step_post_hook(
        lambda *_: weights.append({n: params[n].detach().clone() for n in trainable})
    )
    real_loss, real_correction = trainer_module.grpo_loss, trainer_module.rollout_correction

    def spy_loss(*args, **kwargs):
        loss, stats = real_loss(*args, **kwargs)
        losses.append((loss.detach().clone(), dict(stats)))
        return loss, stats

    def spy_correction(*args, **kwargs):
        weights_, stats = real_correction(*args, **kwargs)
        corrections.append(weights_)
        return weights_, stats

    monkeypatch.setattr(trainer_module, "grpo_loss", spy_loss)
    monkeypatch.setattr(trainer_module, "rollout_correction", spy_correction)
    metrics = trainer.update(_batch(trl))
    trainer.close()

    # Two optimizer steps of two micro-batches each, in the same order on both sides.
    assert len(losses) == len(trl["micro_batches"]) == 4 and len(grads) == len(weights) == 2
    reached = {"loss": 0.0, "grad": 0.0, "weight_abs": 0.0}  # printed: the tolerances actually reached
    for k, ((loss, stats), mb) in enumerate(zip(losses, trl["micro_batches"], strict=True)):
        reached["loss"] = max(reached["loss"], _close(loss, mb["loss"], f"loss of micro-batch {k}", rtol=1e-4))
        m = mb["metrics"]
        assert stats["clip_low_fraction"] == pytest.approx(m["clip_ratio/low_mean"], abs=1e-6), k
        assert stats["clip_high_fraction"] == pytest.approx(m["clip_ratio/high_mean"], abs=1e-6), k
        if spec["beta"]:
            assert stats["kl"] == pytest.approx(m["kl"], rel=1e-3, abs=1e-7), k
    if spec.get("correction"):  # the same importance weights, truncated or masked the same way
        rows = [(t.prompt_length, len(t.ids)) for g in _batch(trl) for t in g.trajectories]
        for k, (ours, mb) in enumerate(zip(corrections, trl["micro_batches"][:2], strict=True)):
            theirs = mb["importance_sampling_ratio"]
            if theirs.shape[1] > 1:  # per token: our completion tokens sit after each row's own prompt
                spans = rows[k * MICRO : (k + 1) * MICRO]
                ours = torch.stack([torch.nn.functional.pad(ours[i, a:b], (0, theirs.shape[1] - (b - a)))
                                    for i, (a, b) in enumerate(spans)])  # fmt: skip
                theirs = theirs * mb["completion_mask"]
            _close(ours, theirs, f"importance weights of micro-batch {k}", rtol=1e-4)
        assert metrics["rollout_is_ratio_max"] > CAP  # the cap bites
    # Adam divides by |g| + eps: an element whose gradient is within a few eps of zero (3e-8 happens
    # here, against eps 1e-8) turns a float rounding difference of its gradient into a visible
    # difference of its update: 3.18e-8 against 3.12e-8 moves that weight by 0.4% of a step, and by
    # 1% on another CPU. Such elements are compared loosely (a step either way); every other weight
    # to 0.5% of one optimizer step (the learning rate), and they must be almost all of them.
    eps = trainer.optimizer.param_groups[0]["eps"]
    ill_conditioned = {n: torch.zeros_like(trl["grads"][0][n], dtype=torch.bool) for n in trainable}
    for step in range(2):
        for n in trainable:
            err = _close(grads[step][n], trl["grads"][step][n], f"step {step + 1} gradient of {n}", rtol=1e-4)
            reached["grad"] = max(reached["grad"], err)
            ill_conditioned[n] |= trl["grads"][step][n].abs() < 100 * eps
            diff = (weights[step][n] - trl["weights"][step][n]).abs()
            tight = float(diff.masked_fill(ill_conditioned[n], 0.0).max())
            assert tight <= 5e-3 * LEARNING_RATE, f"step {step + 1} weights of {n}: max abs diff {tight:.2e}"
            assert float(diff.max()) <= 2 * LEARNING_RATE * (step + 1), f"step {step + 1} weights of {n}"
            reached["weight_abs"] = max(reached["weight_abs"], tight)
    excluded = sum(int(m.sum()) for m in ill_conditioned.values()) / sum(m.numel() for m in ill_conditioned.values())
    assert excluded < 0.01, f"{excluded:.1%} of the adapter's weights have gradients too small to compare"
    print(f"{case}: " + ", ".join(f"{k} {v:.1e}" for k, v in reached.items()))
    # The test is not vacuous: the second step's ratios leave the clip range, the KL is active, and
    # the tied group's zero-advantage sequences are in the step (12 sequences, all counted).
    assert metrics["trained_sequences"] == B
    assert max(s["clip_low_fraction"] + s["clip_high_fraction"] for _, s in losses[2:]) > 0
    if spec["beta"]:
        assert max(s["kl"] for _, s in losses[2:]) > 1e-4
    if spec.get("mask_truncated"):
        truncated_tokens = sum(len(c) for c in COMPLETIONS if c[-1] != EOS)
        assert metrics["trained_tokens"] == sum(map(len, COMPLETIONS)) - truncated_tokens


if __name__ == "__main__":
    _trl_main(Path(sys.argv[1]), Path(sys.argv[2]))
