"""How cmlray's standard-library-only programs start: the guard, the fork server, the reaper.

These programs run beside Ray, not inside it: a guard under every worker,
one fork server per node agent, one reaper per own head (and the stand-in
for a minimal head's dashboard agent, ``_dashboardstub.py``, run by path). They start as
``python -I -S`` (isolated: no site-packages, no ``PYTHON*`` variables, no
user site), so they start in milliseconds and nothing in the user's
environment can break them. A tiny bootstrap appends the directory that
holds the ``cmlray`` package to ``sys.path`` (after the standard library)
and runs the module, which then imports its siblings as usual
(``from cmlray import _procfs``). That is the one way they load each other;
it works the same for an installed cmlray and for the copy an attached
session ships to a node (``_shipping.py``).

So the modules these programs import (``_guard``, ``_forkserver``,
``_reaper``, ``_proctree``, ``_procfs``, ``_usage``, ``_ports``,
``_channel``) and ``cmlray/__init__.py`` import nothing beyond the standard
library; ``tests/unit/test_standalone.py`` checks it.
"""

from __future__ import annotations

import os
import sys

PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_BOOTSTRAP = (
    "import runpy, sys; sys.path.append(sys.argv.pop(1)); "
    "runpy.run_module(sys.argv.pop(1), run_name='__main__', alter_sys=True)"
)


def command(
    module: str, *args: str, python: str = sys.executable, isolated: bool = True
) -> list[str]:
    """The command line that runs ``module`` (e.g. ``"cmlray._reaper"``) standalone.

    ``isolated=False``: with the site-packages and the ``PYTHON*`` variables
    (the home node's agent, ``_homeagent.py``, which loads what its calls need).
    """
    flags = ["-I", "-S"] if isolated else []
    return [python, *flags, "-c", _BOOTSTRAP, PACKAGE_ROOT, module, *args]
