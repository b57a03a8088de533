"""A function as a notebook defines it: pickled by value, with the big global it reads.

Registered with cloudpickle by value here, so workers, whose working dir is
the session's project dir where ``tests`` is not importable, get the
function and its 2 MiB global in its pickle (what ``cmlray/_shipfn.py``
sends once instead of with every call).
"""

from __future__ import annotations

import sys

import cloudpickle

cloudpickle.register_pickle_by_value(sys.modules[__name__])

BIG = bytes(range(256)) * 8192  # 2 MiB that uses_big carries along


def uses_big(i: int) -> int:
    return BIG[i] + i
