"""The hyperparameter sweep example (examples/hyperopt) through real cmlray workers.

Sweeps run in this module's session (4 CPUs; 2 workers of 1 CPU each) on
small, fast grids (SVC on digits, 3 folds), with every output under pytest's
temp dirs. Checked: the scores and the best configuration equal
scikit-learn's GridSearchCV; the SQLite file and snapshot layout; resuming
after partial state and after an interruption does only what is missing and
writes no duplicate row; Optuna's ask-and-tell keeps workers fed; bad input
exits 2 before anything starts.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("sklearn")

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "hyperopt"
sys.path.insert(0, str(EXAMPLE))

import joblib  # noqa: E402
import refitahead  # noqa: E402
import samplers  # noqa: E402
import searchspace  # noqa: E402
import sweep  # noqa: E402
from estimators import get_model, load_dataset, make_cv  # noqa: E402
from studydb import StudyStore, Trial  # noqa: E402

import cmlray  # noqa: E402
from cmlray._record import FINAL  # noqa: E402
from tests.support.console import Captured  # noqa: E402

# Ties on purpose: C=10 and C=100 score the same at gamma=0.001 (and at 'scale').
SVC_GRID = {"C": [1, 10, 100], "gamma": ["scale", 0.001]}
BIGGER_GRID = {"C": [0.5, 1, 2, 4], "gamma": ["scale", 0.0005, 0.001]}


def write_space(tmp_path: Path, space: dict[str, Any], name: str = "space.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(space))
    return str(path)


def make_plan(runs: Path, *args: str) -> sweep.Plan:
    argv = ["--model", "svc", "--folds", "3", "--runs-dir", str(runs), *args]
    return sweep.prepare(sweep.build_parser().parse_args(argv), argv)


def run_sweep(plan: sweep.Plan, captured: Captured) -> sweep.Summary:
    return sweep.Sweep(plan, captured.console).run()


def rows(study_dir: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(study_dir / "study.sqlite") as db:
        return db.execute("SELECT config_id, status, mean_score FROM trials").fetchall()


@pytest.fixture(scope="module")
def grid_study(
    session: str, captured: Captured, tmp_path_factory: pytest.TempPathFactory
) -> tuple[sweep.Plan, sweep.Summary]:
    """The SVC grid, swept once through 2 workers."""
    tmp = tmp_path_factory.mktemp("grid")
    plan = make_plan(tmp / "runs", "--space", write_space(tmp, SVC_GRID), "--study", "grid")
    return plan, run_sweep(plan, captured)


def test_grid_equals_gridsearchcv(grid_study: tuple[sweep.Plan, sweep.Summary]) -> None:
    from sklearn.model_selection import GridSearchCV

    plan, summary = grid_study
    assert (summary.ran, summary.failed, summary.done, summary.exit_code) == (6, 0, 6, 0)
    features, labels = load_dataset("digits")
    search = GridSearchCV(
        get_model("svc").factory(), SVC_GRID, cv=make_cv(3), scoring="accuracy", n_jobs=1
    ).fit(features, labels)
    by_id = {t.config_id: t for t in StudyStore(plan.study_dir).trials()}
    for index, params in enumerate(search.cv_results_["params"]):
        trial = by_id[searchspace.config_id("svc", params)]
        assert trial.number == index
        assert abs(trial.mean_score - search.cv_results_["mean_test_score"][index]) <= 1e-12
        assert abs(trial.std_score - search.cv_results_["std_test_score"][index]) <= 1e-12
        for fold, score in enumerate(trial.fold_scores or []):
            assert abs(score - search.cv_results_[f"split{fold}_test_score"][index]) <= 1e-12
    assert summary.best is not None
    assert summary.best.params == search.best_params_
    assert summary.best.number == search.best_index_


def test_sqlite_and_snapshot_layout(grid_study: tuple[sweep.Plan, sweep.Summary]) -> None:
    plan, summary = grid_study
    study = plan.study_dir
    assert study == plan.study_dir.parent / "grid" and (study / "study.sqlite").is_file()
    assert len(rows(study)) == 6 and {r[1] for r in rows(study)} == {"done"}
    meta = StudyStore(study).meta()
    assert meta["model"] == "svc" and meta["folds"] == 3 and meta["scoring"] == "accuracy"
    for trial in StudyStore(study).trials():
        where = study / "trials" / trial.config_id
        assert trial.snapshot == f"trials/{trial.config_id}"
        snapshots = sorted((study / trial.snapshot).glob("fold-*.joblib"))
        assert [p.name for p in snapshots] == [f"fold-{k}.joblib" for k in range(3)]
        for fold, path in enumerate(snapshots):
            snapshot = joblib.load(path)
            assert (snapshot["params"], snapshot["fold"]) == (trial.params, fold)
            assert hasattr(snapshot["estimator"], "support_vectors_")  # a fitted SVC
        scores = json.loads((where / "scores.json").read_text())
        assert (
            scores["mean_score"] == trial.mean_score and scores["fold_scores"] == trial.fold_scores
        )
        assert not list(where.glob(".*tmp*"))
    best = joblib.load(study / "best_model.joblib")
    assert summary.best is not None and best["params"] == summary.best.params
    features, labels = load_dataset("digits")
    assert best["estimator"].score(features, labels) > 0.9
    assert meta["best_config_id"] == summary.best.config_id


def test_rerun_of_a_complete_study_trains_nothing(
    grid_study: tuple[sweep.Plan, sweep.Summary], captured: Captured
) -> None:
    plan, _ = grid_study
    again = sweep.Sweep(plan, captured.console)
    assert again.first == []  # the CLI starts no session at all then
    summary = again.run()
    assert (summary.ran, summary.done, summary.exit_code) == (0, 6, 0)
    assert len(rows(plan.study_dir)) == 6


def test_resume_after_partial_state(
    grid_study: tuple[sweep.Plan, sweep.Summary], captured: Captured, tmp_path: Path
) -> None:
    plan, _ = grid_study
    runs = tmp_path / "runs"
    shutil.copytree(plan.study_dir, runs / "grid")
    before = {r[0]: r[2] for r in rows(runs / "grid")}
    lost, orphan = sorted(before)[:2], sorted(before)[2]
    with sqlite3.connect(runs / "grid" / "study.sqlite") as db:  # as if killed mid-run
        db.executemany("DELETE FROM trials WHERE config_id = ?", [(i,) for i in [*lost, orphan]])
    for config in lost:
        shutil.rmtree(runs / "grid" / "trials" / config)
    resumed = make_plan(runs, "--space", write_space(tmp_path, SVC_GRID), "--study", "grid")
    summary = run_sweep(resumed, captured)
    assert (summary.ran, summary.adopted, summary.done) == (2, 1, 6)
    after = rows(runs / "grid")
    assert len(after) == 6 and {r[0]: r[2] for r in after} == before


def test_interrupted_sweep_keeps_results_and_resumes(
    session: str, captured: Captured, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    space = write_space(tmp_path, BIGGER_GRID)
    plan = make_plan(tmp_path / "runs", "--space", space, "--study", "stop")
    real_update = sweep.SweepView.update

    def interrupt_at_second(self: sweep.SweepView, finished: int, *args: Any) -> None:
        real_update(self, finished, *args)
        if finished >= 2:
            raise KeyboardInterrupt  # what Ctrl-C raises in the session's main thread

    monkeypatch.setattr(sweep.SweepView, "update", interrupt_at_second)
    first = run_sweep(plan, captured)
    monkeypatch.undo()
    assert first.interrupted and first.exit_code == 130
    ours = [w for w in cmlray.list_workers() if w["name"].startswith("trainer")]
    assert all(w["status"] in FINAL for w in ours)
    kept = rows(plan.study_dir)
    assert 2 <= len(kept) <= 12 and {r[1] for r in kept} == {"done"}
    for config, _, _ in kept:
        assert len(list((plan.study_dir / "trials" / config).glob("fold-*.joblib"))) == 3
    second = run_sweep(make_plan(tmp_path / "runs", "--space", space, "--study", "stop"), captured)
    assert second.ran == 12 - len(kept) and not second.interrupted
    assert len(rows(plan.study_dir)) == 12 == len({r[0] for r in rows(plan.study_dir)})


def test_report_tells_how_to_resume(grid_study: tuple[sweep.Plan, sweep.Summary]) -> None:
    plan, _ = grid_study
    captured = Captured()
    interrupted = sweep.Summary(plan.study_dir, total=6, done=3, ran=3, interrupted=True)
    interrupted.timings = {"sweep_s": 1.0}
    sweep.report(interrupted, plan, captured.console)
    assert "resume with" in captured.text() and "--study grid" in captured.text()


def test_tpe_asks_as_workers_free_up_and_resumes(
    session: str, captured: Captured, tmp_path: Path
) -> None:
    pytest.importorskip("optuna")
    space = write_space(tmp_path, {"C": {"low": 0.5, "high": 50, "log": True}, "gamma": ["scale"]})
    plan = make_plan(tmp_path / "runs", "--space", space, "--sampler", "tpe", "--trials", "4")
    summary = run_sweep(plan, captured)
    assert (summary.ran, summary.done, summary.failed) == (4, 4, 0)
    done = StudyStore(plan.study_dir).trials()
    assert sorted(t.number for t in done) == [0, 1, 2, 3]
    # Resuming with --trials 6: the 4 done count toward the 6 and teach the sampler.
    resumed = samplers.TpeSearch("svc", plan.space, trials=6, seed=0, done=done)
    assert (resumed.done, resumed.total) == (4, 6)
    more = resumed.first(5)
    assert len(more) == 2 and resumed.exhausted
    assert [p.number for p in more] == [4, 5]
    known = {t.config_id for t in done}
    assert not {searchspace.config_id("svc", p.params) for p in more} & known


def test_tpe_search_keeps_one_trial_per_worker_in_flight() -> None:
    pytest.importorskip("optuna")
    space = searchspace.parse_space({"C": {"low": 0.1, "high": 10, "log": True}}, "test")
    search = samplers.TpeSearch("svc", space, trials=5, seed=0, done=[])
    first = search.first(2)
    assert len(first) == 2 and not search.exhausted
    following = search.tell(first[0], 0.9)
    assert len(following) == 1 and following[0].params != first[0].params
    search.tell(first[1], 0.8)
    search.tell(following[0], None)  # a failed trial is told as failed
    assert search.exhausted and search.total == 5


def _costing(plan: sweep.Plan, costly: dict[str, Any]) -> sweep.Plan:
    """``plan`` on one worker, ``costly``'s configuration 100 times the others' cost."""
    model = dataclasses.replace(plan.model, cost=lambda params: 100.0 if params == costly else 1.0)
    return dataclasses.replace(plan, model=model, workers=1)


def test_the_leaders_refit_runs_on_a_worker_while_fits_are_left(
    session: str, captured: Captured, tmp_path: Path
) -> None:
    """The costliest configuration goes first and leads; its refit is queued behind the rest."""
    best = {"C": 10, "gamma": 0.001}  # (C=100 ties with it: GridSearchCV's rule keeps this one)
    plan = make_plan(tmp_path / "runs", "--space", write_space(tmp_path, SVC_GRID))
    summary = run_sweep(_costing(plan, best), captured)
    assert summary.best is not None and summary.best.params == best
    assert "refit_ahead_s" in summary.timings and "refit_s" not in summary.timings  # none after
    model = joblib.load(plan.study_dir / "best_model.joblib")
    assert model["params"] == best and model["estimator"].get_params()["C"] == 10
    assert StudyStore(plan.study_dir).meta()["best_config_id"] == summary.best.config_id
    assert "refit on the whole dataset" in captured.text()


def test_a_leader_overtaken_after_its_refit_is_refit_after_the_sweep(
    session: str, captured: Captured, tmp_path: Path
) -> None:
    worst = {"C": 1, "gamma": 0.1}  # (gamma 0.1 on digits: a tenth right; the costliest here)
    space = write_space(tmp_path, {"C": [1, 10, 100], "gamma": [0.1, 0.001]})
    plan = make_plan(tmp_path / "runs", "--space", space)
    summary = run_sweep(_costing(plan, worst), captured)
    assert summary.best is not None and summary.best.params == {"C": 10, "gamma": 0.001}
    assert {"refit_ahead_s", "refit_s"} <= set(summary.timings)  # a leader's, then the best's
    model = joblib.load(plan.study_dir / "best_model.joblib")
    assert model["params"] == summary.best.params
    assert StudyStore(plan.study_dir).meta()["best_config_id"] == summary.best.config_id


def test_a_best_model_file_placed_halfway_is_refit_on_the_next_run(
    grid_study: tuple[sweep.Plan, sweep.Summary], captured: Captured, tmp_path: Path
) -> None:
    plan, _ = grid_study
    shutil.copytree(plan.study_dir, tmp_path / "runs" / "grid")
    copy = make_plan(
        tmp_path / "runs", "--space", write_space(tmp_path, SVC_GRID), "--study", "grid"
    )
    again = sweep.Sweep(copy, captured.console)

    def killed_halfway(target: Path) -> None:
        target.write_bytes(b"half a model")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        again._keep_best("whoever", killed_halfway)
    assert StudyStore(copy.study_dir).meta()["best_config_id"] is None  # the file is not trusted
    summary = sweep.Sweep(copy, captured.console).run()
    assert summary.ran == 0 and "refit_s" in summary.timings
    assert summary.best is not None
    assert joblib.load(copy.study_dir / "best_model.joblib")["params"] == summary.best.params


def _trial(config_id: str, params: dict[str, Any]) -> Trial:
    return Trial(config_id, 7, params, "done", 0.9, 0.0, [], None, None, None, None, "")


def test_the_reserve_is_the_cheapest_fits_and_goes_in_behind_the_leaders_refit() -> None:
    model = dataclasses.replace(get_model("svc"), cost=lambda params: float(params["c"]))
    items = [{"params": {"c": c}} for c in (40, 30, 20, 10, 10, 10, 10, 10)]
    ahead = refitahead.RefitAhead(model, folds=5, refit_of="held")
    head = ahead.hold_back(items)
    assert head == items[:4] and ahead.holding  # the reserve: 4 x 10 < 1.25 x 40, half of them
    ahead.put(head)
    assert ahead.outstanding == 100.0 and ahead.near_dry()  # 100 <= 4 x 40, the last put
    ahead.finished(items[0])
    assert ahead.outstanding == 60.0
    fields = {"study_dir": "/s"}
    released = ahead.release(_trial("a", {"c": 40}), fields)
    assert released == [
        {"study_dir": "/s", "refit": True, "config_id": "a", "number": 7, "params": {"c": 40}},
        *items[4:],
    ]
    assert not ahead.holding and ahead.outstanding == 100.0 and ahead.refit_of == "a"
    assert ahead.hold_back(items[:1]) == items[:1] and not ahead.holding  # one fit: none held


def test_no_refit_goes_ahead_when_nothing_leads_or_the_study_holds_it() -> None:
    model = dataclasses.replace(get_model("svc"), cost=lambda params: float(params["c"]))
    items = [{"params": {"c": c}} for c in (8, 1, 1, 1, 1, 1, 1, 1)]
    ahead = refitahead.RefitAhead(model, folds=5, refit_of="held")
    head = ahead.hold_back(items)
    assert head == items[:4]  # 4 x 1 < 1.25 x 8: held up to half the fits
    ahead.put(head)
    assert ahead.release(None, {}) == items[4:]
    assert ahead.hold_back(items) == items[:4]
    assert ahead.release(_trial("held", {"c": 8}), {}) == items[4:]


def test_sweep_results_end_with_the_queue_or_name_why_not(session: str) -> None:
    """Workers all ended: every result once served; a SweepError naming them while items wait."""
    served = cmlray.Queue("watch-served")
    served.put(1)
    served.close()
    code = "import cmlray.worker\ncmlray.worker.serve('watch-served', lambda x: x)"
    ids = [w["id"] for w in cmlray.launch_workers(1, cpu=0.5, memory=0.1, code=code)]
    cmlray.await_workers(ids, timeout_seconds=120)
    assert [r.result for r in sweep._results(served, ids)] == [1]  # though its worker ended
    left = cmlray.Queue("watch-left")
    left.put_many([1, 2])
    ids = [w["id"] for w in cmlray.launch_workers(1, cpu=0.5, memory=0.1, code="exit(3)")]
    cmlray.await_workers(ids, timeout_seconds=120)
    with pytest.raises(sweep.SweepError, match=r"ended with work left: worker-\w+: exit code 3"):
        list(sweep._results(left, ids))


def test_random_sample_is_seeded_distinct_and_bounded() -> None:
    space = searchspace.parse_space(
        {"C": {"low": 0.1, "high": 10, "log": True}, "k": {"low": 1, "high": 3}, "g": ["a", "b"]},
        "test",
    )
    first = searchspace.sample(space, 10, seed=3)
    assert first == searchspace.sample(space, 10, seed=3) != searchspace.sample(space, 10, 4)
    assert len({searchspace.canonical(p) for p in first}) == 10
    assert all(0.1 <= p["C"] <= 10 and p["k"] in (1, 2, 3) and p["g"] in "ab" for p in first)
    assert len(searchspace.sample(searchspace.parse_space({"g": ["a", "b"]}, "t"), 10, 0)) == 2


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(EXAMPLE / "sweep.py"), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_bad_input_exits_2_before_anything_starts(tmp_path: Path) -> None:
    """The CLI itself (subprocesses, run side by side): exit 2, the problem named."""
    broken = tmp_path / "broken.json"
    broken.write_text('{"C": [1, 10,')
    empty = write_space(tmp_path, {}, "empty.json")
    fake = tmp_path / "fake" / "optuna"  # an optuna that fails to import, as if missing
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named optuna')\n")
    no_optuna = {**os.environ, "PYTHONPATH": str(fake.parent)}
    cases = {
        "unknown model 'nope': choose one of gradient_boosting": (["--model", "nope"], None),
        f"space file '{broken}' is not valid JSON (line 1": (["--space", str(broken)], None),
        f"the search space ({empty}) is empty": (["--space", empty], None),
        "--sampler tpe needs optuna, which is not installed: pip install optuna": (
            ["--sampler", "tpe"],
            no_optuna,
        ),
    }
    running = {message: cli(*args, cwd=tmp_path, env=env) for message, (args, env) in cases.items()}
    for message, proc in running.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, (message, out, err)
        assert f"sweep.py: error: {message}" in err
        assert out == ""  # no session, no worker: nothing printed
    assert not (tmp_path / "runs").exists()


BAD_ARGS = [
    (["--space", "{tmp}/bad.toml"], "is not valid TOML"),
    (["--space", "{tmp}/novalues.json"], "has no values: the space is empty"),
    (["--space", "{tmp}/unknown.json"], "unknown parameter 'colour' for model svc (SVC)"),
    (["--space", "{tmp}/badvalue.json"], "bad value -1 for parameter 'C'"),
    (["--space", "{tmp}/range.json"], "the grid sampler needs values for 'C'"),
    (["--space", "{tmp}/missing.json"], "cannot read space file"),
    (["--space", "{tmp}/space.yaml"], "must end in .json or .toml"),
    (["--trials", "3"], "--trials is for --sampler random or tpe"),
    (["--scoring", "nonsense"], "unknown --scoring 'nonsense'"),
    (["--folds", "1"], "--folds must be between 2 and"),
    (["--study", "a/b"], "--study 'a/b'"),
]


@pytest.mark.parametrize(("args", "message"), BAD_ARGS, ids=[m for _, m in BAD_ARGS])
def test_bad_input_messages(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """In-process (no interpreter start per case): main() returns 2 before any session."""
    (tmp_path / "bad.toml").write_text("C = [1, 2\n")
    (tmp_path / "novalues.json").write_text('{"C": []}')
    (tmp_path / "unknown.json").write_text('{"colour": ["red"]}')
    (tmp_path / "badvalue.json").write_text('{"C": [1, -1]}')
    (tmp_path / "range.json").write_text('{"C": {"low": 1, "high": 10}}')
    argv = ["--model", "svc", "--runs-dir", str(tmp_path / "runs")]
    argv += [a.format(tmp=tmp_path) for a in args]
    assert sweep.main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_study_keeps_one_protocol(
    grid_study: tuple[sweep.Plan, sweep.Summary], capsys: pytest.CaptureFixture[str]
) -> None:
    plan, _ = grid_study
    argv = ["--model", "svc", "--folds", "4", "--study", "grid"]
    argv += ["--runs-dir", str(plan.study_dir.parent)]
    assert sweep.main(argv) == 2
    assert "study 'grid' was run with folds=3, not 4" in capsys.readouterr().err
