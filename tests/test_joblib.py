"""joblib's "cmlray" backend: Parallel and scikit-learn's n_jobs on cmlray workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import joblib
import pytest

import cmlray
import cmlray.joblib  # registers the backend
from tests.support.console import Captured
from tests.support.notebook import BIG, uses_big

pytestmark = pytest.mark.usefixtures("session")
# The workers' working dir is the session's project dir, where this package is not
# importable: this module's functions and classes travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


class RefusedError(Exception):
    pass


def test_a_big_function_travels_once_not_with_every_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from cmlray._executor import Executor

    attached: list[int] = []
    attach = Executor._attach

    def recording(self: Executor, key: str, data: bytes) -> None:
        attached.append(len(data))
        attach(self, key, data)

    monkeypatch.setattr(Executor, "_attach", recording)
    with joblib.parallel_backend("cmlray", n_jobs=2, cpu=0.5, memory=0.3, name="big"):
        out = joblib.Parallel(batch_size=4)(joblib.delayed(uses_big)(i) for i in range(40))
    assert out == [BIG[i] + i for i in range(40)]
    assert len(attached) == 1 and attached[0] > len(BIG)  # once, for its 10 batches


def test_import_cmlray_alone_never_imports_joblib() -> None:
    probe = "import sys, cmlray; cmlray.Executor; print('joblib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


LOKY_SEARCH = """
import json, joblib
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV
from sklearn.svm import SVC
features, labels = load_digits(return_X_y=True)
with joblib.parallel_backend("loky", n_jobs=2):
    search = GridSearchCV(SVC(), {grid!r}, cv=3, n_jobs=2).fit(features, labels)
print(json.dumps({{k: [float(v) for v in search.cv_results_[k]] for k in {keys!r}}}))
"""
SCORES = ("mean_test_score", "std_test_score", "split0_test_score", "split2_test_score")


def test_gridsearchcv_on_the_backend_scores_as_on_loky() -> None:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC

    grid = {"C": [1, 10], "gamma": ["scale", 0.001]}
    # loky's reference in a process of its own: its workers and resource trackers end with it
    script = LOKY_SEARCH.format(grid=grid, keys=SCORES)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True, timeout=300)  # fmt: skip
    on_loky = json.loads(done.stdout)
    features, labels = load_digits(return_X_y=True)
    with joblib.parallel_backend("cmlray", n_jobs=2, cpu=1, memory=0.5, name="grid"):
        on_cmlray = GridSearchCV(SVC(), grid, cv=3, n_jobs=2).fit(features, labels)
    for key in SCORES:
        assert [float(v) for v in on_cmlray.cv_results_[key]] == on_loky[key], key
    ours = [w for w in cmlray.list_workers() if w["name"].startswith("grid-")]
    assert len(ours) >= 2 and {w["status"] for w in ours} <= {"succeeded", "running"}


def test_output_is_relayed_and_nested_parallelism_uses_the_workers_cores(
    captured: Captured,
) -> None:
    def inner(i: int) -> tuple[str, int]:
        print(f"task {i} says hi", flush=True)
        nested = joblib.Parallel(n_jobs=-1)(joblib.delayed(os.getpid)() for _ in range(6))
        return os.environ["OMP_NUM_THREADS"], len(set(nested))

    # (n_jobs=1 would make joblib run the tasks in the session itself: 2 workers of 2 CPU)
    with joblib.parallel_backend("cmlray", n_jobs=2, cpu=2, memory=1, name="nest"):
        outcomes = joblib.Parallel()(joblib.delayed(inner)(i) for i in [7, 8])
    assert [threads for threads, _ in outcomes] == ["2", "2"]
    assert all(1 <= processes <= 2 for _, processes in outcomes)
    deadline = time.monotonic() + 30  # the relay prints as lines arrive
    while "[nest-1] task 7 says hi" not in captured.text():
        assert time.monotonic() < deadline, captured.text()[-2000:]
        time.sleep(0.05)


def test_an_exception_in_a_task_is_raised_and_joblib_aborting_stops_the_rest(
    tmp_path: Path,
) -> None:
    def task(i: int) -> int:
        if i == 0:
            raise RefusedError("task 0 refused")
        time.sleep(60 if i == 1 else 0.01)  # task 1 is still running when 0 fails
        return i

    began = len(cmlray.list_workers())
    with (
        joblib.parallel_backend("cmlray", n_jobs=2, cpu=0.5, memory=0.2, name="abort"),
        pytest.raises(RefusedError, match="task 0 refused") as raised,
    ):
        joblib.Parallel(batch_size=1)(joblib.delayed(task)(i) for i in range(40))
    assert any("in task" in note for note in raised.value.__notes__)
    ours = cmlray.list_workers()[began:]
    deadline = time.monotonic() + 60
    while any(w["status"] not in ("succeeded", "failed", "stopped") for w in ours):
        assert time.monotonic() < deadline, ours
        time.sleep(0.1)
        ours = cmlray.list_workers()[began:]
    assert "stopped" in {w["status"] for w in ours}  # the one running task 1 was stopped


def test_generators_and_a_worker_killed_mid_run(tmp_path: Path) -> None:
    marker = tmp_path / "killed-once"

    def square(i: int) -> int:
        if i == 5 and not marker.exists():
            marker.touch()
            os._exit(9)  # its worker dies holding this task: it runs again elsewhere
        return i * i

    with joblib.parallel_backend("cmlray", n_jobs=2, cpu=0.5, memory=0.2, name="gen"):
        ordered = joblib.Parallel(return_as="generator")(
            joblib.delayed(square)(i) for i in range(20)
        )
        assert list(ordered) == [i * i for i in range(20)]
        unordered = joblib.Parallel(return_as="generator_unordered")(
            joblib.delayed(square)(i) for i in range(20)
        )
        assert sorted(unordered) == [i * i for i in range(20)]
    assert marker.exists()
