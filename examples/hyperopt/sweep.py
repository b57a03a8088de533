"""A hyperparameter sweep on cmlray workers: grid, random or Optuna TPE.

The session checks its input first (``plan.py``), builds a study, puts each
(configuration, fold) fit on a cmlray queue, launches workers that train
fits from it (``trainer.py``), and shows a live view while results come in.
Workers send each fold's fitted estimator home; once a configuration's folds
are all in (``folds.py``) the session writes its scores and its row in the
study's SQLite file, under ``runs/<study>/``, and the best configuration's
refit runs beside the last fits (``refitahead.py``). Running the same study
again does only what is missing; Ctrl-C stops the workers, keeps every
finished result and prints the command that resumes.

Usage::

    python examples/hyperopt/sweep.py                        # 36 configurations, 2 workers
    python examples/hyperopt/sweep.py --sampler tpe --trials 40 --workers 4
    python examples/hyperopt/sweep.py --model svc --space my_space.toml

Exit codes: 0 done, 1 some configurations failed, 2 bad input (nothing
launched), 130 interrupted.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cmlray.errors import InfeasibleRequestError, QueueError
from rich.console import Console
from rich.text import Text

from estimators import UsageError
from folds import FoldResults, fold_tasks
from liveview import SweepView, leaderboard
from plan import DEFAULT_TRIALS, Plan, build_parser, prepare
from refitahead import RELEASE_PENDING, RefitAhead
from samplers import FixedPlan, Proposal, TpeSearch
from searchspace import config_id, describe, grid, sample
from studydb import BEST_MODEL, StudyStore, Trial, refit_snapshot, trial_dir, write_atomically
from trainer import QUEUE_ENV, best_model_bytes

EXAMPLE_DIR = Path(__file__).resolve().parent
TRAINER = EXAMPLE_DIR / "trainer.py"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class SweepError(Exception):
    """The sweep cannot go on (every worker ended with work left): exit code 1."""


@dataclass
class Summary:
    """How a run went; ``exit_code`` is the command's."""

    study_dir: Path
    total: int
    done: int
    ran: int = 0
    failed: int = 0
    adopted: int = 0
    workers: int = 0
    interrupted: bool = False
    best: Trial | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_FAILED if self.failed else EXIT_OK


# ---------------------------------------------------------------- the sweep


def _fixed_plan(plan: Plan, done: set[str]) -> FixedPlan:
    """Grid or random sample minus what is done, the costliest first."""
    if plan.sampler == "grid":
        configs = grid(plan.space)
    else:
        configs = sample(plan.space, plan.trials or DEFAULT_TRIALS, plan.seed)
    proposals = [Proposal(number, params) for number, params in enumerate(configs)]
    pending = [p for p in proposals if config_id(plan.model.name, p.params) not in done]
    pending.sort(key=lambda p: -plan.model.cost(p.params))  # stable: ties keep their order
    return FixedPlan(pending, total=len(proposals))


def make_search(plan: Plan, store: StudyStore) -> FixedPlan | TpeSearch:
    """The sampler, knowing what the study has done already."""
    if plan.sampler == "tpe":
        return TpeSearch(plan.model.name, plan.space, plan.trials or 0, plan.seed, store.trials())
    return _fixed_plan(plan, store.done_ids())


def _study_fields(plan: Plan) -> dict[str, Any]:
    """What every queue item carries of the study."""
    fields = {"model": plan.model.name, "folds": plan.folds, "scoring": plan.scoring}
    return {**fields, "study_dir": str(plan.study_dir)}


def _tasks(plan: Plan, proposals: list[Proposal]) -> list[dict[str, Any]]:
    """Queue items, one per (configuration, fold): all ``trainer.train_fold`` needs."""
    items: list[dict[str, Any]] = []
    for proposal in proposals:
        base = {
            "config_id": config_id(plan.model.name, proposal.params),
            "number": proposal.number,
            "params": proposal.params,
            **_study_fields(plan),
        }
        items += fold_tasks(base, plan.folds)
    return items


