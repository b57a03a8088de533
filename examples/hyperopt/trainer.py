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
``cross_validate`` does, so the scores are exactly GridSearchCV's), saves
the fitted estimator as the fold's snapshot, sends it home to the study dir
(``cmlray.worker.send_file``: the worker may run on another host of a Ray
cluster), prints one line and returns the score as the item's result. The
session assembles a configuration's row once all its folds are in
(``folds.py``).
"""

from __future__ import annotations

import functools
import os
import pickle
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import joblib
import numpy as np

from estimators import get_model, load_dataset, make_cv
from searchspace import describe
from studydb import fold_snapshot, trial_dir

QUEUE_ENV = "HYPEROPT_QUEUE"
SNAPSHOT_COMPRESS = 1  # zlib level 1: a third of level 3's time for files 10% larger


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


def dump_atomically(value: Any, path: Path) -> None:
    """``joblib.dump`` whole or not at all (a stopped worker leaves no half snapshot)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    joblib.dump(value, tmp, compress=3)
    os.replace(tmp, path)


def dump_snapshot(value: Any, path: Path) -> None:
    """``value`` pickled (protocol 5) and zlib-compressed: a file ``joblib.load`` reads.

    joblib recognises a zlib stream by its first bytes and unpickles what it
    holds, so a snapshot loads as ``joblib.load(path)``, as ever. joblib's own
    ``dump`` pickles with a Python subclass of the pure-Python pickler, which
    visits each of a boosted model's hundreds of tree objects in Python;
    ``pickle.dumps`` does it in C. Measured here on the benchmark grid's
    models (``benchmarks/sweep_vs_gridsearch.py``, 320 fold snapshots): 3.65
    to 3.97 s of the workers' CPU with ``joblib.dump(..., compress=1)``, 3.06
    to 3.15 s this way, files 6% smaller.
    """
    path.write_bytes(zlib.compress(pickle.dumps(value, protocol=5), SNAPSHOT_COMPRESS))


def save_fold(study_dir: Path, task: dict[str, Any], estimator: Any) -> None:
    """The fold's fitted estimator, written on this worker's node, then sent home.

    The study dir is on the session's host, which need not be this worker's
    node (a Ray cluster); ``send_file`` lands the file whole or not at all.
    """
    import cmlray.worker

    dest = trial_dir(study_dir, task["config_id"]) / fold_snapshot(task["fold"])
    with tempfile.TemporaryDirectory(prefix="fold-") as local:
        path = Path(local) / dest.name
        snapshot = {"params": task["params"], "fold": task["fold"], "estimator": estimator}
        dump_snapshot(snapshot, path)
        cmlray.worker.send_file(path, dest)


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


def main() -> int:
    """Serve the queue named in ``HYPEROPT_QUEUE`` until the sweep closes it."""
    import cmlray.worker

    name = os.environ.get(QUEUE_ENV)
    if not name:
        print(f"trainer.py: {QUEUE_ENV} is not set: launch me from sweep.py", file=sys.stderr)
        return 2
    count = cmlray.worker.serve(name, train_fold)
    print(f"done: {count} fit{'s' if count != 1 else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
