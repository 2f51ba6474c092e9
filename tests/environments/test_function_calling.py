import hashlib
import json
import os
import re
import subprocess
import sys

import pytest

import agentrl
from agentrl.chat.parsing import render_call_text
from agentrl.environments import function_calling as fc
from agentrl.environments import function_calling_world as world
from agentrl.envs.tasks import check_disjoint

ID = "function-calling"


@pytest.fixture(scope="module")
def env():
    with agentrl.make(ID, split="test") as e:
        yield e


def task_of(env, template, pred=lambda t: True):
    return next(t for t in env.unwrapped.tasks if t.metadata["template"] == template and pred(t))


def call(c):
    return render_call_text(c["name"], c["args"])


def run(env, task, actions, final="Done."):
    """Play ``actions`` (one turn each) on ``task``, then answer; return (observations, reward, components)."""
    env.reset(options={"task_id": task.id})
    seen = []
    for action in actions:
        obs, reward, term, trunc, _ = env.step(action)
        assert not term and not trunc and reward == 0.0
        seen.append(obs)
    _, reward, term, _, info = env.step(final)
    assert term
    return seen, reward, info["reward_components"]


def tool_json(obs):
    assert len(obs) == 1 and obs[0]["role"] == "tool", obs
    return json.loads(obs[0]["content"])


# ----- API, splits, determinism -------------------------------------------------------------------
def test_passes_check_env():
    assert agentrl.check_env(agentrl.make(ID)) == []


def test_bad_split_rejected():
    with pytest.raises(ValueError, match="split"):
        agentrl.make(ID, split="validation")


def test_splits_are_large_disjoint_and_match_the_environment():
    splits = fc.splits()
    check_disjoint(splits)
    train, test = splits["train"], splits["test"]
    assert (len(train), len(test)) == (1000, 200)
    assert not {t.id for t in train} & {t.id for t in test}
    assert not {t.content_hash for t in train} & {t.content_hash for t in test}
    assert len({t.prompt for t in train + test}) == 1200
    templates = {t.metadata["template"] for t in test}
    assert len(templates) == len(fc._TEMPLATES)  # every kind of task is held out too
    with agentrl.make(ID, split="test", num_tasks=200) as e:
        assert e.unwrapped.task_ids == [t.id for t in test]


FINGERPRINT = """
import hashlib, json
from agentrl.environments import function_calling as fc
from agentrl.environments import function_calling_world as world
tasks = fc.make_tasks("test", 200) + fc.make_tasks("train", 50)
rows = [[t.id, t.prompt, list(t.answer), dict(t.metadata)] for t in tasks]
print(hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest())
"""


def test_tasks_are_identical_across_processes_and_hash_seeds():
    outputs = set()
    for hash_seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run([sys.executable, "-c", FINGERPRINT], env=env, capture_output=True, text=True, check=True)
        outputs.add(out.stdout.strip())
    tasks = fc.make_tasks("test", 200) + fc.make_tasks("train", 50)
    rows = [[t.id, t.prompt, list(t.answer), dict(t.metadata)] for t in tasks]
    assert outputs == {hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()}


def test_tool_schemas_carry_constraints():
    specs = {s["function"]["name"]: s["function"]["parameters"] for s in agentrl.make(ID).tool_specs}
    assert len(specs) == 11
    assert specs["create_event"]["properties"]["date"]["pattern"] == world.DATE_PATTERN
    assert specs["create_event"]["required"] == ["title", "date", "start_time", "duration_minutes"]
    assert specs["send_email"]["properties"]["to"]["format"] == "email"
    assert "km" in specs["convert_units"]["properties"]["to_unit"]["enum"]
    assert specs["place_order"]["properties"]["quantity"]["minimum"] == 1
    assert all(p["additionalProperties"] is False for p in specs.values())


# ----- scripted policies ----------------------------------------------------------------------------
def test_replaying_the_expected_calls_solves_every_test_task(env):
    # One call per turn, fed by nothing but the expected trace: checks that every generated task is
    # solvable against its rebuilt world (order ids, converter text, forecasts all agree).
    for task in env.unwrapped.tasks:
        _, reward, comp = run(env, task, [call(c) for c in task.answer])
        assert reward == 1.0, (task.prompt, comp)
        assert comp["success"] == 1.0 and comp["calls_correct_fraction"] == 1.0 and comp["invalid_calls"] == 0.0


def test_calls_of_one_turn_run_in_the_order_written(env):
    task = task_of(env, "cancel_notify")
    _, reward, _ = run(env, task, ["".join(call(c) for c in task.answer)])
    assert reward == 1.0
    assert [c["name"] for c in env.unwrapped.backend.trace] == [c["name"] for c in task.answer]


