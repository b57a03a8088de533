"""The worker's program: train configurations from the sweep's queue.

``sweep.py`` launches each worker with this file as its script, the queue's
name in ``HYPEROPT_QUEUE``::

    cmlray.launch_workers(2, cpu=1, memory=1, script=".../trainer.py",
                          env={"HYPEROPT_QUEUE": name})

A worker runs ``python -u trainer.py`` with the session's project directory
as its working directory; Python puts this file's directory first on
``sys.path``, so the example's modules import wherever the project is.

For each configuration it runs k-fold cross-validation (scikit-learn,
``n_jobs=1``: the worker holds one CPU), saves the k fold estimators as the
configuration's snapshot and its scores next to it, sends both home to the
session's study dir (``cmlray.worker.send_file``: the worker may run on
another host of a Ray cluster), prints one line and returns the scores as
the item's result.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from sklearn.model_selection import cross_validate

from estimators import get_model, load_dataset, make_cv
from searchspace import describe
from studydb import now, trial_dir

QUEUE_ENV = "HYPEROPT_QUEUE"


def cross_validate_config(
    model: str, params: dict[str, Any], folds: int, scoring: str
) -> tuple[list[float], list[Any], float]:
    """Cross-validate one configuration as GridSearchCV would.

    Same estimator, same splitter, same scorer, scikit-learn's own
    ``cross_validate``: the fold scores are exactly GridSearchCV's.

    Returns:
        (fold test scores, the fold estimators, seconds spent fitting).
    """
    spec = get_model(model)
    features, labels = load_dataset(spec.dataset)
    out = cross_validate(
        spec.build(params),
        features,
        labels,
        cv=make_cv(folds),
        scoring=scoring,
        n_jobs=1,
        return_estimator=True,
        error_score="raise",
    )
    return (
        [float(s) for s in out["test_score"]],
        list(out["estimator"]),
        float(out["fit_time"].sum()),
    )


def dump_atomically(value: Any, path: Path) -> None:
    """``joblib.dump`` whole or not at all (a stopped worker leaves no half snapshot)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    joblib.dump(value, tmp, compress=3)
    os.replace(tmp, path)


def save_snapshot(study_dir: Path, row: dict[str, Any], estimators: list[Any]) -> None:
    """The fold estimators, then the scores (last: their presence means complete).

    Written on this worker's node, then sent home: the study dir is on the
    session's host, which need not be this worker's node (a Ray cluster).
    ``send_file`` lands each file whole or not at all, in this order.
    """
    import cmlray.worker

    dest = trial_dir(study_dir, row["config_id"])
    with tempfile.TemporaryDirectory(prefix="trial-") as local:
        model, scores = Path(local) / "model.joblib", Path(local) / "scores.json"
        snapshot = {"params": row["params"], "fold_estimators": estimators}
        joblib.dump(snapshot, model, compress=3)
        scores.write_bytes(json.dumps(row, indent=2).encode())
        cmlray.worker.send_file(model, dest / "model.joblib")
        cmlray.worker.send_file(scores, dest / "scores.json")


def study_row(task: dict[str, Any], scores: list[float], fit_seconds: float) -> dict[str, Any]:
    """The configuration's row in the study's ``trials`` table (and its scores.json)."""
    return {
        "config_id": task["config_id"],
        "number": task["number"],
        "params": task["params"],
        "status": "done",
        "mean_score": float(np.mean(scores)),
        "std_score": float(np.std(scores)),
        "fold_scores": scores,
        "fit_seconds": fit_seconds,
        "worker": os.environ.get("CDSW_ENGINE_ID", f"pid-{os.getpid()}"),
        "snapshot": f"trials/{task['config_id']}/model.joblib",
        "finished_at": now(),
    }


def train_one(task: dict[str, Any]) -> dict[str, Any]:
    """Train one configuration (a queue item) and return its row for the study.

    Args:
        task: ``config_id``, ``number``, ``model``, ``params``, ``folds``,
            ``scoring`` and ``study_dir`` (absolute), as ``sweep.py`` puts them.
    """
    started = time.perf_counter()
    scores, estimators, fit_seconds = cross_validate_config(
        task["model"], task["params"], task["folds"], task["scoring"]
    )
    row = study_row(task, scores, fit_seconds)
    save_snapshot(Path(task["study_dir"]), row, estimators)
    took = time.perf_counter() - started
    score = f"{row['mean_score']:.4f} ± {row['std_score']:.4f}"
    print(f"#{task['number']:<3} {score}  {describe(task['params'])}  ({took:.1f} s)")
    return row


def main() -> int:
    """Serve the queue named in ``HYPEROPT_QUEUE`` until the sweep closes it."""
    import cmlray.worker

    name = os.environ.get(QUEUE_ENV)
    if not name:
        print(f"trainer.py: {QUEUE_ENV} is not set: launch me from sweep.py", file=sys.stderr)
        return 2
    count = cmlray.worker.serve(name, train_one)
    print(f"done: {count} configuration{'s' if count != 1 else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
