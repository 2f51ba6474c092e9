"""``function-calling``: carry out a request by calling JSON-schema APIs on a simulated backend.

Each episode has a small in-memory world: an address book, a calendar, an outbox, a shop's inventory,
bank accounts, a weather service and a unit converter. The model gets eleven tools over that world
and a request in plain English ("Cancel my *Book club* on June 12, 2024", "Order 5 units of the desk
lamp, or all that are left"). Most requests need information that only a tool can give (an e-mail
address, an event id, a SKU, an account id, a forecast), so the model must call tools in the right
order and feed one result into the next call. The world and the request are drawn together from a
per-task seed; ``reset`` rebuilds the world from that seed, so every episode starts from the same
state and nothing leaks between episodes. The world and its tools live in
:mod:`agentrl.environments.function_calling_world`; this module holds the tasks and the grading.

Tools and errors
    The tools are ordinary :class:`agentrl.Tool` objects whose schemas carry types, enums, required
    fields, ranges and patterns (ISO dates, ``HH:MM`` times, e-mail addresses, ids). The tool runner
    validates every call against its schema, so a malformed call comes back as a readable ``Error:``
    message naming the offending field. Calls that are well-formed but wrong for this world ("no
    contact named X", "only 3 in stock") come back as ``Error:`` results from the backend. Either
    way nothing is executed, the episode goes on, and the model may try again.

Verification (what ``score`` checks)
    The backend records a *trace*: every call it actually executed, with canonical arguments (a
    contact found by a first name is recorded under the full name, a product found by its SKU under
    its name). Rejected calls are not in the trace. A task's expected trace is an ordered list of
    calls; the five *mutating* tools (``send_email``, ``create_event``, ``cancel_event``,
    ``place_order``, ``transfer_funds``) act on the world, the others only read it. The episode is a
    success iff

    1. the mutating calls of the trace are exactly the expected ones, in the same order, with equal
       arguments: a missing, extra, reordered or wrong action fails the task, because in a real
       system a second e-mail or a wrong order cannot be taken back;
    2. every expected lookup was executed, with equal arguments, before the expected action that
       follows it in the list (or at any time when no action follows). Requiring the lookups keeps a
       lucky guess, or doing nothing when the forecast said to do nothing, from counting as a solve.

    Extra read-only calls are tolerated: looking around changes nothing. Arguments are compared
    after normalising case and whitespace of strings, rounding numbers to 1e-4 and ignoring the
    order of list items (an invitation's attendees). The final answer (the turn without tool calls)
    ends the episode and is not graded.

    Invalid attempts (schema or backend errors, malformed calls) are not penalised in the reward:
    they change nothing in the world, and recovering from an error message is a skill worth
    learning. They are logged as ``invalid_calls`` so a trainer can shape on them if it wants to.

Components: ``reward`` and ``success`` (1.0 iff the trace is correct), ``calls_correct_fraction``
(share of expected calls satisfied, actions aligned by longest common subsequence; a diagnostic),
``invalid_calls``, ``unexpected_actions`` and ``executed_calls``.

Tasks and splits
    Tasks come from a fixed seed: a template (ten kinds, several needing two actions or a decision
    based on a lookup) filled with entities and values drawn from the task's world. A task goes to
    the test split when the hash of its prompt says so, and its id hashes the prompt too, so the
    splits are disjoint by id and by content. All randomness is seeded with strings through
    ``random.Random``, which hashes them with SHA-512, so tasks do not depend on ``PYTHONHASHSEED``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import random
from collections.abc import Callable, Mapping
from typing import Any

from agentrl.environments.function_calling_world import (
    _BODIES,
    _CITIES,
    _CONVERSIONS,
    _MONTHS,
    _NEW_TITLES,
    _RAINY,
    _SUBJECTS,
    _UNIT_NAMES,
    _WEEKDAYS,
    MUTATING,
    Backend,
    World,
    _days,
    build_world,
    convert,
    forecast,
)
from agentrl.environments.function_calling_world import normalise as _norm
from agentrl.envs.core import Message
from agentrl.envs.tasks import Task, check_disjoint
from agentrl.envs.tool_env import ToolEnv

SYSTEM_PROMPT = (
    "You are an assistant that carries out the user's request by calling the tools provided. Look up any "
    "information you need (e-mail addresses, event ids, product SKUs, account ids, forecasts) with the tools "
    "instead of guessing. Do exactly what is asked and nothing more: sending e-mail, creating or cancelling "
    "events, placing orders and transferring money are real actions that cannot be undone. If a tool returns an "
    "error, fix the call and try again. When the request is done, reply briefly without a tool call."
)
_TASK_SEED = 20240805  # fixed: the task set is part of the environment's definition
_TEST_SHARE = 6  # one task in six goes to the test split


# ----- verification ------------------------------------------------------------------------------
def _key(call: Mapping[str, Any]) -> str:
    return json.dumps([call["name"], _norm(call.get("args", {}))], sort_keys=True)


def _lcs_pairs(a: list[str], b: list[str]) -> list[tuple[int, int]]:
    """Index pairs of a longest common subsequence of ``a`` and ``b``."""
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a) - 1, -1, -1):
        for j in range(len(b) - 1, -1, -1):
            table[i][j] = table[i + 1][j + 1] + 1 if a[i] == b[j] else max(table[i + 1][j], table[i][j + 1])
    pairs, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        if a[i] == b[j]:
            pairs.append((i, j))
            i, j = i + 1, j + 1
        elif table[i + 1][j] >= table[i][j + 1]:
            i += 1
        else:
            j += 1
    return pairs


def grade_trace(expected: list[Mapping[str, Any]], executed: list[Mapping[str, Any]]) -> dict[str, float]:
    """Compare an executed trace with the expected one, by the rules in the module docstring."""
    exp, act = [_key(c) for c in expected], [_key(c) for c in executed]
    exp_mut = [i for i, c in enumerate(expected) if c["name"] in MUTATING]
    act_mut = [j for j, c in enumerate(executed) if c["name"] in MUTATING]
    pairs = _lcs_pairs([exp[i] for i in exp_mut], [act[j] for j in act_mut])
    position = {exp_mut[a]: act_mut[b] for a, b in pairs}  # expected action -> where it was executed
    satisfied = len(pairs)
    for i, call in enumerate(expected):
        if call["name"] in MUTATING:
            continue
        following = next((k for k in exp_mut if k > i), None)
        deadline = position.get(following, len(act)) if following is not None else len(act)
        satisfied += exp[i] in act[:deadline]
    success = satisfied == len(expected) and len(act_mut) == len(exp_mut)
    return {
        "reward": float(success),
        "success": float(success),
        "calls_correct_fraction": satisfied / len(expected) if expected else float(success),
        "unexpected_actions": float(len(act_mut) - len(pairs)),
        "executed_calls": float(len(executed)),
    }


# ----- tasks -------------------------------------------------------------------------------------
def _call(tool_name: str, /, **args: Any) -> dict[str, Any]:
    return {"name": tool_name, "args": args}


def _say_date(rng: random.Random, iso: str) -> str:
    """A date as a person would write it; the tools want ISO, so some prompts need converting."""
    day = dt.date.fromisoformat(iso)
    # Our own names, not strftime's %B/%A: those follow the process locale.
    month, weekday = _MONTHS[day.month - 1], _WEEKDAYS[day.weekday()]
    return rng.choice([iso, f"{month} {day.day}, {day.year}", f"{weekday}, {day.day} {month} {day.year}"])


def _contact_lookup(c: dict[str, str]) -> dict[str, Any]:
    return _call("find_contact", name=c["name"])


def _t_email(w: World, rng: random.Random) -> tuple[str, list]:
    c, subj, body = rng.choice(w.contacts[1:7]), rng.choice(_SUBJECTS), rng.choice(_BODIES)
    prompt = rng.choice(
        [
            f'Send an e-mail to {c["name"]} with the subject "{subj}" and the text "{body}"',
            f'E-mail {c["name"]}: subject "{subj}", message "{body}"',
            f'Please write to {c["name"]} by e-mail. Subject: "{subj}". Body: "{body}"',
        ]
    )
    return prompt, [_contact_lookup(c), _call("send_email", to=c["email"], subject=subj, body=body)]


def _t_meeting(w: World, rng: random.Random) -> tuple[str, list]:
    people = rng.sample(w.contacts[1:7], rng.choice([1, 1, 2]))
    title, date, minutes = rng.choice(_NEW_TITLES), _days(rng, 1)[0], rng.choice([15, 30, 45, 60, 90, 120])
    start, when = f"{rng.randint(8, 17):02d}:{rng.choice(['00', '15', '30'])}", _say_date(rng, date)
    who = " and ".join(c["name"] for c in people)
    prompt = rng.choice(
        [
            f'Schedule a {minutes}-minute meeting called "{title}" on {when} at {start} with {who}.',
            f'Put "{title}" in my calendar for {when}, {start}, {minutes} minutes long, and invite {who}.',
        ]
    )
    emails = [c["email"] for c in people]
    create = _call("create_event", title=title, date=date, start_time=start, duration_minutes=minutes, attendees=emails)
    return prompt, [*map(_contact_lookup, people), create]


def _t_cancel(w: World, rng: random.Random) -> tuple[str, list]:
    e = rng.choice(list(w.events.values()))
    prompt = rng.choice(
        [
            f'Cancel my "{e["title"]}" on {_say_date(rng, e["date"])}.',
            f'Please remove the event "{e["title"]}" from my calendar on {_say_date(rng, e["date"])}.',
        ]
    )
    return prompt, [_call("list_events", date=e["date"]), _call("cancel_event", event_id=e["event_id"])]


def _t_order(w: World, rng: random.Random) -> tuple[str, list]:
    p = rng.choice([p for p in w.products.values() if p["stock"] > 0])
    if rng.random() < 0.5:  # the quantity depends on the stock the lookup reports
        qty = rng.randint(2, 30)
        prompt = f"Order {qty} units of the {p['name']}. If fewer than {qty} are in stock, order all that are left."
        qty = min(qty, p["stock"])
    else:
        qty = rng.randint(1, p["stock"])
        prompt = rng.choice([f"Order {qty} x {p['name']} from the shop.", f"Please buy {qty} of the {p['name']}."])
    return prompt, [_call("check_stock", product=p["name"]), _call("place_order", sku=p["sku"], quantity=qty)]


def _t_transfer(w: World, rng: random.Random) -> tuple[str, list]:
    src, dst = rng.sample(list(w.accounts.values()), 2)
    if rng.random() < 0.5:
        cents = rng.randrange(100, src["cents"] // 2)
        prompt = f"Transfer ${cents / 100:,.2f} from my {src['name']} account to my {dst['name']} account."
    else:  # the amount depends on the balance the lookup reports
        cents = src["cents"] // 2
        prompt = f"Move half of the money in my {src['name']} account into my {dst['name']} account."
    move = _call("transfer_funds", from_account=src["account_id"], to_account=dst["account_id"], amount=cents / 100)
    return prompt, [_call("list_accounts"), move]


def _t_weather_cancel(w: World, rng: random.Random) -> tuple[str, list]:
    e, city = rng.choice(list(w.events.values())), rng.choice(_CITIES)
    when = _say_date(rng, e["date"])
    prompt = (
        f'I am in {city} on {when}. If the forecast there says rain or thunderstorms, cancel my "{e["title"]}" '
        "that day; otherwise leave my calendar alone."
    )
    calls = [_call("get_weather", city=city, date=e["date"])]
    if forecast(w.seed, city, e["date"])["condition"] in _RAINY:
        calls += [_call("list_events", date=e["date"]), _call("cancel_event", event_id=e["event_id"])]
    return prompt, calls


def _t_weather_email(w: World, rng: random.Random) -> tuple[str, list]:
    c, city, date = rng.choice(w.contacts[1:7]), rng.choice(_CITIES), _days(rng, 1)[0]
    condition = forecast(w.seed, city, date)["condition"]
    prompt = (
        f"Look up the forecast for {city} on {_say_date(rng, date)} and e-mail it to {c['name']} with the "
        f'subject "Weather in {city}". The body must be just the condition, exactly as the weather service '
        "reports it."
    )
    send = _call("send_email", to=c["email"], subject=f"Weather in {city}", body=condition)
    return prompt, [_call("get_weather", city=city, date=date), _contact_lookup(c), send]


def _t_convert_email(w: World, rng: random.Random) -> tuple[str, list]:
    c, (src, dst) = rng.choice(w.contacts[1:7]), rng.choice(_CONVERSIONS)
    value = rng.choice([rng.randint(2, 250), rng.randint(20, 2500) / 10])
    subj = rng.choice(["Conversion", "The number you asked for", "Quick answer"])
    prompt = (
        f"Use the unit converter to convert {value:g} {_UNIT_NAMES[src]} to {_UNIT_NAMES[dst]}, then e-mail "
        f'{c["name"]} with the subject "{subj}" and the converter\'s result text (such as "12.5 km") as the body.'
    )
    out = convert(value, src, dst)
    calls = [_call("convert_units", value=value, from_unit=src, to_unit=dst), _contact_lookup(c)]
    return prompt, [*calls, _call("send_email", to=c["email"], subject=subj, body=f"{out:g} {dst}")]


def _t_order_email(w: World, rng: random.Random) -> tuple[str, list]:
    p, c = rng.choice([p for p in w.products.values() if p["stock"] > 0]), rng.choice(w.contacts[1:7])
    qty = rng.randint(1, p["stock"])
    prompt = (
        f'Order {qty} of the {p["name"]}, then e-mail {c["name"]} with the subject "Order placed" and the '
        "order id (such as ORD-12345) as the body."
    )
    return prompt, [
        _call("check_stock", product=p["name"]),
        _call("place_order", sku=p["sku"], quantity=qty),
        _contact_lookup(c),
        _call("send_email", to=c["email"], subject="Order placed", body=f"ORD-{w.next_order}"),
    ]


def _t_cancel_notify(w: World, rng: random.Random) -> tuple[str, list]:
    e, c = rng.choice(list(w.events.values())), rng.choice(w.contacts[1:7])
    when = _say_date(rng, e["date"])
    prompt = (
        f'Cancel "{e["title"]}" on {when}, and after that e-mail {c["name"]} with the subject '
        f'"Cancelled: {e["title"]}" and the text "Sorry, I have to cancel."'
    )
    return prompt, [
        _call("list_events", date=e["date"]),
        _call("cancel_event", event_id=e["event_id"]),
        _contact_lookup(c),
        _call("send_email", to=c["email"], subject=f"Cancelled: {e['title']}", body="Sorry, I have to cancel."),
    ]


# fmt: off
_TEMPLATES: list[Callable[[World, random.Random], tuple[str, list]]] = [
    _t_email, _t_meeting, _t_cancel, _t_order, _t_transfer, _t_weather_cancel, _t_weather_email, _t_convert_email,
    _t_order_email, _t_cancel_notify,
]
# fmt: on


def make_tasks(split: str, n: int) -> list[Task]:
    """The first ``n`` tasks of ``split`` ("train" or "test"); a fixed list for a fixed ``n``."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    out: list[Task] = []
    seen: set[str] = set()
    index = 0
    while len(out) < n:
        if index > 50 * n + 1000:
            raise ValueError(f"cannot generate {n} distinct {split} tasks")
        seed = f"fc-{_TASK_SEED}-{index}"
        index += 1
        rng = random.Random(f"{seed}/task")
        template = rng.choice(_TEMPLATES)
        prompt, calls = template(build_world(seed), rng)
        if prompt in seen:
            continue
        seen.add(prompt)
        digest = hashlib.sha256(prompt.encode()).hexdigest()
        if (int(digest[:8], 16) % _TEST_SHARE == 0) != (split == "test"):
            continue
        out.append(
            Task(
                id=f"fc-{digest[:12]}",
                prompt=prompt,
                answer=tuple(calls),
                metadata={"world_seed": seed, "template": template.__name__.removeprefix("_t_")},
            )
        )
    return out


