"""What to train next: a fixed plan (grid, random) or Optuna's TPE, asked as workers free up.

Both kinds answer the same three questions the sweep loop asks:
``first(n)`` (what to queue before launching), ``tell(proposal, score)``
(a result is in: anything new to queue?) and ``exhausted`` (nothing more
will be proposed: the queue can be closed so workers end when it drains).

The adaptive sampler uses Optuna's ask-and-tell interface: one trial is
asked for each worker at the start, then one more each time a result is
told, until ``trials`` are out. Every worker stays busy and every ask sees
every result so far. Optuna is optional: :func:`require_optuna` fails with
a clear message when it is missing.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from estimators import UsageError
from searchspace import Choice, Space, config_id
from studydb import Trial

MAX_DUPLICATE_ASKS = 100


@dataclass(frozen=True)
class Proposal:
    """A configuration to train: its number in the study and its parameters."""

    number: int
    params: dict[str, Any]


class FixedPlan:
    """A grid or a random sample: everything is known up front."""

    def __init__(self, pending: Sequence[Proposal], total: int) -> None:
        self._pending = list(pending)
        self.total = total
        self.done = total - len(self._pending)
        self.exhausted = True

    def first(self, n: int) -> list[Proposal]:
        """Every pending configuration (the queue hands them out as workers ask)."""
        del n
        return self._pending

    def tell(self, proposal: Proposal, score: float | None) -> list[Proposal]:
        """Nothing follows from a result: the plan is fixed."""
        del proposal, score
        return []


def require_optuna() -> Any:
    """Import optuna, or a UsageError saying how to install it."""
    try:
        import optuna
    except ImportError:
        raise UsageError(
            "--sampler tpe needs optuna, which is not installed:"
            " pip install optuna (or pip install 'cmlray[examples]')"
        ) from None
    return optuna


def distributions(space: Space) -> dict[str, Any]:
    """The space as Optuna distributions (a range's ``num`` is for grids only)."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    out: dict[str, Any] = {}
    for name, dim in space.items():
        if isinstance(dim, Choice):
            out[name] = CategoricalDistribution(list(dim.values))
        elif dim.integer:
            out[name] = IntDistribution(int(dim.low), int(dim.high), log=dim.log)
        else:
            out[name] = FloatDistribution(dim.low, dim.high, log=dim.log)
    return out


class TpeSearch:
    """Optuna's TPE, asked for one configuration whenever a worker frees up.

    Args:
        model: the model's name (part of a configuration's id).
        space: the search space.
        trials: how many configurations the study should have in the end;
            those already done (resuming) count and teach the sampler.
        seed: the sampler's seed.
        done: the study's finished trials.
    """

    def __init__(
        self, model: str, space: Space, trials: int, seed: int, done: Sequence[Trial]
    ) -> None:
        optuna = require_optuna()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self._optuna = optuna
        self._model = model
        self._dists = distributions(space)
        with warnings.catch_warnings():  # constant_liar is experimental in older Optuna
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=True)
        self.study = optuna.create_study(direction="maximize", sampler=sampler)
        self._known: dict[str, float] = {}
        self._in_flight: dict[str, Any] = {}
        learned = sum(self._learn(trial) for trial in done)
        self._next_number = max((trial.number + 1 for trial in done), default=0)
        self.total = max(trials, learned)
        self.done = learned
        self._remaining = self.total - learned

    @property
    def exhausted(self) -> bool:
        """Every trial has been asked for (or the space has no new configuration)."""
        return self._remaining <= 0

    def _learn(self, trial: Trial) -> bool:
        """Teach the sampler a finished trial of an earlier run, if it fits this space."""
        if set(trial.params) != set(self._dists) or trial.mean_score is None:
            return False
        try:
            frozen = self._optuna.trial.create_trial(
                params=trial.params, distributions=self._dists, value=trial.mean_score
            )
        except ValueError:  # a value outside this run's space
            return False
        self.study.add_trial(frozen)
        self._known[trial.config_id] = trial.mean_score
        return True

    def first(self, n: int) -> list[Proposal]:
        """One configuration per worker (fewer if fewer trials remain)."""
        proposals = [self._ask() for _ in range(min(n, self._remaining))]
        return [p for p in proposals if p is not None]

    def tell(self, proposal: Proposal, score: float | None) -> list[Proposal]:
        """Report a result (None: it failed); returns the next configuration, if any."""
        key = config_id(self._model, proposal.params)
        state = self._optuna.trial.TrialState
        trial = self._in_flight.pop(key, None)
        if trial is not None and score is None:
            self.study.tell(trial, state=state.FAIL)
        elif trial is not None:
            self.study.tell(trial, score)
        if score is not None:
            self._known[key] = score
        following = self._ask() if self._remaining > 0 else None
        return [following] if following is not None else []

    def _ask(self) -> Proposal | None:
        """A configuration not yet trained nor in flight; None when the space runs dry."""
        for _ in range(MAX_DUPLICATE_ASKS):
            trial = self.study.ask(self._dists)
            key = config_id(self._model, trial.params)
            if key in self._known:  # costs nothing to answer, and teaches the sampler
                self.study.tell(trial, self._known[key])
            elif key in self._in_flight:
                self.study.tell(trial, state=self._optuna.trial.TrialState.FAIL)
            else:
                self._in_flight[key] = trial
                self._remaining -= 1
                self._next_number += 1  # the study's numbering: dense, unique across runs
                return Proposal(self._next_number - 1, dict(trial.params))
        self._remaining = 0  # a small discrete space, every configuration tried
        return None
