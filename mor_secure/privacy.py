"""Privacy accounting for DP-SGD: accountant histories that persist, compose and plan noise.

A history is the list of (noise_multiplier, sample_rate, steps) triples of the Poisson-subsampled
Gaussian mechanism, exactly what Opacus' accountants keep. Histories are JSON-safe, so a site can
store them, restore them after a restart and compose every run on a data set: composition is
concatenation, never the sum of epsilons. GDP is deliberately not offered (it under-states epsilon
at the sample rates and step counts used here).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from mor_secure.config import ConfigError
from mor_secure.errors import MorError

DEFAULT_ACCOUNTANT = "prv"
MAX_NOISE_MULTIPLIER = 1e4
MAX_TARGET_EPSILON = 100.0
"""Largest epsilon one run may plan for: far past any meaningful guarantee, and the PRV accountant's
grid grows with epsilon (1e308 asked for 38.7 GiB)."""
HISTORY_FORMAT = 1


class BudgetTooLow(MorError, ValueError):
    """No noise multiplier reaches the target epsilon (the prior history alone may exceed it)."""


@dataclass(frozen=True)
class Mechanism:
    """``steps`` applications of the Poisson-subsampled Gaussian mechanism."""

    noise_multiplier: float
    sample_rate: float
    steps: int

    def __post_init__(self) -> None:
        if not (self.noise_multiplier >= 0 and math.isfinite(self.noise_multiplier)):
            raise ValueError(f"noise_multiplier must be finite and >= 0, got {self.noise_multiplier}")
        if not 0 < self.sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {self.sample_rate}")
        if not (isinstance(self.steps, int) and self.steps >= 0):
            raise ValueError(f"steps must be an integer >= 0, got {self.steps!r}")


class AccountantHistory:
    """An ordered list of mechanisms; ``+`` composes (concatenates) two histories."""

    def __init__(self, entries: Iterable[Mechanism | tuple[float, float, int]] = ()) -> None:
        self.entries: list[Mechanism] = []
        for entry in entries:
            self.add(*(entry if isinstance(entry, tuple) else (entry.noise_multiplier, entry.sample_rate, entry.steps)))

    def add(self, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        """Record ``steps`` more steps; merges with the last entry when the parameters match."""
        mech = Mechanism(float(noise_multiplier), float(sample_rate), int(steps))
        if mech.steps == 0:
            return
        last = self.entries[-1] if self.entries else None
        if last and (last.noise_multiplier, last.sample_rate) == (mech.noise_multiplier, mech.sample_rate):
            self.entries[-1] = Mechanism(last.noise_multiplier, last.sample_rate, last.steps + mech.steps)
        else:
            self.entries.append(mech)

    @property
    def steps(self) -> int:
        """Total number of steps recorded."""
        return sum(m.steps for m in self.entries)

    @property
    def private(self) -> bool:
        """False when any step ran without noise (epsilon is then infinite)."""
        return all(m.noise_multiplier > 0 for m in self.entries)

    def as_opacus(self) -> list[tuple[float, float, int]]:
        """The history in the tuple form Opacus' accountants keep."""
        return [(m.noise_multiplier, m.sample_rate, m.steps) for m in self.entries]

    def __add__(self, other: AccountantHistory) -> AccountantHistory:
        return AccountantHistory([*self.entries, *other.entries])

    def __iter__(self) -> Iterator[Mechanism]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AccountantHistory) and self.entries == other.entries

    def __repr__(self) -> str:
        return f"AccountantHistory({self.as_opacus()!r})"

    def state_dict(self) -> dict[str, Any]:
        """A JSON-safe snapshot: ``{"format": 1, "history": [[sigma, q, steps], ...]}``."""
        return {"format": HISTORY_FORMAT, "history": [list(t) for t in self.as_opacus()]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replace the entries with a snapshot from ``state_dict``; refuses malformed input."""
        if not isinstance(state, dict) or state.get("format") != HISTORY_FORMAT:
            raise ValueError(f"not an accountant history (format {HISTORY_FORMAT}): {state!r:.200}")
        rows = state.get("history")
        if not isinstance(rows, list) or not all(isinstance(r, list) and len(r) == 3 for r in rows):
            raise ValueError("accountant history must be a list of [noise_multiplier, sample_rate, steps]")
        restored = AccountantHistory()
        for sigma, rate, steps in rows:
            if isinstance(steps, bool) or not isinstance(steps, int):
                raise ValueError(f"accountant history steps must be an integer, got {steps!r}")
            restored.add(sigma, rate, steps)
        self.entries = restored.entries

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> AccountantHistory:
        """Build a history from a ``state_dict`` snapshot."""
        history = cls()
        history.load_state_dict(state)
        return history


def compose(histories: Iterable[AccountantHistory]) -> AccountantHistory:
    """The history of running every given history one after the other on the same data."""
    total = AccountantHistory()
    for history in histories:
        total = total + history
    return total


class Accountant(Protocol):
    """Turns a history into epsilon at a given delta (an upper bound, as a guarantee needs)."""

    name: str

    def epsilon(self, history: AccountantHistory, delta: float) -> float: ...


class OpacusAccountant:
    """Adapter over an ``opacus.accountants`` mechanism ('prv' or 'rdp')."""

    def __init__(self, name: str) -> None:
        self.name = name

    def epsilon(self, history: AccountantHistory, delta: float) -> float:
        from opacus.accountants import create_accountant

        accountant = create_accountant(self.name)
        accountant.history = history.as_opacus()
        return float(accountant.get_epsilon(delta=delta))


ACCOUNTANTS: dict[str, Accountant] = {"prv": OpacusAccountant("prv"), "rdp": OpacusAccountant("rdp")}


def get_accountant(name: str) -> Accountant:
    """The registered accountant called ``name``; a clear error lists the choices."""
    try:
        return ACCOUNTANTS[name]
    except KeyError:
        raise ConfigError(
            f"unknown accountant {name!r}; choose one of {sorted(ACCOUNTANTS)} "
            "(GDP is not offered: it under-states epsilon here)"
        ) from None


def check_privacy_settings(
    target_epsilon: float, max_epsilon: float, delta: float | None, accountant: str, max_grad_norm: float
) -> None:
    """Refuse out-of-range privacy settings with a ``ConfigError`` naming the setting and its range."""
    if not 0 < target_epsilon <= MAX_TARGET_EPSILON:
        raise ConfigError(f"target_epsilon must be in (0, {MAX_TARGET_EPSILON:g}], got {target_epsilon}")
    if not (math.isfinite(max_epsilon) and max_epsilon > 0):
        raise ConfigError(f"max_epsilon must be a finite positive lifetime budget, got {max_epsilon}")
    if delta is not None and not 0 < delta < 1:
        raise ConfigError(f"delta must be in (0, 1/number of pairs], got {delta}")
    get_accountant(accountant)
    if not (math.isfinite(max_grad_norm) and max_grad_norm > 0):
        raise ConfigError(f"max_grad_norm must be finite and positive, got {max_grad_norm}")


def check_delta(delta: float, n_records: int) -> None:
    """delta must be at most 1/n: a larger one allows releasing a whole record (``ConfigError``)."""
    if not 0 < delta <= 1.0 / n_records:
        raise ConfigError(
            f"[privacy] delta {delta:g} is above 1/n = {1.0 / n_records:g} for {n_records} pairs: "
            f"such a delta allows releasing a record; set it to at most {1.0 / n_records:g} "
            "(or leave it unset)"
        )


def default_delta(n_records: int) -> float:
    """delta = 1/n, capped at 1e-5 (a delta above 1/n would allow releasing a record)."""
    if n_records <= 0:
        raise ValueError(f"n_records must be positive, got {n_records}")
    return min(1.0 / n_records, 1e-5)


def epsilon(history: AccountantHistory, delta: float, accountant: str = DEFAULT_ACCOUNTANT) -> float:
    """Epsilon spent by ``history`` at ``delta``: 0 for an empty one, ``inf`` when any step had no noise."""
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if history.steps == 0:
        return 0.0
    if not history.private:
        return math.inf
    get_accountant(accountant)
    return _cached_epsilon(tuple(history.as_opacus()), delta, accountant)


@functools.lru_cache(maxsize=1024)
def _cached_epsilon(history: tuple[tuple[float, float, int], ...], delta: float, accountant: str) -> float:
    return ACCOUNTANTS[accountant].epsilon(AccountantHistory(history), delta)


def plan_noise(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    *,
    prior_history: AccountantHistory | None = None,
    accountant: str = DEFAULT_ACCOUNTANT,
    tolerance: float = 0.01,
) -> float:
    """Smallest noise multiplier (within ``tolerance`` in epsilon) such that ``prior_history``
    followed by ``steps`` steps at ``sample_rate`` spends at most ``target_epsilon``.

    Brackets with the cheap RDP answer first (PRV is usually a little below it), then bisects.
    """
    prior = prior_history or AccountantHistory()

    def spend(sigma: float, name: str = accountant) -> float:
        planned = AccountantHistory([(sigma, sample_rate, steps)])
        return epsilon(prior + planned, delta, name)

    if not 0 < target_epsilon <= MAX_TARGET_EPSILON:
        raise ValueError(f"target_epsilon must be in (0, {MAX_TARGET_EPSILON:g}], got {target_epsilon}")
    if steps <= 0:
        raise ValueError(f"steps must be positive, got {steps}")
    if prior.steps and epsilon(prior, delta, accountant) >= target_epsilon:
        raise BudgetTooLow(
            f"the prior history alone spends epsilon {epsilon(prior, delta, accountant):.3f} >= target {target_epsilon}"
        )
    high = 1.0
    if accountant != "rdp" and epsilon(prior, delta, "rdp") < target_epsilon:  # RDP may exceed where PRV fits
        high = _bracket(lambda sigma: spend(sigma, "rdp"), target_epsilon, 1.0)[1]
    low, high = _bracket(spend, target_epsilon, high)
    # Illinois (regula falsi) on eps(sigma) - target: a few accountant calls instead of a bisection's many.
    f_low, f_high = spend(low) - target_epsilon if low > 0 else math.inf, spend(high) - target_epsilon
    side = 0
    for _ in range(40):
        if -f_high <= tolerance or high - low <= 1e-4:
            break
        mid = (low + high) / 2 if math.isinf(f_low) else (low * f_high - high * f_low) / (f_high - f_low)
        if not low < mid < high:
            mid = (low + high) / 2
        f_mid = spend(mid) - target_epsilon
        if f_mid <= 0:
            high, f_high = mid, f_mid
            f_low, side = (f_low / 2 if side == -1 else f_low), -1
        else:
            low, f_low = mid, f_mid
            f_high, side = (f_high / 2 if side == 1 else f_high), 1
    return high


def _bracket(spend: Callable[[float], float], target: float, guess: float) -> tuple[float, float]:
    """(low, high) noise multipliers with spend(low) > target >= spend(high) (low may be 0)."""
    high = guess
    while spend(high) > target:
        high *= 2
        if high > MAX_NOISE_MULTIPLIER:
            raise BudgetTooLow(f"no noise multiplier up to {MAX_NOISE_MULTIPLIER:g} reaches epsilon {target}")
    low = high * 0.75
    while low > 1e-3 and spend(low) <= target:
        high, low = low, low * 0.75
    return (low if low > 1e-3 else 0.0), high


REPORT_FORMAT = 1


@dataclass
class PrivacyReport:
    """What one reward-model training run spent, written next to the model as privacy_report.json.

    A non-private (``--no-dp``) baseline has ``private=False`` and ``epsilon == inf``; in JSON its
    epsilons are ``null`` (JSON has no infinity) and ``baseline`` is true: never serve such a model.
    """

    family: str
    base: str
    private: bool
    epsilon: float
    epsilon_rdp: float
    delta: float
    accountant: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    n_pairs: int
    max_grad_norm: float
    data_fingerprint: str
    model_sha256: str
    run_id: str
    time: str
    history: dict[str, Any]

    @property
    def baseline(self) -> bool:
        """A non-private run, kept only to measure what DP costs."""
        return not self.private

    def to_json(self) -> dict[str, Any]:
        """JSON-safe dict; infinite epsilons become ``null``."""
        out = dict(vars(self))
        for key in ("epsilon", "epsilon_rdp"):
            out[key] = out[key] if math.isfinite(out[key]) else None
        out["baseline"] = self.baseline
        out["format"] = REPORT_FORMAT
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PrivacyReport:
        """Inverse of ``to_json``; refuses unknown formats and missing fields."""
        if not isinstance(data, dict) or data.get("format") != REPORT_FORMAT:
            raise ValueError(f"not a privacy report (format {REPORT_FORMAT})")
        names = [f for f in cls.__dataclass_fields__]
        missing = [n for n in names if n not in data]
        if missing:
            raise ValueError(f"privacy report lacks field(s) {', '.join(missing)}")
        values = {n: data[n] for n in names}
        for key in ("epsilon", "epsilon_rdp"):
            values[key] = math.inf if values[key] is None else float(values[key])
        return cls(**values)
