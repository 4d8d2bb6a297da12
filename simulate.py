"""Demo traffic through the real engine: a frozen clock moved across days, gateways that fail and lag.

    python -m simulate --days 30 --users 20000            # about 150 sessions a day: ~40 s on SQLite
    python -m simulate --days 30 --users 20000 --per-day 1000   # heavier, minutes
    python -m simulate --orgs 3                            # the traffic spread over three organisations

Every call goes through core.services.generation.generate and core.services.validation.validate, so limits, re-sends, burns and locks happen exactly
as in production and every dashboard table fills. The simulated customer learns the code the way a real one
does (the message reaching their phone, here the gateway's in-memory message); nothing is written anywhere
a code would not be. Volume is per day (--per-day), not per user: --users is the population the day's
customers are drawn from. Besides ordinary customers the run adds a few who hit limits (re-send cap,
validate window, a consecutive-failure lock, a burned code, one the daily limit) and one burst of requests
to a single number prefix, like an SMS-pumping attack.

With --orgs N the day's sessions are spread over N organisations (the default one and demo-2 ... demo-N, made
when missing, each in its own time zone), unevenly so their dashboards differ; each has customers of its own
(the same population size each), and its own customers who meet the limits.
"""
from __future__ import annotations

import argparse
import asyncio
import heapq
import itertools
import logging
import random
import time as wallclock
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone

import phonenumbers
from sqlmodel import Session

from core.admin.organisations import create_organisation
from core.clock import FrozenClock, utcnow
from core.db.models import OrganisationBase
from core.delivery.gateways import Gateway, OutgoingMessage, SendResult
from core.delivery.gateways.outbox import OutboxGateway
from core.enums import Action, Channel
from core.errors import OtpError
from core.runtime import Runtime
from core.services.generation import generate
from core.services.validation import validate
from core.settings import get_settings

log = logging.getLogger(__name__)

# Median gateway latency per channel (ms); the simulated spread is log-normal around it.
MEDIAN_LATENCY_MS = {Channel.SMS: 350.0, Channel.EMAIL: 900.0, Channel.PHONE: 1800.0, Channel.WHATSAPP: 250.0,
                     Channel.ZALO: 400.0}
ERRORS = ("provider timed out after 10 s", "HTTP 503 from provider", "destination unreachable",
          "HTTP 429 from provider: throttled")
# Weights of actions in ordinary traffic.
ACTION_WEIGHTS = {Action.COUPON: 30, Action.POINTS: 20, Action.REGISTRATION: 15, Action.POINTSTRANSFER: 10,
                  Action.GENERIC: 10, Action.SUBSCRIPTION: 5, Action.USERGROUP: 4, Action.CUSTOMER_STATUS_UPDATE: 2,
                  Action.CUSTOMER_IDENTIFIER_CHANGE: 2, Action.CUSTOMER_ISSUE_LINK_CARD: 2}
BURST_PREFIX = "+9190000"
# The demo organisations beyond the default one: demo-2, demo-3, ... in these time zones, in turn.
DEMO_ZONES = ("Asia/Kolkata", "Asia/Singapore", "Europe/London", "America/New_York", "Asia/Ho_Chi_Minh")


class SimulatedGateway:
    """Wraps a gateway: fails at fail_rate with a provider-like error and reports a simulated latency.

    The customer's phone is modelled by inbox: the latest code per destination, kept only in memory.
    """

    def __init__(self, channel: Channel, inner: Gateway | None, rng: random.Random, fail_rate: float,
                 inbox: dict[str, str], name: str) -> None:
        self.channel, self.inner, self.rng, self.fail_rate, self.inbox, self.name = \
            channel, inner, rng, fail_rate, inbox, name

    async def send(self, message: OutgoingMessage) -> SendResult:
        latency = self.rng.lognormvariate(0, 0.6) * MEDIAN_LATENCY_MS[self.channel]
        if self.rng.random() < self.fail_rate:
            return SendResult(status="failed", error=self.rng.choice(ERRORS), http_status=503,
                              latency_ms=round(latency * 3, 1))
        record = None
        if self.inner is not None:
            result = await self.inner.send(message)
            if result.status == "failed":
                return result
            provider_id, record = result.provider_message_id or f"sim-{message.delivery_id}", result.record
        else:
            provider_id = f"sim-{message.delivery_id}"
        self.inbox[message.destination] = message.code
        status = "sent" if self.rng.random() < 0.03 else "delivered"  # a few receipts never arrive
        return SendResult(status=status, provider_message_id=provider_id, latency_ms=round(latency, 1),
                          record=record)  # the outbox keeps its message in the recording transaction


