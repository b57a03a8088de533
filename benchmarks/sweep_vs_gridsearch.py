"""Benchmark: one grid search three ways, and one TPE search two ways, in the same run.

Every way runs as a fresh Python process, timed by this one from start to
exit: interpreter, imports, the search, the refit of the best, shutdown:
what a user running a script waits for. Each way also reports its *fit
phase* (the search and the refit alone, timed inside the process).

(a) ``examples/hyperopt/sweep.py`` with 2 workers of 1 CPU. Its
    ``last_run.json`` splits its time: the sweep phase is the queue filled
    to every result in plus the refit of the best configuration; the
    session's start is reported apart.
(b) A plain sequential loop: ``cross_val_score`` for each configuration,
    then the best refit on the whole dataset.
(c) ``GridSearchCV(n_jobs=2, refit=True)``.
    (a) and (c) also report their fits' own time, every ``estimator.fit`` summed
    (GridSearchCV's from ``cv_results_["mean_fit_time"]`` times the folds): the same
    fits timed the same way, so a gap there is in how fast the fits ran (the
    machine, the workers), not in how they were handed out.
(d) ``sweep.py --sampler tpe --trials N`` over the grid's values, against
(e) Optuna's own parallelism, ``study.optimize(objective, n_trials=N,
    n_jobs=2)`` with the same sampler (TPE, seed 0, ``constant_liar``), the
    objective the mean 5-fold score (``cross_val_score``). TPE's proposals
    depend on the order results arrive, so the two find comparable, not
    equal, scores: both best scores are reported. Nor do they train the same
    configurations: 24 trials of 50 to 400 trees cost anywhere from about 25
    to 75 seconds of fits, which decides (d)/(e) more than either's way of
    running them. So each side's fits' own time is reported (summed over
    its trials, ``fit_seconds``), and
(f) Optuna replays (d)'s trials: the same configurations, enqueued in (d)'s
    order (``study.enqueue_trial``), run with ``n_jobs=2``, right after (d)
    in each round: the same work both ways, so the same scores (checked),
    and the ratio that says which way runs it faster.

All three use the same estimator (``GradientBoostingClassifier``,
``random_state=0``, single-threaded), the same ``StratifiedKFold`` (5 folds,
shuffled, ``random_state=0``) and the same scorer, so they must agree on
every mean score and on the best configuration: checked and reported. Each
fit takes hundreds of milliseconds to a few seconds, so the ~5 s session
start is a small share of the example's time.

Goals: (a) at least 1.7x faster than (b), and at most (c)'s time (issue 22);
(d) at most (e)'s time, and at most (f)'s on the same trials.
Both ratios are given end to end and for the sweep phase alone. A Rich
table is printed and everything goes to ``benchmarks/results/hyperopt.json``.
The machine is shared: its load average is recorded alongside.

Usage: ``python benchmarks/sweep_vs_gridsearch.py [--rounds N] [--quick] [--tpe-trials N]
[--only grid|tpe|pair]``: N rounds (default 1), each running the ways in a rotating
order, medians reported; ``--quick``: a small grid, a smoke run, goals not
meaningful; ``--only``: the grid ways or the TPE ways alone, or ``pair``: the
sweep and ``GridSearchCV`` alone, without the minutes of the sequential loop, so
that several rounds alternate the two (each round's ratio is reported too).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import (
    REPO,
    RESULTS_DIR,
    RUN_MARK,
    Json,
    check_leftovers,
    emit,
    installed_bytecode,
    machine,
    mark_run,
    progress,
    spawn_child,
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
from sklearn.model_selection import ParameterGrid  # noqa: E402

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
SPEEDUP_GOAL, GRIDSEARCH_GOAL, OPTUNA_GOAL = 1.7, 1.0, 1.0
TPE_TRIALS, QUICK_TPE_TRIALS = 24, 4
CHILD_TIMEOUT_S = 1800.0  # the sequential loop alone takes minutes


def run_example(grid: dict[str, list[Any]], *extra: str) -> Json:
    """(a): the example as a fresh process; its wall time, timings and scores.

    The process and everything it starts carry a mark of their own: once it
    has exited, none of them may be left (those left are killed by pid and
    named). This process's own children (GridSearchCV's loky workers) are
    not marked.
    """
    mark = uuid.uuid4().hex
    with tempfile.TemporaryDirectory(prefix="bench-hyperopt-") as tmp:
        result = _run_example(grid, Path(tmp), {**os.environ, RUN_MARK: mark}, extra)
    result["leftovers"] = check_leftovers(mark)
    return result


def _run_example(
    grid: dict[str, list[Any]], workdir: Path, env: dict[str, str], extra: tuple[str, ...]
) -> Json:
    space = workdir / "space.json"
    space.write_text(json.dumps(grid))
    argv = [sys.executable, str(EXAMPLE / "sweep.py"), "--space", str(space), "--study", "bench"]
    argv += ["--workers", str(WORKERS), "--cpu", "1", "--folds", str(FOLDS)]
    argv += ["--scoring", SCORING, "--runs-dir", str(workdir / "runs"), *extra]
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
    trials = _study_trials(study)
    means = {trial["config_id"]: trial["mean"] for trial in trials}
    return {
        "wall_s": wall,
        "timings": timings,
        "means": means,
        "best_score": max(means.values()),
        "trials": [trial["params"] for trial in trials],
        "fits_s": sum(trial["fit_s"] for trial in trials),
    }


def _study_trials(study: Path) -> list[Json]:
    """The study's finished trials in their numbers' order: id, params, mean, fits' time."""
    import sqlite3

    with sqlite3.connect(study / "study.sqlite") as db:
        rows = db.execute(
            "SELECT config_id, params, mean_score, fit_seconds FROM trials"
            " WHERE status='done' ORDER BY number"
        ).fetchall()
    return [
        {"config_id": key, "params": json.loads(params), "mean": mean, "fit_s": fit_s}
        for key, params, mean, fit_s in rows
    ]


