"""Budgets: per-tenant daily and monthly USD limits and an optional cap per batch.

Two checks, one arithmetic:
* At submission (`check_submission`): the estimate of everything submitted must fit in what is
  left of each tenant limit (spend so far read from Postgres), else HTTP 402.
* In the worker, before every provider call (`BudgetGuard.reserve`): the call's estimate is
  reserved atomically in Redis against every limit that applies (tenant day, tenant month,
  batch cap). If any limit cannot cover it, no call is made and the job ends
  `failed: budget_exceeded` (the batch's jobs that have not started end the same way). After the
  attempt is recorded, `settle` swaps the reservation for the real cost.

Redis holds, per limit, `spent` (a copy of the Postgres sum, re-read from Postgres whenever it
expires, every `reconcile_s` seconds: so Postgres stays the record and drift cannot last) and
`reserved` (estimates of calls in flight). A call is allowed only if spent + reserved + estimate
<= limit, so concurrent workers together never pass a limit as long as estimates are upper
bounds (they are: the whole prompt at the uncached rate plus every allowed output token).
If Redis is unreachable the check falls back to Postgres alone (no reservation).

Amounts in Redis are integer "ticks" of 1e-10 USD, the scale of the cost columns: exact.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal
from typing import Any

import redis
from sqlalchemy import Engine

from llmq import store
from llmq.cost.pricing import PriceTable
from llmq.telemetry.metrics import BUDGET_EXCEEDED, BUDGET_SOFT_LIMIT

log = logging.getLogger(__name__)

TICK = Decimal("1e-10")
SOFT_LIMIT_FRACTION = Decimal("0.8")


# ---------------------------------------------------------------------------------------------
# Pure arithmetic


def to_ticks(usd: Decimal, *, round_up: bool = False) -> int:
    """USD -> integer ticks. Estimates round up (never under-reserve); costs round half up,
    as Postgres rounds into NUMERIC(20, 10)."""
    return int((usd / TICK).to_integral_value(ROUND_CEILING if round_up else ROUND_HALF_UP))


def from_ticks(ticks: int) -> Decimal:
    return Decimal(ticks) * TICK


def day_start(now: datetime) -> datetime:
    return now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def month_start(now: datetime) -> datetime:
    return day_start(now).replace(day=1)


@dataclass(frozen=True)
class Shortfall:
    """A limit that cannot cover an estimate."""

    scope: str  # "daily", "monthly" or "batch"
    limit_usd: Decimal
    spent_usd: Decimal
    estimate_usd: Decimal

    @property
    def remaining_usd(self) -> Decimal:
        return max(Decimal(0), self.limit_usd - self.spent_usd)

    def message(self) -> str:
        return (
            f"the {self.scope} budget of ${self.limit_usd.normalize():f} has "
            f"${self.remaining_usd.normalize():f} left, less than the estimate of "
            f"${self.estimate_usd.normalize():f}"
        )

    def details(self) -> dict[str, str]:
        return {
            "scope": self.scope,
            "limit_usd": format(self.limit_usd, "f"),
            "spent_usd": format(self.spent_usd, "f"),
            "remaining_usd": format(self.remaining_usd, "f"),
            "estimate_usd": format(self.estimate_usd, "f"),
        }


def first_shortfall(
    limits: Sequence[tuple[str, Decimal | None, Decimal]], estimate: Decimal
) -> Shortfall | None:
    """The first (scope, limit, spent) whose remaining budget is less than `estimate`."""
    for scope, limit, spent in limits:
        if limit is not None and spent + estimate > limit:
            return Shortfall(scope, limit, spent, estimate)
    return None


def reached_soft_limit(spent: Decimal, limit: Decimal, fraction: Decimal) -> bool:
    return limit > 0 and spent >= limit * fraction


def first_configured_link(chain: Sequence[str], configured: Callable[[str], bool]) -> str:
    """The link a job would try first: the first whose provider is configured (the worker
    skips the others without cost), else the chain's first link."""
    for link in chain:
        if configured(link.split(":", 1)[0]):
            return link
    return chain[0]


def estimate_batch(
    prices: PriceTable, link: str, items: Sequence[tuple[int, int]]
) -> Decimal | None:
    """Sum of per-item estimates, each (prompt tokens, max output tokens), at `link`'s price.
    None when the link is unpriced (the budget cannot be checked in advance)."""
    total = Decimal(0)
    for prompt_tokens, max_tokens in items:
        one = prices.estimate(link, prompt_tokens, max_tokens)
        if one is None:
            return None
        total += one
    return total


