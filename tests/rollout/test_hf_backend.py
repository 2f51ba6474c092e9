"""The HF backend: left-padded batches give the same ids as single prompts, and logprobs are right."""

import pytest
import torch

from agentrl.rollout.generation import SamplingParams, prompt_seed
from agentrl.rollout.hf_backend import HFBackend
from agentrl.rollout.prefix import MIN_SHARED_PREFIX, common_prefix_length
from agentrl.testing import tiny_qwen3


@pytest.fixture(scope="module")
def backend():
    model, tok = tiny_qwen3()
    return HFBackend(model, tok)


def prompts(tok):
    texts = ["Hello world!", "A much longer prompt, with several more tokens in it than the first one.", "Hi"]
    return [tok.encode(t, add_special_tokens=False) for t in texts]


def test_greedy_batch_equals_one_by_one(backend):
    ps = prompts(backend.tokenizer)
    params = SamplingParams(temperature=0, max_new_tokens=12)
    batched = backend.generate(ps, params)
    single = [backend.generate([p], params)[0] for p in ps]
    assert [c.token_ids for c in batched] == [c.token_ids for c in single]
    for b, s in zip(batched, single, strict=True):
        assert b.logprobs == pytest.approx(s.logprobs, abs=1e-4)
        assert len(b.token_ids) == len(b.logprobs) == 12 and b.finish_reason == "length"


def test_logprobs_match_a_teacher_forced_forward(backend):
    p = prompts(backend.tokenizer)[1]
    comp = backend.generate([p], SamplingParams(temperature=0.7, max_new_tokens=10, seed=3))[0]
    ids = torch.tensor([p + comp.token_ids])
    with torch.no_grad():
        logits = backend.model(ids).logits[0, len(p) - 1 : -1] / 0.7
    ref = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(comp.token_ids)[:, None]).squeeze(-1)
    assert comp.logprobs == pytest.approx(ref.tolist(), abs=1e-4)


def test_seeded_sampling_is_reproducible_and_stop_tokens_end_the_turn(backend):
    p = prompts(backend.tokenizer)[0]
    params = SamplingParams(temperature=1.0, top_k=50, top_p=0.9, max_new_tokens=30, seed=7)
    a, b = backend.generate([p], params)[0], backend.generate([p], params)[0]
    assert a.token_ids == b.token_ids
    stop = a.token_ids[4]
    cut = backend.generate([p], SamplingParams(**{**params.__dict__, "stop_token_ids": [stop]}))[0]
    assert cut.token_ids[-1] == stop and cut.finish_reason == "stop" and stop not in cut.token_ids[:-1]


def test_shared_prefix_cache_gives_the_same_tokens_and_logprobs(backend):
    tok = backend.tokenizer
    prefix = tok.encode("You are a helpful assistant who answers briefly. " * 6, add_special_tokens=False)
    ps = [prefix + p for p in prompts(tok)] + [prefix[:-3]]  # one row is shorter than the prefix
    plain = HFBackend(backend.model, tok, share_prefix=False)
    assert backend.share_prefix and len(prefix) > MIN_SHARED_PREFIX
    for params in (SamplingParams(temperature=0, max_new_tokens=12), SamplingParams(max_new_tokens=12, seed=5)):
        shared, ref = backend.generate(ps, params), plain.generate(ps, params)
        assert [c.token_ids for c in shared] == [c.token_ids for c in ref]
        for a, b in zip(shared, ref, strict=True):
            assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)


def test_common_prefix_length():
    # One helper decides the shared opening for the sampler and the trainer alike.
    opening = list(range(100, 100 + MIN_SHARED_PREFIX))
    assert common_prefix_length([[*opening, 1, 2], [*opening, 1, 3], [*opening, 1]]) == MIN_SHARED_PREFIX + 1
    assert common_prefix_length([[*opening, 1], [*opening, 1]], limit=MIN_SHARED_PREFIX) == MIN_SHARED_PREFIX
    assert common_prefix_length([[1, 2, 3], [1, 2, 4]]) == 0  # too short to be worth a separate forward
    assert common_prefix_length([[*opening, 1]]) == 0  # one row shares with nobody
    assert common_prefix_length([[5, *opening], [6, *opening]]) == 0


