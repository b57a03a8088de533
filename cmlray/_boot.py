"""A session that starts in the background: ``cmlray.init(block=False)``.

Starting a Ray head takes seconds; a notebook user need not wait for it. The
head boots on a thread of its own while ``init`` returns; the first call that
needs the session waits for it (and raises what the start raised, if it
failed).

The thread lives as long as the session: Ray's head processes are started
with ``PR_SET_PDEATHSIG``, which fires when the *thread* that started them
exits, so a boot thread that returned would take the head down with it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from cmlray._hush import hush

T = TypeVar("T")


class Boot(Generic[T]):
    """Runs ``start(boot)`` on a thread that stays until :meth:`release`."""

    def __init__(self, start: Callable[[Boot[T]], T], project_dir: str) -> None:
        self.project_dir = project_dir
        self._start = start
        self._done = threading.Event()
        self._released = threading.Event()
        self._value: T | None = None
        self._error: BaseException | None = None
        threading.Thread(target=self._run, name="cmlray-boot", daemon=True).start()

    def _run(self) -> None:
        # Ray warns that it sets no SIGTERM handler off the main thread: nothing
        # to tell the user (the session's cleanup does not depend on it).
        hush("ray._private.worker", "SIGTERM handler is not set")
        try:
            self._value = self._start(self)
        except BaseException as exc:  # raised again by result(), in the caller's thread
            self._error = exc
        finally:
            self._done.set()
        if self._error is None:
            self._released.wait()

    def result(self) -> T:
        """The started value, once ready; raises what ``start`` raised."""
        self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value

    def release(self) -> None:
        """The session has ended (its head is gone): the thread may exit."""
        self._released.set()