class FunctionCallingEnv(ToolEnv):
    """Call tools over a simulated backend; graded on the executed call trace (see the module docstring)."""

    system_prompt = SYSTEM_PROMPT

    def __init__(self, split: str = "train", num_tasks: int | None = None, **kwargs: Any):
        n = num_tasks if num_tasks is not None else (1000 if split == "train" else 200)
        self.backend = Backend()  # one per environment: concurrent environments never share state
        super().__init__(make_tasks(split, n), self.backend.tools(), **kwargs)
        self.split = split

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[list[Message], dict]:
        obs, info = super().reset(seed=seed, options=options)
        assert self.task is not None
        self.backend.load(build_world(self.task.metadata["world_seed"]))  # a fresh world every episode
        return obs, info

    def score(self, task: Task, answer: str, messages: list[Message]) -> Mapping[str, float]:
        result = grade_trace(list(task.answer), self.backend.trace)
        # Every rejected attempt (malformed call, unknown tool, schema or backend error) answered "Error: ...".
        errors = [m for m in self.episode_messages if m.get("role") == "tool" and m["content"].startswith("Error")]
        result["invalid_calls"] = float(len(errors))
        return result


def splits(n_train: int = 1000, n_test: int = 200) -> dict[str, list[Task]]:
    """Both splits, checked to be disjoint by id and content."""
    out = {"train": make_tasks("train", n_train), "test": make_tasks("test", n_test)}
    check_disjoint(out)
    return out
