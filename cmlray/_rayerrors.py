"""Ray's errors, translated at one boundary, by type.

As httpx maps httpcore's exceptions in one place, every error that comes out
of Ray is recognised here with ``isinstance`` (or from the typed records of
Ray's control store), never by matching its text:

- :func:`session_error`: what a user sees when a Ray call fails
  (``SessionError``, with a hint for a cluster that wants a token);
- :func:`agent_death`: why a node agent's event stream broke, as a
  :class:`Death`, whose :class:`Kind` the session acts on (a lost or
  removed node's reservations are dropped; any dead agent is replaced by the
  next worker placed there) and whose words go in the workers' ``reason``;
- :func:`words_for_program`: a failed request of a worker's program, in words.

Prose from Ray reaches users only as the tail of a message, in plain text
(Ray colours parts of its messages; ``_sanitize.strip_escapes``).
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from cmlray._sanitize import strip_escapes
from cmlray.errors import CmlrayError, QueueError, SessionError

NODE_DEATH_WAIT_S = 30.0
PRE_START = ("scheduling", "starting")  # a worker's statuses before its program runs
MAX_PLACEMENTS = 3  # a worker whose node goes before it starts is placed this often at most
_POLL_S = 0.5


class Kind(enum.Enum):
    """Why a node agent is gone."""

    NODE_LOST = "node lost"  # its node crashed or was cut off
    NODE_REMOVED = "node removed"  # drained, scaled down, preempted: on purpose
    OUT_OF_MEMORY = "out of memory"  # Ray's memory monitor killed it
    AGENT_KILLED = "agent killed"  # ray.kill, or the session ended it
    AGENT_DIED = "agent died"  # its process died for another reason
    AGENT_FAILED = "agent failed"  # it could not start, or its code raised


@dataclass(frozen=True)
class Death:
    """A node agent's end: what the session does about it, and what users read."""

    kind: Kind
    words: str

    @property
    def node_gone(self) -> bool:
        """Its node is gone: reservations held there are gone with it."""
        return self.kind in (Kind.NODE_LOST, Kind.NODE_REMOVED)

    def places_again(self, status: str, times_placed: int) -> bool:
        """Whether a worker of ``status`` on the agent's node is placed again, not failed.

        A worker whose node went (removed by an autoscaler a moment after Ray
        placed it there, say) before its program started has run nothing of
        the user's: it waits for a slot again, up to ``MAX_PLACEMENTS`` times.
        A running worker fails: its program may have done part of its work.
        """
        return self.node_gone and status in PRE_START and times_placed < MAX_PLACEMENTS


def plain(value: object) -> str:
    """Text on one line, without terminal escapes."""
    return " ".join(strip_escapes(str(value)).split())


def _first_line(exc: BaseException) -> str:
    lines = strip_escapes(str(exc)).strip().splitlines()
    return lines[0] if lines else ""


def session_error(exc: BaseException, context: str) -> CmlrayError:
    """The error to raise (``from exc``) when a Ray call made while ``context`` failed."""
    from ray.exceptions import AuthenticationError

    name = type(exc).__name__
    if isinstance(exc, AuthenticationError):
        hint = (
            " (the cluster requires a token: set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH"
            " as for `ray` itself)"
        )
        return SessionError(f"{context} failed: {name}: {_first_line(exc)}{hint}")
    return SessionError(f"{context} failed: {name}: {_first_line(exc)}")


def raised_in(exc: BaseException, module: str) -> bool:
    """Whether ``exc`` was raised by code of ``module`` (its innermost frame's module)."""
    tb: TracebackType | None = exc.__traceback__
    last = None
    while tb is not None:
        last, tb = tb, tb.tb_next
    return last is not None and last.tb_frame.f_globals.get("__name__") == module


def is_upload_too_large(exc: BaseException) -> bool:
    """Whether ``ray.init`` refused the project dir for its size.

    Ray's packaging raises a ``ValueError`` for a package over its limit,
    which Ray wraps in a ``RuntimeEnvSetupError``: recognised by type and by
    the module that raised it, anywhere in the chain of causes.
    """
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ValueError) and raised_in(seen, "ray._private.runtime_env.packaging"):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def queue_error(exc: BaseException, name: str, method: str) -> QueueError:
    """The ``QueueError`` for a failed call ``method`` on queue ``name``'s actor."""
    from cmlray._queuestate import QueueClosedError

    if isinstance(exc, QueueClosedError):  # Ray's task error is also an instance of its cause
        return QueueError(f"queue {name!r} is closed: no more items can be put")
    if isinstance(exc, LookupError):  # (the queue's own words: what it does not have)
        return QueueError(f"queue {name!r}: {method} failed: {words_for_program(exc)}")
    return QueueError(f"queue {name!r}: {method} failed: {type(exc).__name__}: {_first_line(exc)}")


