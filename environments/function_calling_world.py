"""The simulated backend of the ``function-calling`` environment: a small world and eleven tools over it.

A :class:`World` (address book, calendar, shop inventory, bank accounts) is drawn from a seed;
:class:`Backend` exposes it as JSON-schema tools and records every call it actually executes (the
*trace* that :mod:`agentrl.environments.function_calling` grades). Weather and unit conversion are
pure functions of their arguments and the world's seed.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import random
from collections.abc import Mapping
from typing import Any, Literal

from agentrl.tools.tool import Tool, tool

MUTATING = frozenset({"send_email", "create_event", "cancel_event", "place_order", "transfer_funds"})
"""The tools that act on the world; the others only read it."""


def normalise(value: Any) -> Any:
    """Canonical form for comparing arguments: case/whitespace-insensitive strings, rounded numbers, unordered lists."""
    if isinstance(value, str):
        return " ".join(value.split()).casefold()
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return round(float(value), 4)
    if isinstance(value, (list, tuple)):
        return sorted((normalise(v) for v in value), key=repr)
    if isinstance(value, Mapping):
        return {str(k): normalise(v) for k, v in value.items()}
    return repr(value)


# ----- the world --------------------------------------------------------------------------------
# fmt: off
_FIRST = [
    "Amara", "Ben", "Chloe", "Dmitri", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Keiko", "Liam", "Maya",
    "Nikolai", "Olga", "Priya", "Quentin", "Rosa", "Sven", "Tara", "Umar", "Vera", "Wen", "Yusuf", "Zoe",
]
_LAST = [
    "Okafor", "Lindqvist", "Moreau", "Petrov", "Alvarez", "Haddad", "Kim", "Tanaka", "Costa", "Weber", "Sato",
    "Murphy", "Patel", "Ivanova", "Novak", "Sharma", "Dubois", "Rossi", "Berg", "Nguyen", "Malik", "Horvat", "Chen",
    "Demir", "Clarke",
]
_DOMAINS = ["example.com", "mail.test", "acme.test", "northwind.test", "globex.test", "initech.test"]
_EVENT_TITLES = [
    "Team standup", "Dentist appointment", "Project review", "Yoga class", "Budget meeting", "Design sync",
    "Car service", "Book club", "Quarterly planning", "Piano lesson", "Vendor call", "Code review",
]
_NEW_TITLES = [
    "Roadmap review", "Hiring debrief", "Launch prep", "Coffee chat", "Contract discussion", "Sprint retro",
    "Customer call", "Offsite planning", "Onboarding session", "Security briefing",
]
_PRODUCTS = {
    "desk lamp": "LMP", "USB-C cable": "CBL", "wireless mouse": "MSE", "notebook": "NTB", "water bottle": "BTL",
    "backpack": "BPK", "monitor stand": "STD", "HDMI adapter": "HDM", "coffee mug": "MUG", "phone charger": "CHG",
    "keyboard": "KBD", "headphones": "HPH",
}
_ACCOUNTS = ["checking", "savings", "holiday fund", "emergency fund", "business"]
_CITIES = ["Lisbon", "Oslo", "Nairobi", "Osaka", "Toronto", "Lima", "Dublin", "Hanoi", "Zurich", "Perth", "Austin"]
_CONDITIONS = ["sunny", "sunny", "partly cloudy", "cloudy", "windy", "rain", "rain", "thunderstorms"]
_RAINY = {"rain", "thunderstorms"}
_SUBJECTS = [
    "Quarterly report", "Lunch on Friday", "Updated agenda", "Travel plans", "Invoice question", "Welcome aboard",
    "Meeting notes", "Happy birthday", "Parking permit", "Draft contract",
]
_BODIES = [
    "Please review the attached figures before Monday.", "Are you free to join us at noon?",
    "I moved the demo to the end of the agenda.", "My flight lands at 6 pm on Thursday.",
    "Could you resend the invoice with the new address?", "Glad to have you on the team!",
    "Thanks for taking notes today.", "Wishing you a wonderful year ahead.", "The new permit is valid from next week.",
    "I left two comments on section 3.",
]
_FIRST_DAY, _LAST_DAY = dt.date(2024, 6, 1), dt.date(2024, 6, 30)  # the calendar and forecast window
# unit -> (dimension, factor to the dimension's base unit); temperatures are converted separately
_UNITS = {
    "km": ("length", 1000.0), "mi": ("length", 1609.344), "m": ("length", 1.0), "ft": ("length", 0.3048),
    "kg": ("mass", 1.0), "lb": ("mass", 0.45359237), "l": ("volume", 1.0), "gal": ("volume", 3.785411784),
    "c": ("temperature", 1.0), "f": ("temperature", 1.0),
}
_UNIT_NAMES = {
    "km": "kilometres", "mi": "miles", "m": "metres", "ft": "feet", "kg": "kilograms", "lb": "pounds", "l": "litres",
    "gal": "US gallons", "c": "degrees Celsius", "f": "degrees Fahrenheit",
}
_CONVERSIONS = [("mi", "km"), ("km", "mi"), ("ft", "m"), ("lb", "kg"), ("kg", "lb"), ("gal", "l"), ("f", "c")]
_MONTHS = [
    "January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November",
    "December",
]
_WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
# fmt: on
Unit = Literal["km", "mi", "m", "ft", "kg", "lb", "l", "gal", "c", "f"]
DATE_PATTERN = r"^\d{4}-\d{2}-\d{2}$"
TIME_PATTERN = r"^([01]\d|2[0-3]):[0-5]\d$"
EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$"


@dataclasses.dataclass
class World:
    """One episode's backend state. Built from a seed; mutated only by the tools."""

    seed: str
    contacts: list[dict[str, str]]
    events: dict[str, dict[str, Any]]  # event_id -> event
    products: dict[str, dict[str, Any]]  # sku -> product
    accounts: dict[str, dict[str, Any]]  # account_id -> account; balances in integer cents
    next_order: int
    outbox: list[dict[str, str]] = dataclasses.field(default_factory=list)
    orders: list[dict[str, Any]] = dataclasses.field(default_factory=list)


