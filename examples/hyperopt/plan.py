"""The sweep's command line and its checks: a :class:`Plan`, built before anything starts.

``sweep.py`` parses its arguments with :func:`build_parser` and hands them to
:func:`prepare`, which checks every input (the model, the search space, the
sampler and its trials, the scorer, the folds against the dataset's smallest
class, the study's name and protocol) and raises ``UsageError`` (exit code
2) before a session or a worker starts.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from estimators import MODELS, ModelSpec, UsageError, get_model, load_dataset
from samplers import require_optuna
from searchspace import Space, check_against, grid, parse_space, read_space_file
from studydb import StudyStore

SWEEP = Path(__file__).resolve().parent / "sweep.py"
DEFAULT_TRIALS = 30
_STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class Plan:
    """Everything a sweep needs, checked: built by :func:`prepare` before anything starts."""

    model: ModelSpec
    space: Space
    sampler: str
    trials: int | None
    seed: int
    workers: int
    cpu: float
    memory: float
    folds: int
    scoring: str
    study: str
    study_dir: Path
    address: str | None = None
    command: str = ""

    def protocol(self) -> dict[str, Any]:
        """What makes two scores comparable: a study keeps one protocol."""
        return {
            "model": self.model.name,
            "dataset": self.model.dataset,
            "folds": self.folds,
            "scoring": self.scoring,
            "cv": "StratifiedKFold(shuffle=True, random_state=0)",
        }


# ---------------------------------------------------------------- command line


def _positive(kind: type[int] | type[float], least: float = 0.0, strict: bool = True) -> Any:
    """An argparse type: a number of ``kind`` above ``least`` (or equal, when not strict)."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if not (value > least if strict else value >= least):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {least:g}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    """The command line; defaults run a ~1 minute grid sweep on 2 workers."""
    models = "\n".join(f"  {name:<18} {spec.about}" for name, spec in MODELS.items())
    parser = argparse.ArgumentParser(
        prog="sweep.py",
        description="A hyperparameter sweep on cmlray workers (scikit-learn, k-fold CV).",
        epilog=f"models:\n{models}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--model", default="gradient_boosting", help="what to tune (default gradient_boosting)")
    add("--space", metavar="FILE", help="search space, .json or .toml (default: the model's)")
    add("--sampler", choices=("grid", "random", "tpe"), default="grid", help="default grid")
    add(
        "--trials",
        type=_positive(int),
        help=f"random/tpe: configurations (default {DEFAULT_TRIALS})",
    )
    add(
        "--seed",
        type=_positive(int, strict=False),
        default=0,
        help="random/tpe sampler seed (default 0)",
    )
    add("--workers", type=_positive(int), default=2, help="workers to launch (default 2)")
    add("--cpu", type=_positive(float), default=1.0, help="cores per worker (default 1)")
    add("--memory", type=_positive(float), default=1.0, help="GiB per worker (default 1)")
    add("--folds", type=_positive(int), default=5, help="cross-validation folds (default 5)")
    add("--scoring", default="accuracy", help="a scikit-learn scorer name (default accuracy)")
    add("--study", help="study name (default <model>-<sampler>); the same name resumes")
    add("--runs-dir", default="runs", help="where studies live (default ./runs)")
    add("--address", help="a Ray cluster to attach to (default: a head of the session's own)")
    return parser


def _resume_command(argv: Sequence[str]) -> str:
    """The command line that runs this study again (and so resumes it)."""
    script = sys.argv[0] if sys.argv[0].endswith("sweep.py") else str(SWEEP)
    return shlex.join(["python", script, *argv])


# ---------------------------------------------------------------- checks


def _load_space(model: ModelSpec, path: str | None) -> Space:
    raw = read_space_file(path) if path else model.space
    space = parse_space(raw, path or f"the default space of {model.name}")
    check_against(space, model)
    return space


def _check_scoring(scoring: str) -> None:
    from sklearn.metrics import get_scorer

    try:
        get_scorer(scoring)
    except ValueError:
        raise UsageError(f"unknown --scoring {scoring!r}: use a scikit-learn scorer name") from None


def _check_folds(model: ModelSpec, folds: int) -> None:
    import numpy as np

    smallest = int(np.bincount(load_dataset(model.dataset)[1]).min())
    if not 2 <= folds <= smallest:
        raise UsageError(
            f"--folds must be between 2 and {smallest} (the smallest class of"
            f" {model.dataset}), got {folds}"
        )


def _check_sampler(args: argparse.Namespace, space: Space) -> int | None:
    """The number of trials for random/tpe; grid takes the whole space."""
    if args.sampler == "grid":
        if args.trials is not None:
            raise UsageError("--trials is for --sampler random or tpe: a grid runs every point")
        grid(space)  # a range without num cannot be gridded: say so now
        return None
    if args.sampler == "tpe":
        require_optuna()
    return int(args.trials or DEFAULT_TRIALS)


def _study_name(args: argparse.Namespace) -> str:
    name = str(args.study or f"{args.model}-{args.sampler}")
    if not _STUDY_NAME.fullmatch(name):
        raise UsageError(f"--study {name!r}: use letters, digits, '.', '_' and '-'")
    return name


def prepare(args: argparse.Namespace, argv: Sequence[str] = ()) -> Plan:
    """Check every input and build the plan; a UsageError before anything starts."""
    model = get_model(args.model)
    space = _load_space(model, args.space)
    trials = _check_sampler(args, space)
    _check_scoring(args.scoring)
    _check_folds(model, args.folds)
    study = _study_name(args)
    plan = Plan(
        model=model, space=space, sampler=args.sampler, trials=trials, seed=args.seed,
        workers=args.workers, cpu=args.cpu, memory=args.memory, folds=args.folds,
        scoring=args.scoring, study=study, study_dir=Path(args.runs_dir).resolve() / study,
        address=args.address, command=_resume_command(argv),
    )  # fmt: skip
    StudyStore(plan.study_dir).check_protocol(plan.protocol())
    return plan