def words_for_program(exc: BaseException) -> str:
    """A failed request of a worker's program, in the words it raises as ``QueueError``."""
    from ray.exceptions import RayTaskError

    from cmlray._queuestate import QueueClosedError

    if isinstance(exc, QueueClosedError):
        return "the queue is closed"
    if isinstance(exc, LookupError):
        return str(exc.args[0]) if exc.args else str(exc)
    if isinstance(exc, RayTaskError) and isinstance(exc.cause, BaseException):
        return words_for_program(exc.cause)
    return f"{type(exc).__name__}: {plain(exc)[:500]}"


def _death_cause(actor_id: str) -> tuple[str, Any]:
    """(state, ActorDeathCause proto) of an actor, from Ray's control store."""
    from ray._private.state import state

    info = state.actor_table(actor_id) or {}
    return str(info.get("State", "")), info.get("DeathCause")


def _node_alive(node_id: str) -> bool:
    import ray

    return any(n.get("NodeID") == node_id and n.get("Alive") for n in ray.nodes())


def _from_cause(cause: Any) -> Death:
    """A dead actor's typed death cause (``ActorDeathCause``) as a Death."""
    from ray.core.generated.common_pb2 import ActorDiedErrorContext, NodeDeathInfo

    context = cause.WhichOneof("context") if cause is not None else None
    if context == "oom_context":
        return Death(
            Kind.OUT_OF_MEMORY, "out of memory (its agent was killed by Ray's memory monitor)"
        )
    if context in ("creation_task_failure_context", "runtime_env_failed_context"):
        detail = getattr(cause, context)
        message = getattr(detail, "error_message", "") or str(detail)
        return Death(Kind.AGENT_FAILED, f"its node's agent could not start: {plain(message)[:300]}")
    if context != "actor_died_error_context":
        return Death(Kind.AGENT_DIED, "its node's agent died")
    died = cause.actor_died_error_context
    if died.reason == ActorDiedErrorContext.NODE_DIED or died.HasField("node_death_info"):
        info = died.node_death_info
        removed = (
            NodeDeathInfo.EXPECTED_TERMINATION,
            NodeDeathInfo.AUTOSCALER_DRAIN_IDLE,
            NodeDeathInfo.AUTOSCALER_DRAIN_PREEMPTED,
        )
        if info.reason in removed:
            why = plain(info.reason_message) or NodeDeathInfo.Reason.Name(info.reason).lower()
            return Death(Kind.NODE_REMOVED, f"node removed ({why})")
        if died.reason == ActorDiedErrorContext.NODE_DIED:
            return Death(Kind.NODE_LOST, "node lost")
    if died.reason in (ActorDiedErrorContext.RAY_KILL, ActorDiedErrorContext.OWNER_DIED):
        return Death(Kind.AGENT_KILLED, "its node's agent was killed")
    message = plain(died.error_message)[:300]
    return Death(
        Kind.AGENT_DIED, f"its node's agent died: {message}" if message else "its node's agent died"
    )


def agent_death(
    exc: BaseException, actor_id: str, node_id: str | None, wait_s: float = NODE_DEATH_WAIT_S
) -> Death:
    """Why a node agent's stream broke with ``exc``.

    Blocking (it asks Ray's control store, and may wait): run it off the
    event loop, once per agent, not per worker. Ray reports a lost node's
    actors as *unavailable* before the cluster has declared the node dead;
    then the actor's record decides, for up to ``wait_s`` (the cluster's
    health checks take seconds).
    """
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayTaskError

    if isinstance(exc, RayTaskError) and not isinstance(exc, ActorDiedError):
        cause = exc.cause if isinstance(exc.cause, BaseException) else exc
        return Death(
            Kind.AGENT_FAILED,
            f"its node's agent failed: {type(cause).__name__}: {plain(cause)[:300]}",
        )
    deadline = time.monotonic() + (wait_s if isinstance(exc, ActorUnavailableError) else 2.0)
    while True:
        try:
            state, cause = _death_cause(actor_id)
        except Exception:  # the cluster is gone with the session
            return Death(Kind.AGENT_DIED, f"its node's agent died: {type(exc).__name__}")
        if state == "DEAD":
            return _from_cause(cause)
        try:
            if node_id is not None and not _node_alive(node_id):
                return Death(Kind.NODE_LOST, "node lost")
        except Exception:
            return Death(Kind.AGENT_DIED, f"its node's agent died: {type(exc).__name__}")
        if time.monotonic() >= deadline:
            return Death(
                Kind.AGENT_DIED,
                f"its node's agent died: {type(exc).__name__}: {_first_line(exc)[:300]}",
            )
        time.sleep(_POLL_S)
