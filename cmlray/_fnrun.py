"""The program of a worker launched with ``fn=``: run the function, report its result.

Started by the worker's guard as ``python -u -c FN_PROGRAM`` (``_spec.py``;
``-c`` rather than ``-m``, so that it is forked from its node's zygote, which
has this module's imports loaded: ``_zygoteboot.py``). The function
and its arguments come from its node agent over the local channel (cloudpickled
in the session); the return value goes back the same way and lands in the
worker's ``result``. An exception is printed (so it is in the worker's
``tail``), named in its ``reason``, and the program exits 1.
"""

from __future__ import annotations

import sys
import traceback

import cloudpickle

from cmlray.worker import client


def main() -> int:
    channel = client()
    fn, args, kwargs = cloudpickle.loads(channel.request("payload"))
    try:
        result = fn(*args, **kwargs)
        payload = cloudpickle.dumps(result)
    except Exception as exc:
        traceback.print_exc()
        channel.request("error", f"{type(exc).__name__}: {exc}")
        return 1
    channel.request("result", bytes(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