def test_policy_that_reads_tool_results_solves_lookup_tasks(env):
    """Arguments come from the prompt and from earlier results, never from the expected trace."""
    # E-mail: look up the address, then send to it.
    task = task_of(env, "email")
    name, subject, body = re.search(r'(?:to|E-mail) (\w+ \w+).*?"(.+?)".*?"(.+?)"', task.prompt).groups()
    env.reset(options={"task_id": task.id})
    contact = tool_json(env.step(render_call_text("find_contact", {"name": name}))[0])
    env.step(render_call_text("send_email", {"to": contact["email"], "subject": subject, "body": body}))
    assert env.step("Sent.")[1] == 1.0

    # Order, "or all that are left": the quantity depends on the stock the lookup reports.
    task = task_of(env, "order", lambda t: "all that are left" in t.prompt)
    qty, product = re.search(r"Order (\d+) units of the (.+?)\. ", task.prompt).groups()
    env.reset(options={"task_id": task.id})
    item = tool_json(env.step(render_call_text("check_stock", {"product": product}))[0])
    env.step(render_call_text("place_order", {"sku": item["sku"], "quantity": min(int(qty), item["stock"])}))
    assert env.step("Ordered.")[1] == 1.0

    # Half a balance: the amount depends on the balance the lookup reports.
    task = task_of(env, "transfer", lambda t: "half" in t.prompt)
    src, dst = re.search(r"my (.+?) account into my (.+?) account", task.prompt).groups()
    env.reset(options={"task_id": task.id})
    accounts = {a["name"]: a for a in tool_json(env.step(render_call_text("list_accounts", {}))[0])}
    args = {
        "from_account": accounts[src]["account_id"],
        "to_account": accounts[dst]["account_id"],
        "amount": round(accounts[src]["balance"] / 2, 2),
    }
    env.step(render_call_text("transfer_funds", args))
    assert env.step("Moved.")[1] == 1.0


def test_wrong_order_fails(env):
    task = task_of(env, "email")
    lookup, send = task.answer
    _, reward, comp = run(env, task, [call(send), call(lookup)])  # the address was "known" before looking it up
    assert reward == 0.0 and comp["success"] == 0.0 and comp["calls_correct_fraction"] == 0.5
    task = task_of(env, "cancel_notify")
    listing, cancel, lookup, send = task.answer
    _, reward, comp = run(env, task, [call(listing), call(lookup), call(send), call(cancel)])
    assert reward == 0.0 and comp["calls_correct_fraction"] == 0.75


def test_lookups_may_come_in_any_order_before_their_action(env):
    task = task_of(env, "cancel_notify")
    listing, cancel, lookup, send = task.answer
    _, reward, _ = run(env, task, [call(lookup), call(listing), call(cancel), call(send)])
    assert reward == 1.0


def test_wrong_argument_fails(env):
    task = task_of(env, "email")
    lookup, send = task.answer
    wrong = {**send, "args": {**send["args"], "subject": send["args"]["subject"] + " (draft)"}}
    _, reward, comp = run(env, task, [call(lookup), call(wrong)])
    assert reward == 0.0 and comp["unexpected_actions"] == 1.0
    task = task_of(env, "order", lambda t: t.answer[1]["args"]["quantity"] > 1)
    stock, order = task.answer
    fewer = {**order, "args": {**order["args"], "quantity": order["args"]["quantity"] - 1}}
    assert run(env, task, [call(stock), call(fewer)])[1] == 0.0


def test_extra_mutating_call_fails_but_extra_lookups_do_not(env):
    task = task_of(env, "email")
    lookup, send = task.answer
    _, reward, comp = run(env, task, [call(lookup), call(send), call(send)])  # the same e-mail twice
    assert reward == 0.0 and comp["unexpected_actions"] == 1.0 and comp["calls_correct_fraction"] == 1.0
    extra_reads = [render_call_text("list_accounts", {}), render_call_text("check_stock", {"product": "notebook"})]
    _, reward, _ = run(env, task, [*extra_reads, call(lookup), render_call_text("list_events", {"date": "2024-06-10"})])
    assert reward == 0.0  # the e-mail was never sent
    _, reward, comp = run(env, task, [*extra_reads, call(lookup), call(send)])
    assert reward == 1.0 and comp["executed_calls"] >= 3


