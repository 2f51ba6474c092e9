"""The memory preflight: architecture numbers, the estimate's parts, the verdicts, the CLI, and the estimate
against the peak RSS of real CPU training runs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from agentrl.cli import main
from agentrl.errors import UserError
from agentrl.train import memory
from agentrl.train.memory import (
    KNOWN_CONFIGS,
    MemoryEstimate,
    check_fits,
    estimate_memory,
    lora_parameters,
    model_config,
    parameter_counts,
    suggest,
    vllm_memory_fraction,
)
from agentrl.train.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[2]
GiB = 1 << 30


def _recipe(*overrides: str):
    return load_recipe(None, list(overrides))


# The shape of recipes/qwen3-4b-arithmetic.yaml, fixed here so that tuning that recipe cannot move these tests.
QWEN3_4B = [
    "model.name=Qwen/Qwen3-4B", "model.load_in_4bit=true", "model.gradient_checkpointing=true", "backend=vllm",
    "grpo.tasks_per_step=16", "grpo.group_size=8", "grpo.micro_batch_size=8", "grpo.max_total_tokens=4096",
    "sampling.max_new_tokens=512", "lora.r=32",
]  # fmt: skip


# ----- architecture numbers -----------------------------------------------------------------------
# Total and non-embedding sizes from the Qwen3 model cards, in billions.
PUBLISHED = {
    "Qwen/Qwen3-0.6B": (0.6, 0.44),
    "Qwen/Qwen3-1.7B": (1.7, 1.4),
    "Qwen/Qwen3-4B": (4.0, 3.6),
    "Qwen/Qwen3-8B": (8.2, 6.95),
    "Qwen/Qwen3-14B": (14.8, 13.2),
    "Qwen/Qwen3-30B-A3B": (30.5, 29.9),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_known_configs_add_up_to_the_published_sizes(name):
    counts = parameter_counts(KNOWN_CONFIGS[name])
    total, non_embedding = PUBLISHED[name]
    assert sum(counts.values()) / 1e9 == pytest.approx(total, rel=0.03)
    embeddings = counts["embeddings"] + counts["lm_head"]
    assert (sum(counts.values()) - embeddings) / 1e9 == pytest.approx(non_embedding, rel=0.03)


def test_moe_counts_experts_router_and_active_parameters():
    c = parameter_counts(KNOWN_CONFIGS["Qwen/Qwen3-30B-A3B"])
    assert c["mlp"] == 0 and c["experts"] == 48 * 128 * 3 * 2048 * 768 and c["router"] == 48 * 2048 * 128
    # About 3.3B are active per token (the model card's "activated"): 8 of 128 experts.
    active = sum(c.values()) - c["experts"] + c["experts"] * 8 / 128
    assert active / 1e9 == pytest.approx(3.3, rel=0.03)


def test_parameter_counts_equal_the_numel_of_built_models():
    torch = pytest.importorskip("torch")
    from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM

    torch.manual_seed(0)
    dense = {**KNOWN_CONFIGS["Qwen/Qwen3-8B"], "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2}
    dense |= {"num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 500}
    moe = {**KNOWN_CONFIGS["Qwen/Qwen3-30B-A3B"], **{k: dense[k] for k in dense if k not in ("model_type",)}}
    moe |= {"model_type": "qwen3_moe", "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 24}
    for cls, config_cls, cfg in ((Qwen3ForCausalLM, Qwen3Config, dense), (Qwen3MoeForCausalLM, Qwen3MoeConfig, moe)):
        model = cls(config_cls(**{k: v for k, v in cfg.items() if k != "architectures"}))
        assert sum(parameter_counts(cfg).values()) == sum(p.numel() for p in model.parameters()), cls.__name__


def test_model_config_reads_local_files_and_knows_qwen3_offline():
    from agentrl.assets import TINY_QWEN3_CONFIG

    tiny = model_config("tiny-qwen3")
    assert tiny["hidden_size"] == TINY_QWEN3_CONFIG["hidden_size"] and tiny["vocab_size"] == 151669
    assert model_config("qwen3-4b") == KNOWN_CONFIGS["Qwen/Qwen3-4B"]  # the repo name alone, any case
    with pytest.raises(UserError, match="unknown model 'no-such/model'") as exc:
        model_config("no-such/model")
    assert "\n" not in str(exc.value)


def test_lora_parameters_equal_what_peft_trains():
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from agentrl.models import model_path

    for extra, layers in (([], None), (["lora.last_n_layers=1", "lora.r=4"], [1])):
        recipe = _recipe("model.name=tiny-qwen3", *extra)
        base = AutoModelForCausalLM.from_pretrained(model_path("tiny-qwen3"))
        lora = recipe.lora
        peft_model = get_peft_model(
            base, LoraConfig(r=lora.r, target_modules=list(lora.target_modules), layers_to_transform=layers)
        )
        trained = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
        assert lora_parameters(model_config("tiny-qwen3"), recipe) == trained


# ----- the estimate -------------------------------------------------------------------------------
def test_tiny_qwen3_estimate_uses_its_local_config():
    e = estimate_memory(_recipe("model.name=tiny-qwen3", "backend=hf"), device="cpu")
    n_params = sum(parameter_counts(model_config("tiny-qwen3")).values())
    assert e.parts["weights"] == n_params * 4  # float32 on CPU
    assert e.parts["logits"] == int(memory.LOGIT_COPIES["cpu"] * 512 * 151669 * 4)  # its 151,669-token vocabulary
    assert list(e.parts)[:5] == ["runtime", "weights", "lora", "gradients", "optimizer"]
    assert e.total == e.phase("resident") + max(e.phase("train"), e.phase("rollout"))


def test_four_bit_weights_are_smaller_and_count_the_kept_parts_in_16_bit():
    config = KNOWN_CONFIGS["Qwen/Qwen3-8B"]
    full = estimate_memory(_recipe("model.name=Qwen/Qwen3-8B", "model.load_in_4bit=false"), config=config)
    four = estimate_memory(_recipe("model.name=Qwen/Qwen3-8B", "model.load_in_4bit=true"), config=config)
    c = parameter_counts(config)
    kept = c["embeddings"] + c["lm_head"] + c["norms"]  # dense default: only the linears but lm_head go to 4-bit
    expected = (sum(c.values()) - kept) * 4.127 / 8 + kept * 2
    assert four.parts["weights"] == pytest.approx(expected, rel=1e-3)
    assert four.parts["weights"] < 0.45 * full.parts["weights"]
    # load_in_4bit unset means yes on CUDA and no on CPU.
    default = _recipe("model.name=Qwen/Qwen3-8B")
    assert estimate_memory(default, device="cuda").parts["weights"] == four.parts["weights"]
    assert estimate_memory(default, device="cpu").parts["weights"] == sum(c.values()) * 4


def test_moe_quantizes_only_the_experts_unless_told_otherwise():
    config = KNOWN_CONFIGS["Qwen/Qwen3-30B-A3B"]
    c = parameter_counts(config)
    recipe = _recipe("model.name=Qwen/Qwen3-30B-A3B", "model.load_in_4bit=true")
    weights = estimate_memory(recipe, config=config).parts["weights"]
    assert weights == pytest.approx(c["experts"] * 4.127 / 8 + (sum(c.values()) - c["experts"]) * 2, rel=1e-3)
    recipe.model.keep_high_precision = ["lm_head"]  # attention and the router go to 4-bit too
    assert estimate_memory(recipe, config=config).parts["weights"] < weights


def test_checkpointing_and_fewer_adapted_layers_lower_the_activations():
    base = ["model.name=Qwen/Qwen3-4B", "backend=hf"]
    plain = estimate_memory(_recipe(*base)).parts["activations"]
    checkpointed = estimate_memory(_recipe(*base, "model.gradient_checkpointing=true")).parts["activations"]
    top = estimate_memory(_recipe(*base, "lora.last_n_layers=6")).parts["activations"]
    assert checkpointed < plain / 4 and top < plain / 4
    longer = estimate_memory(_recipe(*base, "grpo.max_total_tokens=4096")).parts["activations"]
    assert longer > 1.9 * plain  # the default budget is 2048 tokens


def test_vllm_holds_its_own_base_and_gets_a_memory_fraction():
    n_params = sum(parameter_counts(KNOWN_CONFIGS["Qwen/Qwen3-4B"]).values())
    e16 = estimate_memory(_recipe(*QWEN3_4B, "vllm.base_precision=16bit", "vllm.sleep=false"), device="cuda")
    assert e16.parts["vllm"] > n_params * 2 and e16.phase_of("vllm") == "resident"
    assert "kv_cache" not in e16.parts  # vLLM's KV cache is inside its own part
    e = estimate_memory(_recipe(*QWEN3_4B), device="cuda")  # auto: 4-bit like the trainer; asleep during updates
    assert e.parts["vllm"] < e16.parts["vllm"] / 2 and e.phase_of("vllm") == "rollout"
    assert e.total < e16.total
    for estimate in (e, e16):
        fraction = vllm_memory_fraction(estimate, 80 * GiB)
        assert (estimate.parts["vllm"] + estimate.parts["vllm_runtime"]) / (80 * GiB) <= fraction <= 0.9
        awake = estimate.total - estimate.parts["vllm"] - estimate.parts["vllm_runtime"]
        if estimate.phase_of("vllm") == "rollout":  # asleep, vLLM leaves the trainer its whole update
            awake = estimate.phase("resident") - estimate.parts["vllm_runtime"] + estimate.parts["allocator_reserve"]
        assert fraction * 80 * GiB + awake <= 80 * GiB
    with pytest.raises(UserError, match="do not fit together"):
        vllm_memory_fraction(e16, 16 * GiB)


def test_a_sleeping_vllm_wakes_beside_what_the_trainers_allocator_keeps():
    # Qwen3-4B, LoRA r=32 on the 7 projections of 36 layers: after each update the gradients are freed, so
    # empty_cache can return their segments; the LoRA weights and AdamW moments are packed, and what stays is
    # one partly used segment of each pool (no LoRA tensor is over 10 MiB here).
    e = estimate_memory(_recipe(*QWEN3_4B), device="cuda")
    assert e.parts["allocator_reserve"] == (2 + 20) * 2**20
    assert e.phase_of("allocator_reserve") == "rollout"  # during the update those segments hold activations
    awake = e.phase("resident") - e.parts["vllm_runtime"]
    cap = 24 * GiB
    fraction = vllm_memory_fraction(e, cap)
    assert fraction * cap + awake + e.parts["allocator_reserve"] <= cap
    # An engine that never sleeps holds its memory through the update: no reserve, and the trainer's peak
    # (reserved, never emptied) is left out of its share whole.
    awake_engine = estimate_memory(_recipe(*QWEN3_4B, "vllm.sleep=false"), device="cuda")
    assert "allocator_reserve" not in awake_engine.parts
    # A LoRA tensor over 10 MiB gets a segment of its own, rounded up to 2 MiB: its weight and moments, 3 of them.
    big = estimate_memory(_recipe(*QWEN3_4B, "lora.r=512"), device="cuda")  # 9728 x 512 fp32 = 19 MiB each
    assert big.parts["allocator_reserve"] > e.parts["allocator_reserve"]
    assert (big.parts["allocator_reserve"] - (2 + 20) * 2**20) % (3 * 2 * 2**20) == 0


def test_an_update_frees_its_gradients_so_empty_cache_can_return_them(tmp_path):
    # The allocator reserve above assumes it: after the update no LoRA gradient is left for vLLM's wake-up to
    # work around.
    from agentrl.testing import toy_policy_path
    from agentrl.train.trainer import Trainer

    recipe = load_recipe(None, [
        f"model.name={toy_policy_path()}", "env.id=agentrl.testing:LatinLettersEnv", "grpo.steps=1",
        "grpo.tasks_per_step=2", "grpo.group_size=4", "grpo.max_turns=1", "grpo.zero_variance=keep",
        "sampling.max_new_tokens=8", "sampling.stop=[.]", "eval.before=false", "eval.after=false", "report_to=[]",
        f"output_dir={tmp_path}",
    ])  # fmt: skip
    trainer = Trainer(recipe, show_progress=False)
    metrics = trainer.train_step()
    assert metrics["updates"] == 1 and metrics["grad_norm"] > 0
    assert all(p.grad is None for p in trainer.model.parameters() if p.requires_grad)
    trainer.close()


def test_verdicts():
    e = MemoryEstimate("cuda", {"weights": int(13.2 * GiB)})
    assert e.verdict(24 * GiB) == "fits: 13.2 GiB of 24 GiB (55%)"
    assert e.verdict(12 * GiB) == "does not fit: 13.2 GiB of 12 GiB (110%)"
    table = estimate_memory(_recipe("model.name=Qwen/Qwen3-4B")).format_table()
    assert "weights" in table and "GiB" in table and "peak:" in table


def test_check_fits_names_a_change_that_fits(monkeypatch):
    recipe = _recipe(*QWEN3_4B)
    monkeypatch.setattr(memory, "device_capacity", lambda device: 80 * GiB)
    assert check_fits(recipe, "cuda").total < 80 * GiB
    monkeypatch.setattr(memory, "device_capacity", lambda device: 14 * GiB)
    with pytest.raises(UserError) as exc:
        check_fits(recipe, "cuda")
    message = str(exc.value)
    assert "\n" not in message and "exceeds the 14 GiB" in message
    assert re.search(r"(set|lower) (model|grpo)\.", message), message
    # What it suggests does fit.
    fix = suggest(recipe, "cuda", 14 * GiB)
    changes = [m.group(1) + "=" + m.group(2) for m in re.finditer(r"(?:set|lower) ([\w.]+)(?:=| to )(\w+)", fix)]
    assert changes and estimate_memory(_recipe(*QWEN3_4B, *changes)).total <= 14 * GiB
    monkeypatch.setattr(memory, "device_capacity", lambda device: None)
    assert check_fits(recipe, "cuda") is None  # no such device here: nothing to check


def test_device_capacity():
    ram = memory.device_capacity("cpu")
    assert 0 < ram <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    import torch

    if not torch.cuda.is_available():
        assert memory.device_capacity("cuda") is None


# ----- agentrl doctor --memory --------------------------------------------------------------------
def test_doctor_memory_prints_a_breakdown_and_verdicts(capsys, monkeypatch):
    real = memory.device_capacity
    monkeypatch.setattr(memory, "device_capacity", lambda d: None if d.startswith("cuda") else real(d))
    assert main(["doctor", "--memory", str(ROOT / "recipes" / "qwen3-4b-arithmetic.yaml")]) == 0
    out = capsys.readouterr().out
    for part in ("weights", "lora", "optimizer", "activations", "logits", "vllm", "peak:"):
        assert part in out, part
    assert re.search(r"^24 GB card: (fits|does not fit): ", out, flags=re.M)
    assert re.search(r"^80 GB card: fits: .*gpu_memory_utilization=0\.\d+", out, flags=re.M)
    assert re.search(r"^this CPU \([\d.]+ GiB RAM\): ", out, flags=re.M)

    quickstart = str(ROOT / "recipes" / "quickstart.yaml")
    assert main(["doctor", "--memory", quickstart, "--device-memory", "8", "grpo.micro_batch_size=2"]) == 0
    out = capsys.readouterr().out
    assert "micro-batch 2 x 1024" in out and re.search(r"^8 GiB device: fits: ", out, flags=re.M)


def test_doctor_modes_refuse_each_others_arguments(capsys):
    assert main(["doctor", "--memory", str(ROOT / "recipes" / "quickstart.yaml"), "tiny-qwen3"]) == 2
    assert "not a key=value override" in capsys.readouterr().err
    assert main(["doctor"]) == 2
    assert "--memory RECIPE" in capsys.readouterr().err
    assert main(["doctor", "tiny-qwen3", "--device-memory", "24"]) == 2
    assert "go with --memory" in capsys.readouterr().err


# ----- validation against real runs ---------------------------------------------------------------
# One training step in a fresh process, whose ru_maxrss is then that run's peak. The estimate is a
# worst case in sequence length, so the runs are set up to reach it: the tiny random model never ends
# a turn by itself, so every episode fills max_total_tokens (the arithmetic prompt is 236 tokens, +32
# sampled), and the logprob chunk is no larger than the sampled tokens of a micro-batch (8 x 32);
# zero_variance=keep trains on the all-zero rewards rather than dropping every group.
TINY = [
    "model.name=tiny-qwen3-training", "env.id=arithmetic", "grpo.tasks_per_step=2", "grpo.group_size=4",
    "grpo.micro_batch_size=8", "grpo.max_total_tokens=268", "sampling.max_new_tokens=32",
    "grpo.logprob_chunk_size=256",
]  # fmt: skip
# SmolLM2 would end its turns early; at temperature 3 it samples nearly uniformly and does not. Its
# environment's prompts (22 tokens) differ from their first token on: the trainer runs a prompt opening
# that all rows share only once, which the estimate, for distinct prompts, does not count on.
SMOLLM2 = [
    "model.name=smollm2-135m", "env.id=peak_rss_train:DistinctPromptsEnv", "grpo.tasks_per_step=2",
    "grpo.group_size=2", "grpo.micro_batch_size=4", "grpo.max_total_tokens=118", "sampling.max_new_tokens=96",
    "sampling.temperature=3.0", "grpo.logprob_chunk_size=256",
]  # fmt: skip
COMMON = ["backend=hf", "grpo.steps=1", "grpo.max_turns=1", "grpo.zero_variance=keep", "eval.before=false",
          "eval.after=false", "report_to=[]", "save_every=0"]  # fmt: skip


def _measure(tmp_path, overrides: list[str]) -> tuple[int, int]:
    args = [*COMMON, *overrides, f"output_dir={tmp_path / 'run'}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    script = Path(__file__).with_name("peak_rss_train.py")  # its directory is on its path: its environment
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.loads(proc.stdout.strip().splitlines()[-1])
    recipe = load_recipe(None, args)
    assert run["min_len"] == recipe.grpo.max_total_tokens  # the worst case the estimate assumes was reached
    return estimate_memory(recipe, device="cpu").total, run["peak_rss"]


def _check(label: str, estimate: int, measured: int) -> None:
    error = (estimate - measured) / measured
    print(f"{label}: estimate {estimate / 2**20:.0f} MiB, measured peak RSS {measured / 2**20:.0f} MiB ({error:+.1%})")
    assert abs(error) <= 0.25


@pytest.mark.parametrize("precision", ["16-bit", "4-bit"])
def test_estimate_matches_the_peak_rss_of_a_tiny_qwen3_run(tmp_path, precision):
    extra = ["model.load_in_4bit=true"] if precision == "4-bit" else []
    _check(f"tiny-qwen3 {precision}", *_measure(tmp_path, TINY + extra))


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["16-bit", "4-bit"])
def test_estimate_matches_the_peak_rss_of_a_smollm2_run(tmp_path, precision):
    extra = ["model.load_in_4bit=true"] if precision == "4-bit" else []
    _check(f"smollm2-135m {precision}", *_measure(tmp_path, SMOLLM2 + extra))


def test_train_refuses_to_start_when_the_estimate_exceeds_the_device(tmp_path, monkeypatch, capsys):
    """One line with a suggested change, before any model is loaded."""
    from agentrl.cli import main
    from agentrl.train import memory, model

    monkeypatch.setattr(memory, "device_capacity", lambda device: 3 * 2**30)  # a 3 GiB machine
    loaded = []
    monkeypatch.setattr(model, "load_base", lambda *a, **k: loaded.append(1))
    code = main(["train", "recipes/quickstart.yaml", f"output_dir={tmp_path / 'run'}", "report_to=[]"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and not loaded
    assert len(err) == 1 and "exceeds the 3 GiB of this cpu device" in err[0], err
    assert "lower " in err[0] or "set " in err[0], err  # a change that fits
