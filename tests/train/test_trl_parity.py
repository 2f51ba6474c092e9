"""agentrl's GRPO arithmetic against TRL's GRPOTrainer as an external oracle.

The same fixed rollout (prompt ids, completion ids, rewards) goes through a real ``trl.GRPOTrainer`` and through
``agentrl.train.loss``. On the TRL side a ``rollout_func`` returns the ids, a reward function returns the rewards, and
two ``Trainer.training_step`` calls make one optimizer step of two accumulated micro-batches (TRL generates,
scores, shuffles and splits the rollout itself). Advantages, token layout, per-token logprobs, each micro-batch's
loss, the clip statistics and the accumulated gradients of every trainable parameter must agree, for each loss
type both libraries share, with asymmetric clipping that actually clips and, on a LoRA model, with a k3 KL
penalty against the adapter-disabled base model.

Where the old logprobs come from: with ``use_vllm=False`` TRL never puts the rollout's logprobs into the loss
(they only feed vLLM's importance-sampling correction). With ``num_iterations=2`` it computes
``old_per_token_logps`` itself, from the model as it is at generation time. The TRL side then perturbs the
trainable weights -- as an optimizer step between two passes over the same rollout would -- so that the current
logprobs differ from the old ones and the PPO clip triggers. agentrl is given exactly TRL's old (and reference)
logprobs; that they also equal agentrl's own ``token_logprobs`` of the pre-step (and base) weights is checked
separately.

Two TRL settings are not its defaults: ``use_bias_correction_kl=False`` (TRL 1.15 multiplies the k3 KL by the
importance ratio by default; agentrl's KL is plain k3), and the adapter comes from ``peft_config`` (given an
already wrapped ``PeftModel`` and ``beta > 0``, TRL's reference is a frozen copy of the initial adapter, not the
adapter-disabled base model that agentrl uses).

Why a subprocess: TRL 1.15 computes logprobs with a Triton kernel (``trl/kernels/chunked_logprob.py``, via the
fused LM head its trainer patches onto the model), and this Triton has no CPU backend. Triton's interpreter runs
that same kernel on the CPU, but it is selected by ``TRITON_INTERPRET=1`` when the kernels are decorated, i.e.
before Triton is first imported. So the TRL side runs in a fresh Python process: this file executed as a script,
which writes TRL's inputs, losses, gradients, metrics and the weights it used to a ``.pt`` file that the tests
below read. The vocabulary is kept small because the interpreter's cost grows with it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import Qwen3Config, Qwen3ForCausalLM

from agentrl.train.advantages import group_advantages
from agentrl.train.logprobs import token_logprobs
from agentrl.train.loss import LossNorm, grpo_loss

pytestmark = pytest.mark.slow  # ~45 s in all; the TRL process for all cases takes ~25 s, a third of it importing

VOCAB = 128
PAD, EOS, UNK = 0, 1, 2
G = 4  # num_generations
PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13], [14, 15]]  # one per group; unequal lengths -> left padding
COMPLETIONS = [  # G per prompt; unequal lengths -> right padding; some end with EOS, some are cut off
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
REWARDS = [1.0, 0.0, 0.5, 0.0, 2.0, -1.0, 0.25, 1.5, 0.7, 0.7, 0.7, 0.7]  # the last group is tied: zero advantages
B = len(COMPLETIONS)  # the whole optimizer step ...
MICRO_BATCHES = 2  # ... is two accumulated micro-batches of B / 2 episodes, which split groups
MAX_COMPLETION_LENGTH = 12  # larger than the padded completion width, so dr_grpo's normaliser is distinct
TEMPERATURE = 0.7
EPSILON_LOW, EPSILON_HIGH = 0.2, 0.28
PERTURB_STD = 0.03  # the "optimizer step" between generation and the loss
LORA = dict(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], init_lora_weights=False)

CASES = {
    "grpo": dict(loss_type="grpo", beta=0.0, lora=False),
    "dr_grpo": dict(loss_type="dr_grpo", beta=0.0, lora=False),
    "dapo": dict(loss_type="dapo", beta=0.0, lora=False),
    "bnpo": dict(loss_type="bnpo", beta=0.0, lora=False),
    "grpo_lora_kl": dict(loss_type="grpo", beta=0.1, lora=True),
    "dapo_lora_kl": dict(loss_type="dapo", beta=0.1, lora=True),
}


def tiny_model() -> torch.nn.Module:
    config = Qwen3Config(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=64,
        initializer_range=0.1,  # less flat than the default, so logprobs respond to the perturbation
        tie_word_embeddings=True,
        pad_token_id=PAD,
        bos_token_id=EOS,
        eos_token_id=EOS,
    )
    with torch.random.fork_rng():  # the same weights every time, without touching the caller's RNG
        torch.manual_seed(0)
        return Qwen3ForCausalLM(config).float()


# ----- the TRL side, run as a script under TRITON_INTERPRET=1 ----------------------------------------------------
def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": PAD, "<eos>": EOS, "<unk>": UNK} | {f"w{i}": i for i in range(3, VOCAB)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def _trl_case(spec: dict, workdir: Path) -> dict:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    prompt_texts = [f"prompt {k}" for k in range(len(PROMPTS))]

    def rollout(prompts, trainer):
        assert len(prompts) == B
        groups = [prompt_texts.index(p) for p in prompts]
        assert groups == [i // G for i in range(B)]  # TRL hands over each prompt G times, in dataset order
        return {
            "prompt_ids": [PROMPTS[g] for g in groups],
            "completion_ids": COMPLETIONS,
            "logprobs": [[-1.0] * len(c) for c in COMPLETIONS],  # required key; unused in the loss without vLLM
        }

    def fixed_reward(prompts, completions, completion_ids, **kwargs):
        return [REWARDS[COMPLETIONS.index(list(ids))] for ids in completion_ids]

    args = GRPOConfig(
        output_dir=str(workdir),
        report_to="none",
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        use_vllm=False,
        save_strategy="no",
        seed=0,
        num_generations=G,
        per_device_train_batch_size=B // MICRO_BATCHES,
        gradient_accumulation_steps=MICRO_BATCHES,  # steps_per_generation follows: one generation per step
        num_iterations=2,  # two passes over each generation -> TRL computes old_per_token_logps itself
        max_completion_length=MAX_COMPLETION_LENGTH,
        temperature=TEMPERATURE,
        loss_type=spec["loss_type"],
        beta=spec["beta"],
        epsilon=EPSILON_LOW,
        epsilon_high=EPSILON_HIGH,
        scale_rewards="group",
        # TRL's default multiplies the k3 KL by the (differentiable) importance ratio; agentrl's KL is plain k3.
        use_bias_correction_kl=False,
    )
    trainer = GRPOTrainer(
        model=tiny_model(),
        reward_funcs=fixed_reward,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": prompt_texts}),
        processing_class=_tokenizer(),
        rollout_func=rollout,
        # A fresh adapter from peft_config makes TRL take the adapter-disabled model as its reference.
        peft_config=LoraConfig(**LORA) if spec["lora"] else None,
    )
    model = trainer.model
    saved: dict = {"micro_batches": []}

    # Between generation (which also records old logprobs) and the loss, move the trainable weights as an
    # optimizer step between two passes over the same rollout would, so that the PPO ratio departs from 1.
    generate = trainer._generate_and_score_completions

    def generate_then_step(batch):
        out = generate(batch)
        saved["old_state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        noise = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn(p.shape, generator=noise) * PERTURB_STD)
        saved["state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return out

    compute_loss = trainer.compute_loss

    def recording_compute_loss(model, inputs, *args, **kwargs):
        loss = compute_loss(model, inputs, *args, **kwargs)
        mb = {k: v.detach().clone() for k, v in inputs.items() if isinstance(v, torch.Tensor)}
        saved["micro_batches"].append(mb | {"loss": loss.detach().clone()})
        return loss

    trainer._generate_and_score_completions = generate_then_step
    trainer.compute_loss = recording_compute_loss

    # One optimizer step's worth of Trainer.training_step calls, as Trainer's loop makes them (it would first set
    # current_gradient_accumulation_steps): the first generates, shuffles and splits the rollout, each computes
    # the loss of its micro-batch and backpropagates into the accumulated gradients.
    trainer.current_gradient_accumulation_steps = MICRO_BATCHES
    batch = [{"prompt": text} for text in prompt_texts for _ in range(G)]
    model.zero_grad(set_to_none=True)
    for _ in range(MICRO_BATCHES):
        trainer.training_step(model, batch, None)

    metrics = trainer._metrics["train"]
    for k, mb in enumerate(saved["micro_batches"]):
        assert "old_per_token_logps" in mb
        assert ("ref_per_token_logps" in mb) == (spec["beta"] != 0.0)
        for key in ("clip_ratio/low_mean", "clip_ratio/high_mean", "kl"):
            if key in metrics:
                mb[key] = float(metrics[key][k])
    saved["grads"] = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    saved["pad_token_id"] = trainer.processing_class.pad_token_id
    return saved


def _trl_main(out_dir: Path) -> None:
    results = {name: _trl_case(spec, out_dir / name) for name, spec in CASES.items()}
    torch.save(results, out_dir / "results.pt")


# ----- the agentrl side ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trl_results(tmp_path_factory) -> dict:
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
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), str(out)],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"TRL side failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return torch.load(out / "results.pt")


def _batch(pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Our own layout of the rollout: prompts left-padded, completions right-padded, one row per episode."""
    prompts = [PROMPTS[i // G] for i in range(B)]
    p_len, c_len = max(map(len, prompts)), max(map(len, COMPLETIONS))
    ids = torch.full((B, p_len + c_len), pad, dtype=torch.long)
    attention = torch.zeros_like(ids)
    loss_mask = torch.zeros_like(ids)
    for i, (p, c) in enumerate(zip(prompts, COMPLETIONS, strict=True)):
        ids[i, p_len - len(p) : p_len] = torch.tensor(p)
        ids[i, p_len : p_len + len(c)] = torch.tensor(c)
        attention[i, p_len - len(p) : p_len + len(c)] = 1
        loss_mask[i, p_len : p_len + len(c)] = 1
    return ids, attention, loss_mask


def _widen(completion_part: torch.Tensor, width: int) -> torch.Tensor:
    """[B, C] completion-aligned values -> [B, P + C] sequence-aligned, zeros over the prompt."""
    out = torch.zeros(completion_part.shape[0], width, dtype=torch.float32)
    out[:, width - completion_part.shape[1] :] = completion_part
    return out


def _model(spec: dict, state: dict) -> torch.nn.Module:
    """The architecture TRL trained, holding the weights it recorded."""
    model = tiny_model()
    if spec["lora"]:
        with torch.random.fork_rng():
            model = get_peft_model(model, LoraConfig(**LORA))
    model.load_state_dict(state)
    return model.train()


def _close(ours: torch.Tensor, theirs: torch.Tensor, what: str, rtol: float = 1e-5) -> None:
    """Equal to ``rtol`` relative to the size of TRL's tensor (elementwise relative error is meaningless near 0)."""
    scale = theirs.abs().max().clamp(min=1e-12)
    err = (ours - theirs).abs().max()
    assert err <= rtol * scale, f"{what}: max abs diff {err:.3e} vs max |TRL| {scale:.3e}"


@pytest.mark.parametrize("case", list(CASES))
def test_grpo_loss_and_grads_match_trl(case: str, trl_results: dict) -> None:
    spec, trl = CASES[case], trl_results[case]
    ids_all, attention_all, mask_all = _batch(trl["pad_token_id"])
    width = ids_all.shape[1]
    # TRL's scale_rewards="group" is our "grpo" advantage, computed group by group over the whole rollout.
    advantages_all = torch.cat([group_advantages(REWARDS[g : g + G], "grpo") for g in range(0, B, G)])
    assert torch.all(advantages_all[-G:] == 0)  # the tied group
    # Whole-step totals: both micro-batches together.
    norm = LossNorm(
        sequences=B,
        tokens=int(mask_all.sum()),
        micro_batches=MICRO_BATCHES,
        max_completion_length=MAX_COMPLETION_LENGTH,
    )
    before = _model(spec, trl["old_state"]).requires_grad_(False)  # the weights TRL generated with
    model = _model(spec, trl["state"])  # the stepped weights TRL computed the loss with

    assert len(trl["micro_batches"]) == MICRO_BATCHES
    seen: list[int] = []
    clipped_low = clipped_high = 0.0
    for k, mb in enumerate(trl["micro_batches"]):
        # TRL shuffled the rollout before splitting it: find our rows by their completions.
        rows = [
            COMPLETIONS.index(c[m.bool()].tolist())
            for c, m in zip(mb["completion_ids"], mb["completion_mask"], strict=True)
        ]
        seen += rows
        ids, attention, mask = ids_all[rows], attention_all[rows], mask_all[rows]

        # The same token layout as TRL's: left-padded prompts, right-padded completions, one attention mask.
        p_len = mb["prompt_ids"].shape[1]
        assert torch.equal(ids, torch.cat([mb["prompt_ids"], mb["completion_ids"]], 1))
        assert torch.equal(attention, torch.cat([mb["prompt_mask"], mb["completion_mask"]], 1))
        assert torch.equal(mask[:, p_len:], mb["completion_mask"])
        assert int(mb["num_items_in_batch"]) == norm.tokens

        advantages = advantages_all[rows]
        torch.testing.assert_close(advantages, mb["advantages"].float(), rtol=1e-6, atol=1e-6)
        old = _widen(mb["old_per_token_logps"], width)
        ref = _widen(mb["ref_per_token_logps"], width) if spec["beta"] else None

        # Our logprobs of the weights TRL generated with (and of its reference) are TRL's old (and ref) logprobs.
        with torch.no_grad():
            _close(token_logprobs(before, ids, attention, mask, temperature=TEMPERATURE) * mask, old, f"old lp {k}")
            if spec["beta"]:
                with before.disable_adapter():
                    base = token_logprobs(before, ids, attention, mask, temperature=TEMPERATURE)
                _close(base * mask, ref, f"ref lp {k}")

        # The micro-batch loss on the stepped weights, fed exactly TRL's inputs; gradients accumulate.
        logprobs = token_logprobs(model, ids, attention, mask, temperature=TEMPERATURE)
        loss, stats = grpo_loss(
            logprobs,
            old,
            advantages,
            mask,
            norm,
            loss_type=spec["loss_type"],
            epsilon_low=EPSILON_LOW,
            epsilon_high=EPSILON_HIGH,
            beta=spec["beta"],
            ref_logprobs=ref,
        )
        loss.backward()
        torch.testing.assert_close(loss.detach(), mb["loss"], rtol=1e-5, atol=1e-8)

        # We count clipped tokens as TRL does.
        clipped_low += stats["clip_low_fraction"] * stats["trained_tokens"]
        clipped_high += stats["clip_high_fraction"] * stats["trained_tokens"]
        assert stats["clip_low_fraction"] == pytest.approx(mb["clip_ratio/low_mean"], abs=1e-6)
        assert stats["clip_high_fraction"] == pytest.approx(mb["clip_ratio/high_mean"], abs=1e-6)
        if spec["beta"]:
            assert stats["kl"] > 1e-3  # the adapter is not a no-op
            assert stats["kl"] == pytest.approx(mb["kl"], rel=1e-5)
    assert sorted(seen) == list(range(B))
    # The clip actually bites, on both sides of the asymmetric range, yet most tokens still carry gradient.
    assert clipped_low > 0 and clipped_high > 0
    assert clipped_low + clipped_high < 0.5 * norm.tokens

    # The accumulated gradients of every trainable parameter.
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert grads.keys() == trl["grads"].keys()
    assert len(grads) > 0
    for name, grad in grads.items():
        assert grad is not None and torch.isfinite(grad).all(), name
        assert grad.abs().max() > 0, name
        _close(grad, trl["grads"][name], name)
    if spec["lora"]:
        assert all("lora_" in n for n in grads)  # only the adapter trains; the base model is the reference


if __name__ == "__main__":
    _trl_main(Path(sys.argv[1]))
