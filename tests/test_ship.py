"""Shipping the project to the nodes: ``init(runtime_env={"working_dir": ...})``.

On a remote cluster the session's project directory does not exist on the
workers' nodes; Ray's runtime_env ``working_dir`` uploads it, and workers run
in their node's copy, where relative script paths and data files resolve.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import cmlray
from tests.support.console import Captured

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shipped(
    no_leaks: None, captured: Captured, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    project = tmp_path_factory.mktemp("shipped")
    (project / "data.txt").write_text("payload from the project\n")
    (project / "job.py").write_text(
        "import os\nprint(open('data.txt').read().strip())\nprint(os.getcwd())\n"
    )
    runtime_env = {
        "working_dir": str(project),
        "env_vars": {"SHIPPED_A": "job", "SHIPPED_B": "job"},
    }
    cmlray.init(num_cpus=2, runtime_env=runtime_env, console=captured.console)
    try:
        yield project
    finally:
        cmlray.shutdown()


def test_workers_run_in_their_nodes_copy_of_the_project(shipped: Path) -> None:
    (worker,) = cmlray.await_workers(
        cmlray.launch_workers(1, cpu=0.5, memory=0.2, script="job.py")
    )["workers"]
    data, cwd = worker["tail"]
    assert data == "payload from the project"
    assert cwd != str(shipped) and os.path.basename(cwd) != ""  # a copy Ray unpacked


def test_the_runtime_envs_env_vars_reach_every_worker_its_own_env_first(shipped: Path) -> None:
    code = "import os; print(os.environ['SHIPPED_A'], os.environ['SHIPPED_B'])"
    workers = cmlray.launch_workers(
        2, cpu=0.25, memory=0.1, code=code, env={"SHIPPED_B": "worker"}
    ) + cmlray.launch_workers(1, cpu=0.25, memory=0.1, code=code)
    tails = [w["tail"] for w in cmlray.await_workers(workers)["workers"]]
    assert tails == [["job worker"], ["job worker"], ["job job"]]


def test_bad_runtime_env_is_refused_before_anything_starts() -> None:
    with pytest.raises(
        ValueError, match=r"runtime_env\['working_dir'\] must be an existing directory"
    ):
        cmlray.init(runtime_env={"working_dir": "/no/such/dir"})
    with pytest.raises(TypeError, match=r"runtime_env must be a dict"):
        cmlray.init(runtime_env=["working_dir"])
    with pytest.raises(TypeError, match=r"runtime_env\['env_vars'\] must map names to strings"):
        cmlray.init(runtime_env={"env_vars": {"N": 1}})
