"""The four functions of CML's Workers API, with cmlray's session behind them.

CML's names and units are converted here once: ``memory`` in GiB,
``timeout_seconds`` (0 means none), and workers referred to by id, dict or
name (``_refs.py``) wherever a worker is taken.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cmlray import _lifecycle, _refs
from cmlray._checks import check_non_negative
from cmlray._record import FINAL, WorkerRecord
from cmlray._spec import WorkerSpec
from cmlray._table import WorkerList


def launch_workers(
    n: int,
    cpu: float,
    memory: float,
    nvidia_gpu: int = 0,
    kernel: str = "python3",
    script: str = "",
    code: str = "",
    env: Mapping[str, str] | None = None,
    accelerator_label_id: str | None = None,
    resource_profile_id: str | None = None,
    resource_group_id: str | None = None,
    name: str | None = None,
    rdma_network_selections: Any = None,
    *,
    grace_period_s: float = 5.0,
    timeout_s: float | None = None,
    fn: Callable[..., Any] | None = None,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Launch ``n`` workers, each running a script, Python code or a shell command.

    Args:
        n: how many workers (>= 1).
        cpu: cores each worker holds (> 0; fractions allowed).
        memory: GiB each worker holds (> 0). Enforced: a worker whose
            program tree's resident memory exceeds it is stopped and
            reported failed ("exceeded memory: used X GiB of Y GiB").
        nvidia_gpu: GPUs each worker holds (whole number >= 0).
        kernel: ``"python3"`` (this session's interpreter), or ``"r"`` when
            ``Rscript`` is installed. CML's ``"python2"`` and ``"scala"``
            raise ``ValueError``.
        script: a Python file to run; relative paths resolve against the
            session's project directory. Wins over ``code`` (with a warning).
        code: Python source to run. Code whose lines all start with ``!`` is
            run by the shell, line after line (``"!dask scheduler --port 0"``);
            ``!`` lines inside Python code run in the shell where they stand.
        env: extra environment variables for the workers (str to str).
        accelerator_label_id: a Ray accelerator type the worker's node must
            have (e.g. ``"A100"``); ignored when None.
        resource_profile_id: accepted for CML compatibility; ignored.
        resource_group_id: accepted for CML compatibility; ignored.
        name: the workers' name (``name-1``, ``name-2``... when ``n`` > 1);
            default ``worker-<k>``.
        rdma_network_selections: accepted for CML compatibility; ignored.
        grace_period_s: on stop, seconds between SIGTERM and SIGKILL.
        timeout_s: a run time limit; a worker still running after it is
            stopped with status ``timedout``. None: no limit.
        fn: beyond CML: a callable to run as the worker's program, instead
            of ``script``/``code`` (cloudpickled, so closures work). Its
            return value lands in the worker dict's ``result``; an exception
            in its ``reason`` and ``tail``.
        args: positional arguments for ``fn``.
        kwargs: keyword arguments for ``fn``.

    Returns:
        One description dict per worker, in launch order.

    Raises:
        TypeError, ValueError: a bad argument, before anything starts (CML
            returns error dicts instead; cmlray raises).
        InfeasibleRequestError: no node of the cluster could ever hold one
            worker (the message gives the largest node's capacity).
    """
    del resource_profile_id, resource_group_id, rdma_network_selections
    spec = WorkerSpec.from_call(
        _lifecycle.project_dir(),
        n=n,
        cpu=cpu,
        memory=memory,
        nvidia_gpu=nvidia_gpu,
        kernel=kernel,
        script=script,
        code=code,
        env=env,
        name=name,
        accelerator_label_id=accelerator_label_id,
        grace_period_s=grace_period_s,
        timeout_s=timeout_s,
        fn=fn,
        args=args,
        kwargs=kwargs,
    )
    return _lifecycle.require().launch(spec)


def list_workers() -> WorkerList:
    """Every worker this session launched, newest state, in launch order.

    A plain list of plain dicts (a ``list`` subclass) that a notebook shows as
    an HTML table and a Rich console as a table.
    """
    session = _lifecycle.current(create=False)
    return WorkerList(session.registry.describe() if session is not None else [])