def in_child(mode: str, *args: Any) -> Json:
    """Run a way in a fresh interpreter (``--child``); its wall time from start to exit."""
    started = time.perf_counter()
    result = spawn_child(__file__, mode, json.dumps(args), timeout_s=CHILD_TIMEOUT_S)
    result["wall_s"] = time.perf_counter() - started
    return result


def run_sequential(grid: dict[str, list[Any]]) -> Json:
    return in_child("sequential", grid)


def run_gridsearch(grid: dict[str, list[Any]]) -> Json:
    return in_child("gridsearch", grid)


def run_example_tpe(grid: dict[str, list[Any]], trials: int) -> Json:
    return run_example(grid, "--sampler", "tpe", "--trials", str(trials))


def run_optuna(grid: dict[str, list[Any]], trials: int) -> Json:
    return in_child("optuna", grid, trials)


def run_optuna_replay(grid: dict[str, list[Any]], trials: list[dict[str, Any]]) -> Json:
    return in_child("optuna_replay", grid, len(trials), trials)


def sequential(grid: dict[str, list[Any]]) -> Json:
    """(b): one configuration after the other, then the best refit."""
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
    return {"fit_s": time.perf_counter() - started, "means": means, "best": best[1]}


def gridsearch(grid: dict[str, list[Any]]) -> Json:
    """(c): GridSearchCV(n_jobs=2), refit on."""
    from sklearn.model_selection import GridSearchCV

    spec = get_model(MODEL)
    features, labels = load_dataset(spec.dataset)
    started = time.perf_counter()
    search = GridSearchCV(
        spec.factory(), grid, cv=make_cv(FOLDS), scoring=SCORING, n_jobs=WORKERS, refit=True
    ).fit(features, labels)
    fit_s = time.perf_counter() - started
    results = search.cv_results_
    means = {
        config_id(MODEL, params): float(mean)
        for params, mean in zip(results["params"], results["mean_test_score"], strict=True)
    }
    # each fit's ``estimator.fit`` time, as the sweep's workers time theirs (trainer.py)
    fits_s = float(sum(results["mean_fit_time"])) * FOLDS
    return {"fit_s": fit_s, "fits_s": fits_s, "means": means, "best": search.best_params_}


