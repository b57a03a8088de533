"""The worker's program: train (configuration, fold) fits from the sweep's queue.

``sweep.py`` launches each worker with this file as its script, the queue's
name in ``HYPEROPT_QUEUE``::

    cmlray.launch_workers(2, cpu=1, memory=1, script=".../trainer.py",
                          env={"HYPEROPT_QUEUE": name})

A worker runs ``python -u trainer.py`` with the session's project directory
as its working directory; Python puts this file's directory first on
``sys.path``, so the example's modules import wherever the project is.

A queue item is one fold of one configuration, as GridSearchCV dispatches
its fits: the last items of a sweep are single fits, so no core idles while
another finishes a whole configuration. For its fold the worker fits the
estimator on the fold's training split (scikit-learn, one thread: the worker
holds one CPU), scores it on the test split with the study's scorer (what
``cross_validate`` does, so the scores are exactly GridSearchCV's), sends the
fitted estimator home to the study dir as the fold's snapshot
(``cmlray.worker.send_bytes``: the worker may run on another host of a Ray
cluster), prints one line and returns the score as the item's result. The
session assembles a configuration's row once all its folds are in
(``folds.py``). One item may instead ask for the best configuration so far
refit on the whole dataset (``refitahead.py``): the worker sends it home
beside that configuration's folds.
"""

from __future__ import annotations

import functools
import os
import pickle
import sys
import time
from pathlib import Path
from typing import Any

import lz4.frame
import numpy as np

from estimators import ModelSpec, get_model, load_dataset, make_cv
from searchspace import describe
from studydb import fold_snapshot, refit_snapshot, trial_dir

QUEUE_ENV = "HYPEROPT_QUEUE"


@functools.cache
def splits(dataset: str, folds: int) -> tuple[np.ndarray, np.ndarray, list[Any]]:
    """The dataset and the study's (train, test) index pairs, once per process."""
    features, labels = load_dataset(dataset)
    return features, labels, list(make_cv(folds).split(features, labels))


def fit_fold(
    model: str, params: dict[str, Any], folds: int, fold: int, scoring: str
) -> tuple[float, Any, float]:
    """Fit and score one fold as ``cross_validate`` (hence GridSearchCV) does.

    Same estimator, same splitter, same scorer (``check_scoring``): the score
    is exactly GridSearchCV's ``split<fold>_test_score``.

    Returns:
        (the fold's test score, the fitted estimator, seconds spent fitting).
    """
    from sklearn.metrics import check_scoring

    spec = get_model(model)
    features, labels, pairs = splits(spec.dataset, folds)
    train, test = pairs[fold]
    estimator = spec.build(params)
    started = time.perf_counter()
    estimator.fit(features[train], labels[train])
    fit_seconds = time.perf_counter() - started
    scorer = check_scoring(estimator, scoring=scoring)
    score = float(scorer(estimator, features[test], labels[test]))
    return score, estimator, fit_seconds


def snapshot_bytes(value: Any) -> bytes:
    """``value`` pickled (protocol 5) in an LZ4 frame: a file ``joblib.load`` reads.

    joblib recognises an LZ4 frame by its first bytes and unpickles what it
    holds (``lz4`` installed, as the examples' extra installs it), so a
    snapshot loads as ``joblib.load(path)``. ``pickle.dumps`` visits a boosted
    model's hundreds of tree objects in C, where ``joblib.dump`` uses a Python
    subclass of the pure-Python pickler. Measured here on a 400-tree model
    (473 KB pickled): LZ4 0.48 ms for 169 KB, zlib at level 1 3.1 ms for 145
    KB (zlib was about 40% of the snapshots' time on the benchmark grid's models).
    """
    return lz4.frame.compress(pickle.dumps(value, protocol=5))


def save_fold(study_dir: Path, task: dict[str, Any], estimator: Any) -> None:
    """The fold's fitted estimator, sent home to its configuration's dir.

    The study dir is on the session's host, which need not be this worker's
    node (a Ray cluster); on that host the worker writes the file in place.
    """
    import cmlray.worker

    dest = trial_dir(study_dir, task["config_id"]) / fold_snapshot(task["fold"])
    snapshot = {"params": task["params"], "fold": task["fold"], "estimator": estimator}
    cmlray.worker.send_bytes(snapshot_bytes(snapshot), dest)


def best_model_bytes(spec: ModelSpec, params: dict[str, Any]) -> tuple[bytes, float]:
    """``params`` fit on the whole dataset, as GridSearchCV refits its best: the file
    ``best_model.joblib`` holds (``params``, ``estimator``), and the fit's seconds."""
    features, labels = load_dataset(spec.dataset)
    started = time.perf_counter()
    estimator = spec.build(params).fit(features, labels)
    fit_seconds = time.perf_counter() - started
    return snapshot_bytes({"params": params, "estimator": estimator}), fit_seconds


def refit(task: dict[str, Any]) -> dict[str, Any]:
    """Fit ``task``'s configuration on the whole dataset and send it home.

    What GridSearchCV's ``refit=True`` keeps as ``best_estimator_``; the
    session moves it to ``best_model.joblib`` once it has this item's result.
    """
    import cmlray.worker

    data, fit_seconds = best_model_bytes(get_model(task["model"]), task["params"])
    dest = refit_snapshot(Path(task["study_dir"]), task["config_id"])
    cmlray.worker.send_bytes(data, dest)
    print(f"#{task['number']:<3} refit on the whole dataset  ({fit_seconds:.1f} s)")
    return {"refit": task["config_id"], "fit_seconds": fit_seconds}


def train_fold(task: dict[str, Any]) -> dict[str, Any]:
    """Train one fold of one configuration (a queue item); its score for the session.

    Args:
        task: ``config_id``, ``number``, ``model``, ``params``, ``folds``,
            ``fold``, ``scoring`` and ``study_dir`` (absolute), as ``sweep.py``
            puts them.
    """
    started = time.perf_counter()
    score, estimator, fit_seconds = fit_fold(
        task["model"], task["params"], task["folds"], task["fold"], task["scoring"]
    )
    save_fold(Path(task["study_dir"]), task, estimator)
    took = time.perf_counter() - started
    where = f"#{task['number']:<3} fold {task['fold'] + 1}/{task['folds']}"
    print(f"{where} {score:.4f}  {describe(task['params'])}  ({took:.1f} s)")
    return {
        "score": score,
        "fit_seconds": fit_seconds,
        "worker": os.environ.get("CDSW_ENGINE_ID", f"pid-{os.getpid()}"),
    }


def run_item(task: dict[str, Any]) -> dict[str, Any]:
    """A queue item: one fold to train, or (``"refit"`` set) the best model to refit."""
    return refit(task) if task.get("refit") else train_fold(task)


def main() -> int:
    """Serve the queue named in ``HYPEROPT_QUEUE`` until the sweep closes it."""
    import cmlray.worker

    name = os.environ.get(QUEUE_ENV)
    if not name:
        print(f"trainer.py: {QUEUE_ENV} is not set: launch me from sweep.py", file=sys.stderr)
        return 2
    count = cmlray.worker.serve(name, run_item)
    print(f"done: {count} fit{'s' if count != 1 else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