def test_doing_nothing_needs_the_lookup_that_justifies_it(env):
    dry = task_of(env, "weather_cancel", lambda t: len(t.answer) == 1)
    assert run(env, dry, [])[1] == 0.0  # "leave my calendar alone" without checking the forecast
    assert run(env, dry, [call(dry.answer[0])])[1] == 1.0
    listing = render_call_text("list_events", {"date": dry.answer[0]["args"]["date"]})
    assert run(env, dry, [call(dry.answer[0]), listing])[1] == 1.0
    rainy = task_of(env, "weather_cancel", lambda t: len(t.answer) == 3)
    assert run(env, rainy, [call(rainy.answer[0])])[1] == 0.0  # it rained: the event had to go
    assert run(env, rainy, [call(c) for c in rainy.answer])[1] == 1.0


def test_invalid_arguments_get_a_readable_error_and_the_episode_goes_on(env):
    task = task_of(env, "email")
    lookup, send = task.answer
    bad = {**send["args"], "to": "not an address", "cc": "x"}
    seen, reward, comp = run(env, task, [call(lookup), render_call_text("send_email", bad), call(send)])
    error = seen[1][0]["content"]
    assert error.startswith("Error: invalid arguments for 'send_email'")
    assert "'cc' was unexpected" in error and "to: 'not an address' does not match" in error
    # The rejected call executed nothing, so the corrected one still solves the task; it is only counted.
    assert reward == 1.0 and comp["invalid_calls"] == 1.0
    assert env.unwrapped.backend.world.outbox == [send["args"]]


def test_backend_errors_are_results_not_exceptions(env):
    task = task_of(env, "cancel")
    listing, cancel = task.answer
    wrong_type = render_call_text("place_order", {"sku": "ABC-1234", "quantity": "two"})
    actions = [
        render_call_text("find_contact", {"name": "Nobody Atall"}),
        render_call_text("cancel_event", {"event_id": "EVT-000"}),
        wrong_type,
        call(listing),
        call(cancel),
        call(cancel),  # already cancelled: an error, not a second action
    ]
    seen, reward, comp = run(env, task, actions)
    assert seen[0][0]["content"] == "Error: no contact named 'Nobody Atall'."
    assert seen[1][0]["content"].startswith("Error: no event with id 'EVT-000'")
    assert "'two' is not of type 'integer'" in seen[2][0]["content"]
    assert seen[5][0]["content"].startswith("Error: no event with id")
    assert reward == 1.0 and comp["invalid_calls"] == 4.0
    assert [c["name"] for c in env.unwrapped.backend.trace] == ["list_events", "cancel_event"]


def test_ambiguous_and_partial_names_and_normalised_arguments(env):
    task = task_of(env, "email")
    world = fc.build_world(task.metadata["world_seed"])
    first = world.contacts[0]["name"].split()[0]  # shared by two contacts
    lookup, send = task.answer
    last = lookup["args"]["name"].split()[1]
    sloppy = {**send["args"], "subject": "  " + send["args"]["subject"].upper() + " ", "to": send["args"]["to"].upper()}
    seen, reward, _ = run(
        env,
        task,
        [
            render_call_text("find_contact", {"name": first}),
            render_call_text("find_contact", {"name": last.lower()}),
            render_call_text("send_email", sloppy),
        ],
    )
    assert "matches several contacts" in seen[0][0]["content"]
    assert tool_json(seen[1])["name"] == lookup["args"]["name"]
    assert reward == 1.0  # found by last name (recorded under the full name); case and spaces do not matter


def test_every_episode_starts_from_a_fresh_world(env):
    task = task_of(env, "cancel")
    listing, cancel = task.answer
    before = tool_json(run(env, task, [call(listing), call(cancel), call(listing)])[0][0])
    env.reset(options={"task_id": task.id})
    assert tool_json(env.step(call(listing))[0]) == before
    assert cancel["args"]["event_id"] in {e["event_id"] for e in before}


def test_grade_trace_rules():
    look = {"name": "find_contact", "args": {"name": "Ann Lee"}}
    send = {"name": "send_email", "args": {"to": "a@x.io", "subject": "Hi", "body": "Yo"}}
    other = {"name": "find_contact", "args": {"name": "Bo Chen"}}
    assert fc.grade_trace([look, send], [other, look, other, send])["reward"] == 1.0
    assert fc.grade_trace([look, send], [send, look])["reward"] == 0.0  # lookup after its action
    assert fc.grade_trace([look, send], [look])["calls_correct_fraction"] == 0.5
    assert fc.grade_trace([look], [look, send])["unexpected_actions"] == 1.0
    assert fc.grade_trace([], [])["reward"] == 1.0
    listed = {"name": "create_event", "args": {"title": "T", "attendees": ["b@x.io", "a@x.io"], "duration_minutes": 30}}
    shuffled = {
        "name": "create_event",
        "args": {"title": "t", "attendees": ["A@x.io", "b@x.io"], "duration_minutes": 30.0},
    }
    assert fc.grade_trace([listed], [shuffled])["reward"] == 1.0
