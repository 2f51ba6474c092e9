"""Batched greedy decoding speed against the memory-bandwidth bound.

A decode step reads every weight once and the whole KV cache of every sequence once, and does little
arithmetic per byte at moderate batch sizes, so memory bandwidth bounds it:

    bound (tokens/s) = batch / (bytes read per step / bandwidth),
    bytes read per step = weight bytes + KV-cache bytes of all sequences at that step.

Over ``n`` steps the context grows, so the bound is taken over the whole run: ``batch * n`` tokens in
the sum of the steps' minimal times. Weight bytes come from the configuration (tied embeddings counted
once: the output projection reads the matrix, the embedding lookup only ``batch`` rows of it).

vLLM decodes when it imports on a CUDA device (random weights through ``load_format="dummy"``), else
transformers' ``generate`` with a static cache (which transformers compiles on CUDA). The backend used
is recorded with the numbers.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from typing import Any

from synthetic import EOS, PAD, kv_bytes_per_token, parameter_count

BANDWIDTH_TB_S = (  # (all of these in the device name, bytes/s): datasheet HBM bandwidth; first match wins
    (("H200",), 4.8e12),
    (("H100", "PCIE"), 2.0e12),
    (("H100",), 3.35e12),  # SXM (HBM3)
    (("A100", "80GB"), 2.0e12),
)


def table_bandwidth(device_name: str) -> float | None:
    name = device_name.upper()
    for words, bw in BANDWIDTH_TB_S:
        if all(w in name for w in words):
            return bw
    return None


def measure_bandwidth(device: str, nbytes: int) -> float:
    """Bytes/s of a large copy, counting bytes read and written; the median of five after a warm-up."""
    import torch

    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    times = []
    for i in range(6):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        dst.copy_(src)
        if device == "cuda":
            torch.cuda.synchronize()
        if i:  # the first copy warms up
            times.append(time.perf_counter() - t)
    times.sort()
    return 2 * src.numel() * 4 / times[len(times) // 2]


def bandwidth(device: str, device_name: str) -> dict[str, Any]:
    bw = table_bandwidth(device_name) if device == "cuda" else None
    if bw is not None:
        return {"bytes_per_s": bw, "source": f"datasheet value for {device_name}"}
    size = 2**30 if device == "cuda" else 2**28
    bw = measure_bandwidth(device, size)
    where = device_name if device == "cuda" else "this CPU"
    return {"bytes_per_s": bw, "source": f"measured with a {size >> 20} MiB copy on {where}, which the table lacks"}


def bound_tokens_per_s(
    config: dict[str, Any], element_size: int, batch: int, prompt_len: int, new_tokens: int, bytes_per_s: float
) -> dict[str, Any]:
    """The bandwidth bound of generating ``new_tokens`` for ``batch`` sequences after ``prompt_len`` tokens."""
    weights = parameter_count(config) * element_size
    per_token = kv_bytes_per_token(config, element_size)
    # Step t attends over prompt_len + t cached tokens per sequence (the prefill writes the prompt's).
    total_bytes = sum(weights + per_token * (prompt_len + t) * batch for t in range(new_tokens))
    return {
        "weight_bytes": weights,
        "kv_bytes_per_token": per_token,
        "bytes_read": total_bytes,
        "tokens_per_s": batch * new_tokens / (total_bytes / bytes_per_s),
    }


def choose_backend(requested: str, device: str) -> tuple[str, str]:
    """``(backend, why)``: vLLM on CUDA when it imports, transformers otherwise."""
    if requested == "hf":
        return "hf", "transformers generate (asked for)"
    has_vllm = importlib.util.find_spec("vllm") is not None
    if requested == "vllm":
        return "vllm", "vLLM (asked for)"
    if device != "cuda":
        return "hf", "transformers generate with a static cache: the dry run decodes on the CPU"
    if not has_vllm:
        return "hf", "transformers generate with a static cache: vLLM is not installed on this device"
    try:
        import vllm  # noqa: F401
    except Exception as exc:  # a broken install says why in one line
        return "hf", f"transformers generate with a static cache: vLLM does not import ({str(exc).splitlines()[0]})"
    return "vllm", "vLLM (imports on this device)"


def _prompts(batch: int, prompt_len: int, vocab: int) -> list[list[int]]:
    import torch

    g = torch.Generator().manual_seed(1)
    return torch.randint(3, vocab, (batch, prompt_len), generator=g).tolist()


def _timed_twice(generate: Callable[[], int], sync: Callable[[], None]) -> dict[str, Any]:
    """A warm-up call with the timed call's shapes (compilation, graphs and cache set-up happen there), then the
    timed call; each returns the number of tokens it generated."""
    out: dict[str, Any] = {}
    for key in ("warmup_seconds", "seconds"):
        sync()
        start = time.perf_counter()
        out["generated_tokens"] = generate()
        sync()
        out[key] = time.perf_counter() - start
    out["tokens_per_s"] = out["generated_tokens"] / out["seconds"]
    return out


def decode_hf(model_dir: str, device: str, prompts: list[list[int]], new_tokens: int) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    t = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    result: dict[str, Any] = {"load_seconds": time.perf_counter() - t, "element_size": torch.finfo(dtype).bits // 8}
    ids = torch.tensor(prompts, device=device)
    kwargs = dict(
        attention_mask=torch.ones_like(ids),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,  # random weights may pick EOS; every row must decode all its tokens
        do_sample=False,
        cache_implementation="static",  # which transformers compiles on CUDA, as a user's generate gets
        pad_token_id=PAD,
        eos_token_id=EOS,
    )

    def generate() -> int:
        with torch.inference_mode():
            out = model.generate(ids, **kwargs)
        return int(out.shape[1] - ids.shape[1]) * ids.shape[0]

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    try:
        result.update(_timed_twice(generate, sync))
    except Exception as exc:  # a compiler failure should still leave an eager number, marked as such
        if device != "cuda":
            raise
        result["compile_error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        kwargs["disable_compile"] = True
        result.update(_timed_twice(generate, sync))
    return result


def decode_vllm(model_dir: str, device: str, prompts: list[list[int]], new_tokens: int) -> dict[str, Any]:
    from vllm import LLM, SamplingParams

    t = time.perf_counter()
    llm = LLM(
        model=model_dir,
        load_format="dummy",  # random weights: nothing to read
        dtype="bfloat16",
        skip_tokenizer_init=True,
        max_model_len=len(prompts[0]) + new_tokens + 16,
        max_num_seqs=len(prompts),
        gpu_memory_utilization=0.5,
        seed=0,
    )
    result: dict[str, Any] = {"load_seconds": time.perf_counter() - t, "element_size": 2}
    requests = [{"prompt_token_ids": p} for p in prompts]
    params = SamplingParams(
        max_tokens=new_tokens, min_tokens=new_tokens, ignore_eos=True, temperature=0.0, detokenize=False
    )

    def generate() -> int:
        outs = llm.generate(requests, params, use_tqdm=False)
        return sum(len(o.outputs[0].token_ids) for o in outs)

    result.update(_timed_twice(generate, lambda: None))  # vLLM's generate returns finished outputs
    return result


def run(
    model_dir: str,
    config: dict[str, Any],
    *,
    device: str,
    device_name: str,
    batch: int,
    prompt_len: int,
    new_tokens: int,
    backend: str = "auto",
) -> dict[str, Any]:
    """Decode ``new_tokens`` for ``batch`` random prompts; speed, the bound, and their ratio."""
    name, why = choose_backend(backend, device)
    fn = decode_vllm if name == "vllm" else decode_hf
    result: dict[str, Any] = {"backend": name, "backend_reason": why, "batch": batch, "prompt_len": prompt_len,
                              "new_tokens": new_tokens}  # fmt: skip
    result.update(fn(model_dir, device, _prompts(batch, prompt_len, config["vocab_size"]), new_tokens))
    if result.get("compile_error"):
        result["backend_reason"] += f"; compiling failed ({result['compile_error']}), so these are eager numbers"
    bw = bandwidth(device, device_name)
    bound = bound_tokens_per_s(config, result["element_size"], batch, prompt_len, new_tokens, bw["bytes_per_s"])
    result.update(
        bandwidth_bytes_per_s=bw["bytes_per_s"],
        bandwidth_source=bw["source"],
        bound_tokens_per_s=bound["tokens_per_s"],
        weight_bytes=bound["weight_bytes"],
        kv_bytes_per_token=bound["kv_bytes_per_token"],
        fraction_of_bound=result["tokens_per_s"] / bound["tokens_per_s"],
        status="ok" if result["tokens_per_s"] > 0 else "error",
    )
    return result
