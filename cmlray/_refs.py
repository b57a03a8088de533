"""Worker references: an id, a worker dict, or a worker's name, by one rule everywhere.

``launch_workers`` returns dicts, CML code passes ids, people type names: the
four functions, ``logs`` and ``watch`` all accept any of them. A name that
several workers share is refused (give an id). What an unknown reference
means is each caller's: ``stop_workers`` answers it with a 404, the others
raise ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from cmlray._registry import Registry

KINDS = "worker ids, names or worker dicts"


def _text(value: object, argument: str) -> str:
    if isinstance(value, Mapping):
        value = value.get("id")
    if not isinstance(value, str):
        raise TypeError(f"{argument} must be {KINDS}, got {value!r}")
    return value


def resolve(registry: Registry | None, value: object, argument: str) -> tuple[str, str | None]:
    """``(what was given, the worker's id or None when this session has no such worker)``."""
    text = _text(value, argument)
    if registry is None:
        return text, None
    if text in registry:
        return text, text
    named = registry.named(text)
    if len(named) > 1:
        raise ValueError(f"{argument}: {len(named)} workers are named {text!r}: give an id")
    return text, named[0] if named else None


def as_list(values: object, argument: str) -> list[object]:
    """One reference or an iterable of them, as a list."""
    if isinstance(values, str | Mapping):
        return [values]
    if not isinstance(values, Iterable):
        raise TypeError(
            f"{argument} must be a worker id, name or dict, or a list of them, got {values!r}"
        )
    return list(values)


def known_ids(registry: Registry | None, values: object, argument: str) -> list[str]:
    """The ids of these references, duplicates dropped; ValueError naming the unknown ones."""
    resolved = [resolve(registry, value, argument) for value in as_list(values, argument)]
    unknown = [given for given, worker_id in resolved if worker_id is None]
    if unknown:
        shown = ", ".join(repr(u) for u in unknown)
        raise ValueError(f"{argument}: this session launched no worker {shown}")
    return list(dict.fromkeys(worker_id for _, worker_id in resolved if worker_id is not None))
