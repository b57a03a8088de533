"""Benchmark: GridSearchCV(n_jobs=2) on joblib's backends loky, cmlray, Ray's and Dask's.

The sweep's default grid (``examples/hyperopt``: GradientBoostingClassifier
on breast_cancer, 36 configurations, 5 stratified folds, accuracy: 180
fits), each backend in a fresh child process, backends taking turns, medians
over rounds. Two windows per backend, both timed in the child:

- **end to end**: from before the backend exists (``cmlray.init``,
  ``ray.init`` + ``register_ray()``, Dask's ``LocalCluster``; loky starts its
  workers on first use) to the fitted search, what a script waits for;
- **fit**: ``GridSearchCV.fit`` alone, the backend already up.

The machine's speed drifts between children (the fits' own summed time,
from ``cv_results_``, varied by up to 30% between runs of one backend), so
each fit window is also given over its ideal: the fits' own time split over
the 2 workers. That ratio is what a backend adds, whatever the machine did.

Every backend must give the same ``cv_results_`` mean scores as loky
(checked; the run fails otherwise). A table is printed; everything goes to
``benchmarks/results/gridsearch_backends.json``.

Usage: ``python benchmarks/gridsearch_backends.py [--rounds N] [--quick] [--backends A,B]``
(default 3 rounds of all four; ``--quick``: 1 round of a 4-configuration grid;
``--backends loky,cmlray``: only those, e.g. more rounds of the pair whose
ratio is a goal, as the machine's drift between children is of its size).
The results go to ``gridsearch_backends.json``, or ``gridsearch_backends-A-B.json``
for a subset.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import _common as common
from _common import Json

sys.path.insert(0, str(common.REPO / "examples" / "hyperopt"))

from estimators import get_model, load_dataset, make_cv

BACKENDS = ("loky", "cmlray", "ray", "dask")
WORKERS, NUM_CPUS, FOLDS = 2, 2, 5
QUICK_GRID = {"n_estimators": [50, 100], "max_depth": [2, 3]}
RESULTS_PATH = common.RESULTS_DIR / "gridsearch_backends.json"


@contextlib.contextmanager
def backend(name: str) -> Iterator[None]:
    """The joblib backend ``name``, started as its users start it."""
    import joblib

    if name == "loky":
        with joblib.parallel_backend("loky", n_jobs=WORKERS):
            yield
    elif name == "cmlray":
        import cmlray
        import cmlray.joblib  # registers "cmlray"

        cmlray.init(num_cpus=NUM_CPUS, console=common.quiet_console())
        try:
            with joblib.parallel_backend("cmlray", n_jobs=WORKERS, cpu=1, memory=1):
                yield
        finally:
            cmlray.shutdown()
    elif name == "ray":
        with common.ray_session(NUM_CPUS):  # (token auth set before Ray is imported)
            from ray.util.joblib import register_ray

            register_ray()
            with joblib.parallel_backend("ray", n_jobs=WORKERS):
                yield
    else:
        with common.dask_client(WORKERS), joblib.parallel_backend("dask", n_jobs=WORKERS):
            yield


def child(name: str, quick: bool) -> Json:
    from sklearn.model_selection import GridSearchCV

    spec = get_model("gradient_boosting")
    grid: dict[str, Any] = QUICK_GRID if quick else spec.space
    features, labels = load_dataset(spec.dataset)
    began = time.perf_counter()
    with backend(name):
        search = GridSearchCV(spec.factory(), grid, cv=make_cv(FOLDS), n_jobs=WORKERS)
        fit_began = time.perf_counter()
        search.fit(features, labels)
        fit_s = time.perf_counter() - fit_began
    end_to_end_s = time.perf_counter() - began
    results = search.cv_results_
    means = [float(m) for m in results["mean_test_score"]]
    # the fits' and scorings' own time, summed over every (configuration, fold)
    busy_s = float(sum(results["mean_fit_time"]) + sum(results["mean_score_time"])) * FOLDS
    return {
        "backend": name, "end_to_end_s": end_to_end_s, "fit_s": fit_s, "means": means,
        "busy_s": busy_s,
    }  # fmt: skip


def measure(rounds: int, quick: bool, backends: Sequence[str], children: list[Json]) -> None:
    for index in range(rounds):
        for name in common.in_turns(index, backends):
            result = common.spawn_child(__file__, f"{name}:{int(quick)}", timeout_s=1200)
            children.append(result)
            common.progress(
                f"round {index + 1} {name}: {result['end_to_end_s']:.1f} s end to end,"
                f" fit {result['fit_s']:.1f} s"
            )


def summarize(children: Sequence[Json], backends: Sequence[str]) -> Json:
    reference = next(c["means"] for c in children if c["backend"] == "loky")
    disagree = [c["backend"] for c in children if c["means"] != reference]
    if disagree:
        raise RuntimeError(f"scores differ from loky's on: {sorted(set(disagree))}")
    table = {}
    for name in backends:
        runs = [c for c in children if c["backend"] == name]
        table[name] = {
            "end_to_end_s": statistics.median(c["end_to_end_s"] for c in runs),
            "fit_s": statistics.median(c["fit_s"] for c in runs),
            # the fit window over the ideal split of its own work on the workers:
            # robust to the machine running faster or slower between children
            "overhead": statistics.median(c["fit_s"] / (c["busy_s"] / WORKERS) for c in runs),
        }
    loky = table["loky"]
    return {
        "table": table,
        "configurations": len(reference),
        "cmlray_vs_loky_end_to_end": table["cmlray"]["end_to_end_s"] / loky["end_to_end_s"],
        "cmlray_vs_loky_fit": table["cmlray"]["fit_s"] / loky["fit_s"],
        "cmlray_vs_loky_overhead": table["cmlray"]["overhead"] / loky["overhead"],
    }


def print_table(summary: Json, backends: Sequence[str]) -> None:
    from rich.table import Table

    title = f"GridSearchCV(n_jobs=2), {summary['configurations']} configurations x {FOLDS} folds"
    table = Table(title=title)
    for column in ("backend", "end to end", "/ loky", "fit", "/ loky ", "fit / its fits' time"):
        table.add_column(column, justify="left" if column == "backend" else "right")
    loky = summary["table"]["loky"]
    for name in backends:
        row = summary["table"][name]
        table.add_row(name, f"{row['end_to_end_s']:.1f} s",
                      f"{row['end_to_end_s'] / loky['end_to_end_s']:.2f}",
                      f"{row['fit_s']:.1f} s", f"{row['fit_s'] / loky['fit_s']:.2f}",
                      f"{row['overhead']:.3f}")  # fmt: skip
    common.table_console(100).print(table)
    print("same mean scores on every backend: yes")


def main(argv: Sequence[str] | None = None) -> int:
    parser = common.rounds_parser(__doc__, "1 round, a small grid")
    parser.add_argument(
        "--backends", default=",".join(BACKENDS), help="comma-separated, loky and cmlray among them"
    )
    args = common.checked_args(parser, argv)
    if args.child:
        name, quick = args.child.split(":")
        common.emit(child(name, quick == "1"))
        return 0
    asked = args.backends.split(",")
    backends = [name for name in BACKENDS if name in asked]
    if not {"loky", "cmlray"} <= set(backends) or len(backends) != len(asked):
        parser.error(f"--backends: expected some of {', '.join(BACKENDS)}, with loky and cmlray")
    rounds = common.rounds_of(args)
    children: list[Json] = []

    def report() -> Json:
        summary = summarize(children, backends)
        print_table(summary, backends)
        return summary

    subset = "" if len(backends) == len(BACKENDS) else "-" + "-".join(backends)
    return common.run_parent(
        lambda: measure(rounds, args.quick, backends, children),
        report,
        plan={"rounds": rounds, "quick": args.quick, "backends": backends},
        children=children,
        results_path=RESULTS_PATH.with_name(f"{RESULTS_PATH.stem}{subset}.json"),
    )


if __name__ == "__main__":
    sys.exit(main())
