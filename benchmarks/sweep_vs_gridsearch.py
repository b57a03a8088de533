"""Benchmark: one grid search three ways, in the same run.

(a) ``examples/hyperopt/sweep.py`` with 2 workers of 1 CPU, as a user runs
    it: a fresh ``python sweep.py ...`` process, timed from start to exit
    (imports, session start, launch, sweep, refit of the best, shutdown:
    what the user waits for). Its ``last_run.json`` splits that time: the
    *sweep phase* is the queue filled to every result in plus the refit of
    the best configuration (what GridSearchCV's fit does); session start is
    reported apart.
(b) A plain sequential loop in this process: ``cross_val_score`` for each
    configuration, then the best refit on the whole dataset.
(c) ``GridSearchCV(n_jobs=2, refit=True)`` in this process.

All three use the same estimator (``GradientBoostingClassifier``,
``random_state=0``, single-threaded), the same ``StratifiedKFold`` (5 folds,
shuffled, ``random_state=0``) and the same scorer, so they must agree on
every mean score and on the best configuration: checked and reported. Each
fit takes hundreds of milliseconds to a few seconds, so the ~5 s session
start is a small share of the example's time.

Goals: (a) at least 1.7x faster than (b), and at most 1.1x (c)'s time.
Both ratios are given end to end and for the sweep phase alone. A Rich
table is printed and everything goes to ``benchmarks/results/hyperopt.json``.
The machine is shared: its load average is recorded alongside.

Usage: ``python benchmarks/sweep_vs_gridsearch.py [--rounds N] [--quick]``: N rounds
(default 1), each running the three ways in a rotating order, medians
reported; ``--quick``: a small grid, a smoke run, goals not meaningful.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from _common import (
    REPO,
    RESULTS_DIR,
    RUN_MARK,
    Json,
    check_leftovers,
    machine,
    progress,
    table_console,
    verdict,
    write_json,
)

EXAMPLE = REPO / "examples" / "hyperopt"
RESULTS_PATH = RESULTS_DIR / "hyperopt.json"
sys.path.insert(0, str(EXAMPLE))

from estimators import get_model, load_dataset, make_cv  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from searchspace import config_id  # noqa: E402

MODEL, FOLDS, SCORING, WORKERS = "gradient_boosting", 5, "accuracy", 2
GRID: dict[str, list[Any]] = {
    "n_estimators": [100, 200, 300, 400],
    "learning_rate": [0.05, 0.1, 0.2, 0.3],
    "max_depth": [2, 3],
    "subsample": [0.8, 1.0],
}  # 64 configurations, 320 fits of ~0.2 to ~2 s: a few minutes sequentially
QUICK_GRID: dict[str, list[Any]] = {
    "n_estimators": [50, 100],
    "learning_rate": [0.1],
    "max_depth": [2, 3],
}
SPEEDUP_GOAL, GRIDSEARCH_GOAL = 1.7, 1.1


def run_example(grid: dict[str, list[Any]]) -> Json:
    """(a): the example as a fresh process; its wall time, timings and scores.

    The process and everything it starts carry a mark of their own: once it
    has exited, none of them may be left (those left are killed by pid and
    named). This process's own children (GridSearchCV's loky workers) are
    not marked.
    """
    mark = uuid.uuid4().hex
    with tempfile.TemporaryDirectory(prefix="bench-hyperopt-") as tmp:
        result = _run_example(grid, Path(tmp), {**os.environ, RUN_MARK: mark})
    result["leftovers"] = check_leftovers(mark)
    return result


def _run_example(grid: dict[str, list[Any]], workdir: Path, env: dict[str, str]) -> Json:
    space = workdir / "space.json"
    space.write_text(json.dumps(grid))
    argv = [sys.executable, str(EXAMPLE / "sweep.py"), "--space", str(space), "--study", "bench"]
    argv += ["--workers", str(WORKERS), "--cpu", "1", "--folds", str(FOLDS)]
    argv += ["--scoring", SCORING, "--runs-dir", str(workdir / "runs")]
    log = workdir / "sweep.log"
    started = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run(
            argv, check=False, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    code = done.returncode
    wall = time.perf_counter() - started
    if code != 0:
        raise RuntimeError(f"sweep.py exited {code}; its output:\n{log.read_text()[-3000:]}")
    study = workdir / "runs" / "bench"
    timings = json.loads((study / "last_run.json").read_text())["timings"]
    return {"wall_s": wall, "timings": timings, "means": _study_means(study)}


def _study_means(study: Path) -> dict[str, float]:
    import sqlite3

    with sqlite3.connect(study / "study.sqlite") as db:
        return dict(db.execute("SELECT config_id, mean_score FROM trials WHERE status='done'"))


def run_sequential(grid: dict[str, list[Any]]) -> Json:
    """(b): one configuration after the other in this process, then the best refit."""
    import numpy as np
    from sklearn.model_selection import ParameterGrid, cross_val_score

    spec = get_model(MODEL)
    features, labels = load_dataset(spec.dataset)
    started = time.perf_counter()
    means: dict[str, float] = {}
    best: tuple[float, dict[str, Any]] | None = None
    for params in ParameterGrid(grid):
        scores = cross_val_score(
            spec.build(params), features, labels, cv=make_cv(FOLDS), scoring=SCORING
        )
        means[config_id(MODEL, params)] = float(np.mean(scores))
        if best is None or means[config_id(MODEL, params)] > best[0]:
            best = (means[config_id(MODEL, params)], params)
    assert best is not None
    spec.build(best[1]).fit(features, labels)
    return {"wall_s": time.perf_counter() - started, "means": means, "best": best[1]}


def run_gridsearch(grid: dict[str, list[Any]]) -> Json:
    """(c): GridSearchCV(n_jobs=2), refit on."""
    from sklearn.model_selection import GridSearchCV

    spec = get_model(MODEL)
    features, labels = load_dataset(spec.dataset)
    started = time.perf_counter()
    search = GridSearchCV(
        spec.factory(), grid, cv=make_cv(FOLDS), scoring=SCORING, n_jobs=WORKERS, refit=True
    ).fit(features, labels)
    wall = time.perf_counter() - started
    means = {
        config_id(MODEL, params): float(mean)
        for params, mean in zip(
            search.cv_results_["params"], search.cv_results_["mean_test_score"], strict=True
        )
    }
    return {"wall_s": wall, "means": means, "best": search.best_params_}


def agreement(example: Json, sequential: Json, gridsearch: Json) -> Json:
    """Largest difference between the three sets of mean scores; same best?"""
    reference = gridsearch["means"]
    diffs = [
        abs(other["means"][key] - value)
        for other in (example, sequential)
        for key, value in reference.items()
    ]
    example_best = max(example["means"].items(), key=lambda kv: kv[1])[1]
    return {
        "configurations": len(reference),
        "max_abs_mean_diff": max(diffs),
        "same_keys": set(example["means"]) == set(reference) == set(sequential["means"]),
        "best_score_equal": abs(example_best - max(reference.values())) <= 1e-12,
        "sequential_best_equal": sequential["best"] == gridsearch["best"],
    }


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def summarize(runs: dict[str, list[Json]]) -> Json:
    """Median times over the rounds and their ratios, end to end and for the sweep phase."""
    examples = [r["timings"] for r in runs["example"]]
    end_to_end = _median([r["wall_s"] for r in runs["example"]])
    phase = _median([t["sweep_s"] + t.get("refit_s", 0.0) for t in examples])
    seq = _median([r["wall_s"] for r in runs["sequential"]])
    grid = _median([r["wall_s"] for r in runs["gridsearch"]])
    return {
        "example_end_to_end_s": end_to_end,
        "example_session_start_s": _median([t.get("session_start_s", 0.0) for t in examples]),
        "example_sweep_phase_s": phase,
        "sequential_s": seq,
        "gridsearch_n_jobs_2_s": grid,
        "speedup_vs_sequential_end_to_end": seq / end_to_end,
        "speedup_vs_sequential_sweep_phase": seq / phase,
        "ratio_to_gridsearch_end_to_end": end_to_end / grid,
        "ratio_to_gridsearch_sweep_phase": phase / grid,
        "gridsearch_speedup_vs_sequential": seq / grid,
    }


def print_table(summary: Json, agree: Json, console: Console) -> None:
    table = Table(title=f"hyperopt: {agree['configurations']} configurations x {FOLDS} folds")
    for column in ("run", "seconds", "speedup", "/ GridSearchCV", "goals"):
        table.add_column(column, justify="left" if column == "run" else "right")
    seq, grid = summary["sequential_s"], summary["gridsearch_n_jobs_2_s"]
    for label, seconds in (
        ("example end to end", summary["example_end_to_end_s"]),
        ("example sweep phase", summary["example_sweep_phase_s"]),
    ):
        goals = seq / seconds >= SPEEDUP_GOAL and seconds / grid <= GRIDSEARCH_GOAL
        ratios = (f"{seq / seconds:.2f}x", f"{seconds / grid:.2f}")
        table.add_row(label, f"{seconds:.1f}", *ratios, verdict(goals))
    start = summary["example_session_start_s"] or 0.0
    table.add_row("  session start", f"{start:.1f}", "", "", "")
    table.add_row("sequential", f"{seq:.1f}", "1.00x", f"{seq / grid:.2f}", "")
    table.add_row("GridSearchCV n_jobs=2", f"{grid:.1f}", f"{seq / grid:.2f}x", "1.00", "")
    console.print(table)
    console.print(
        f"goals: >= {SPEEDUP_GOAL}x faster than sequential, <= {GRIDSEARCH_GOAL}x GridSearchCV's"
        f" time. Scores agree: max |mean diff| {agree['max_abs_mean_diff']:.1e},"
        f" best equal: {agree['best_score_equal'] and agree['sequential_best_equal']}",
        markup=False,
        soft_wrap=True,
    )


MEASURES = {"example": run_example, "gridsearch": run_gridsearch, "sequential": run_sequential}
ORDERS = (
    ("example", "gridsearch", "sequential"),
    ("sequential", "example", "gridsearch"),
    ("gridsearch", "sequential", "example"),
)


def measure(grid: dict[str, list[Any]], rounds: int) -> Json:
    """Each way once per round, the order rotating between rounds (the machine drifts)."""
    runs: dict[str, list[Json]] = {name: [] for name in MEASURES}
    left: list[str] = []
    for index in range(rounds):
        for name in ORDERS[index % len(ORDERS)]:
            progress(f"round {index + 1}/{rounds}: {name} ...")
            load = os.getloadavg()[0]
            result = MEASURES[name](grid)
            result["loadavg_1min"] = [load, os.getloadavg()[0]]
            runs[name].append(result)
            left += result.pop("leftovers", [])
    return {"runs": runs, "leftovers": left}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small grid (smoke run)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds, medians reported (1)")
    args = parser.parse_args()
    grid = QUICK_GRID if args.quick else GRID
    console = table_console(100)
    measured = measure(grid, max(1, args.rounds))
    runs = measured["runs"]
    summary = summarize(runs)
    agree = agreement(runs["example"][0], runs["sequential"][0], runs["gridsearch"][0])
    print_table(summary, agree, console)
    for records in runs.values():  # keep the JSON small: scores were compared above
        for record in records:
            record.pop("means", None)
    write_json(RESULTS_PATH, {
        "grid": grid, "model": MODEL, "folds": FOLDS, "workers": WORKERS,
        "quick": args.quick, "rounds": args.rounds, "machine": machine(),
        "summary": summary, "agreement": agree, "runs": runs,
        "goals": {"speedup_vs_sequential": SPEEDUP_GOAL, "ratio_to_gridsearch": GRIDSEARCH_GOAL},
        "leftover_processes": measured["leftovers"],
    })  # fmt: skip
    left = measured["leftovers"]
    console.print(f"results: {RESULTS_PATH.relative_to(REPO)}; processes left: {len(left)}")
    return 0 if not left and agree["max_abs_mean_diff"] <= 1e-12 else 1


if __name__ == "__main__":
    sys.exit(main())