def optuna_n_jobs(
    grid: dict[str, list[Any]], trials: int, replay: list[dict[str, Any]] | None = None
) -> Json:
    """(e): Optuna's TPE with its own ``n_jobs=2`` (threads), then the best refit.

    ``replay``: (f), these configurations enqueued first, in order (the
    sampler proposes none of its own while enqueued ones are left).
    """
    import numpy as np
    import optuna
    from sklearn.model_selection import cross_validate

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = get_model(MODEL)
    features, labels = load_dataset(spec.dataset)
    fits_s: list[float] = []

    def objective(trial: Any) -> float:
        params = {name: trial.suggest_categorical(name, values) for name, values in grid.items()}
        scores = cross_validate(
            spec.build(params), features, labels, cv=make_cv(FOLDS), scoring=SCORING
        )
        fits_s.append(float(np.sum(scores["fit_time"])))  # (list.append: thread-safe)
        return float(np.mean(scores["test_score"]))

    started = time.perf_counter()
    sampler = optuna.samplers.TPESampler(seed=0, constant_liar=True)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for params in replay or ():
        study.enqueue_trial(params)
    study.optimize(objective, n_trials=trials, n_jobs=WORKERS)
    spec.build(study.best_params).fit(features, labels)
    means = {config_id(MODEL, t.params): t.value for t in study.trials if t.value is not None}
    return {
        "fit_s": time.perf_counter() - started,
        "best_score": study.best_value,
        "fits_s": sum(fits_s),
        "means": means,
    }


def agreement(example: Json, sequential: Json | None, gridsearch: Json) -> Json:
    """Largest difference between the sets of mean scores; same best? (no sequential: pair)"""
    reference = gridsearch["means"]
    others = [example] if sequential is None else [example, sequential]
    diffs = [
        abs(other["means"][key] - value) for other in others for key, value in reference.items()
    ]
    example_best = max(example["means"].items(), key=lambda kv: kv[1])[1]
    # None when the sequential loop did not run (pair): nothing was compared
    sequential_best = None if sequential is None else sequential["best"] == gridsearch["best"]
    return {
        "configurations": len(reference),
        "max_abs_mean_diff": max(diffs),
        "same_keys": all(set(other["means"]) == set(reference) for other in others),
        "best_score_equal": abs(example_best - max(reference.values())) <= 1e-12,
        "sequential_best_equal": sequential_best,
    }


def _mean_diff(ours: dict[str, float], theirs: dict[str, float]) -> float:
    """Largest difference between two runs' mean scores (inf when their trials differ)."""
    if set(ours) != set(theirs):
        return float("inf")
    return max(abs(ours[key] - theirs[key]) for key in ours)


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def summarize(runs: dict[str, list[Json]]) -> Json:
    """Medians over the rounds and their ratios, end to end and for the fit phase."""

    def wall(way: str) -> float:
        return _median([r["wall_s"] for r in runs[way]])

    def phase(way: str) -> float:
        if way.startswith("example"):
            timings = [r["timings"] for r in runs[way]]
            return _median([t["sweep_s"] + t.get("refit_s", 0.0) for t in timings])
        return _median([r["fit_s"] for r in runs[way]])

    summary: Json = {}
    if runs.get("example"):
        summary |= _grid_summary(runs, wall, phase)
    if runs.get("optuna_replay"):
        summary |= {
            "optuna_replay_s": wall("optuna_replay"),
            "optuna_replay_fit_s": phase("optuna_replay"),
            "ratio_to_optuna_replay_end_to_end": wall("example_tpe") / wall("optuna_replay"),
            "ratio_to_optuna_replay_fit_phase": phase("example_tpe") / phase("optuna_replay"),
            "example_tpe_fits_s": _median([r["fits_s"] for r in runs["example_tpe"]]),
            "optuna_fits_s": _median([r["fits_s"] for r in runs["optuna"]]),
            "optuna_replay_fits_s": _median([r["fits_s"] for r in runs["optuna_replay"]]),
            "replay_max_abs_mean_diff": max(
                _mean_diff(r["means"], replayed["means"])
                for r, replayed in zip(runs["example_tpe"], runs["optuna_replay"], strict=True)
            ),
        }
    if runs.get("optuna"):
        summary |= {
            "example_tpe_end_to_end_s": wall("example_tpe"),
            "example_tpe_sweep_phase_s": phase("example_tpe"),
            "optuna_n_jobs_2_s": wall("optuna"),
            "optuna_fit_s": phase("optuna"),
            "ratio_to_optuna_end_to_end": wall("example_tpe") / wall("optuna"),
            "ratio_to_optuna_fit_phase": phase("example_tpe") / phase("optuna"),
            "example_tpe_best_score": _median([r["best_score"] for r in runs["example_tpe"]]),
            "optuna_best_score": _median([r["best_score"] for r in runs["optuna"]]),
        }
    return summary


