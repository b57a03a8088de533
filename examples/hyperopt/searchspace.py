"""Search spaces: read from JSON or TOML, check, expand to a grid or a random sample.

A space maps each estimator parameter to either a list of values or a range::

    # space.toml
    n_estimators = [50, 100, 200]
    max_depth = [2, 3]
    learning_rate = { low = 0.01, high = 0.3, log = true, num = 4 }

A range has ``low`` and ``high`` (inclusive), optionally ``log`` (sample on a
log scale), ``type`` (``"int"`` or ``"float"``; default: int when both bounds
are whole numbers written without a decimal point) and ``num`` (how many
evenly spaced points the grid sampler takes; random and tpe draw from the
whole range). TOML has no null: use JSON for a ``None`` value.

Every problem is a :class:`UsageError` naming the file, the parameter and
what was expected, raised before anything is launched.
"""

from __future__ import annotations

import hashlib
import json
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from estimators import ModelSpec, UsageError

_SCALARS = (str, int, float, bool, type(None))
_RANGE_KEYS = {"low", "high", "log", "num", "type"}
_FIXED = {"n_jobs": "n_jobs is fixed to 1: the workers are the parallelism"}


@dataclass(frozen=True)
class Choice:
    """A parameter that takes one of a list of values."""

    values: tuple[Any, ...]

    def points(self, name: str) -> list[Any]:
        """The values, in the order given (a grid takes all of them)."""
        return list(self.values)

    def draw(self, rng: np.random.Generator) -> Any:
        """One value, uniformly at random."""
        return self.values[int(rng.integers(len(self.values)))]


@dataclass(frozen=True)
class Range:
    """A numeric parameter between ``low`` and ``high`` (inclusive)."""

    low: float
    high: float
    log: bool = False
    integer: bool = False
    num: int | None = None

    def points(self, name: str) -> list[Any]:
        """``num`` evenly spaced points (geometric when ``log``) for the grid sampler."""
        if self.num is None:
            raise UsageError(
                f"the grid sampler needs values for {name!r}: give a list, or num = N points"
                " for its range (or use --sampler random/tpe)"
            )
        spaced = np.geomspace if self.log else np.linspace
        raw = [float(x) for x in spaced(self.low, self.high, self.num)]
        return list(dict.fromkeys(round(x) for x in raw)) if self.integer else raw

    def draw(self, rng: np.random.Generator) -> Any:
        """One value, uniformly at random (log-uniformly when ``log``)."""
        if self.log:
            value = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        else:
            value = float(rng.uniform(self.low, self.high))
        if self.integer:
            return int(min(self.high, max(self.low, round(value))))
        return value


Dimension = Choice | Range
Space = dict[str, Dimension]


def read_space_file(path: str) -> dict[str, Any]:
    """The raw mapping in a ``.json`` or ``.toml`` space file."""
    file = Path(path)
    if file.suffix not in (".json", ".toml"):
        raise UsageError(f"space file {path!r} must end in .json or .toml")
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read space file {path!r}: {exc.strerror or exc}") from None
    try:
        raw = json.loads(text) if file.suffix == ".json" else tomllib.loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise UsageError(f"space file {path!r} is not valid JSON ({where}: {exc.msg})") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"space file {path!r} is not valid TOML ({exc})") from None
    if not isinstance(raw, dict):
        raise UsageError(f"space file {path!r} must hold a mapping of parameter to values")
    return raw


def parse_space(raw: dict[str, Any], source: str) -> Space:
    """Check a raw mapping's shape and turn it into a :data:`Space` (sorted by name)."""
    if not raw:
        raise UsageError(f"the search space ({source}) is empty: give at least one parameter")
    return {name: _dimension(name, raw[name], source) for name in sorted(raw)}


def _dimension(name: str, value: Any, source: str) -> Dimension:
    if isinstance(value, list):
        if not value:
            raise UsageError(f"parameter {name!r} ({source}) has no values: the space is empty")
        bad = [v for v in value if not isinstance(v, _SCALARS)]
        if bad:
            raise UsageError(
                f"parameter {name!r} ({source}): values must be scalars, got {bad[0]!r}"
            )
        return Choice(tuple(value))
    if isinstance(value, dict):
        return _range(name, value, source)
    raise UsageError(
        f"parameter {name!r} ({source}) must be a list of values or a range"
        f" {{low, high[, log, num, type]}}, got {value!r}"
    )