def check_submission(
    engine: Engine, tenant_id: uuid.UUID, estimate: Decimal, now: datetime | None = None
) -> Shortfall | None:
    """Does a submission estimated at `estimate` fit in what is left of the tenant's limits?"""
    budget = store.get_budget(engine, tenant_id)
    if budget is None:
        return None
    now = now or datetime.now(UTC)
    limits: list[tuple[str, Decimal | None, Decimal]] = []
    if budget.daily_usd is not None:
        limits.append(
            ("daily", budget.daily_usd, store.tenant_spend(engine, tenant_id, day_start(now)))
        )
    if budget.monthly_usd is not None:
        limits.append(
            (
                "monthly",
                budget.monthly_usd,
                store.tenant_spend(engine, tenant_id, month_start(now)),
            )
        )
    return first_shortfall(limits, estimate)


# ---------------------------------------------------------------------------------------------
# The worker's guard


@dataclass(frozen=True)
class Scope:
    name: str  # "daily", "monthly", "batch"
    key: str  # Redis key prefix
    limit: Decimal
    load_spent: Callable[[], Decimal]  # the Postgres sum: the record
    alert_ttl_s: int


@dataclass
class Hold:
    """A reservation for one provider call (or a refusal, or nothing to enforce)."""

    scopes: list[Scope] = field(default_factory=list)
    ticks: int = 0
    in_redis: bool = False
    refused: Shortfall | None = None


_RESERVE = """
local amount = tonumber(ARGV[1])
local n = #KEYS / 2
for i = 1, n do
  local spent = redis.call('GET', KEYS[2 * i - 1])
  if not spent then return {-1, i, 0, 0} end
  local reserved = tonumber(redis.call('GET', KEYS[2 * i]) or '0')
  if tonumber(spent) + reserved + amount > tonumber(ARGV[2 + i]) then
    return {0, i, tonumber(spent), reserved}
  end
end
for i = 1, n do
  redis.call('INCRBY', KEYS[2 * i], amount)
  redis.call('EXPIRE', KEYS[2 * i], ARGV[2])
end
return {1, 0, 0, 0}
"""

_SETTLE = """
local out = {}
for i = 1, #KEYS / 2 do
  if redis.call('EXISTS', KEYS[2 * i]) == 1 then
    if tonumber(redis.call('DECRBY', KEYS[2 * i], ARGV[1])) <= 0 then
      redis.call('DEL', KEYS[2 * i])
    end
  end
  if redis.call('EXISTS', KEYS[2 * i - 1]) == 1 then
    out[i] = redis.call('INCRBY', KEYS[2 * i - 1], ARGV[2])
  else
    out[i] = -1
  end
end
return out
"""