def test_seeded_generation_leaves_the_global_rng_alone(backend):
    p = prompts(backend.tokenizer)[0]
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    backend.generate([p], SamplingParams(max_new_tokens=5, seed=7))
    assert torch.equal(torch.rand(3), expected)  # the caller's stream continues as if nothing happened


def test_generation_restores_the_training_mode(backend):
    backend.model.train()
    backend.generate([prompts(backend.tokenizer)[0]], SamplingParams(temperature=0, max_new_tokens=3))
    assert backend.model.training
    backend.model.eval()


def test_the_first_stop_wins_and_stop_strings_are_found_across_tokens(backend):
    from agentrl.rollout.hf_backend import _cut

    tok = backend.tokenizer
    ids = tok.encode("The answer is 42. Then more<|im_end|>", add_special_tokens=False)
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    n, why = _cut(ids, [eot], tok, ["42."])  # the stop string comes before the stop id
    assert why == "stop" and tok.decode(ids[:n]).endswith("42.") and eot not in ids[:n]
    n, why = _cut(ids, [eot], tok, ["s 4"])  # spans the tokens " is" and " 4"
    assert why == "stop" and tok.decode(ids[:n]).endswith("is 4")
    assert _cut(ids, [eot], tok, []) == (len(ids), "stop")
    assert _cut(ids[:-1], [eot], tok, ["zzz"]) == (len(ids) - 1, "length")


def test_padded_batches_attend_grouped_heads_without_copies_and_get_the_same_result(backend, monkeypatch):
    # tiny-qwen3 has grouped KV heads; a left-padded batch carries a mask, where transformers alone would copy
    # the KV cache per head group. The backend lets SDPA take both at once, only while it generates.
    from transformers.integrations import sdpa_attention

    original = sdpa_attention.use_gqa_in_sdpa
    seen = []
    monkeypatch.setattr(
        sdpa_attention.torch.nn.functional,
        "scaled_dot_product_attention",
        _recording(sdpa_attention.torch.nn.functional.scaled_dot_product_attention, seen),
    )
    ps = prompts(backend.tokenizer)
    params = SamplingParams(temperature=0, max_new_tokens=6)
    batched = backend.generate(ps, params)
    assert sdpa_attention.use_gqa_in_sdpa is original
    assert any(masked and gqa for masked, gqa in seen)
    seen.clear()
    single = [backend.generate([p], params)[0] for p in ps]
    assert [c.token_ids for c in batched] == [c.token_ids for c in single]
    for b, s in zip(batched, single, strict=True):
        assert b.logprobs == pytest.approx(s.logprobs, abs=1e-4)


def _recording(fn, seen):
    def wrapper(*args, **kwargs):
        seen.append((kwargs.get("attn_mask") is not None, bool(kwargs.get("enable_gqa"))))
        return fn(*args, **kwargs)

    return wrapper


def _generate_reference(backend, ps, params):
    """What ``model.generate`` samples for ``ps`` (one row at a time, so no padding is involved)."""
    sampled = params.temperature > 0
    warp = {"temperature": params.temperature, "top_k": params.top_k, "top_p": params.top_p} if sampled else {}
    out = []
    for p in ps:
        torch.manual_seed(prompt_seed(params.seed or 0, 0))  # as the backend seeds a call
        res = backend.model.generate(
            input_ids=torch.tensor([p]),
            attention_mask=torch.ones(1, len(p), dtype=torch.long),
            max_new_tokens=params.max_new_tokens,
            do_sample=sampled,
            **warp,
            eos_token_id=params.stop_token_ids or None,
            pad_token_id=backend.pad_id,
            return_dict_in_generate=True,
            output_scores=True,
        )
        ids = res.sequences[0, len(p) :].tolist()
        scores = torch.stack(res.scores, dim=1)[0].float()
        lps = torch.log_softmax(scores, -1).gather(-1, torch.tensor(ids)[:, None]).squeeze(-1).tolist()
        out.append((ids, lps))
    return out


def test_the_cpu_decoder_samples_what_generate_samples(backend):
    ps = prompts(backend.tokenizer)[:1]
    for params in (SamplingParams(temperature=0, max_new_tokens=10),
                   SamplingParams(temperature=0.8, top_k=20, top_p=0.95, max_new_tokens=10, seed=11)):  # fmt: skip
        ours = backend.generate(ps, params)
        for comp, (ids, lps) in zip(ours, _generate_reference(backend, ps, params), strict=True):
            assert comp.token_ids == ids
            assert comp.logprobs == pytest.approx(lps, abs=1e-4)