def _number(name: str, key: str, value: Any, source: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise UsageError(f"parameter {name!r} ({source}): {key} must be a number, got {value!r}")
    return value


def _range(name: str, spec: dict[str, Any], source: str) -> Range:
    unknown = set(spec) - _RANGE_KEYS
    if unknown or "low" not in spec or "high" not in spec:
        raise UsageError(
            f"parameter {name!r} ({source}): a range takes low, high and optionally log, num,"
            f" type; got {sorted(spec)}"
        )
    low, high = (_number(name, key, spec[key], source) for key in ("low", "high"))
    kind = spec.get("type", "int" if isinstance(low, int) and isinstance(high, int) else "float")
    num, log = spec.get("num"), spec.get("log", False)
    if kind not in ("int", "float") or not isinstance(log, bool):
        raise UsageError(f"parameter {name!r} ({source}): type is int or float, log true or false")
    if not low < high or (log and low <= 0):
        raise UsageError(f"parameter {name!r} ({source}): need low < high (and low > 0 with log)")
    if num is not None and (isinstance(num, bool) or not isinstance(num, int) or num < 1):
        raise UsageError(f"parameter {name!r} ({source}): num must be a whole number >= 1")
    return Range(low, high, log=log, integer=kind == "int", num=num)


def check_against(space: Space, model: ModelSpec) -> None:
    """Every parameter exists on the model's estimator and its values pass its checks."""
    estimator = model.factory()
    known = estimator.get_params()
    for name, dimension in space.items():
        if name in _FIXED:
            raise UsageError(f"parameter {name!r} cannot be tuned: {_FIXED[name]}")
        if name not in known:
            raise UsageError(
                f"unknown parameter {name!r} for model {model.name}"
                f" ({type(estimator).__name__}); it has: {', '.join(sorted(known))}"
            )
        for value in _probe_values(name, dimension):
            _check_value(model, name, value)


def _probe_values(name: str, dimension: Dimension) -> list[Any]:
    if isinstance(dimension, Choice):
        return list(dimension.values)
    bounds = [dimension.low, dimension.high]
    return bounds if dimension.num is None else dimension.points(name) + bounds


def _check_value(model: ModelSpec, name: str, value: Any) -> None:
    """scikit-learn's own parameter validation (what fit() would say), run now."""
    estimator = model.build({name: value})
    validate = getattr(estimator, "_validate_params", None)
    if validate is None:  # scikit-learn < 1.2: fit() will tell
        return
    try:
        validate()
    except (TypeError, ValueError) as exc:
        raise UsageError(f"bad value {value!r} for parameter {name!r}: {exc}") from None


def grid(space: Space) -> list[dict[str, Any]]:
    """Every configuration, in scikit-learn's ``ParameterGrid`` order (as GridSearchCV)."""
    from sklearn.model_selection import ParameterGrid

    return list(ParameterGrid({name: dim.points(name) for name, dim in space.items()}))


def grid_size(space: Space) -> int | None:
    """How many configurations the space holds, or None when a range makes it unbounded."""
    size = 1
    for dim in space.values():
        if isinstance(dim, Range) and not dim.integer:
            return None
        size *= len(dim.values) if isinstance(dim, Choice) else int(dim.high - dim.low + 1)
    return size


def sample(space: Space, n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` distinct random configurations (fewer if the space is smaller), seeded.

    The same space, ``n`` and seed give the same list: a study resumes.
    """
    rng = np.random.default_rng(seed)
    found: dict[str, dict[str, Any]] = {}
    for _ in range(100 * n):
        params = {name: dim.draw(rng) for name, dim in space.items()}
        found.setdefault(canonical(params), params)
        if len(found) == n:
            break
    return list(found.values())


def canonical(params: dict[str, Any]) -> str:
    """A configuration as canonical JSON (sorted keys): its identity."""
    return json.dumps(params, sort_keys=True, separators=(",", ":"))


def config_id(model: str, params: dict[str, Any]) -> str:
    """A short stable id for a configuration of a model: its directory name."""
    return hashlib.sha1(f"{model}:{canonical(params)}".encode()).hexdigest()[:12]


def describe(params: dict[str, Any]) -> str:
    """``a=1 b=0.1 c='x'`` for display (floats to 4 significant digits)."""
    return " ".join(f"{key}={_shown(value)}" for key, value in sorted(params.items()))


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return repr(value)