class BudgetGuard:
    def __init__(
        self,
        engine: Engine,
        client: redis.Redis,
        prices: PriceTable,
        *,
        reconcile_s: float = 30.0,
        hold_ttl_s: float = 900.0,
        limits_cache_s: float = 5.0,
        soft_fraction: Decimal = SOFT_LIMIT_FRACTION,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.engine = engine
        self.redis = client
        self.prices = prices
        self.reconcile_s = max(1, int(reconcile_s))
        self.hold_ttl_s = max(1, int(hold_ttl_s))
        self.limits_cache_s = limits_cache_s
        self.soft_fraction = soft_fraction
        self._clock = clock
        self._reserve = client.register_script(_RESERVE)
        self._settle = client.register_script(_SETTLE)
        self._lock = threading.Lock()
        self._budgets: dict[uuid.UUID, tuple[float, store.Budget | None]] = {}
        self._caps: dict[uuid.UUID, Decimal | None] = {}

    # -- limits that apply to a job (cached briefly: a new budget applies within seconds)

    def _tenant_budget(self, tenant_id: uuid.UUID) -> store.Budget | None:
        now = time.monotonic()
        with self._lock:
            cached = self._budgets.get(tenant_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        budget = store.get_budget(self.engine, tenant_id)
        with self._lock:
            if len(self._budgets) > 10_000:
                self._budgets.clear()
            self._budgets[tenant_id] = (now + self.limits_cache_s, budget)
        return budget

    def _batch_cap(self, batch_id: uuid.UUID) -> Decimal | None:
        with self._lock:
            if batch_id in self._caps:
                return self._caps[batch_id]
        cap = store.batch_cap(self.engine, batch_id)  # fixed at submission: cached for good
        with self._lock:
            if len(self._caps) > 10_000:
                self._caps.clear()
            self._caps[batch_id] = cap
        return cap

    def scopes(self, tenant_id: uuid.UUID, batch_id: uuid.UUID | None) -> list[Scope]:
        now = self._clock()
        scopes: list[Scope] = []
        budget = self._tenant_budget(tenant_id)
        if budget is not None and budget.daily_usd is not None:
            since = day_start(now)
            scopes.append(
                Scope(
                    "daily",
                    f"llmq:budget:{tenant_id}:day:{since:%Y%m%d}",
                    budget.daily_usd,
                    lambda: store.tenant_spend(self.engine, tenant_id, since),
                    alert_ttl_s=2 * 86_400,
                )
            )
        if budget is not None and budget.monthly_usd is not None:
            since_month = month_start(now)
            scopes.append(
                Scope(
                    "monthly",
                    f"llmq:budget:{tenant_id}:month:{since_month:%Y%m}",
                    budget.monthly_usd,
                    lambda: store.tenant_spend(self.engine, tenant_id, since_month),
                    alert_ttl_s=32 * 86_400,
                )
            )
        cap = self._batch_cap(batch_id) if batch_id is not None else None
        if cap is not None and batch_id is not None:
            scopes.append(
                Scope(
                    "batch",
                    f"llmq:budget:batch:{batch_id}",
                    cap,
                    lambda: store.batch_spend(self.engine, batch_id),
                    alert_ttl_s=30 * 86_400,
                )
            )
        return scopes

    # -- before and after a provider call

    def reserve(
        self,
        tenant_id: uuid.UUID,
        batch_id: uuid.UUID | None,
        link: str,
        prompt_tokens: int,
        max_tokens: int,
    ) -> Hold:
        scopes = self.scopes(tenant_id, batch_id)
        if not scopes:
            return Hold()
        # An unpriced model cannot be estimated: it reserves nothing (its cost is unknown too)
        # but is still refused once a limit is already used up.
        estimate = self.prices.estimate(link, prompt_tokens, max_tokens) or Decimal(0)
        ticks = to_ticks(estimate, round_up=True)
        try:
            hold = self._reserve_in_redis(scopes, ticks, estimate)
        except redis.RedisError as exc:
            log.warning("budget check without Redis (%s): Postgres only", type(exc).__name__)
            limits = [(s.name, s.limit, s.load_spent()) for s in scopes]
            hold = Hold(scopes, ticks, False, first_shortfall(limits, estimate))
        if hold.refused is not None:
            BUDGET_EXCEEDED.labels(scope=hold.refused.scope).inc()
            if batch_id is not None:
                store.fail_waiting_jobs(
                    self.engine, batch_id, f"not started: {hold.refused.message()}"
                )
        return hold

    def _reserve_in_redis(self, scopes: list[Scope], ticks: int, estimate: Decimal) -> Hold:
        keys = [k for s in scopes for k in (f"{s.key}:spent", f"{s.key}:reserved")]
        limits = [to_ticks(s.limit) for s in scopes]
        for _ in range(len(scopes) + 1):
            status, index, spent, reserved = (
                int(v) for v in self._reserve(keys=keys, args=[ticks, self.hold_ttl_s, *limits])
            )
            if status == 1:
                return Hold(scopes, ticks, True)
            scope = scopes[index - 1]
            if status == 0:
                # What is already spent plus what calls in flight may spend.
                return Hold(
                    scopes,
                    ticks,
                    True,
                    Shortfall(scope.name, scope.limit, from_ticks(spent + reserved), estimate),
                )
            # No copy of the spend in Redis (first use, expired, or Redis restarted): seed it.
            self.redis.set(
                f"{scope.key}:spent", to_ticks(scope.load_spent()), nx=True, ex=self.reconcile_s
            )
        raise redis.RedisError("budget keys kept disappearing")

    def settle(self, hold: Hold, cost: Decimal | None) -> None:
        """Replace the reservation with the recorded cost (the attempt row is already in
        Postgres, so a re-seed in between can only count it twice: briefly conservative)."""
        if not hold.scopes:
            return
        actual = to_ticks(cost) if cost is not None else 0
        spent: list[Decimal | None] = []
        if hold.in_redis:
            try:
                keys = [k for s in hold.scopes for k in (f"{s.key}:spent", f"{s.key}:reserved")]
                raw: Any = self._settle(keys=keys, args=[hold.ticks, actual])
                spent = [from_ticks(int(v)) if int(v) >= 0 else None for v in raw]
            except redis.RedisError as exc:
                log.warning("budget settle skipped (%s); Postgres re-seeds it", type(exc).__name__)
                return
        for scope, value in zip(hold.scopes, spent, strict=False):
            if value is not None and reached_soft_limit(value, scope.limit, self.soft_fraction):
                self._alert_once(scope, value)

    def _alert_once(self, scope: Scope, spent: Decimal) -> None:
        try:
            first = self.redis.set(f"{scope.key}:alerted", 1, nx=True, ex=scope.alert_ttl_s)
        except redis.RedisError:
            return  # the next settle raises it once Redis is back
        if not first:
            return
        BUDGET_SOFT_LIMIT.labels(scope=scope.name).inc()
        log.warning(
            "budget soft limit reached: %s budget %s at $%s of $%s",
            scope.name,
            scope.key,
            spent,
            scope.limit,
            extra={
                "event": "budget_soft_limit",
                "scope": scope.name,
                "budget_key": scope.key,
                "spent_usd": format(spent, "f"),
                "limit_usd": format(scope.limit, "f"),
            },
        )
