"""The two flagship examples attached to a cluster of real hosts, outputs on the session's host.

The nodes have Ray and the libraries the examples' workers import (as a
user's cluster image would: scikit-learn, aiohttp, ...), never cmlray nor the
checkout. The sweep runs from the checkout on h0 with ``--address``; every
worker holds a whole host (``--cpu 2``), so h1 and h2 train too, and their
snapshots must land in the study dir on h0, with the study's SQLite rows.
The crawler crawls a demo site served on h0's address (traffic stays
between the test's own hosts) into its SQLite database on h0.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.clusters import rayonly as _rayonly
from tests.clusters.netcluster import CHECKOUT, NamespaceCluster, cluster_fixture

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_leaks")]

# What the examples' workers import on a node, at the session's versions (a
# snapshot pickled on a node must load in the session).
NODE_LIBRARIES = _rayonly.pinned("scikit-learn", "joblib", "lz4", "numpy", "aiohttp", "selectolax")


@pytest.fixture(scope="module")
def cluster() -> Iterator[NamespaceCluster]:
    with cluster_fixture(extras=NODE_LIBRARIES) as made:
        yield made


def test_sweep_on_the_cluster_brings_every_snapshot_home(cluster: NamespaceCluster) -> None:
    runs = cluster.hosts["h0"].tmp_dir / "runs"
    argv = [sys.executable, "examples/hyperopt/sweep.py", "--model", "svc", "--folds", "3",
            "--workers", "3", "--cpu", "2", "--memory", "0.5", "--study", "cluster",
            "--runs-dir", cluster.host_path("h0", runs), "--address", cluster.address]  # fmt: skip
    done = cluster.run("h0", argv, cwd=str(CHECKOUT), timeout_s=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    study = runs / "cluster"
    with sqlite3.connect(study / "study.sqlite") as db:
        rows = db.execute("SELECT config_id, status, worker FROM trials").fetchall()
    assert rows and all(status == "done" for _, status, _ in rows)
    for config_id, _, _ in rows:  # every snapshot, wherever it was trained, is here
        for fold in range(3):
            assert (study / "trials" / config_id / f"fold-{fold}.joblib").stat().st_size > 0
        scores = json.loads((study / "trials" / config_id / "scores.json").read_text())
        assert scores["config_id"] == config_id
    # all three workers trained (a configuration's row names every worker of its folds)
    assert len({w for _, _, workers in rows for w in workers.split(",")}) == 3


def test_crawler_on_the_cluster_stores_the_site_on_the_session_host(
    cluster: NamespaceCluster,
) -> None:
    h0 = cluster.hosts["h0"]
    site = cluster.popen(
        "h0",
        [sys.executable, "examples/crawler/demo_site.py", "--pages", "120", "--host", h0.ip],
        cwd=str(CHECKOUT),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert site.stdout is not None
        url = site.stdout.readline().strip()
        assert url.startswith(f"http://{h0.ip}:")
        db = h0.tmp_dir / "crawl.db"
        argv = [sys.executable, "examples/crawler/crawl.py", url, "--workers", "3",
                "--worker-cpu", "2", "--delay", "0", "--per-host", "32",
                "--db", cluster.host_path("h0", db),
                "--stats-json", cluster.host_path("h0", h0.tmp_dir / "stats.json")]  # fmt: skip
        done = cluster.run("h0", argv, cwd=str(CHECKOUT), env={"RAY_ADDRESS": cluster.address},
                           timeout_s=600)  # fmt: skip
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    finally:
        site.terminate()
        site.wait(timeout=30)
    with sqlite3.connect(db) as conn:
        stored = conn.execute("SELECT COUNT(*) FROM pages").fetchone()[0]
        ok = conn.execute("SELECT COUNT(*) FROM pages WHERE status = 200").fetchone()[0]
    stats = json.loads((h0.tmp_dir / "stats.json").read_text())
    assert stored == stats["pages_in_db"] == stats["pages_stored"], stats
    assert ok >= 100, stored  # the demo site's pages, fetched by workers on every host


POOLS = """
import sys, time, joblib, cmlray, cmlray.joblib

def where(i):
    print(f"task {i} ran here", flush=True)
    time.sleep(2)  # long enough that the workers elsewhere start and take their share
    return i * i

cmlray.init(address=sys.argv[1])
with joblib.parallel_backend("cmlray", n_jobs=3, cpu=2, memory=0.5, name="jl"):
    squares = joblib.Parallel(batch_size=1)(joblib.delayed(where)(i) for i in range(6))
with cmlray.Executor(max_workers=3, cpu=2, memory=0.5, name="ex") as pool:
    squares += list(pool.map(where, range(6, 12)))
ips = {p: sorted({w["ip_address"] for w in cmlray.list_workers() if w["name"].startswith(p)})
       for p in ("jl-", "ex-")}
print("RESULT", squares == [i * i for i in range(12)], len(ips["jl-"]), len(ips["ex-"]))
cmlray.shutdown()
"""


def test_joblib_backend_and_executor_attached_to_the_cluster(cluster: NamespaceCluster) -> None:
    """Workers of 2 CPU hold a whole host each: every host runs tasks, their lines come home."""
    done = cluster.run("h0", [sys.executable, "-c", POOLS, cluster.address],
                       cwd=str(CHECKOUT), timeout_s=300)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "RESULT True 3 3" in done.stdout, done.stdout[-3000:]
    for i in range(12):  # relayed from whichever host ran it, prefixed with its worker
        assert f"] task {i} ran here" in done.stdout, done.stdout[-3000:]