def _days(rng: random.Random, k: int) -> list[str]:
    span = (_LAST_DAY - _FIRST_DAY).days
    return [(_FIRST_DAY + dt.timedelta(days=d)).isoformat() for d in rng.sample(range(span + 1), k)]


def build_world(seed: str) -> World:
    """The world of a task, a pure function of its seed."""
    rng = random.Random(f"{seed}/world")
    firsts, lasts = rng.sample(_FIRST, 7), rng.sample(_LAST, 8)
    firsts.append(firsts[0])  # two contacts share a first name, so a first name alone can be ambiguous
    contacts = []
    for first, last in zip(firsts, lasts, strict=True):
        sep = rng.choice([".", "_", ""])
        contacts.append(
            {
                "name": f"{first} {last}",
                "email": f"{first.lower()}{sep}{last.lower()}@{rng.choice(_DOMAINS)}",
                "phone": f"+1-555-{rng.randrange(10000):04d}",
            }
        )
    events: dict[str, dict[str, Any]] = {}
    titles = rng.sample(_EVENT_TITLES, 5)
    titles += titles[:2]  # the same title on two dates: the date matters when cancelling
    # Seven events over four days, so a day can hold two; (title, date) stays unique.
    days, ids = _days(rng, 4), rng.sample(range(100, 1000), len(titles))
    for i, (title, num) in enumerate(zip(titles, ids, strict=True)):
        date = days[i % len(days)]
        events[f"EVT-{num}"] = {
            "event_id": f"EVT-{num}",
            "title": title,
            "date": date,
            "start_time": f"{rng.randint(8, 17):02d}:{rng.choice(['00', '30'])}",
            "duration_minutes": rng.choice([30, 45, 60, 90]),
            "attendees": [],
        }
    products: dict[str, dict[str, Any]] = {}
    for name in rng.sample(sorted(_PRODUCTS), 7):
        sku = f"{_PRODUCTS[name]}-{rng.randrange(1000, 10000)}"
        stock = rng.choice([0, *range(1, 41)])
        products[sku] = {"sku": sku, "name": name, "price": rng.randrange(199, 9999) / 100, "stock": stock}
    accounts: dict[str, dict[str, Any]] = {}
    for name, num in zip(rng.sample(_ACCOUNTS, 3), rng.sample(range(1000, 10000), 3), strict=True):
        accounts[f"ACC-{num}"] = {"account_id": f"ACC-{num}", "name": name, "cents": 2 * rng.randrange(5000, 500000)}
    return World(seed, contacts, events, products, accounts, next_order=rng.randrange(10000, 90000))


