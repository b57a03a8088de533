"""Ray's errors are recognised by type, and a dead agent's cause from Ray's typed record.

An agent's death is classified from the ``ActorDeathCause`` protobuf Ray's
control store keeps for it (``_rayerrors._from_cause``); here those records
are built as Ray builds them, one per cause, so every kind is checked
without having to kill a node or fill the machine's memory.
"""

from __future__ import annotations

import pytest
from ray.core.generated.common_pb2 import (
    ActorDeathCause,
    ActorDiedErrorContext,
    NodeDeathInfo,
    OomContext,
    RayException,
)
from ray.exceptions import AuthenticationError, RayTaskError

from cmlray import _rayerrors
from cmlray._queuestate import QueueClosedError
from cmlray._rayerrors import MAX_PLACEMENTS, Death, Kind
from cmlray.errors import QueueError, SessionError


def _died(reason: int, node: int | None = None, message: str = "") -> ActorDeathCause:
    context = ActorDiedErrorContext(reason=reason, error_message=message)
    if node is not None:
        context.node_death_info.CopyFrom(NodeDeathInfo(reason=node, reason_message="idle"))
    return ActorDeathCause(actor_died_error_context=context)


@pytest.mark.parametrize(
    ("cause", "kind", "words"),
    [
        (
            _died(ActorDiedErrorContext.NODE_DIED, NodeDeathInfo.UNEXPECTED_TERMINATION),
            Kind.NODE_LOST,
            "node lost",
        ),
        (
            _died(ActorDiedErrorContext.NODE_DIED, NodeDeathInfo.AUTOSCALER_DRAIN_IDLE),
            Kind.NODE_REMOVED,
            "node removed (idle)",
        ),
        (
            _died(ActorDiedErrorContext.NODE_DIED, NodeDeathInfo.AUTOSCALER_DRAIN_PREEMPTED),
            Kind.NODE_REMOVED,
            "node removed (idle)",
        ),
        (
            ActorDeathCause(oom_context=OomContext(error_message="memory used 0.96")),
            Kind.OUT_OF_MEMORY,
            "out of memory (its agent was killed by Ray's memory monitor)",
        ),
        (_died(ActorDiedErrorContext.RAY_KILL), Kind.AGENT_KILLED, "its node's agent was killed"),
        (
            _died(ActorDiedErrorContext.WORKER_DIED, message="\x1b[31mworker exit\x1b[0m"),
            Kind.AGENT_DIED,
            "its node's agent died: worker exit",
        ),
        (
            ActorDeathCause(
                creation_task_failure_context=RayException(formatted_exception_string="boom")
            ),
            Kind.AGENT_FAILED,
            "its node's agent could not start",
        ),
    ],
)
def test_every_cause_of_an_agents_death_has_its_kind(
    cause: ActorDeathCause, kind: Kind, words: str
) -> None:
    death = _rayerrors._from_cause(cause)
    assert death.kind is kind
    assert death.words.startswith(words), death.words
    assert death.node_gone is (kind in (Kind.NODE_LOST, Kind.NODE_REMOVED))


def test_errors_for_users_are_chosen_by_type_and_plain() -> None:
    error = _rayerrors.session_error(
        RuntimeError("\x1b[36mray::NodeAgent\x1b[39m gone"), "starting"
    )
    assert isinstance(error, SessionError)
    assert str(error) == "starting failed: RuntimeError: ray::NodeAgent gone"
    auth = _rayerrors.session_error(AuthenticationError("token mismatch"), "attaching")
    assert "set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH" in str(auth)


def test_a_closed_queue_is_recognised_through_rays_wrapper() -> None:
    wrapped = RayTaskError(
        "exchange", "traceback", QueueClosedError("closed")
    ).as_instanceof_cause()
    error = _rayerrors.queue_error(wrapped, "params", "put_many")
    assert isinstance(error, QueueError)
    assert str(error) == "queue 'params' is closed: no more items can be put"
    assert _rayerrors.words_for_program(wrapped) == "the queue is closed"
    assert _rayerrors.words_for_program(LookupError("no queue named 'x'")) == "no queue named 'x'"
    missing = RayTaskError("queue_call", "traceback", LookupError("nothing attached as 'f'"))
    error = _rayerrors.queue_error(missing.as_instanceof_cause(), "calls", "attachment")
    assert str(error) == "queue 'calls': attachment failed: nothing attached as 'f'"


def test_an_upload_too_large_is_told_by_where_it_was_raised() -> None:
    from ray.exceptions import RuntimeEnvSetupError

    packaging = {"__name__": "ray._private.runtime_env.packaging"}
    try:
        try:
            exec(compile("raise ValueError('too big')", "packaging", "exec"), packaging)
        except ValueError as exc:  # as Ray's working_dir upload wraps it
            raise RuntimeEnvSetupError("the upload failed") from exc
    except RuntimeEnvSetupError as wrapped:
        assert _rayerrors.is_upload_too_large(wrapped)
    try:
        raise RuntimeEnvSetupError("pip failed") from ValueError("elsewhere")
    except RuntimeEnvSetupError as other:
        assert not _rayerrors.is_upload_too_large(other)


def test_a_worker_whose_node_went_before_it_started_is_placed_again() -> None:
    removed = Death(Kind.NODE_REMOVED, "node removed (idle)")
    assert removed.places_again("scheduling", times_placed=1)
    assert removed.places_again("starting", times_placed=2)
    assert not removed.places_again("running", times_placed=1)  # it may have done work
    assert not removed.places_again("starting", times_placed=MAX_PLACEMENTS)
    assert Death(Kind.NODE_LOST, "node lost").places_again("starting", times_placed=1)
    for kind in (Kind.OUT_OF_MEMORY, Kind.AGENT_KILLED, Kind.AGENT_DIED, Kind.AGENT_FAILED):
        assert not Death(kind, kind.value).places_again("starting", times_placed=1)
