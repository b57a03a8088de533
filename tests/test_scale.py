"""Many workers at once, and waves back to back, on the session's own head.

Hundreds of workers a node must all run (they used to fail past about 200:
their guards waited with ``select``, which cannot watch descriptor numbers
past 1,024) and all stop. A wave launched right after another ended takes
the slots the last one gave back (``_reservations.py``) instead of waiting
for Ray to place new groups; a wave of another shape gets the room at once.
"""

from __future__ import annotations

import psutil
import pytest
from ray.util.placement_group import placement_group_table

import cmlray
from cmlray import _lifecycle

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("session")]


def _groups() -> set[str]:
    """The placement groups Ray holds for this session (created or waiting)."""
    return {
        group_id
        for group_id, group in placement_group_table().items()
        if group["state"] in ("CREATED", "PENDING")
    }


@pytest.mark.timeout(600)
def test_300_workers_at_once_all_run_and_all_stop() -> None:
    workers = cmlray.launch_workers(300, cpu=3.6 / 300, memory=0.01, code="!echo up; sleep 600")
    result = cmlray.await_workers(workers, wait_for_completion=False, timeout_seconds=300)
    assert not result["failures"], {f["reason"] for f in result["failures"]}
    assert len(result["workers"]) == 300
    registry = _lifecycle.require().registry
    assert registry.wait_until([w["id"] for w in workers], lambda r: "up" in r.tail, 120)
    programs = [psutil.Process(registry.get(w["id"]).pid) for w in workers]
    stopped = cmlray.stop_workers()
    assert {s.status for s in stopped if s.id in {w["id"] for w in workers}} == {"stopped"}
    _, alive = psutil.wait_procs(programs, timeout=30)
    assert not alive, f"{len(alive)} programs outlived stop_workers()"


def test_a_wave_right_after_another_reuses_its_slots() -> None:
    first = cmlray.launch_workers(8, cpu=0.5, memory=0.1, code="print('first')")
    assert len(cmlray.await_workers(first, timeout_seconds=120)["workers"]) == 8
    groups = _groups()
    second = cmlray.launch_workers(8, cpu=0.5, memory=0.1, code="print('second')")
    done = cmlray.await_workers(second, timeout_seconds=120)["workers"]
    assert [w["tail"] for w in done] == [["second"]] * 8
    assert _groups() <= groups  # the second wave asked Ray for no new group


def test_a_wave_of_another_shape_gets_the_cpus_the_last_one_gave_back() -> None:
    first = cmlray.launch_workers(8, cpu=0.5, memory=0.1, code="print('small')")
    assert len(cmlray.await_workers(first, timeout_seconds=120)["workers"]) == 8
    big = cmlray.launch_workers(2, cpu=2, memory=0.1, code="print('big')")  # every CPU of the head
    done = cmlray.await_workers(big, timeout_seconds=120)["workers"]
    assert [w["tail"] for w in done] == [["big"], ["big"]]