def _grid_summary(
    runs: dict[str, list[Json]], wall: Callable[[str], float], phase: Callable[[str], float]
) -> Json:
    grid = wall("gridsearch")
    summary: Json = {
        "example_end_to_end_s": wall("example"),
        "example_session_start_s": _median(
            [r["timings"].get("session_start_s", 0.0) for r in runs["example"]]
        ),
        "example_sweep_phase_s": phase("example"),
        "gridsearch_n_jobs_2_s": grid,
        "gridsearch_fit_s": phase("gridsearch"),
        "ratio_to_gridsearch_end_to_end": wall("example") / grid,
        "ratio_to_gridsearch_fit_phase": phase("example") / phase("gridsearch"),
        # the fits' own time, all workers together: the same fits, timed the same way
        "example_fits_s": _median([r["fits_s"] for r in runs["example"]]),
        "gridsearch_fits_s": _median([r["fits_s"] for r in runs["gridsearch"]]),
        "pairs": [  # each round's sweep over its GridSearchCV, end to end (order alternates)
            ours["wall_s"] / theirs["wall_s"]
            for ours, theirs in zip(runs["example"], runs["gridsearch"], strict=True)
        ],
    }
    if runs.get("sequential"):
        seq = wall("sequential")
        summary |= {
            "sequential_s": seq,
            "sequential_fit_s": phase("sequential"),
            "speedup_vs_sequential_end_to_end": seq / wall("example"),
            "gridsearch_speedup_vs_sequential": seq / grid,
        }
    return summary


def print_table(
    summary: Json, agree: Json | None, grid: dict[str, list[Any]], console: Console
) -> None:
    configurations = len(ParameterGrid(grid))
    table = Table(title=f"hyperopt: {configurations} configurations x {FOLDS} folds")
    for column in ("run", "end to end", "fit phase", "fits' own time", "/ peer", "goal"):
        table.add_column(column, justify="left" if column == "run" else "right")
    if "example_end_to_end_s" in summary:
        _grid_rows(table, summary)
    if "optuna_n_jobs_2_s" in summary:
        _tpe_rows(table, summary)
    console.print(table)
    goals = []
    if agree is not None:
        speedup = (
            f">= {SPEEDUP_GOAL}x faster than sequential and " if "sequential_s" in summary else ""
        )
        pairs = ", ".join(f"{ratio:.3f}" for ratio in summary["pairs"])
        goals.append(
            f"{speedup}<= {GRIDSEARCH_GOAL}x GridSearchCV's time end to end (the rounds: {pairs};"
            f" grid scores agree: max |mean diff|"
            f" {agree['max_abs_mean_diff']:.1e}, best equal:"
            f" {agree['best_score_equal'] and agree['sequential_best_equal'] is not False})"
        )
    if "optuna_replay_s" in summary:
        goals.append(
            f"TPE <= {OPTUNA_GOAL}x Optuna's, on the same trials (scores agree: max |mean diff|"
            f" {summary['replay_max_abs_mean_diff']:.1e})"
        )
    console.print("goals: " + "; ".join(goals), markup=False, soft_wrap=True)


