"""What an attached session ships to the cluster's nodes, through Ray's runtime_env.

A node of a stock Ray cluster has Ray and nothing of cmlray, nor the
session's project. So an attached session's job carries:

- cmlray itself and its node-side dependency (cloudpickle), as ``py_modules``:
  every Ray worker process of the job, the node agents included, can import
  them, and so can the workers' programs (they inherit the agent's
  ``PYTHONPATH``). Installing cmlray on the nodes is not needed.
- the project directory, as the ``working_dir`` (as CML mounts the project in
  every engine): workers run in their node's copy, so relative ``script=``
  paths and data files resolve there. Version control, virtualenvs, caches
  and what ``.gitignore``/``.rayignore`` list stay behind; ``ship_project=False``
  turns it off where the nodes share the session's filesystem.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

DEFAULT_EXCLUDES = (
    ".git",
    ".hg",
    ".svn",
    ".venv",
    "venv",
    "__pycache__",
    "*.pyc",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
    ".nox",
    ".tox",
    ".ipynb_checkpoints",
)


def own_modules() -> list[str]:
    """The package directories a node needs to run cmlray's side of a worker."""
    import cloudpickle

    import cmlray

    return [os.path.dirname(os.path.abspath(m.__file__ or "")) for m in (cmlray, cloudpickle)]


def virtualenvs(project_dir: str) -> list[str]:
    """Top-level folders of the project that are virtualenvs, whatever their name."""
    found = []
    for entry in sorted(os.listdir(project_dir)):
        if os.path.isfile(os.path.join(project_dir, entry, "pyvenv.cfg")):
            found.append(entry)
    return found


def attached_runtime_env(
    user_env: Mapping[str, Any] | None,
    project_dir: str,
    *,
    ship_project: bool,
    excludes: Sequence[str] = (),
) -> dict[str, Any]:
    """The runtime_env of an attached session's job (the user's, completed)."""
    env = dict(user_env or {})
    env["py_modules"] = [*own_modules(), *env.get("py_modules", [])]
    if ship_project and "working_dir" not in env:
        env["working_dir"] = project_dir
        env["excludes"] = [
            *DEFAULT_EXCLUDES,
            *virtualenvs(project_dir),
            *excludes,
            *env.get("excludes", []),
        ]
    return env


def too_large_hint(project_dir: str) -> str:
    """What to say when Ray refuses the project for its size."""
    return (
        f"the project dir {project_dir} is too large to ship to the nodes: exclude large"
        " files with cmlray.init(project_excludes=[...]) or list them in .gitignore or"
        " .rayignore; where the nodes share the session's filesystem, pass"
        " cmlray.init(ship_project=False)"
    )
