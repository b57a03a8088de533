"""joblib's ``"cmlray"`` backend: ``Parallel`` batches on cmlray workers.

``import cmlray.joblib`` registers it (``import cmlray`` alone never imports
joblib)::

    import joblib, cmlray.joblib
    with joblib.parallel_backend("cmlray", n_jobs=8, cpu=1, memory=2):
        GridSearchCV(model, grid, n_jobs=8).fit(X, y)

Each ``Parallel`` call runs its batches through a :class:`cmlray.Executor`
of ``n_jobs`` workers, each holding ``cpu`` cores, ``memory`` GiB and
``nvidia_gpu`` GPUs: their output is relayed like any worker's, they show in
``list_workers`` and ``watch``, and they end with the call (or the session).
Joblib's auto-batching sizes batches from their measured times. A task's
exception is raised in the session, its worker's traceback attached as a
note; when joblib aborts (the first error, a closed generator) the calls
waiting are withdrawn and the running ones stopped.

Nested parallelism inside a task uses the worker's own cores: the workers
get ``OMP_NUM_THREADS`` (and the other thread-pool limits) and
``LOKY_MAX_CPU_COUNT`` set to their whole cores, and a nested ``Parallel``
runs on loky with that many processes.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import joblib  # type: ignore[import-untyped]
from joblib._parallel_backends import (  # type: ignore[import-untyped]
    AutoBatchingMixin,
    LokyBackend,
    ParallelBackendBase,
    SequentialBackend,
)

from cmlray._checks import check_count, check_positive, check_text
from cmlray._executor import Executor

BACKEND_NAME = "cmlray"
THREAD_LIMITS = (*ParallelBackendBase.MAX_NUM_THREADS_VARS, "LOKY_MAX_CPU_COUNT")


class CmlrayBackend(AutoBatchingMixin, ParallelBackendBase):  # type: ignore[misc]
    """joblib's backend on cmlray workers (see the module docstring).

    Args:
        cpu: cores each worker holds.
        memory: GiB each worker holds.
        nvidia_gpu: GPUs each worker holds.
        name: the workers' name prefix.
        env: extra environment variables for the workers.
    """

    supports_retrieve_callback = True
    supports_inner_max_num_threads = True
    supports_sharedmem = False
    default_n_jobs = 2

    def __init__(
        self,
        nesting_level: int | None = None,
        inner_max_num_threads: int | None = None,
        *,
        cpu: float = 1,
        memory: float = 1,
        nvidia_gpu: int = 0,
        name: str = "joblib",
        env: dict[str, str] | None = None,
        **backend_kwargs: Any,
    ) -> None:
        super().__init__(
            nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads,
            **backend_kwargs,
        )  # fmt: skip
        self.cpu = check_positive("cpu", cpu, "cores")
        self.memory = check_positive("memory", memory, "GiB")
        self.nvidia_gpu = check_count("nvidia_gpu", nvidia_gpu, 0)
        self.name = check_text("name", name)
        self.env = dict(env or {})
        self._executor: Executor | None = None
        self._n_jobs = 0

    @property
    def worker_cores(self) -> int:
        """The cores a task may use inside its worker (at least 1)."""
        return max(1, math.floor(self.cpu))

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None:
            return self.default_n_jobs
        if n_jobs < 0:  # -1: as many workers as the cluster's CPUs hold
            import ray

            cpus = float(ray.cluster_resources().get("CPU", 1)) if ray.is_initialized() else 1.0
            return max(1, int(cpus // self.cpu) + 1 + n_jobs)
        return int(n_jobs)

    def configure(self, n_jobs: int | None = 1, parallel: Any = None, **backend_kwargs: Any) -> int:
        n = self.effective_n_jobs(n_jobs)
        self.parallel = parallel
        if self._executor is None or self._n_jobs != n:
            self._close()
            limit = str(self.inner_max_num_threads or self.worker_cores)
            env = {var: limit for var in THREAD_LIMITS} | self.env
            self._executor = Executor(
                n, self.cpu, self.memory, self.nvidia_gpu, name=self.name, env=env
            )
            self._n_jobs = n
        return n

    def submit(self, func: Any, callback: Any = None) -> Any:
        assert self._executor is not None, "configure() first"
        future = self._executor.submit(self._shipped(func))
        if callback is not None:
            future.add_done_callback(callback)
        return future

    def _shipped(self, batch: Any) -> Any:
        """joblib's batch with its big functions as keys, shipped once (``cmlray/_shipfn.py``).

        A batch (``BatchedCalls``) holds ``(function, args, kwargs)`` items and
        is pickled whole for each call: a notebook's function with a big
        global went with every batch. Anything else is left as it is.
        """
        items = getattr(batch, "items", None)
        if not isinstance(items, list) or not all(len(item) == 3 for item in items):
            return batch
        functions = self._executor._functions  # type: ignore[union-attr]
        forms = functions.forms([fn for fn, _, _ in items])
        if all(form is item[0] for form, item in zip(forms, items, strict=True)):
            return batch
        batch = copy.copy(batch)  # (joblib keeps its own)
        batch.items = [(form, *item[1:]) for form, item in zip(forms, items, strict=True)]
        return batch

    def retrieve_result_callback(self, future: Any) -> Any:
        return future.result()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """joblib gives up on the call: withdraw what waits, stop what runs."""
        if self._executor is not None:
            self._executor._abort("joblib aborted the call")
            self._executor = None
        if ensure_ready:
            self.configure(n_jobs=self._n_jobs or None, parallel=self.parallel)

    def terminate(self) -> None:
        """The ``Parallel`` call is over: its workers end (their reservations go back)."""
        self._close()
        self.reset_batch_stats()

    def _close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def get_nested_backend(self) -> tuple[Any, int | None]:
        """Inside a task: loky on the worker's own cores (sequential with one core)."""
        level = (self.nesting_level or 0) + 1
        if self.worker_cores == 1:
            return SequentialBackend(nesting_level=level), None
        return LokyBackend(nesting_level=level), self.worker_cores


def register() -> None:
    """Register the backend as ``"cmlray"`` (done on import)."""
    joblib.register_parallel_backend(BACKEND_NAME, CmlrayBackend)


register()

__all__ = ["BACKEND_NAME", "CmlrayBackend", "register"]