def test_rows_that_stop_early_leave_the_batch_without_changing_the_others(backend):
    # Stop on a token one row produces early: that row leaves the batch (the cache is compacted) while
    # the others go on; every row must still get exactly what it gets decoded alone.
    ps = [*prompts(backend.tokenizer), backend.tokenizer.encode("Counting: one two", add_special_tokens=False)]
    free = backend.generate(ps, SamplingParams(temperature=0, max_new_tokens=16))
    stop = free[1].token_ids[2]
    params = SamplingParams(temperature=0, max_new_tokens=16, stop_token_ids=[stop])
    batched = backend.generate(ps, params)
    single = [backend.generate([p], params)[0] for p in ps]
    assert batched[1].finish_reason == "stop" and len(batched[1].token_ids) <= 3
    assert any(c.finish_reason == "length" for c in batched)  # the batch went on after that row stopped
    assert [c.token_ids for c in batched] == [c.token_ids for c in single]
    for b, s in zip(batched, single, strict=True):
        assert b.logprobs == pytest.approx(s.logprobs, abs=1e-4)
        assert b.finish_reason == s.finish_reason


def test_cpu_batches_group_rows_of_similar_length(backend):
    # A later turn's prompts share the opening and then differ a lot in length; on a CPU the backend
    # runs them in a few batches of similar length instead of padding every row to the longest.
    opening = list(range(5, 45))
    ps = [opening + [7] * n for n in [10, 12, 11, 200, 9, 14, 190, 13]]
    batches = HFBackend(backend.model, backend.tokenizer, max_batch_size=3)._batches(ps)
    assert sorted(i for b in batches for i in b) == list(range(len(ps))) and max(map(len, batches)) <= 3
    assert {3, 6} in [set(b) for b in batches]  # the two long rows together, away from the short ones
    out = backend.generate(ps, SamplingParams(temperature=0, max_new_tokens=3))
    assert [c.token_ids for c in out] == [
        backend.generate([p], SamplingParams(temperature=0, max_new_tokens=3))[0].token_ids for p in ps
    ]


# generate() of a legacy-cache model is the model's own (Unsloth's wrapper turns the cache it is given into a
# Cache itself), not transformers', so the legacy form runs through the step-by-step decoder only.
@pytest.mark.parametrize(("form", "drop_finished"), [("cache", True), ("cache", False), ("legacy", True),
                                                     ("none", True), ("none", False)])  # fmt: skip
def test_every_cache_form_gives_the_same_tokens_and_logprobs(backend, form, drop_finished):
    # Unsloth's CUDA forwards return legacy tuples and never extend a passed cache; a model may also return no
    # cache at all. The sampler must then stop sharing the prompts' opening and follow what the model returns,
    # with the same result as the plain transformers model, token for token.
    from agentrl.testing import with_cache_form

    tok = backend.tokenizer
    prefix = tok.encode("You are a helpful assistant who answers briefly. " * 6, add_special_tokens=False)
    ps = [*([prefix + p for p in prompts(tok)]), prefix + tok.encode("Counting: one two", add_special_tokens=False)]
    model, _ = tiny_qwen3()
    other = HFBackend(with_cache_form(model, form), tok, drop_finished=drop_finished)
    plain = HFBackend(backend.model, tok, drop_finished=drop_finished)
    free = plain.generate(ps, SamplingParams(temperature=0, max_new_tokens=16))
    stop = free[1].token_ids[2]  # a row that stops early: the batch is compacted while the others go on
    for params in (SamplingParams(temperature=0, max_new_tokens=16, stop_token_ids=[stop]),
                   SamplingParams(max_new_tokens=16, seed=5, stop_token_ids=[stop])):  # fmt: skip
        ours, ref = other.generate(ps, params), plain.generate(ps, params)
        assert [c.token_ids for c in ours] == [c.token_ids for c in ref]
        assert [c.finish_reason for c in ours] == [c.finish_reason for c in ref]
        for a, b in zip(ours, ref, strict=True):
            assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)
    # Sharing is given up only where the form rules it out, and the reason names the form.
    why = other._prefix_unshareable
    assert why is None if form == "cache" else ("tuple" in why if form == "legacy" else "no KV cache" in why)
