"""The best configuration's refit, run beside the sweep's last fits.

GridSearchCV refits its best configuration on the whole dataset after its
last fit, on one core while the others idle. The sweep runs that refit as a
queue item (``trainer.refit``) beside its last fits instead. The queue hands
items out in order, so an item put once the others are queued would only
start when they are all out; so the sweep holds its cheapest fits back (a
*reserve* costing about what the costliest configuration's refit costs) and
puts them once the queue is about to run dry, behind the refit of the
configuration leading then: one worker refits while the others train the
reserve. A fixed plan runs the costliest configurations first
(``sweep._fixed_plan``), so the reserve is the cheapest, which seldom take
the lead; if one does, the session refits the new best after the sweep, as it
always did (the refit done ahead is then lost work).

:class:`RefitAhead` keeps the reserve and the cost of the fits put and not
yet in, and says when to release the reserve and whose refit goes first.
Measured (``benchmarks/sweep_vs_gridsearch.py``): the refit's second of one
core off the end of the sweep; first built with the refit simply queued last,
it ran alone after both workers had finished their last fits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from estimators import ModelSpec
from studydb import Trial

RELEASE_PENDING = 1  # release the reserve once no more fits than this wait in the queue


class RefitAhead:
    """The reserve of cheapest fits, and when the leader's refit goes ahead of it.

    Args:
        model: the study's model (its ``cost`` of a configuration's fit).
        folds: the study's folds (a refit trains on folds / (folds - 1) times
            a fold's data).
        refit_of: the configuration whose refit the study already holds, if any.
    """

    def __init__(self, model: ModelSpec, folds: int, refit_of: str | None) -> None:
        self._model = model
        self._scale = folds / max(1, folds - 1)
        self._outstanding = 0.0  # the cost of the fits put and not yet in
        self._reserve: list[dict[str, Any]] = []
        self._last_cost = 0.0  # the costliest of the last fits put before the reserve
        self.refit_of = refit_of

    def hold_back(self, items: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Keep the cheapest of ``items`` (costliest first) as the reserve; the rest to put.

        The reserve costs at least a refit of the costliest configuration,
        and is at most half the items.
        """
        costs = [self._model.cost(item["params"]) for item in items]
        if not costs:
            return []
        wanted = self._scale * max(costs)
        held, total = len(items), 0.0
        while held > len(items) - len(items) // 2 and total < wanted:
            held -= 1
            total += costs[held]
        self._reserve = list(items[held:])
        self._last_cost = max(costs[max(0, held - 4) : held], default=0.0)
        return list(items[:held])

    def put(self, items: Sequence[dict[str, Any]]) -> None:
        """Fold items about to be put on the queue."""
        self._outstanding += sum(self._model.cost(item["params"]) for item in items)

    def finished(self, item: dict[str, Any]) -> None:
        """A fold item's outcome is in (done or failed for good)."""
        self._outstanding = max(0.0, self._outstanding - self._model.cost(item["params"]))

    @property
    def holding(self) -> bool:
        """Whether fits are held back still."""
        return bool(self._reserve)

    @property
    def outstanding(self) -> float:
        """The cost of the fold items put and not yet in."""
        return self._outstanding

    def near_dry(self) -> bool:
        """Whether the queue may be about to run dry: then ask it how many fits wait.

        Cheap to answer on every result: only the last few fits put before the
        reserve (a worker's and the next one, say) cost this little.
        """
        return self._outstanding <= 4 * self._last_cost

    def release(self, leader: Trial | None, base: dict[str, Any]) -> list[dict[str, Any]]:
        """What to put now: the leader's refit (``base``: the study's item fields), then
        the reserve. No refit when nothing leads yet or the study holds its refit."""
        items, self._reserve = self._reserve, []
        self.put(items)
        if leader is None or leader.config_id == self.refit_of:
            return items
        self.refit_of = leader.config_id
        refit = {
            **base,
            "refit": True,
            "config_id": leader.config_id,
            "number": leader.number,
            "params": leader.params,
        }
        return [refit, *items]