def _grid_rows(table: Table, summary: Json) -> None:
    seq, grid = summary.get("sequential_s"), summary["gridsearch_n_jobs_2_s"]
    ratio = summary["ratio_to_gridsearch_end_to_end"]
    goal = ratio <= GRIDSEARCH_GOAL
    if seq is not None:
        goal = goal and seq / summary["example_end_to_end_s"] >= SPEEDUP_GOAL
    table.add_row(
        "sweep.py (grid), 2 workers",
        f"{summary['example_end_to_end_s']:.1f} s",
        f"{summary['example_sweep_phase_s']:.1f} s",
        f"{summary['example_fits_s']:.1f} s",
        f"{ratio:.2f}",
        verdict(goal),
    )
    start = summary["example_session_start_s"] or 0.0
    table.add_row("  of which session start", f"{start:.1f} s", "", "", "", "")
    table.add_row("GridSearchCV(n_jobs=2)", f"{grid:.1f} s", f"{summary['gridsearch_fit_s']:.1f} s",
                  f"{summary['gridsearch_fits_s']:.1f} s", "1.00", "")  # fmt: skip
    if seq is not None:
        table.add_row("sequential loop", f"{seq:.1f} s", f"{summary['sequential_fit_s']:.1f} s",
                      "", f"{seq / grid:.2f}", "")  # fmt: skip


def _tpe_rows(table: Table, summary: Json) -> None:
    tpe_ratio = summary["ratio_to_optuna_end_to_end"]
    table.add_row(
        f"sweep.py --sampler tpe (best {summary['example_tpe_best_score']:.4f})",
        f"{summary['example_tpe_end_to_end_s']:.1f} s",
        f"{summary['example_tpe_sweep_phase_s']:.1f} s",
        f"{summary.get('example_tpe_fits_s', 0.0):.1f} s",
        f"{tpe_ratio:.2f}",
        verdict(tpe_ratio <= OPTUNA_GOAL),
    )
    table.add_row(
        f"Optuna n_jobs=2, its own trials (best {summary['optuna_best_score']:.4f})",
        f"{summary['optuna_n_jobs_2_s']:.1f} s",
        f"{summary['optuna_fit_s']:.1f} s",
        f"{summary.get('optuna_fits_s', 0.0):.1f} s",
        "1.00",
        "",
    )
    if "optuna_replay_s" in summary:
        replay_ratio = summary["ratio_to_optuna_replay_end_to_end"]
        table.add_row(
            "Optuna n_jobs=2, the sweep's trials",
            f"{summary['optuna_replay_s']:.1f} s",
            f"{summary['optuna_replay_fit_s']:.1f} s",
            f"{summary['optuna_replay_fits_s']:.1f} s",
            f"sweep / this: {replay_ratio:.2f}",
            verdict(replay_ratio <= OPTUNA_GOAL),
        )


def measure(grid: dict[str, list[Any]], rounds: int, tpe_trials: int, only: str | None) -> Json:
    """Each way once per round, the order rotating between rounds (the machine drifts).

    (f) runs right after (d), on the trials (d) trained in that round.
    """
    ways: dict[str, Callable[[], Json]] = {}
    if only != "tpe":
        ways["example"] = lambda: run_example(grid)
        ways["gridsearch"] = lambda: run_gridsearch(grid)
        if only != "pair":
            ways["sequential"] = lambda: run_sequential(grid)
    if tpe_trials and only not in ("grid", "pair"):
        ways["example_tpe"] = lambda: run_example_tpe(grid, tpe_trials)
        ways["optuna"] = lambda: run_optuna(grid, tpe_trials)
    runs: dict[str, list[Json]] = {name: [] for name in ways}
    left: list[str] = []
    names = list(ways)
    for index in range(rounds):
        for name in names[index % len(names) :] + names[: index % len(names)]:
            left += _run_way(runs, name, ways[name], index, rounds)
            if name == "example_tpe":
                replay = functools.partial(run_optuna_replay, grid, runs[name][-1]["trials"])
                left += _run_way(runs, "optuna_replay", replay, index, rounds)
    return {"runs": runs, "leftovers": left}


