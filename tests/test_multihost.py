"""cmlray on a stock Ray cluster of real hosts (network and mount namespaces).

The nodes h1 and h2 have Ray alone (no cmlray, no checkout, not the session's
interpreter); the session runs on h0, the head's host, in a project dir of
its own (tests/support/drivers/multihost_driver.py). What a user meets beyond one
machine: workers on remote nodes with the nodes' interpreter, the project on
every node, files sent home, CML's network example across hosts, GPUs, and
the failure paths: a SIGKILLed session, a host crash, a partition.

Times measured on the failure paths are written to
``benchmarks/results/failure_times.json`` (and quoted in the README); the
tests wait for conditions with generous deadlines, never on a fixed time.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.drivers.multihost_driver import ITEMS
from tests.support.processes import wait_no_marked_processes

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_leaks")]

DRIVER = Path(__file__).parent / "support" / "drivers" / "multihost_driver.py"
TIMES = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "failure_times.json"
DEADLINE_S = 120.0
LEASE_S = 10


@pytest.fixture(scope="module")
def project(netcluster: Any) -> Iterator[str]:
    """A small project dir on the session host (h0), as the session sees it."""
    folder = netcluster.hosts["h0"].tmp_dir / "project"
    folder.mkdir()
    (folder / "data.txt").write_text("payload from the project\n")
    from tests.support.drivers.multihost_driver import JOB

    (folder / "job.py").write_text(JOB)
    yield netcluster.host_path("h0", folder)


def record(name: str, seconds: float) -> None:
    TIMES.parent.mkdir(parents=True, exist_ok=True)
    times = json.loads(TIMES.read_text()) if TIMES.exists() else {}
    times[name] = round(seconds, 2)
    TIMES.write_text(json.dumps(times, indent=2))
    print(f"{name}: {seconds:.1f} s")


def drive(netcluster: Any, project: str, mode: str) -> tuple[dict[str, Any], str]:
    """Run the driver in ``mode`` on h0 to its end: its RESULT and all its output."""
    argv = [sys.executable, str(DRIVER), netcluster.address, mode]
    done = netcluster.run("h0", argv, cwd=project, timeout_s=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    line = next(x for x in reversed(done.stdout.splitlines()) if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT ")), done.stdout


def start_driver(
    netcluster: Any, project: str, mode: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    argv = [sys.executable, str(DRIVER), netcluster.address, mode]
    return netcluster.popen(
        "h0",
        argv,
        env=env,
        cwd=project,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_until(proc: subprocess.Popen[str], prefix: str) -> str:
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(prefix):
            return line.removeprefix(prefix).strip()
    raise AssertionError(f"the driver ended before {prefix!r}: {proc.stderr.read()[-3000:]}")  # type: ignore[union-attr]


def wait_gone(netcluster: Any, hosts: list[str], pattern: str) -> float:
    """Seconds until no process matching ``pattern`` is left on ``hosts``."""
    started = time.monotonic()
    while any(netcluster.processes_matching(h, pattern) for h in hosts):
        assert time.monotonic() - started < DEADLINE_S, [
            netcluster.processes_matching(h, pattern) for h in hosts
        ]
        time.sleep(0.1)
    return time.monotonic() - started


def ips(netcluster: Any) -> dict[str, str]:
    return {ip: name for name, ip in ((n, h.ip) for n, h in netcluster.hosts.items())}


def test_hello_on_stock_nodes_runs_with_each_nodes_interpreter(
    netcluster: Any, project: str
) -> None:
    done, output = drive(netcluster, project, "hello")
    assert not done["failures"], done["failures"]
    hosts = ips(netcluster)
    seen = [json.loads(w["tail"][-1]) for w in done["workers"]]
    assert {hosts[w["ip_address"]] for w in done["workers"]} == {"h0", "h1", "h2"}
    for worker, what in zip(done["workers"], seen, strict=True):
        host = hosts[worker["ip_address"]]
        assert what["ip"] == worker["ip_address"]
        assert what["master"] == netcluster.hosts["h0"].ip
        if host != "h0":  # a stock node: its own Ray-only interpreter, cmlray shipped by Ray
            assert what["python"] == netcluster.python_rayonly
            assert what["path0"] == str(Path(netcluster.python_rayonly).parent)
            assert "runtime_resources" in what["cmlray"]
            assert "runtime_resources" in what["cwd"]  # the node's copy of the project
        assert f"[{worker['name']}] " + json.dumps(what) in output.replace("\\/", "/")


def test_script_and_data_files_on_every_node_and_files_come_home(
    netcluster: Any, project: str
) -> None:
    done, _ = drive(netcluster, project, "project")
    assert not done["failures"], done["failures"]
    home = netcluster.hosts["h0"].tmp_dir / "project" / "results"
    hosts = ips(netcluster)
    assert {hosts[w["ip_address"]] for w in done["workers"]} == {"h0", "h1", "h2"}
    for worker in done["workers"]:
        assert worker["tail"][0] == f"payload from the project {worker['ip_address']}"
        sent = home / f"out-{worker['id']}.txt"
        assert worker["tail"][1] == netcluster.host_path("h0", sent)
        assert sent.read_text() == f"made on {worker['ip_address']}"


def test_cml_network_example_across_hosts(netcluster: Any, project: str) -> None:
    done, _ = drive(netcluster, project, "network")
    assert not done["failures"], done["failures"]
    assert sorted(done["heard"]) == sorted(
        f"Hello from Worker {w['ip_address']}" for w in done["workers"]
    )
    assert all(w["tail"] == ["Worker received: Hello from Master"] for w in done["workers"])


def test_two_gpu_workers_see_distinct_gpus_on_the_gpu_host(netcluster: Any, project: str) -> None:
    done, _ = drive(netcluster, project, "gpus")
    assert not done["failures"], done["failures"]
    h2 = netcluster.hosts["h2"].ip
    assert sorted(w["tail"][-1] for w in done["workers"]) == [f"'0' {h2}", f"'1' {h2}"]


def test_sigkilled_session_ends_its_trees_on_every_host(netcluster: Any, project: str) -> None:
    driver = start_driver(netcluster, project, "wait")
    ready = json.loads(read_until(driver, "RESULT "))
    assert ready["ready"], ready
    hosts = ips(netcluster)
    assert {hosts[w["ip_address"]] for w in ready["workers"]} == {"h0", "h1", "h2"}
    assert all(netcluster.processes_matching(h, "sleep 312") for h in ("h1", "h2"))
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=30)
    record(
        "sigkilled session: trees on other hosts gone",
        wait_gone(netcluster, ["h0", "h1", "h2"], "sleep 31"),
    )
    assert len(netcluster.nodes()) == 3  # the cluster keeps running
    assert not wait_no_marked_processes()  # nothing of the session left on h0 either


def test_host_crash_fails_its_workers_and_queue_items_finish_elsewhere_once(
    netcluster: Any, project: str
) -> None:
    driver = start_driver(netcluster, project, "queue")
    running = json.loads(read_until(driver, "READY "))
    hosts = ips(netcluster)
    on_h2 = {w["id"] for w in running if hosts.get(w["ip_address"]) == "h2"}
    assert len(on_h2) == 2, running
    netcluster.crash("h2")
    try:
        crashed_at = time.time()
        assert driver.stdin is not None
        driver.stdin.write("go\n")
        driver.stdin.flush()
        done = json.loads(read_until(driver, "RESULT "))
        assert driver.wait(timeout=60) == 0
        lost = [w for w in done["failures"] if w["id"] in on_h2]
        assert [w["reason"] for w in lost] == ["node lost", "node lost"]
        record(
            "host crash: its workers reported node lost",
            max(_unix(w["finished_at"]) for w in lost) - crashed_at,
        )
        assert sorted(item for item, _ in done["results"]) == list(range(ITEMS))  # each once
        assert done["stats"]["done"] == ITEMS
        assert done["stats"]["requeued"] >= 2  # what the two lost workers held went back
    finally:
        netcluster.start_ray("h2")  # back for the tests after this one, whatever happened
        netcluster.wait_nodes(3)


def test_partitioned_host_reports_its_worker_lost_and_ends_its_program(
    netcluster: Any, project: str
) -> None:
    # The agent on a cut-off node gives up after CMLRAY_LEASE_S (30 s by default).
    driver = start_driver(netcluster, project, "partition", env={"CMLRAY_LEASE_S": str(LEASE_S)})
    running = json.loads(read_until(driver, "READY "))
    hosts = ips(netcluster)
    assert sorted(hosts[w["ip_address"]] for w in running) == ["h0", "h1", "h2"]
    assert netcluster.processes_matching("h1", "sleep 321")
    netcluster.partition("h1")
    cut_at = time.time()
    try:
        ended_s = wait_gone(netcluster, ["h1"], "sleep 321")
        record(f"partition: program on the cut host ended (lease {LEASE_S} s)", ended_s)
        done = json.loads(read_until(driver, "RESULT "))
        (lost,) = [w for w in done["failures"] if w["status"] == "failed"]
        assert hosts[lost["ip_address"]] == "h1"
        assert lost["reason"].startswith("node lost")
        record("partition: its worker reported lost", done["reported_at"] - cut_at)
        assert driver.wait(timeout=60) == 0
    finally:
        # Its node was declared dead: bring a fresh one up for whatever runs next. Its
        # old processes go before the link comes back, so that the declared-dead raylet
        # never reaches the GCS again (the GCS once aborted in gRPC while it did).
        netcluster.crash("h1")
        netcluster.heal("h1")
        netcluster.start_ray("h1")
        netcluster.wait_nodes(3)


def _unix(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