@dataclass
class Customer:
    entity_type: str
    value: str  # as the customer's app spells it
    destination: str  # normalised, as the gateway sees it
    org_id: int = 1  # the organisation whose customer this is


@dataclass(order=True)
class Event:
    at: datetime
    seq: int
    kind: str = field(compare=False)  # generate, validate
    customer: Customer = field(compare=False)
    action: Action = field(compare=False)
    channels: list[str] | None = field(compare=False, default=None)
    guess: str | None = field(compare=False, default=None)  # a wrong code, or None for the right one


@dataclass
class SimulationReport:
    days: int
    generates: int = 0
    validations: int = 0
    refused: int = 0
    failed: int = 0
    seconds: float = 0.0

    def __str__(self) -> str:
        return (f"{self.days} days: {self.generates} generates, {self.validations} validations, "
                f"{self.refused} refused by limits, {self.failed} other errors in {self.seconds:.1f} s")


def _phone(rng: random.Random, prefix: str = "+91") -> str:
    for _ in range(1000):
        digits = rng.choice("6789") + "".join(rng.choice("0123456789") for _ in range(9))
        number = prefix + digits if prefix == "+91" else prefix + digits[len(prefix) - 3:]
        if phonenumbers.is_valid_number(phonenumbers.parse(number)):
            return number
    raise ValueError(f"no valid number found under {prefix}")


def _spelling(rng: random.Random, e164: str) -> str:
    """How a client app might send the number: +91..., 91... or the bare national number."""
    return rng.choice((e164, e164[1:], e164[3:]))


