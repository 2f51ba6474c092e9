"""`agentrl eval --backend openai`: a chat API's episodes through the usual environments, scoring and reports.

A small local fake API scripts the server's behaviour (tool calls, failures, rejections) so the
message-level loop is checked exactly; the last tests run against a real vLLM server on loopback.
"""

import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import agentrl.eval.openai_backend as api_mod
from agentrl.cli import main
from agentrl.eval.openai_backend import normalize, wire
from agentrl.eval.run import EvalSettings, run_eval

SECRET = "sk-test-0123456789-never-written"


def completion(content="", tool_calls=None, finish="stop", usage=True):
    message = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    body = {"id": "x", "choices": [{"index": 0, "message": message, "finish_reason": finish}]}
    if usage:
        body["usage"] = {"prompt_tokens": 50, "completion_tokens": 7, "total_tokens": 57}
    return body


class FakeAPI:
    """An OpenAI-style chat API on loopback whose answers come from ``respond(body, n)``.

    ``respond`` returns ``(status, body)`` or ``(status, body, headers)``, with a dict body sent as
    JSON and a str body as is; or "hang" (answers after 2 s) or "drop" (closes the connection).
    """

    def __init__(self, respond):
        self.respond, self.requests, self.lock = respond, [], threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    fake.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                    n = len(fake.requests)
                out = fake.respond(body, n)
                if out == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if out == "hang":
                    time.sleep(1)
                    out = (200, completion("late"))
                status, payload, headers = (*out, {}) if len(out) == 2 else out
                data = json.dumps(payload).encode() if isinstance(payload, dict) else payload.encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass  # a client that gave up (timed out) closed the connection: expected here

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_api():
    servers = []

    def start(respond):
        servers.append(FakeAPI(respond))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setattr(api_mod, "RETRY_DELAYS", (0.01, 0.01))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


def solver(body, n):
    """A perfect arithmetic agent: one calculator call, then the boxed result."""
    last = body["messages"][-1]
    if last["role"] == "user":
        expr = re.search(r"What is (.+)\?", last["content"]).group(1)
        call = {"id": f"call-{n}", "type": "function",
                "function": {"name": "calculator", "arguments": json.dumps({"expression": expr})}}  # fmt: skip
        return 200, completion(tool_calls=[call], finish="tool_calls")
    return 200, completion(f"The answer is \\boxed{{{last['content']}}}.")


def _settings(url, out, **kw):
    base = dict(backend="openai", base_url=url, model="served-model", env="arithmetic", num_tasks=3,
                max_new_tokens=32, output_dir=str(out))  # fmt: skip
    return EvalSettings(**{**base, **kw})


def _files_text(out):
    return {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}


