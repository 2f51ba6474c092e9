"""Advantages, chunked logprobs and the GRPO loss's aggregation rules (TRL parity is in test_trl_parity.py)."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from agentrl.testing import tiny_qwen3
from agentrl.train.advantages import group_advantages
from agentrl.train.logprobs import naive_token_logprobs, token_logprobs
from agentrl.train.loss import LossNorm, grpo_loss, rollout_correction


def test_grpo_advantage_is_a_z_score_with_unbiased_std():
    adv = group_advantages([1.0, 0.0, 0.0, 1.0], "grpo")
    std = torch.tensor([1.0, 0.0, 0.0, 1.0]).std(unbiased=True)
    assert torch.allclose(adv, torch.tensor([0.5, -0.5, -0.5, 0.5]) / (std + 1e-4))


def test_dr_grpo_advantage_is_centred_only():
    assert torch.allclose(group_advantages([3.0, 1.0], "dr_grpo"), torch.tensor([1.0, -1.0]))


def test_rloo_advantage_is_reward_minus_mean_of_the_others():
    r = [1.0, 0.0, 0.5, 0.25]
    adv = group_advantages(r, "rloo")
    expected = [r[i] - (sum(r) - r[i]) / 3 for i in range(4)]
    assert torch.allclose(adv, torch.tensor(expected))


def test_equal_rewards_and_lone_episodes_have_zero_advantage():
    for kind in ("grpo", "dr_grpo", "rloo"):
        assert torch.equal(group_advantages([0.7, 0.7, 0.7], kind), torch.zeros(3))
        assert torch.equal(group_advantages([1.0], kind), torch.zeros(1))
    with pytest.raises(ValueError, match="advantage"):
        group_advantages([1.0, 0.0], "ppo")


@pytest.fixture(scope="module")
def lora_model():
    model, _ = tiny_qwen3()
    torch.manual_seed(0)
    peft = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    peft.train()
    return peft


def _batch():
    torch.manual_seed(1)
    ids = torch.randint(0, 5000, (3, 40))
    attn = torch.ones_like(ids)
    attn[2, 30:] = 0  # a right-padded row
    mask = torch.zeros_like(ids)
    mask[:, 12:] = 1
    mask[0, 20:25] = 0  # an environment message inside the completion
    mask = mask * attn
    return ids, attn, mask


@pytest.mark.parametrize("chunk", [1, 7, 1024])
def test_chunked_logprobs_equal_the_naive_ones_in_value_and_gradient(lora_model, chunk):
    ids, attn, mask = _batch()
    naive = naive_token_logprobs(lora_model, ids, attn, mask, temperature=0.8)
    (naive * mask).sum().backward()
    want = {n: p.grad.clone() for n, p in lora_model.named_parameters() if p.requires_grad}
    lora_model.zero_grad()
    chunked = token_logprobs(lora_model, ids, attn, mask, temperature=0.8, chunk_size=chunk)
    chunked.sum().backward()
    assert torch.allclose(chunked, naive * mask, atol=1e-5)
    assert torch.count_nonzero(chunked) == mask[:, 1:].sum()  # only trained positions are computed
    for n, p in lora_model.named_parameters():
        if p.requires_grad:
            assert torch.allclose(p.grad, want[n], atol=1e-4 * float(want[n].abs().max()), rtol=0), n
    lora_model.zero_grad()


def test_shared_prefix_logprobs_equal_the_plain_ones_in_value_and_gradient(lora_model):
    from agentrl.train.logprobs import _shared_prefix_length

    ids, attn, mask = _batch()
    ids[:, :20] = ids[0, :20]  # a common 20-token opening
    mask[:, :20] = 0
    mask[1, 22:] = 0  # rows train on different spans
    assert _shared_prefix_length(ids, attn, mask) == 19  # stops before the token that predicts the first trained one
    plain = token_logprobs(lora_model, ids, attn, mask, temperature=0.8, share_prefix=False)
    plain.sum().backward()
    want = {n: p.grad.clone() for n, p in lora_model.named_parameters() if p.requires_grad}
    lora_model.zero_grad()
    shared = token_logprobs(lora_model, ids, attn, mask, temperature=0.8)
    shared.sum().backward()
    assert torch.count_nonzero(plain) == mask[:, 1:].sum()
    assert torch.allclose(shared, plain, atol=1e-5)
    for n, p in lora_model.named_parameters():
        if p.requires_grad:
            assert torch.allclose(p.grad, want[n], atol=1e-4 * float(want[n].abs().max()), rtol=0), n
    lora_model.zero_grad()


@pytest.mark.parametrize("form", ["legacy", "none"])
@pytest.mark.parametrize("training", [True, False])
def test_every_cache_form_gives_the_same_logprobs_in_value_and_gradient(lora_model, form, training, caplog,
                                                                         monkeypatch):  # fmt: skip
    # Unsloth's CUDA decoder returns no cache in training mode and a legacy tuple otherwise, and fails on a
    # transformers Cache: the logprob pass must then run the rows whole, with the same values and gradients,
    # and say why once.
    from agentrl.rollout import prefix
    from agentrl.testing import with_cache_form
    from agentrl.train import logprobs

    monkeypatch.setattr(prefix, "_noted", set())
    monkeypatch.setattr(logprobs, "_UNSHAREABLE", logprobs.weakref.WeakKeyDictionary())
    ids, attn, mask = _batch()
    ids[:, :20] = ids[0, :20]  # a common 20-token opening, which the plain model shares
    mask[:, :20] = 0
    lora_model.train(training)
    plain = token_logprobs(lora_model, ids, attn, mask, temperature=0.8)
    plain.sum().backward()
    want = {n: p.grad.clone() for n, p in lora_model.named_parameters() if p.requires_grad}
    lora_model.zero_grad()

    model, _ = tiny_qwen3()
    torch.manual_seed(0)  # the same LoRA weights as the fixture's
    other = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    other.load_state_dict(lora_model.state_dict())
    with_cache_form(other, form).train(training)
    with caplog.at_level("WARNING", logger="agentrl"):
        for _ in range(2):
            other.zero_grad()
            got = token_logprobs(other, ids, attn, mask, temperature=0.8)
            got.sum().backward()
    assert torch.allclose(got, plain, atol=1e-5)
    for n, p in other.named_parameters():
        if p.requires_grad:
            assert torch.allclose(p.grad, want[n], atol=1e-4 * float(want[n].abs().max()), rtol=0), n
    notes = [r.getMessage() for r in caplog.records if "logprob pass runs each row whole" in r.getMessage()]
    assert len(notes) == 1, notes  # said once, not per call
    lora_model.train()
    lora_model.zero_grad()


def test_shared_prefix_length_edge_cases():
    from agentrl.train.logprobs import _shared_prefix_length

    ids = torch.arange(40).repeat(2, 1)
    ones = torch.ones_like(ids)
    assert _shared_prefix_length(ids[:1], ones[:1], ones[:1]) == 0  # one row: nothing to share
    assert _shared_prefix_length(ids, ones, torch.zeros_like(ids)) == 39  # keeps one position to predict from
    short = ones.clone()
    short[1, 10:] = 0
    assert _shared_prefix_length(ids, short, torch.zeros_like(ids)) == 0  # padding ends the overlap (< 16)


def _loss_inputs():
    torch.manual_seed(2)
    lp = torch.randn(4, 6) * 0.1 - 1.0
    old = lp + torch.randn(4, 6) * 0.3
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [0, 1, 1, 0, 1, 0], [1, 0, 0, 0, 0, 0]])
    adv = torch.tensor([1.0, -0.5, 2.0, -1.0])
    return lp, old, adv, mask


def _per_token(lp, old, adv, eps_low=0.2, eps_high=0.28):
    ratio = torch.exp(lp - old)
    a = adv[:, None]
    return -torch.min(ratio * a, ratio.clamp(1 - eps_low, 1 + eps_high) * a)


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo", "bnpo"])
def test_loss_aggregation_matches_the_definitions(loss_type):
    lp, old, adv, mask = _loss_inputs()
    norm = LossNorm(sequences=4, tokens=int(mask.sum()), micro_batches=1, max_completion_length=10)
    loss, stats = grpo_loss(lp, old, adv, mask, norm, loss_type=loss_type, epsilon_low=0.2, epsilon_high=0.28)
    pt = _per_token(lp, old, adv) * mask
    expected = {
        "grpo": (pt.sum(1) / mask.sum(1)).mean(),
        "bnpo": pt.sum() / mask.sum(),
        "dapo": pt.sum() / mask.sum(),
        "dr_grpo": pt.sum() / (4 * 10),
    }[loss_type]
    assert torch.allclose(loss, expected)
    assert stats["clip_low_fraction"] + stats["clip_high_fraction"] > 0  # the inputs do clip


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
def test_micro_batch_losses_add_up_to_the_full_batch_loss(loss_type):
    lp, old, adv, mask = _loss_inputs()
    full_norm = LossNorm(sequences=4, tokens=int(mask.sum()), micro_batches=1, max_completion_length=10)
    full, _ = grpo_loss(lp, old, adv, mask, full_norm, loss_type=loss_type)
    split_norm = LossNorm(sequences=4, tokens=int(mask.sum()), micro_batches=2, max_completion_length=10)
    parts = [
        grpo_loss(lp[s], old[s], adv[s], mask[s], split_norm, loss_type=loss_type)[0]
        for s in (slice(0, 2), slice(2, 4))
    ]
    assert torch.allclose(sum(parts), full)


def test_k3_kl_is_added_per_token_and_zero_at_the_reference():
    lp, old, adv, mask = _loss_inputs()
    norm = LossNorm(sequences=4, tokens=int(mask.sum()), micro_batches=1, max_completion_length=10)
    plain, _ = grpo_loss(lp, old, adv, mask, norm)
    same, stats = grpo_loss(lp, old, adv, mask, norm, beta=0.5, ref_logprobs=lp.clone())
    assert torch.allclose(plain, same) and stats["kl"] == 0.0
    ref = lp - 0.3
    with_kl, stats = grpo_loss(lp, old, adv, mask, norm, beta=0.5, ref_logprobs=ref)
    d = (ref - lp) * mask
    k3 = (torch.exp(d) - d - 1) * mask
    assert torch.allclose(with_kl - plain, 0.5 * k3.sum() / mask.sum())
    assert stats["kl"] > 0
    with pytest.raises(ValueError, match="ref_logprobs"):
        grpo_loss(lp, old, adv, mask, norm, beta=0.5)


def test_on_policy_gradient_is_the_policy_gradient():
    """With ratio 1 and no clipping, d loss / d logprob = -advantage / tokens (dapo)."""
    lp, _, adv, mask = _loss_inputs()
    lp = lp.clone().requires_grad_(True)
    norm = LossNorm(sequences=4, tokens=int(mask.sum()), micro_batches=1, max_completion_length=10)
    loss, stats = grpo_loss(lp, lp.detach(), adv, mask, norm, loss_type="dapo")
    loss.backward()
    assert torch.allclose(lp.grad, -adv[:, None] * mask / mask.sum())
    assert stats["ratio_mean"] == pytest.approx(1.0)


def test_gspo_uses_one_ratio_per_sequence_from_the_mean_log_ratio():
    lp, old, adv, mask = _loss_inputs()
    norm = LossNorm(sequences=4, tokens=int(mask.sum()), micro_batches=1, max_completion_length=10)
    loss, stats = grpo_loss(lp, old, adv, mask, norm, loss_type="grpo", importance_sampling_level="sequence")
    m = mask.float()
    seq_ratio = torch.exp(((lp - old) * m).sum(1) / m.sum(1))[:, None]
    a = adv[:, None]
    per_token = -torch.min(seq_ratio * a, seq_ratio.clamp(0.8, 1.2) * a) * m
    assert torch.allclose(loss, (per_token.sum(1) / m.sum(1)).mean())
    clipped = ((seq_ratio[:, 0] < 0.8) & (adv < 0)).float().mean()  # a fraction of sequences, as in TRL
    assert stats["clip_low_fraction"] == pytest.approx(float(clipped))
    with pytest.raises(ValueError, match="importance_sampling_level"):
        grpo_loss(lp, old, adv, mask, norm, importance_sampling_level="episode")


@pytest.mark.parametrize("mode", ["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"])
def test_rollout_correction_weights(mode):
    trainer = torch.tensor([[-1.0, -2.0, -0.5, 0.0], [-1.0, -1.0, -3.0, -9.0]])
    engine = torch.tensor([[-2.0, -1.0, -0.5, 5.0], [-1.5, -1.2, -1.0, 7.0]])  # the last column is not sampled
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0]])
    weights, stats = rollout_correction(trainer, engine, mask, mode, cap=2.0)
    token = torch.exp((trainer - engine) * mask)  # e, 1/e, 1 | 1.65, 1.22, 1/e^2 ; 1 where not sampled
    if mode.startswith("token"):
        expected = token.clamp(max=2.0) if mode.endswith("truncate") else token.masked_fill(token > 2.0, 0.0)
        assert torch.allclose(weights, expected)
        key = f"rollout_is_{'clipped' if mode.endswith('truncate') else 'masked'}_fraction"
        assert stats[key] == pytest.approx(1 / 6)  # one sampled token of six is above the cap
    else:
        seq = torch.exp(((trainer - engine) * mask).sum(1, keepdim=True))  # e^0 = 1 and e^(0.5+0.2-2) = 0.27
        expected = seq.clamp(max=2.0) if mode.endswith("truncate") else seq.masked_fill(seq > 2.0, 0.0)
        assert weights.shape == (2, 1) and torch.allclose(weights, expected)
    assert stats["rollout_is_ratio_max"] == pytest.approx(float(token[mask.bool()].max() if "token" in mode else 1.0))
    assert rollout_correction(trainer, engine, mask, "none", 2.0) == (None, {})
    with pytest.raises(ValueError, match="rollout correction"):
        rollout_correction(trainer, engine, mask, "tis", 2.0)


def test_rollout_correction_scales_the_policy_term_but_not_the_kl():
    lp, old, adv, mask = _loss_inputs()
    norm = LossNorm(sequences=4, tokens=int(mask.sum()), micro_batches=1, max_completion_length=10)
    ref = lp - 0.3
    half = torch.full_like(lp, 0.5)
    plain, _ = grpo_loss(lp, old, adv, mask, norm, loss_type="dapo")
    corrected, _ = grpo_loss(lp, old, adv, mask, norm, loss_type="dapo", correction=half)
    assert torch.allclose(corrected, 0.5 * plain)
    kl_only = grpo_loss(lp, old, adv, mask, norm, beta=0.1, ref_logprobs=ref)[0] - plain
    both = grpo_loss(lp, old, adv, mask, norm, beta=0.1, ref_logprobs=ref, correction=half)[0]
    assert torch.allclose(both, 0.5 * plain + kl_only)
