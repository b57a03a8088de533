"""A session on the namespace cluster's session host (h0), for tests/test_multihost.py.

Usage: python multihost_driver.py ADDRESS MODE
Runs in a project dir of h0's own; prints the workers' output (the relay, in
plain text) and, last, one line ``RESULT <json>``. Modes:

- ``hello``: 6 workers of 1 CPU over the three hosts, each printing what it
  sees (its IP, interpreter, where cmlray comes from, cwd, PATH's head).
- ``project``: ``script="job.py"`` reading ``data.txt`` of the project on
  every node, then sending a file home with ``cmlray.worker.send_file``.
- ``network``: CML's example: the session listens on 0.0.0.0:6000, each
  worker connects to ``$CML_MASTER_IP:6000``.
- ``gpus``: two workers of one GPU each (only h2 has GPUs).
- ``wait``: 6 workers of 1 CPU (every host full) with process trees, then
  waits on stdin (the test SIGKILLs this process).
- ``queue``: a queue of 120 items of 0.5 s served by 6 workers of 1 CPU (two
  on each host: 10 s of work); prints ``READY`` when items flow, waits for a
  line on stdin (the test crashes h2 meanwhile), then joins.
- ``partition``: 3 workers of 2 CPUs (one on each host) running ``sleep 321``;
  prints ``READY``, then waits until each is decided (the test cuts h1 off
  meanwhile, and stops the others once h1's is reported lost).
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from typing import Any

import cmlray
from cmlray import _lifecycle

SEE = (
    "import json, os, sys, cmlray\n"
    "print(json.dumps({'ip': os.environ['CDSW_IP_ADDRESS'], 'python': sys.executable,"
    " 'cmlray': cmlray.__file__, 'cwd': os.getcwd(),"
    " 'path0': os.environ['PATH'].split(':')[0], 'master': os.environ['CML_MASTER_IP']}))\n"
)
JOB = (
    "import os, cmlray.worker\n"
    "print(open('data.txt').read().strip(), os.environ['CDSW_IP_ADDRESS'])\n"
    "name = 'out-' + os.environ['CDSW_ENGINE_ID'] + '.txt'\n"
    "with open(name, 'w') as f:\n"
    "    f.write('made on ' + os.environ['CDSW_IP_ADDRESS'])\n"
    "print(cmlray.worker.send_file(name, 'results/' + name))\n"
)
NETWORK_WORKER = (
    "import os, socket\n"
    "s = socket.create_connection((os.environ['CML_MASTER_IP'], 6000), timeout=30)\n"
    "s.sendall(b'Hello from Worker ' + os.environ['CDSW_IP_ADDRESS'].encode())\n"
    "print('Worker received:', s.recv(100).decode())\n"
)
ITEMS = 120
TREE = "!sleep 311 | cat & setsid sleep 312 & echo started; sleep 313"
SERVE = (
    "import os, time, cmlray.worker\n"
    "cmlray.worker.serve('items', lambda x: (time.sleep(0.5), (x, os.environ['CDSW_IP_ADDRESS']))[1])\n"
)


def result(value: Any) -> None:
    print("RESULT " + json.dumps(value), flush=True)


def hello() -> Any:
    workers = cmlray.launch_workers(6, cpu=1, memory=0.2, code=SEE)
    return cmlray.await_workers(workers, timeout_seconds=180)


def project() -> Any:
    workers = cmlray.launch_workers(6, cpu=1, memory=0.2, script="job.py")
    return cmlray.await_workers(workers, timeout_seconds=180)


def network() -> Any:
    server = socket.create_server(("0.0.0.0", 6000))
    heard: list[str] = []

    def serve() -> None:
        for _ in range(2):
            conn, _ = server.accept()
            with conn:
                heard.append(conn.recv(100).decode())
                conn.sendall(b"Hello from Master")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    workers = cmlray.launch_workers(2, cpu=2, memory=0.2, code=NETWORK_WORKER)
    done = cmlray.await_workers(workers, timeout_seconds=180)
    thread.join(timeout=60)
    server.close()
    return {**done, "heard": heard}


def gpus() -> Any:
    code = (
        "import os; print(repr(os.environ['CUDA_VISIBLE_DEVICES']), os.environ['CDSW_IP_ADDRESS'])"
    )
    workers = cmlray.launch_workers(2, cpu=0.5, memory=0.2, nvidia_gpu=1, code=code)
    return cmlray.await_workers(workers, timeout_seconds=180)


def wait() -> Any:
    workers = cmlray.launch_workers(6, cpu=1, memory=0.2, code=TREE)
    session = _lifecycle.require()
    ok = session.registry.wait_for(
        lambda: all("started" in session.registry.get(w["id"]).tail for w in workers), 180
    )
    result({"ready": ok, "workers": cmlray.list_workers()})
    sys.stdin.readline()  # killed meanwhile
    return None


def queue() -> Any:
    q = cmlray.Queue("items")
    q.put_many(range(ITEMS))
    q.close()
    workers = cmlray.launch_workers(6, cpu=1, memory=0.2, code=SERVE)
    registry = _lifecycle.require().registry
    ids = [w["id"] for w in workers]
    registry.wait_for(lambda: all(registry.status(i) == "running" for i in ids), 180)
    deadline = time.monotonic() + 180
    while not set(ids) <= _servers(q) and time.monotonic() < deadline:
        time.sleep(0.05)  # until every worker holds an item (h2's must lose theirs)
    print("READY", json.dumps(cmlray.list_workers()), flush=True)
    sys.stdin.readline()  # the test says when the host is down
    lost_at = time.time()
    q.join(timeout=300, expect_more_workers=True)
    results = q.results()
    final = cmlray.await_workers(workers, timeout_seconds=300)
    return {"lost_at": lost_at, "results": [r.result for r in results], "stats": q.stats(), **final}


def partition() -> Any:
    workers = cmlray.launch_workers(3, cpu=2, memory=0.2, code="!echo up; sleep 321")
    registry = _lifecycle.require().registry
    if not registry.wait_for(lambda: all("up" in registry.get(w["id"]).tail for w in workers), 180):
        print("NOT PLACED", json.dumps(_cluster_state()), flush=True)
    print("READY", json.dumps(cmlray.list_workers()), flush=True)
    ids = [w["id"] for w in workers]
    registry.wait_for(lambda: any(registry.status(i) == "failed" for i in ids), 300)
    reported_at = time.time()
    cmlray.stop_workers(*[i for i in ids if registry.status(i) != "failed"])
    return {"reported_at": reported_at, **cmlray.await_workers(workers, timeout_seconds=120)}


def _servers(q: cmlray.Queue) -> set[str]:
    """The workers that have asked the queue for items (from the agent hosting it)."""
    import ray

    return set(ray.get(q._host.queue_servers.remote()).get(q.name, ()))


def _cluster_state() -> Any:
    """What holds the cluster's CPUs (for a test that finds no room)."""
    import ray
    from ray.util import placement_group_table

    nodes = {n["NodeID"][:8]: [n["NodeManagerAddress"], n["Alive"]] for n in ray.nodes()}
    groups = [[g["name"], g["state"], g["bundles"]] for g in placement_group_table().values()]
    return {"nodes": nodes, "available": ray.available_resources(), "groups": groups}


MODES = {
    "hello": hello,
    "project": project,
    "network": network,
    "gpus": gpus,
    "wait": wait,
    "queue": queue,
    "partition": partition,
}


def main() -> None:
    address, mode = sys.argv[1], sys.argv[2]
    started = time.monotonic()
    cmlray.init(address=address)
    init_s = time.monotonic() - started
    try:
        value = MODES[mode]()
        if value is not None:
            result({"init_s": init_s, **value})
    finally:
        cmlray.shutdown()


if __name__ == "__main__":
    main()