def _results(queue: Any, worker_ids: list[str]) -> Iterator[Any]:
    """``queue.as_completed()``; a SweepError naming the workers' ends if it cannot go on.

    The queue itself notices when items are left that no live worker can
    serve (``QueueError``); the sweep names why its own workers ended.
    """
    try:
        yield from queue.as_completed()
    except QueueError as exc:
        raise SweepError(f"every worker ended with work left: {_ends(worker_ids)}") from exc


def _ends(worker_ids: list[str]) -> str:
    """How each of these workers ended: ``name: reason``, joined."""
    import cmlray

    ours = [w for w in cmlray.list_workers() if w["id"] in worker_ids]
    return "; ".join(f"{w['name']}: {w['reason']}" for w in ours)


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Ignore a second Ctrl-C while cleaning up after the first (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class Sweep:
    """One run of a study: what is pending, the queue, the workers, the records."""

    def __init__(self, plan: Plan, console: Console) -> None:
        self.plan = plan
        self.console = console
        self.store = StudyStore(plan.study_dir)
        self.store.create()
        self.store.save_meta(plan.protocol())
        self.adopted = self.store.adopt_orphans()
        self.search = make_search(plan, self.store)
        self.first = self.search.first(plan.workers)
        self.summary = Summary(plan.study_dir, total=self.search.total, done=0)
        self._workers: list[str] = []
        self._folds = FoldResults()
        self._seen: set[tuple[str, int]] = set()  # (config, fold) results taken in
        self._ahead = RefitAhead(plan.model, plan.folds, self._refit_held())
        self._reserved = self._closed = False

    def run(self) -> Summary:
        """Train what is pending (if anything), record it, refit the best; the summary."""
        started = time.perf_counter()
        if self.first:
            self._sweep()
        self.summary.timings["sweep_s"] = time.perf_counter() - started
        if not self.summary.interrupted:
            self._refit_best()
        self._finish()
        return self.summary

    def _sweep(self) -> None:
        import cmlray

        queue = cmlray.Queue(f"hyperopt-{self.plan.study}-{uuid.uuid4().hex[:8]}", max_attempts=2)
        finished = self.search.done
        with SweepView(self.console, self.plan.study, self.search.total, finished) as view:
            try:
                self._start(queue)
                self._collect(queue, view, finished)
            except KeyboardInterrupt:
                with _sigint_deferred():
                    self._interrupted(queue, view)
            except SweepError:
                with _sigint_deferred():
                    self._stop_workers()
                raise
        if not self.summary.interrupted:
            cmlray.await_workers(self._workers, timeout_seconds=60)

    def _refit_held(self) -> str | None:
        """The configuration ``best_model.joblib`` holds, if the study has one."""
        held = self.store.meta().get("best_config_id")
        return held if held and (self.plan.study_dir / BEST_MODEL).exists() else None

    def _put(self, queue: Any, proposals: list[Proposal]) -> None:
        items = _tasks(self.plan, proposals)
        if self.search.exhausted and not self._reserved:  # the last items that will come
            items = self._ahead.hold_back(items)
            self._reserved = True
        self._ahead.put(items)
        queue.put_many(items)

    def _close_when_due(self, queue: Any) -> None:
        """Close the queue once nothing more will be proposed, the reserve released first.

        The reserve goes in behind the leader's refit once at most
        ``RELEASE_PENDING`` fits wait in the queue (``refitahead.py``).
        """
        if self._closed or not self.search.exhausted:
            return
        if self._ahead.holding:
            if not self._ahead.near_dry() or queue.stats()["pending"] > RELEASE_PENDING:
                return
            leaders = self.store.trials(limit=1)
            leader = leaders[0] if leaders else None
            queue.put_many(self._ahead.release(leader, _study_fields(self.plan)))
        queue.close()
        self._closed = True

    def _start(self, queue: Any) -> None:
        import cmlray

        self._put(queue, self.first)
        self._close_when_due(queue)
        workers = cmlray.launch_workers(
            n=min(self.plan.workers, len(self.first)),
            cpu=self.plan.cpu,
            memory=self.plan.memory,
            script=str(TRAINER),
            env={QUEUE_ENV: queue.name},
            name="trainer",
        )
        self._workers = [w["id"] for w in workers]

    def _collect(self, queue: Any, view: SweepView, finished: int) -> None:
        for result in _results(queue, self._workers):
            settled, score = self._record(result)
            if settled:
                finished += 1
                proposal = Proposal(result.item["number"], result.item["params"])
                following = self.search.tell(proposal, score)
                if following:
                    self._put(queue, following)
            self._close_when_due(queue)
            if settled:
                view.update(finished, queue.stats(), self.store.trials(limit=5))

    def _record(self, result: Any) -> tuple[bool, float | None]:
        """Take in one item's result; once its configuration is settled, store its row.

        Returns (settled, mean score): settled is True for the result that
        completes or fails a configuration, the score None when it failed.
        """
        item = result.item
        if item.get("refit"):  # the leader's refit, done ahead (refitahead.py)
            if result.ok:
                side = refit_snapshot(self.plan.study_dir, item["config_id"])
                self._keep_best(item["config_id"], lambda target: os.replace(side, target))
                self.summary.timings["refit_ahead_s"] = float(result.result["fit_seconds"])
            return False, None
        self._ahead.finished(item)
        self._seen.add((item["config_id"], item["fold"]))
        if result.ok:
            row = self._folds.add_done(item, result.result)
            if row is None:
                return False, None
            self.summary.ran += 1
            scores = trial_dir(self.plan.study_dir, row["config_id"]) / "scores.json"
            scores.parent.mkdir(exist_ok=True)
            write_atomically(scores, json.dumps(row, indent=2).encode())  # then the row:
            self.store.record(row)  # killed in between, the next run adopts scores.json
            return True, float(row["mean_score"])
        if not self._folds.add_failed(item):
            return False, None
        self.summary.ran += 1
        self.summary.failed += 1
        row = {k: v for k, v in item.items() if k != "fold"}
        self.store.record({**row, "status": "failed", "error": result.error})
        tries = f"{result.attempts} attempt{'s' if result.attempts != 1 else ''}"
        where = f"#{item['number']} (fold {item['fold'] + 1})"
        self.console.print(Text(f"{where} failed ({tries}): {result.error}", style="red"))
        return True, None

    def _stop_workers(self) -> None:
        """Stop this sweep's workers (only them: the session may run others)."""
        import cmlray

        if self._workers:  # stop_workers() without ids would stop every worker of the session
            cmlray.stop_workers(*self._workers)

    def _interrupted(self, queue: Any, view: SweepView) -> None:
        """Ctrl-C: stop the workers, then keep everything that finished."""
        self.summary.interrupted = True
        view.note("interrupted: stopping the workers, keeping every finished result")
        self._stop_workers()
        for result in queue.results():
            key = (result.item["config_id"], result.item.get("fold"))
            if result.ok and key not in self._seen:
                self._record(result)
        self.adopted += self.store.adopt_orphans()

    def _refit_best(self) -> None:
        """The best configuration refit on the whole dataset, as GridSearchCV's refit=True."""
        trials = self.store.trials(limit=1)
        if not trials or self._refit_held() == trials[0].config_id:
            return
        started = time.perf_counter()
        best = trials[0]
        data, _ = best_model_bytes(self.plan.model, best.params)
        self._keep_best(best.config_id, lambda target: write_atomically(target, data))
        self.summary.timings["refit_s"] = time.perf_counter() - started

    def _keep_best(self, config_id: str, place: Callable[[Path], None]) -> None:
        """``place`` the best model's file, the study's note of whose it is never ahead of it.

        The note is cleared first and set after: a run killed in between
        leaves none, and the next run refits instead of trusting the file.
        """
        self.store.save_meta({"best_config_id": None})
        place(self.plan.study_dir / BEST_MODEL)
        self.store.save_meta({"best_config_id": config_id})

    def _finish(self) -> None:
        trials = self.store.trials()
        self.summary.done = len(trials)
        self.summary.best = trials[0] if trials else None
        self.summary.adopted = self.adopted
        self.summary.workers = len(self._workers)


def write_last_run(summary: Summary) -> None:
    """The run's counts and timings, for the user and for ``benchmarks/sweep_vs_gridsearch.py``."""
    last_run = {
        "ran": summary.ran,
        "failed": summary.failed,
        "adopted": summary.adopted,
        "interrupted": summary.interrupted,
        "workers": summary.workers,
        "timings": summary.timings,
    }
    (summary.study_dir / "last_run.json").write_text(json.dumps(last_run, indent=2))


# ---------------------------------------------------------------- reporting


def report(summary: Summary, plan: Plan, console: Console) -> None:
    """The final leaderboard, counts and timings, the best, where everything is."""
    trials = StudyStore(plan.study_dir).trials(limit=10)
    if trials:
        console.print(leaderboard(trials, title=f"study {plan.study}: top {len(trials)}"))
    counts = f"{summary.done}/{summary.total} configurations done {_counts(summary)}"
    console.print(counts, soft_wrap=True)
    if summary.best is not None:
        best = summary.best
        line = f"best: #{best.number} {best.mean_score:.4f} ± {best.std_score:.4f}"
        console.print(Text(f"{line}  {describe(best.params)}", style="bold green"))
    here = _shown(plan.study_dir)
    console.print(f"results: {here}/study.sqlite · snapshots: {here}/trials/", soft_wrap=True)
    if summary.interrupted:
        console.print(Text(f"interrupted: resume with\n  {plan.command}", style="yellow"))


def _counts(summary: Summary) -> str:
    if not (summary.ran or summary.interrupted):
        return f"({summary.adopted} recovered): the study is complete, nothing to train"
    t = summary.timings
    ran = f"{summary.ran} trained now, {summary.adopted} recovered, {summary.failed} failed"
    took = f"session start {t.get('session_start_s', 0):.1f} s, sweep {t['sweep_s']:.1f} s"
    return f"({ran}) in {t.get('total_s', 0):.1f} s ({took})"


def _shown(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path)


def run_cli(plan: Plan, console: Console) -> Summary:
    """Start a session only if something is pending, run, always shut it down."""
    import cmlray

    started = time.perf_counter()
    sweep = Sweep(plan, console)
    try:
        if sweep.first:
            cmlray.init(address=plan.address, console=console)
            sweep.summary.timings["session_start_s"] = time.perf_counter() - started
        summary = sweep.run()
    finally:
        with _sigint_deferred():
            cmlray.shutdown()
    summary.timings["total_s"] = time.perf_counter() - started
    write_last_run(summary)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, check (exit 2 on bad input), sweep, report."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(arguments)
    console = Console()
    try:
        plan = prepare(args, arguments)
    except UsageError as exc:
        print(f"sweep.py: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        summary = run_cli(plan, console)
    except InfeasibleRequestError as exc:  # --cpu/--memory larger than any node: nothing ran
        print(f"sweep.py: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SweepError as exc:
        console.print(Text(f"sweep.py: {exc}", style="bold red"))
        return EXIT_FAILED
    except KeyboardInterrupt:  # after the sweep (every result is already recorded)
        console.print(Text(f"interrupted: run again to finish\n  {plan.command}", style="yellow"))
        return EXIT_INTERRUPTED
    report(summary, plan, console)
    return summary.exit_code


if __name__ == "__main__":
    sys.exit(main())