@dataclass(frozen=True)
class StopResult:
    """What stopping one worker gave; ``status_code`` as CML's HTTP responses.

    Attributes:
        id: the worker id asked for.
        status_code: 200 when the worker is stopped (or had already ended),
            404 when this session never launched such a worker.
        status: the worker's final status, None for an unknown id.
        worker: the worker's final description, None for an unknown id.
    """

    id: str
    status_code: int
    status: str | None
    worker: dict[str, Any] | None

    @property
    def ok(self) -> bool:
        return self.status_code < 400

    def json(self) -> dict[str, Any]:
        """The body CML's response would carry: the worker's description."""
        return dict(self.worker) if self.worker else {"id": self.id, "error": "not found"}


def stop_workers(
    *worker_id: str | Mapping[str, Any], grace_period_s: float | None = None
) -> list[StopResult]:
    """Stop workers of this session; with no argument, all of them.

    Each program and everything it started gets SIGTERM, then SIGKILL after
    the grace period. Returns once they have ended.

    Args:
        *worker_id: ids, description dicts or names. Unknown ones give a
            result with ``status_code`` 404 (as CML's HTTP responses).
        grace_period_s: overrides each worker's own grace period.
    """
    if grace_period_s is not None:
        grace_period_s = check_non_negative("grace_period_s", grace_period_s)
    session = _lifecycle.current(create=False)
    registry = session.registry if session is not None else None
    targets = [_refs.resolve(registry, value, "worker_id") for value in worker_id]
    if session is None:
        return [StopResult(given, 404, None, None) for given, _ in targets]
    if not worker_id:
        targets = [(i, i) for i in session.registry.ids()]
    known = [worker_id for _, worker_id in targets if worker_id is not None]
    final = {d["id"]: d for d in session.stop(known, grace_period_s)}
    return [
        StopResult(found, 200, final[found]["status"], final[found])
        if found is not None
        else StopResult(given, 404, None, None)
        for given, found in targets
    ]


def _reached(status: str, wait_for_completion: bool, ip_known: bool) -> bool | None:
    """True: goal reached; False: failed for good; None: still pending."""
    if wait_for_completion:
        return True if status == "succeeded" else False if status in FINAL else None
    if status in FINAL:
        return False
    return True if status == "running" and ip_known else None


def await_workers(
    ids: Any, wait_for_completion: bool = True, timeout_seconds: float = 60
) -> dict[str, list[dict[str, Any]]]:
    """Wait until workers succeed (or run), fail, or the timeout passes.

    Args:
        ids: an id, a description dict or a name, or a list of them. A
            worker this session never launched raises ``ValueError`` at once.
        wait_for_completion: True: a worker counts once it exits 0. False:
            once it is running with a known IP; one that already ended fails.
        timeout_seconds: seconds to wait; 0 (or None) waits without limit.

    Returns:
        ``{"workers": [...reached the goal], "failures": [...the rest]}``,
        returned as soon as every worker is decided (no 5 s polling).
    """
    timeout_s = check_non_negative("timeout_seconds", timeout_seconds or 0) or None
    session = _lifecycle.current(create=False)
    wanted = _refs.known_ids(session.registry if session is not None else None, ids, "ids")
    assert session is not None  # known_ids found the workers in it
    registry = session.registry

    def decided(record: WorkerRecord) -> bool:
        ip_known = record.ip_address != "unknown"
        return _reached(record.status, wait_for_completion, ip_known) is not None

    registry.wait_until(wanted, decided, None if timeout_s is None else max(timeout_s, 0.0))
    workers, failures = [], []
    for description in registry.describe(wanted):
        verdict = _reached(
            description["status"], wait_for_completion, description["ip_address"] != "unknown"
        )
        if verdict:
            workers.append(description)
        else:
            if verdict is None:
                description["reason"] = _pending_reason(description, timeout_s)
            failures.append(description)
    return {"workers": workers, "failures": failures}


def _pending_reason(worker: Mapping[str, Any], timeout_s: float | None) -> str:
    """Why a worker was not decided by the deadline: what it still waits for."""
    waited = f"after {timeout_s:g} s" if timeout_s is not None and math.isfinite(timeout_s) else ""
    if worker["status"] == "scheduling":
        why = worker["reason"] or "waiting for resources"
        return f"{why} (still scheduling {waited})".replace(" )", ")").strip()
    return f"still {worker['status']} {waited}".strip()