def _run_way(
    runs: dict[str, list[Json]], name: str, way: Callable[[], Json], index: int, rounds: int
) -> list[str]:
    """Run one way once, into ``runs``; the processes it left."""
    progress(f"round {index + 1}/{rounds}: {name} ...")
    load = os.getloadavg()[0]
    result = way()
    result["loadavg_1min"] = [load, os.getloadavg()[0]]
    runs.setdefault(name, []).append(result)
    left: list[str] = result.pop("leftovers", [])
    return left


CHILDREN: dict[str, Callable[..., Json]] = {
    "sequential": sequential,
    "gridsearch": gridsearch,
    "optuna": optuna_n_jobs,
    "optuna_replay": optuna_n_jobs,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small grid (smoke run)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds, medians reported (1)")
    tpe_help = f"TPE trials, 0 for none ({TPE_TRIALS}; quick {QUICK_TPE_TRIALS})"
    parser.add_argument("--tpe-trials", type=int, default=None, help=tpe_help)
    only_help = (
        "the grid ways, the TPE ways, or the sweep and GridSearchCV alone (pair: no sequential"
        " loop, so rounds are short enough to alternate them) (results in hyperopt-ONLY.json)"
    )
    parser.add_argument("--only", choices=("grid", "tpe", "pair"), default=None, help=only_help)
    parser.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, arguments = args.child
        emit(CHILDREN[mode](*json.loads(arguments)))
        return 0
    mark_run()
    bytecode = installed_bytecode()
    grid = QUICK_GRID if args.quick else GRID
    tpe_trials = args.tpe_trials
    if tpe_trials is None:
        tpe_trials = QUICK_TPE_TRIALS if args.quick else TPE_TRIALS
    console = table_console(110)
    measured = measure(grid, max(1, args.rounds), tpe_trials, args.only)
    runs = measured["runs"]
    summary = summarize(runs)
    agree = None
    if runs.get("example"):
        sequential = runs["sequential"][0] if runs.get("sequential") else None
        agree = agreement(runs["example"][0], sequential, runs["gridsearch"][0])
    print_table(summary, agree, grid, console)
    for records in runs.values():  # keep the JSON small: scores were compared above
        for record in records:
            record.pop("means", None)
            record.pop("trials", None)
    path = RESULTS_PATH.with_stem(f"hyperopt-{args.only}") if args.only else RESULTS_PATH
    write_json(path, {
        "grid": grid, "model": MODEL, "folds": FOLDS, "workers": WORKERS,
        "quick": args.quick, "rounds": args.rounds, "tpe_trials": tpe_trials,
        "machine": machine(), "bytecode": bytecode, "summary": summary, "agreement": agree,
        "runs": runs,
        "goals": {"speedup_vs_sequential": SPEEDUP_GOAL, "ratio_to_gridsearch": GRIDSEARCH_GOAL,
                  "ratio_to_optuna": OPTUNA_GOAL},
        "leftover_processes": measured["leftovers"],
    })  # fmt: skip
    left = measured["leftovers"]
    console.print(f"results: {path.relative_to(REPO)}; processes left: {len(left)}")
    agreed = (agree is None or agree["max_abs_mean_diff"] <= 1e-12) and summary.get(
        "replay_max_abs_mean_diff", 0.0
    ) <= 1e-12
    return 0 if not left and agreed else 1


if __name__ == "__main__":
    sys.exit(main())