class Simulation:
    def __init__(self, rt: Runtime, clock: FrozenClock, *, seed: int, users: int, per_day: int,
                 orgs: list[int] | None = None) -> None:
        self.rt, self.clock, self.rng = rt, clock, random.Random(seed)
        self.users, self.per_day = users, per_day
        self.orgs = orgs or [1]
        self.org_weights = [1 / (n + 1) for n in range(len(self.orgs))]  # the first busiest, then fewer
        self.inbox: dict[str, str] = {}
        self.population: dict[tuple[int, int], Customer] = {}
        self.seq = itertools.count()
        self.queue: list[Event] = []

    def customer(self, index: int, org_id: int = 1) -> Customer:
        """The index-th customer of an organisation's population, made on first use (so 20,000 costs nothing up
        front). Each organisation has its own: the inbox is keyed by destination, so they must not share one."""
        key = (org_id, index)
        if key not in self.population:
            if self.rng.random() < 0.2:
                domain = "example.com" if org_id == 1 else f"org{org_id}.example.com"
                email = f"customer{index}.{self.rng.randrange(10**6)}@{domain}"
                self.population[key] = Customer("EMAIL", email, email, org_id)
            else:
                number = _phone(self.rng)
                while org_id != 1 and any(c.destination == number for c in self.population.values()):
                    number = _phone(self.rng)
                self.population[key] = Customer("MOBILE", _spelling(self.rng, number), number, org_id)
        return self.population[key]

    def push(self, at: datetime, kind: str, customer: Customer, action: Action, **extra) -> None:  # type: ignore[no-untyped-def]
        heapq.heappush(self.queue, Event(at, next(self.seq), kind, customer, action, **extra))

    def channels_for(self, customer: Customer) -> list[str] | None:
        if customer.entity_type == "EMAIL":
            return None  # the policy picks EMAIL
        roll = self.rng.random()
        if roll < 0.70:
            return None  # the policy picks SMS
        if roll < 0.85:
            return ["SMS", "WHATSAPP"]
        if roll < 0.95:
            return ["WHATSAPP"]
        if roll < 0.98:
            return ["PHONE"]
        return ["ZALO"]

    def plan_day(self, day_start: datetime, day_end: datetime) -> None:
        """Ordinary customers: most validate (a few after a typo), some re-request, some walk away."""
        span = (day_end - day_start).total_seconds()
        actions, weights = list(ACTION_WEIGHTS), list(ACTION_WEIGHTS.values())
        # Busier in the day than at night: a triangle peaking in the afternoon.
        for _ in range(self.per_day):
            at = day_start + timedelta(seconds=self.rng.triangular(0, span, span * 0.6))
            org = self.orgs[0] if len(self.orgs) == 1 else self.rng.choices(self.orgs, self.org_weights)[0]
            customer = self.customer(self.rng.randrange(self.users), org)
            action = self.rng.choices(actions, weights)[0]
            channels = self.channels_for(customer)
            self.push(at, "generate", customer, action, channels=channels)
            reading = timedelta(seconds=self.rng.lognormvariate(3.0, 0.7))  # ~20 s median
            if self.rng.random() < 0.10:  # "I did not get it": asks again
                self.push(at + timedelta(seconds=45), "generate", customer, action, channels=channels)
                reading += timedelta(seconds=45)
            fate = self.rng.random()
            if fate < 0.12:
                continue  # never validates
            if fate < 0.22:  # a typo first
                self.push(at + reading, "validate", customer, action, guess="000000")
                reading += timedelta(seconds=10)
            self.push(at + reading, "validate", customer, action)

    def plan_limits(self, day_start: datetime, day_end: datetime, small: bool, org: int = 1) -> None:
        """A few customers of org who meet each limit, spread over the chosen day."""
        at = max(day_start, min(day_start + timedelta(hours=9), day_end - timedelta(hours=3)))
        # Re-send cap: asks 8 times for one code (5 sends allowed).
        impatient = self.customer(self.users + 1, org)
        for i in range(8):
            self.push(at + timedelta(seconds=20 * i), "generate", impatient, Action.COUPON)
        # Validate window and a burned code: 7 wrong guesses in a minute.
        guesser = self.customer(self.users + 2, org)
        self.push(at, "generate", guesser, Action.POINTS)
        for i in range(7):
            self.push(at + timedelta(seconds=30 + 5 * i), "validate", guesser, Action.POINTS, guess="000000")
        # Consecutive-failure lock: wrong guesses across windows and codes until locked, then more.
        locked = self.customer(self.users + 3, org)
        ceiling = self.rt.config_for(org, Action.REGISTRATION).max_consecutive_failures
        window = self.rt.config_for(org, Action.REGISTRATION).validate_window_minutes
        per_window = self.rt.config_for(org, Action.REGISTRATION).validate_limit
        moment = at
        for n in range(ceiling + 3):
            if n % per_window == 0:
                moment += timedelta(minutes=window)
                self.push(moment, "generate", locked, Action.REGISTRATION)
            self.push(moment + timedelta(seconds=10 + n % per_window), "validate", locked, Action.REGISTRATION,
                      guess="000000")
        if small:
            return
        # The daily limit: a script that cycles through actions, re-sending each code up to its cap.
        limit = self.rt.settings.daily_limit
        if limit <= 1000:
            scripted = self.customer(self.users + 4, org)
            per_round = len(Action) * self.rt.config_for(org, Action.COUPON).max_sends_per_code
            moment = day_start + timedelta(hours=1)
            for n in range(limit + 10):
                if n and n % per_round == 0:
                    moment += timedelta(minutes=self.rt.config_for(org, Action.COUPON).validity_minutes + 1)
                action = list(Action)[n % len(Action)]
                self.push(moment + timedelta(seconds=n % per_round), "generate", scripted, action, channels=None)

    def plan_burst(self, day_start: datetime, day_end: datetime, numbers: int) -> None:
        """SMS pumping: many numbers under one prefix, each asking repeatedly and never validating."""
        at = max(day_start, min(day_start + timedelta(hours=14), day_end - timedelta(hours=1)))
        for i in range(numbers):
            number = _phone(self.rng, BURST_PREFIX)
            victim = Customer("MOBILE", number, number)
            for k in range(7):
                self.push(at + timedelta(seconds=i * 3 + k * 20), "generate", victim, Action.REGISTRATION)

    async def run_queue(self, report: SimulationReport, until: datetime) -> None:
        while self.queue and self.queue[0].at <= until:
            event = heapq.heappop(self.queue)
            if event.at > self.clock.now:
                self.clock.now = event.at
            entity = {"entityType": event.customer.entity_type, "entityValue": event.customer.value,
                      "action": event.action.value}
            try:
                if event.kind == "generate":
                    if event.channels:
                        entity["channels"] = [{"type": c, "value": event.customer.destination} for c in event.channels]
                        entity["whatsappTemplateName"] = "otp_auth"
                        entity["zaloTemplateIdentifier"] = "240001"
                    report.generates += 1
                    await generate(self.rt, entity, org_id=event.customer.org_id)
                else:
                    code = event.guess or self.inbox.get(event.customer.destination)
                    if not code:
                        continue  # the message never arrived: the customer gives up
                    report.validations += 1
                    await validate(self.rt, {**entity, "code": code}, org_id=event.customer.org_id)
            except OtpError as exc:
                if exc.http_status == 429:
                    report.refused += 1
                else:
                    report.failed += 1


def _day_bounds(day: date, rt: Runtime) -> tuple[datetime, datetime]:
    tz = rt.settings.tz
    start = datetime.combine(day, datetime.min.time(), tzinfo=tz).astimezone(timezone.utc)
    end = datetime.combine(day + timedelta(days=1), datetime.min.time(), tzinfo=tz).astimezone(timezone.utc)
    return start, end


