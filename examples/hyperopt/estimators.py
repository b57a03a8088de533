"""The models a sweep can tune: estimator, dataset, default search space.

Every dataset ships inside scikit-learn (nothing is downloaded). Every
estimator has a fixed ``random_state`` so a configuration's scores are the
same wherever and however often it runs (what makes the GridSearchCV check
and resuming a study meaningful), and ``n_jobs=1`` where it has one: each
worker holds one CPU, parallelism comes from the workers.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SEED = 0


class UsageError(Exception):
    """Bad input from the command line or a space file: exit code 2, nothing launched."""


@dataclass(frozen=True)
class ModelSpec:
    """One tunable model.

    Attributes:
        name: the ``--model`` name.
        factory: builds the untrained estimator with its fixed settings.
        dataset: the scikit-learn dataset it is trained on (``load_<dataset>``).
        space: its default search space, in space-file form.
        cost: relative fitting cost of a configuration; the longest go first so
            no worker is left with a long fit at the end while the other idles.
        about: one line for ``--help``.
    """

    name: str
    factory: Callable[[], Any]
    dataset: str
    space: dict[str, Any] = field(default_factory=dict)
    cost: Callable[[dict[str, Any]], float] = lambda _params: 1.0
    about: str = ""

    def build(self, params: dict[str, Any]) -> Any:
        """A fresh estimator with ``params`` set (and ``n_jobs=1`` where it applies)."""
        estimator = self.factory()
        if "n_jobs" in estimator.get_params():
            estimator.set_params(n_jobs=1)
        return estimator.set_params(**params)


def _gradient_boosting() -> Any:
    from sklearn.ensemble import GradientBoostingClassifier

    return GradientBoostingClassifier(random_state=SEED)


def _random_forest() -> Any:
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(random_state=SEED, n_jobs=1)


def _svc() -> Any:
    from sklearn.svm import SVC

    return SVC()


def _boosting_cost(params: dict[str, Any]) -> float:
    depth = params.get("max_depth") or 3
    return float(params.get("n_estimators", 100) * depth * params.get("subsample", 1.0))


def _forest_cost(params: dict[str, Any]) -> float:
    return float(params.get("n_estimators", 100))


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="gradient_boosting",
            factory=_gradient_boosting,
            dataset="breast_cancer",
            space={
                "n_estimators": [50, 100, 150],
                "learning_rate": [0.05, 0.1, 0.2],
                "max_depth": [2, 3],
                "subsample": [0.7, 1.0],
            },
            cost=_boosting_cost,
            about="GradientBoostingClassifier on breast_cancer (569 x 30, 2 classes)",
        ),
        ModelSpec(
            name="random_forest",
            factory=_random_forest,
            dataset="digits",
            space={
                "n_estimators": [100, 200],
                "max_depth": [None, 10, 20],
                "max_features": ["sqrt", "log2"],
                "min_samples_leaf": [1, 2],
            },
            cost=_forest_cost,
            about="RandomForestClassifier on digits (1797 x 64, 10 classes)",
        ),
        ModelSpec(
            name="svc",
            factory=_svc,
            dataset="digits",
            space={
                "C": {"low": 0.1, "high": 100.0, "log": True, "num": 4},
                "gamma": ["scale", 0.0005, 0.001, 0.005],
            },
            about="SVC (RBF kernel) on digits (1797 x 64, 10 classes)",
        ),
    )
}


def get_model(name: str) -> ModelSpec:
    """The model called ``name``; a UsageError listing the known ones otherwise."""
    try:
        return MODELS[name]
    except KeyError:
        known = ", ".join(sorted(MODELS))
        raise UsageError(f"unknown model {name!r}: choose one of {known}") from None


@functools.cache
def load_dataset(name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(X, y)`` of a dataset shipped with scikit-learn, loaded once per process."""
    import sklearn.datasets

    loader = getattr(sklearn.datasets, f"load_{name}")
    features, labels = loader(return_X_y=True)
    return features, labels


def make_cv(folds: int) -> Any:
    """The study's splitter: stratified, shuffled once with a fixed seed.

    Every worker, the sequential baseline and GridSearchCV get identical folds.
    """
    from sklearn.model_selection import StratifiedKFold

    return StratifiedKFold(n_splits=folds, shuffle=True, random_state=SEED)