def test_a_perfect_agent_scores_through_tools_and_the_report_says_tokens_are_absent(fake_api, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    api = fake_api(solver)
    out = tmp_path / "ev"
    summary = run_eval(_settings(api.url, out, samples=2, temperature=0.7), show_progress=False)
    m = summary["results"]["base"]
    assert m["tasks"] == 3 and m["episodes"] == 6 and m["infra_failures"] == 0
    assert m["success_rate"]["mean"] == 1.0 and m["tool_calls_per_episode"] == 1.0 and m["mean_turns"] == 2.0
    assert m["mean_generated_tokens"] == 14.0  # the server's usage figures: 7 per turn
    assert summary["token_metrics"].startswith("absent")
    assert summary["api"] == {"requests": 12, "failed": 0, "retries": 0, "without_usage": 0, "last_error": None}

    first = api.requests[0]
    assert first["path"] == "/v1/chat/completions" and first["auth"] == f"Bearer {SECRET}"
    body = first["body"]
    assert body["model"] == "served-model" and body["max_tokens"] == 32 and body["temperature"] == 0.7
    assert [t["function"]["name"] for t in body["tools"]] == ["calculator"] and isinstance(body["seed"], int)
    # The second turn answers the call by its id, in the wire shape (no extra keys).
    second = next(r["body"] for r in api.requests if r["body"]["messages"][-1]["role"] == "tool")
    call, result = second["messages"][-2:]
    assert result == {"role": "tool", "tool_call_id": call["tool_calls"][0]["id"], "content": result["content"]}

    rows = [json.loads(x) for x in (out / "trajectories.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(r["ids"] == [] and r["reward"] == 1.0 and r["terminated"] for r in rows)
    assert [m["role"] for m in rows[0]["messages"]] == ["system", "user", "assistant", "tool", "assistant"]
    md, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    assert "Token-level metrics: absent" in md and "Token-level metrics: absent" in page
    assert f"served-model via the chat API at {api.url}" in md
    assert not any(SECRET.encode() in data for data in _files_text(out).values())

    # Resuming: nothing runs again.
    before = len(api.requests)
    run_eval(_settings(api.url, out, samples=2, temperature=0.7), show_progress=False)
    assert len(api.requests) == before


def test_transient_failures_are_retried_and_not_counted(fake_api, tmp_path):
    kinds = [(500, {"error": {"message": "overloaded"}}), (429, "slow down", {"Retry-After": "0"}), (200, "<html>")]

    def flaky(body, n):
        return kinds[(n // 2) % 3] if n % 2 else solver(body, n)  # every other attempt fails once

    api = fake_api(flaky)
    summary = run_eval(_settings(api.url, tmp_path / "ev", max_concurrency=1), show_progress=False)
    m = summary["results"]["base"]
    assert m["infra_failures"] == 0 and m["success_rate"]["mean"] == 1.0
    assert summary["api"]["retries"] == 6 and summary["api"]["failed"] == 0


def test_a_failing_episode_is_an_infra_failure_not_a_zero(fake_api, tmp_path):
    def one_task_down(body, n):
        return (503, {"message": "backend down"}) if "What is" in body["messages"][-1]["content"] and n <= 3 else \
            solver(body, n)  # fmt: skip

    api = fake_api(one_task_down)
    summary = run_eval(_settings(api.url, tmp_path / "ev", max_concurrency=1), show_progress=False)
    m = summary["results"]["base"]
    # The first task's request failed three times (no retries left): excluded and counted, the rest scored.
    assert m["infra_failures"] == 1 and m["tasks"] == 2 and m["success_rate"]["mean"] == 1.0
    assert summary["api"]["failed"] == 1 and "HTTP 503: backend down" in summary["api"]["last_error"]
    rows = [json.loads(x) for x in (tmp_path / "ev" / "trajectories.jsonl").read_text().splitlines()]
    assert "HTTP 503" in rows[0]["infra_error"] and rows[0]["reward"] == 0.0
    assert "infra failures (excluded) | 1" in (tmp_path / "ev" / "report.md").read_text()


@pytest.mark.parametrize("failure", ["503", "drop", "hang", "not json"])
def test_a_server_that_keeps_failing_stops_the_run_in_one_line(fake_api, tmp_path, capsys, monkeypatch, failure):
    monkeypatch.setattr(api_mod, "REQUEST_TIMEOUT", 0.3)
    respond = {"503": (503, "Service Unavailable"), "drop": "drop", "hang": "hang", "not json": (200, "not json")}
    api = fake_api(lambda body, n: respond[failure])
    args = ["eval", "--backend", "openai", "--base-url", api.url, "--model", "m", "--env", "arithmetic", "-n", "2",
            "--output-dir", str(tmp_path / "ev"), "--no-progress"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"2 of 2 requests to {api.url}/chat/completions failed" in err[0]
    why = {"503": "HTTP 503", "drop": "Error", "hang": "no answer within 0.3 s", "not json": "not a chat"}
    assert why[failure] in err[0]
    assert len(api.requests) == 6  # each request tried three times


def test_a_rejected_request_stops_with_the_servers_message(fake_api, tmp_path, capsys):
    api = fake_api(lambda body, n: (404, {"error": {"message": "The model `nope` does not exist."}}))
    args = ["eval", "--backend", "openai", "--base-url", api.url, "--model", "nope", "--env", "arithmetic", "-n", "4",
            "--output-dir", str(tmp_path / "ev"), "--no-progress"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "HTTP 404: The model `nope` does not exist." in err[0]
    assert len(api.requests) <= 4  # never retried


def test_max_completion_tokens_is_used_when_the_model_refuses_max_tokens(fake_api, tmp_path):
    refusal = (
        "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead."
    )

    def reasoning_model(body, n):
        if "max_tokens" in body:
            return 400, {"error": {"message": refusal}}
        return solver(body, n)

    api = fake_api(reasoning_model)
    summary = run_eval(_settings(api.url, tmp_path / "ev", max_concurrency=1), show_progress=False)
    assert summary["results"]["base"]["success_rate"]["mean"] == 1.0 and summary["api"]["failed"] == 0
    later = [r["body"] for r in api.requests[1:]]
    assert all(b["max_completion_tokens"] == 32 and "max_tokens" not in b and "top_p" not in b for b in later)


@pytest.mark.parametrize("message", ["This model's maximum context length is 2048 tokens.", "bad tool message"])
def test_a_later_turn_refused_ends_only_that_episode(fake_api, tmp_path, message):
    def refuse_second_turns(body, n):
        return (400, {"message": message}) if body["messages"][-1]["role"] == "tool" else solver(body, n)

    api = fake_api(refuse_second_turns)
    summary = run_eval(_settings(api.url, tmp_path / "ev"), show_progress=False)
    m = summary["results"]["base"]
    rows = [json.loads(x) for x in (tmp_path / "ev" / "trajectories.jsonl").read_text().splitlines()]
    if "context" in message:  # the conversation outgrew the model: truncated and scored, like the token budget
        assert m["tasks"] == 3 and m["truncation_rate"] == 1.0 and m["infra_failures"] == 0
        assert {r["truncated_by"] for r in rows} == {"max_tokens"}
    else:  # a conversation this episode built was refused: not the model's fault, not scored
        assert m["infra_failures"] == 3 and all("rejected turn 2" in r["infra_error"] for r in rows)


def test_a_server_quoting_the_key_never_gets_it_printed(fake_api, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    api = fake_api(lambda body, n: (401, {"error": {"message": f"Incorrect API key provided: {SECRET}"}}))
    args = ["eval", "--backend", "openai", "--base-url", api.url, "--model", "m", "--env", "arithmetic", "-n", "2",
            "--output-dir", str(tmp_path / "ev"), "--no-progress"]  # fmt: skip
    assert main(args) == 2
    captured = capsys.readouterr()
    assert "HTTP 401: Incorrect API key provided: [API key]" in captured.err
    assert SECRET not in captured.err + captured.out
    assert not any(SECRET.encode() in data for data in _files_text(tmp_path / "ev").values())


def test_a_dead_url_ends_in_one_line_without_a_traceback(tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens once the socket is closed
    args = ["eval", "--backend", "openai", "--base-url", f"http://127.0.0.1:{port}/v1", "--model", "m",
            "--env", "arithmetic", "-n", "2", "--output-dir", str(tmp_path / "ev"), "--no-progress"]  # fmt: skip
    assert main(args) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and f"http://127.0.0.1:{port}/v1/chat/completions" in err[0] and "Connect" in err[0]
    assert "Traceback" not in captured.err + captured.out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--base-url", "https://api.example.com/v1", "--model", "m"], "set OPENAI_API_KEY"),
        (["--base-url", "https://api.example.com/v1", "--model", "m", "--api-key-env", "MY_KEY"], "set MY_KEY"),
        (["--model", "m"], "needs --base-url"),
        (["--base-url", "http://127.0.0.1:1/v1"], "needs --model"),
        (["--base-url", "http://127.0.0.1:1/v1", "--model", "m", "--compare"], "--adapter and --compare"),
        (["--base-url", "ftp://x", "--model", "m"], "http(s) URL"),
    ],
)
def test_openai_argument_errors_are_one_line(tmp_path, capsys, extra, message):
    args = ["eval", "--backend", "openai", "--env", "arithmetic", "--output-dir", str(tmp_path / "ev"), *extra]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "ev").exists()  # nothing written, nothing sent


def test_vllm_server_backend_needs_a_server_url(tmp_path, capsys):
    assert main(["eval", "--backend", "vllm-server", "--model", "tiny-qwen3", "--output-dir", str(tmp_path)]) == 2
    assert "--backend vllm-server needs --server-url URL" in capsys.readouterr().err
    assert main(["eval", "--server-url", "http://127.0.0.1:1", "--output-dir", str(tmp_path)]) == 2
    assert "--server-url goes with --backend vllm-server" in capsys.readouterr().err


def test_normalize_gives_every_call_an_id_and_every_id_an_answer():
    call = {"type": "function", "function": {"name": "calculator", "arguments": {"expression": "1+1"}}}
    few_shot = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "name": "calculator", "content": "2"},
        {"role": "assistant", "content": "2"},
    ]
    served = {"role": "assistant", "content": "", "tool_calls": [
        {"id": "a", "type": "function", "function": {"name": "search", "arguments": "{}"}},
        {"id": "b", "type": "function", "function": {"name": "calculator", "arguments": "{}"}},
        {"id": "c", "type": "function", "function": {"name": "calculator", "arguments": "{}"}},
    ]}  # fmt: skip
    env_reply = [{"role": "tool", "name": "calculator", "content": "0"}, {"role": "tool", "content": "Error: bad"}]
    out = normalize([*few_shot, served, *env_reply, {"role": "user", "content": "go on"}])
    assert out[1]["tool_calls"][0]["id"] == out[2]["tool_call_id"] == "call_1_0"
    assert out[1]["tool_calls"][0]["function"]["arguments"] == '{"expression": "1+1"}'
    # The calculator result answers the calculator call; the nameless error the first open call; the
    # call left over gets an error, so the API sees every call answered before the next user turn.
    assert [(m.get("tool_call_id"), m["content"]) for m in out[5:8]] == [
        ("b", "0"), ("a", "Error: bad"), ("c", "Error: this call was not run.")]  # fmt: skip
    assert out[8] == {"role": "user", "content": "go on"}
    assert wire(few_shot)[2] == {"role": "tool", "tool_call_id": "call_1_0", "content": "2"}


# ----- against a real vLLM server ----------------------------------------------------------------------
def _served_model(url):
    import httpx

    return httpx.get(url + "/v1/models", timeout=30).json()["data"][0]["id"]


def _reset_seeds(monkeypatch):
    """Record (task id, seed) of every environment reset."""
    from agentrl.envs.tool_env import ToolEnv

    seen, reset = [], ToolEnv.reset

    def recording(self, *, seed=None, options=None):
        seen.append(((options or {}).get("task_id"), seed))
        return reset(self, seed=seed, options=options)

    monkeypatch.setattr(ToolEnv, "reset", recording)
    return seen


def test_against_a_vllm_server(vllm_server, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    seeds = _reset_seeds(monkeypatch)
    out = tmp_path / "ev"
    args = ["eval", "--backend", "openai", "--base-url", vllm_server.url + "/v1", "--model",
            _served_model(vllm_server.url), "--env", "arithmetic", "-n", "4", "--max-new-tokens", "16",
            "--output-dir", str(out), "--no-progress"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr()
    assert "token-level metrics: absent" in printed.out and "0 failed" in printed.out
    summary = json.loads((out / "summary.json").read_text())
    m = summary["results"]["base"]
    assert m["tasks"] == 4 and m["episodes"] == 4 and m["infra_failures"] == 0 and summary["api"]["failed"] == 0
    assert summary["token_metrics"].startswith("absent") and summary["settings"]["backend"] == "openai"
    rows = [json.loads(x) for x in (out / "trajectories.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(r["ids"] == [] and r["turns"] >= 1 and r["infra_error"] is None for r in rows)
    assert all(r["messages"][-1]["role"] in ("assistant", "tool") for r in rows)
    assert "Token-level metrics: absent" in (out / "report.md").read_text()
    files = _files_text(out)
    assert {out / "eval_settings.json", out / "report.html"} <= set(files)
    assert not any(SECRET.encode() in data for data in files.values())
    assert SECRET not in printed.out + printed.err

    # The token path resets the same environments with the same seeds, so the two are scored on the
    # same task instances.
    api_seeds = list(seeds)
    seeds.clear()
    token_args = ["eval", "--model", "tiny-qwen3", "--env", "arithmetic", "-n", "4", "--max-new-tokens", "2",
                  "--max-turns", "1", "--output-dir", str(tmp_path / "token"), "--no-progress"]  # fmt: skip
    assert main(token_args) == 0
    assert sorted(api_seeds) == sorted(seeds) and len(seeds) == 4


def test_vllm_server_backend_evaluates_base_and_adapter_on_the_server(vllm_server, tmp_path, monkeypatch):
    """The token-level path through running servers: token ids come back, the adapter really applies."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from agentrl.testing import tiny_qwen3_path

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_qwen3_path()),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"]))  # fmt: skip
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    model.save_pretrained(tmp_path / "adapter")
    seeds = _reset_seeds(monkeypatch)
    out = tmp_path / "ev"
    args = ["eval", "--backend", "vllm-server", "--server-url", vllm_server.url, "--model", "tiny-qwen3",
            "--adapter", str(tmp_path / "adapter"), "--compare", "--env", "arithmetic", "-n", "4",
            "--max-new-tokens", "8", "--output-dir", str(out), "--no-progress"]  # fmt: skip
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert "token_metrics" not in summary and summary["comparison"]["success"]["n"] == 4
    rows = {}
    for label in ("base", "adapter"):
        m = summary["results"][label]
        assert m["tasks"] == 4 and m["infra_failures"] == 0
        rows[label] = [json.loads(x) for x in (out / label / "trajectories.jsonl").read_text().splitlines()]
        assert all(r["ids"] and r["text"] and any(r["logprobs"]) for r in rows[label])
    assert [r["ids"] for r in rows["base"]] != [r["ids"] for r in rows["adapter"]]
    assert f"served by {vllm_server.url}" in (out / "report.md").read_text()
    assert len(seeds) == 8 and sorted(seeds[:4]) == sorted(seeds[4:])  # base and adapter: the same episodes


def test_an_agent_env_is_evaluated_against_a_served_model_by_its_own_agent_code(fake_api, tmp_path, monkeypatch):
    """`agentrl eval --backend openai` on an AgentEnv: the user's agent code (examples/calculator_agent.py) talks
    to the served model with the run's key and model name; its answers are scored; agent code that raises is
    an infrastructure failure, not a zero."""
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    api = fake_api(solver)
    example = str(Path(__file__).resolve().parents[2] / "examples" / "calculator_agent.py")
    summary = run_eval(_settings(api.url, tmp_path / "ev", env=f"{example}:make_env"), show_progress=False)
    m = summary["results"]["base"]
    assert m["episodes"] == 3 and m["infra_failures"] == 0 and m["success_rate"]["mean"] == 1.0
    assert len(api.requests) == 6 and {r["auth"] for r in api.requests} == {f"Bearer {SECRET}"}
    assert {r["body"]["model"] for r in api.requests} == {"served-model"}
    roles = sorted(tuple(m["role"] for m in r["body"]["messages"][-3:]) for r in api.requests)
    assert roles.count(("user", "assistant", "tool")) == 3  # each episode's second request answers its call

    summary = run_eval(_settings(api.url, tmp_path / "ev2", env="agentrl.testing:CalcAgentEnv",
                                 env_kwargs={"agent": "raise"}), show_progress=False)  # fmt: skip
    assert summary["results"]["base"]["infra_failures"] == 3