def demo_organisations(rt: Runtime, orgs: int) -> list[int]:
    """The ids of orgs organisations to fill: the default one and demo-2 ... demo-<orgs>, made when missing."""
    have = {o.slug: o.id for o in rt.organisations().values()}
    ids = [1]
    for n in range(2, orgs + 1):
        slug = f"demo-{n}"
        if slug not in have:
            with Session(rt.db) as session:
                made = create_organisation(session, actor="simulate", reason="demo traffic", fields=OrganisationBase(
                    slug=slug, name=f"Demo {n}", timezone=DEMO_ZONES[(n - 2) % len(DEMO_ZONES)]))
            have[slug] = made.id
        ids.append(have[slug])
    return ids


def simulate(rt: Runtime, *, days: int = 30, users: int = 20000, per_day: int = 150, fail_rate: float = 0.04,
             seed: int | None = None, small: bool = False, keep_outbox: bool = False,
             end: datetime | None = None, orgs: int = 1) -> SimulationReport:
    """Drive days of traffic ending at end (default now) through the engine, on rt's database and settings,
    spread over orgs organisations (see demo_organisations)."""
    if not rt.settings.is_development:
        raise RuntimeError("demo traffic is refused in production")
    if orgs < 1:
        raise ValueError("at least one organisation")
    org_ids = demo_organisations(rt, orgs)
    seed = seed if seed is not None else random.randrange(2**32)
    end = end or utcnow()
    clock = FrozenClock(end)
    sim = Simulation(rt, clock, seed=seed, users=users, per_day=per_day, orgs=org_ids)
    outbox = OutboxGateway() if keep_outbox else None
    gateways = {c: SimulatedGateway(c, outbox, sim.rng, fail_rate * (2 if c is Channel.PHONE else 1), sim.inbox,
                                    f"sim-{c.value.lower()}") for c in Channel}
    # A runtime of its own on the same database: a console process's runtime keeps its real clock and gateways.
    sim.rt = Runtime(rt.settings, engine=rt.db, clock=clock, gateways=gateways, prepare=False)
    report = SimulationReport(days)
    started = wallclock.perf_counter()
    last_day = end.astimezone(rt.settings.tz).date()
    first_day = last_day - timedelta(days=days - 1)
    # Mid-run days, and never today when there is another: today is only partly simulated.
    limits_day = first_day + timedelta(days=min(days // 2, max(0, days - 2)))
    burst_day = first_day + timedelta(days=min((2 * days) // 3, max(0, days - 2)))
    clock.now = _day_bounds(first_day, rt)[0]
    for offset in range(days):
        day = first_day + timedelta(days=offset)
        start, stop = _day_bounds(day, rt)
        stop = min(stop, end)
        if day == last_day and stop - start < timedelta(hours=2):
            start = stop - timedelta(hours=2)  # just after midnight: still show a little of today
            start = max(start, clock.now)
        sim.plan_day(start, stop)
        if day == limits_day:
            for org in org_ids:
                sim.plan_limits(start, stop, small, org)
        if day == burst_day:
            sim.plan_burst(start, stop, 10 if small else 60)
        asyncio.run(sim.run_queue(report, stop))
    asyncio.run(sim.run_queue(report, end))  # what is left of the last day; later events are dropped
    report.seconds = wallclock.perf_counter() - started
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--users", type=int, default=20000, help="population the customers are drawn from")
    parser.add_argument("--per-day", type=int, default=150, help="ordinary customer sessions per day")
    parser.add_argument("--fail-rate", type=float, default=0.04, help="share of sends that fail (voice: twice)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--orgs", type=int, default=1, help="organisations to spread the traffic over (made "
                        "when missing: demo-2, demo-3, ...)")
    parser.add_argument("--keep-outbox", action="store_true", help="also keep each message in the outbox table")
    args = parser.parse_args(argv)
    if args.days < 1 or args.users < 1 or args.per_day < 0 or args.orgs < 1:
        parser.error("days, users and orgs must be at least 1, per-day at least 0")
    logging.basicConfig(level=logging.WARNING)
    settings = get_settings()
    rt = Runtime(settings)
    print(f"simulating into {rt.db.url.render_as_string(hide_password=True)} ...", flush=True)
    print(simulate(rt, days=args.days, users=args.users, per_day=args.per_day, fail_rate=args.fail_rate,
                   seed=args.seed, keep_outbox=args.keep_outbox, orgs=args.orgs))


if __name__ == "__main__":
    main()