def forecast(world_seed: str, city: str, date: str) -> dict[str, Any]:
    """The weather service: a deterministic forecast per (world, city, date)."""
    rng = random.Random(f"{world_seed}/weather/{city}/{date}")
    return {"city": city, "date": date, "condition": rng.choice(_CONDITIONS), "high_c": rng.randint(9, 34)}


def convert(value: float, from_unit: str, to_unit: str) -> float:
    """``value`` in ``from_unit`` expressed in ``to_unit``, rounded to 2 decimals."""
    if from_unit == to_unit:
        return round(value, 2)
    if _UNITS[from_unit][0] == "temperature":
        out = (value - 32) * 5 / 9 if from_unit == "f" else value * 9 / 5 + 32
    else:
        out = value * _UNITS[from_unit][1] / _UNITS[to_unit][1]
    return round(out, 2)


# ----- the backend: what the tools do -----------------------------------------------------------
_DATE = {"type": "string", "format": "date", "pattern": DATE_PATTERN}
_EMAIL = {"type": "string", "format": "email", "pattern": EMAIL_PATTERN}
_TEXT = {"type": "string", "minLength": 1}
_ID = {"pattern": r"^[A-Za-z]{3}-\d{4}$"}
# Constraints the type hints cannot express, merged into each tool's generated schema.
_REFINE: dict[str, dict[str, dict[str, Any]]] = {
    "find_contact": {"name": _TEXT},
    "send_email": {"to": _EMAIL, "subject": _TEXT, "body": _TEXT},
    "list_events": {"date": _DATE},
    "create_event": {
        "title": _TEXT,
        "date": _DATE,
        "start_time": {"pattern": TIME_PATTERN},
        "duration_minutes": {"minimum": 5, "maximum": 720},
        "attendees": {"items": _EMAIL, "uniqueItems": True},
    },
    "cancel_event": {"event_id": {"pattern": r"^[A-Za-z]{3}-\d{3}$"}},
    "check_stock": {"product": _TEXT},
    "place_order": {"sku": _ID, "quantity": {"minimum": 1, "maximum": 100}},
    "list_accounts": {},
    "transfer_funds": {"from_account": _ID, "to_account": _ID, "amount": {"exclusiveMinimum": 0}},
    "get_weather": {"city": _TEXT, "date": _DATE},
    "convert_units": {},
}


