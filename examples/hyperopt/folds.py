"""A configuration's folds, trained as separate queue items, back into one study row.

``sweep.py`` puts one queue item per (configuration, fold), as GridSearchCV
dispatches its fits, so the end of a sweep is single fits spread over every
worker. Results arrive in any order, from any worker; :class:`FoldResults`
keeps each configuration's fold scores until the last one is in and then
returns its row (mean, standard deviation and fold scores as
``cross_validate`` reports them), once. A fold that failed all its attempts
fails its configuration, once; its other folds' results are then ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from studydb import now


def fold_tasks(base: dict[str, Any], folds: int) -> list[dict[str, Any]]:
    """One queue item per fold of the configuration ``base`` describes."""
    return [{**base, "fold": fold} for fold in range(folds)]


@dataclass
class _Pending:
    scores: dict[int, float] = field(default_factory=dict)
    fit_seconds: float = 0.0
    workers: set[str] = field(default_factory=set)


class FoldResults:
    """Fold results in, a configuration's row out when its last fold arrives."""

    def __init__(self) -> None:
        self._pending: dict[str, _Pending] = {}
        self._settled: set[str] = set()

    def add_done(self, item: dict[str, Any], result: dict[str, Any]) -> dict[str, Any] | None:
        """A fold's score; the configuration's row once all its folds are in, else None."""
        key = item["config_id"]
        if key in self._settled:
            return None
        pending = self._pending.setdefault(key, _Pending())
        pending.scores[item["fold"]] = float(result["score"])
        pending.fit_seconds += float(result["fit_seconds"])
        pending.workers.add(str(result["worker"]))
        if len(pending.scores) < item["folds"]:
            return None
        del self._pending[key]
        self._settled.add(key)
        return _row(item, pending)

    def add_failed(self, item: dict[str, Any]) -> bool:
        """A fold failed for good: True the first time for its configuration."""
        key = item["config_id"]
        if key in self._settled:
            return False
        self._pending.pop(key, None)
        self._settled.add(key)
        return True


def _row(item: dict[str, Any], pending: _Pending) -> dict[str, Any]:
    """The configuration's row in the study's ``trials`` table (and its scores.json)."""
    scores = [pending.scores[fold] for fold in range(item["folds"])]
    return {
        "config_id": item["config_id"],
        "number": item["number"],
        "params": item["params"],
        "status": "done",
        "mean_score": float(np.mean(scores)),
        "std_score": float(np.std(scores)),
        "fold_scores": scores,
        "fit_seconds": pending.fit_seconds,
        "worker": ",".join(sorted(pending.workers)),
        "snapshot": f"trials/{item['config_id']}",
        "finished_at": now(),
    }
