"""The standard-library-only programs start bare, and import nothing but the standard library.

The guard, the fork server and the reaper run as ``python -I -S`` beside Ray
(``cmlray/_standalone.py``): no site-packages, so an import of Ray,
cloudpickle or Rich there would fail on a node, and would cost the start-up
time this design exists to save.
"""

from __future__ import annotations

import json
import subprocess
import sys

from cmlray import _standalone

STANDALONE = [
    "_guard",
    "_forkserver",
    "_zygote",
    "_zygoteboot",
    "_reaper",
    "_dashboardstub",
    "_proctree",
    "_procfs",
    "_usage",
    "_ports",
    "_channel",
]
PROBE = """
import json, sys
for name in {modules!r}:
    __import__("cmlray." + name)
print(json.dumps(sorted({{m.split(".")[0] for m in sys.modules}} - set(sys.stdlib_module_names) - {{"__main__"}})))
"""


def test_standalone_modules_import_only_the_standard_library_and_cmlray() -> None:
    """Loaded as the bootstrap loads them: a bare interpreter, the package's parent on the path."""
    path = f"import sys; sys.path.append({_standalone.PACKAGE_ROOT!r})\n"
    probe = PROBE.format(modules=STANDALONE)
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", path + probe], capture_output=True, text=True, check=True
    )
    assert json.loads(done.stdout) == ["cmlray"]


def test_a_standalone_module_runs_with_its_arguments() -> None:
    """The bootstrap runs the module as __main__ with the arguments after its name."""
    done = subprocess.run(
        _standalone.command("cmlray._reaper"), input="", capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr  # an empty plan: nothing to sweep, exits 0