class Backend:
    """The simulated services. Its public ``async`` methods are the tools; ``load`` starts an episode.

    Every method returns the result the model sees. A call that cannot be carried out returns an
    ``Error: ...`` string and changes nothing; a call that succeeds is appended to ``trace`` with
    canonical arguments. The methods are ``async`` although they never wait: the tool runner then
    executes the calls of one turn on the event loop one after the other, in the order written,
    instead of racing threads over shared state.
    """

    def __init__(self) -> None:
        self.world: World | None = None
        self.trace: list[dict[str, Any]] = []

    def load(self, world: World) -> None:
        self.world, self.trace = world, []

    def tools(self) -> list[Tool]:
        out = []
        for name, extra in _REFINE.items():
            t = tool(getattr(self, name))
            params = json.loads(json.dumps(t.parameters))  # a deep copy to edit
            for prop, constraints in extra.items():
                params["properties"][prop].update(constraints)
            out.append(dataclasses.replace(t, parameters=params))  # re-runs the schema check, rebuilds the validator
        return out

    @property
    def w(self) -> World:
        if self.world is None:
            raise RuntimeError("no episode is running")
        return self.world

    def _done(self, name: str, args: dict[str, Any], result: Any) -> Any:
        self.trace.append({"name": name, "args": args})
        return result

    async def find_contact(self, name: str) -> Any:
        """Look up a person in the address book and return their name, e-mail address and phone number.

        Args:
            name: The person's full name (a first or last name works when it is unique).
        """
        key = normalise(name)
        hits = [c for c in self.w.contacts if normalise(c["name"]) == key]
        hits = hits or [c for c in self.w.contacts if key in (normalise(p) for p in c["name"].split())]
        if not hits:
            return f"Error: no contact named {name!r}."
        if len(hits) > 1:
            return (
                f"Error: {name!r} matches several contacts ({', '.join(c['name'] for c in hits)}); use the full name."
            )
        return self._done("find_contact", {"name": hits[0]["name"]}, dict(hits[0]))

    async def send_email(self, to: str, subject: str, body: str) -> Any:
        """Send an e-mail.

        Args:
            to: The recipient's e-mail address.
            subject: The subject line.
            body: The message text.
        """
        msg = {"to": to.strip(), "subject": subject.strip(), "body": body.strip()}
        self.w.outbox.append(msg)
        return self._done("send_email", msg, {"status": "sent", "message_id": f"MSG-{len(self.w.outbox)}"})

    async def list_events(self, date: str) -> Any:
        """List the calendar events on one day, with their ids.

        Args:
            date: The day, as YYYY-MM-DD.
        """
        if (err := _check_date(date)) is not None:
            return err
        found = sorted((dict(e) for e in self.w.events.values() if e["date"] == date), key=lambda e: e["start_time"])
        return self._done("list_events", {"date": date}, found)

    async def create_event(
        self, title: str, date: str, start_time: str, duration_minutes: int, attendees: list[str] | None = None
    ) -> Any:
        """Create a calendar event and invite people to it.

        Args:
            title: The event's title.
            date: The day, as YYYY-MM-DD.
            start_time: The start time, as 24-hour HH:MM.
            duration_minutes: The length of the event in minutes.
            attendees: The e-mail addresses of the people to invite.
        """
        if (err := _check_date(date)) is not None:
            return err
        event_id = next(f"EVT-{n}" for n in range(100, 1000) if f"EVT-{n}" not in self.w.events)
        args = {"title": title.strip(), "date": date, "start_time": start_time, "duration_minutes": duration_minutes}
        args["attendees"] = [a.strip() for a in attendees or []]
        self.w.events[event_id] = {"event_id": event_id, **args}
        return self._done("create_event", args, {"status": "created", "event_id": event_id})

    async def cancel_event(self, event_id: str) -> Any:
        """Cancel (delete) a calendar event.

        Args:
            event_id: The event's id, such as EVT-123.
        """
        event = self.w.events.pop(event_id.upper(), None)
        if event is None:
            return f"Error: no event with id {event_id!r}; list_events shows the ids of a day's events."
        return self._done("cancel_event", {"event_id": event["event_id"]}, {"status": "cancelled", **event})

    async def check_stock(self, product: str) -> Any:
        """Look up a product in the shop: its SKU, price and how many are in stock.

        Args:
            product: The product's name (or its SKU).
        """
        key = normalise(product)
        hit = next((p for p in self.w.products.values() if key in (normalise(p["name"]), normalise(p["sku"]))), None)
        if hit is None:
            names = ", ".join(sorted(p["name"] for p in self.w.products.values()))
            return f"Error: no product named {product!r}. The shop sells: {names}."
        return self._done("check_stock", {"product": hit["name"]}, dict(hit))

    async def place_order(self, sku: str, quantity: int) -> Any:
        """Order a product from the shop.

        Args:
            sku: The product's SKU, such as ABC-1234.
            quantity: How many units to order.
        """
        item = self.w.products.get(sku.upper())
        if item is None:
            return f"Error: unknown SKU {sku!r}; check_stock gives a product's SKU."
        if quantity > item["stock"]:
            return f"Error: only {item['stock']} of {item['name']} in stock; nothing was ordered."
        item["stock"] -= quantity
        order_id = f"ORD-{self.w.next_order + len(self.w.orders)}"
        self.w.orders.append({"order_id": order_id, "sku": item["sku"], "quantity": quantity})
        result = {"status": "ordered", "order_id": order_id, "total": round(quantity * item["price"], 2)}
        return self._done("place_order", {"sku": item["sku"], "quantity": quantity}, result)

    async def list_accounts(self) -> Any:
        """List your bank accounts with their ids, names and balances in dollars."""
        out = [
            {"account_id": a["account_id"], "name": a["name"], "balance": a["cents"] / 100}
            for a in self.w.accounts.values()
        ]
        return self._done("list_accounts", {}, out)

    async def transfer_funds(self, from_account: str, to_account: str, amount: float) -> Any:
        """Move money between two of your bank accounts.

        Args:
            from_account: The id of the account to take the money from, such as ACC-1234.
            to_account: The id of the account to put the money in.
            amount: The amount in dollars, with at most two decimals.
        """
        # inf or NaN (a structured call can carry them) or an int too big for a float: round() would raise.
        if not _finite(amount):
            return "Error: the amount is not a finite number of dollars."
        src, dst = self.w.accounts.get(from_account.upper()), self.w.accounts.get(to_account.upper())
        if src is None or dst is None:
            bad = from_account if src is None else to_account
            return f"Error: no account with id {bad!r}; list_accounts shows your accounts."
        if src is dst:
            return "Error: the source and destination accounts are the same."
        cents = round(amount * 100)
        if abs(cents - amount * 100) > 1e-6:
            return "Error: amounts are in whole cents (at most two decimals)."
        if cents > src["cents"]:
            return f"Error: insufficient funds; {src['name']} holds {src['cents'] / 100:.2f}."
        src["cents"] -= cents
        dst["cents"] += cents
        args = {"from_account": src["account_id"], "to_account": dst["account_id"], "amount": cents / 100}
        return self._done("transfer_funds", args, {"status": "done", "new_balance": src["cents"] / 100})

    async def get_weather(self, city: str, date: str) -> Any:
        """Get the weather forecast for a city on one day: the condition and the high temperature in Celsius.

        Args:
            city: The city's name.
            date: The day, as YYYY-MM-DD.
        """
        hit = next((c for c in _CITIES if normalise(c) == normalise(city)), None)
        if hit is None:
            return f"Error: no forecasts for {city!r}. Covered cities: {', '.join(_CITIES)}."
        if (err := _check_date(date)) is not None:
            return err
        return self._done("get_weather", {"city": hit, "date": date}, forecast(self.w.seed, hit, date))

    async def convert_units(self, value: float, from_unit: Unit, to_unit: Unit) -> Any:
        """Convert a quantity between units; the result is rounded to two decimals.

        Args:
            value: The quantity to convert.
            from_unit: The unit of the quantity (c and f are degrees Celsius and Fahrenheit; gal is US gallons).
            to_unit: The unit to convert to.
        """
        if _UNITS[from_unit][0] != _UNITS[to_unit][0]:
            return f"Error: cannot convert {from_unit} ({_UNITS[from_unit][0]}) to {to_unit} ({_UNITS[to_unit][0]})."
        # A 400-digit integer does not fit a float and 1e308 miles overflow to inf: neither is a quantity.
        out = convert(value, from_unit, to_unit) if _finite(value) else math.inf
        if not _finite(out):
            return "Error: the value is out of range for the converter."  # not shown: str() refuses 4300+ digits
        result = {"value": out, "unit": to_unit, "text": f"{out:g} {to_unit}"}
        return self._done("convert_units", {"value": value, "from_unit": from_unit, "to_unit": to_unit}, result)


def _finite(value: float) -> bool:
    """Whether a number the model sent is an ordinary float: not inf or NaN, and not an int too big for a float."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _check_date(date: str) -> str | None:
    try:
        day = dt.date.fromisoformat(date)
    except ValueError:
        return f"Error: {date!r} is not a valid date."
    if not _FIRST_DAY <= day <= _LAST_DAY:
        return f"Error: only dates from {_FIRST_DAY} to {_LAST_DAY} are available."
    return None
