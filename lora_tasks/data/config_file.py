"""The competition config file: ``competitions/<slug>.toml``, its strict schema, and where it lives.

Why strict: a misspelt key that is silently ignored costs a whole training run, so every key,
type and choice is checked and an unknown key is an error that lists the allowed ones. This
module knows the file format only; :mod:`lora_tasks.data.competition` combines a file with what
the data says.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from pydantic import ValidationError

from lora_tasks.ensemble.thresholds import check_setting
from lora_tasks.metrics import TASK_TYPES, get_metric

from .duration import parse_duration
from .overrides import TrainingOverrides, overrides_problem
from .submission_format import DTYPES, PREDICTIONS

COMPETITIONS_ENV = "KAGGLE_LORA_COMPETITIONS_DIR"
DEFAULT_SCHEDULE = "0 4 * * 1"  # Mondays 04:00: weekly re-training
TRANSFORMS = ("none", "log1p")
#: Task kinds this layer infers. TODO-merge: switch to the ``Task`` enum of lora_tasks/task.py.
MULTITARGET_REGRESSION = "multitarget_regression"
TASKS: tuple[str, ...] = (*TASK_TYPES, MULTITARGET_REGRESSION)
REGRESSION_TASKS = ("regression", MULTITARGET_REGRESSION)


class CompetitionConfigError(ValueError):
    """A competition config or its data cannot be used; the message names the file and the fix."""


# ------------------------------------------------------------------------------ strict schema

_SCALAR_KEYS: dict[str, type | tuple[type, ...]] = {
    "slug": str,
    "title": str,
    "task": str,
    "id_column": str,
    "metric": str,
    "schedule": str,
}
_LIST_KEYS = ("aliases", "target_columns", "text_columns", "drop_columns")
_TABLE_KEYS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "files": {"train": str, "test": str, "sample_submission": str},
    "submission": {
        "columns": list,
        "dtype": str,
        "prediction": str,
        "threshold": (int, float, str),
        "target_transform": str,
    },
    "serialization": {
        "missing": str,
        "missing_text": str,
        "float_digits": int,
        "text_first": bool,
        "label_text": bool,
        "rename": dict,
        "omit_common": (int, float),
        "clean_text": bool,
    },
}
#: ``[training]``: the competition's recipe, on top of the auto-configuration rules (a run's own
#: overrides still win). ``top_layers`` is a number or ``"all"``; ``adapter_sets`` are more fold
#: adapter sets blended as members (``"expressive"``, ``"balanced@all-mpnet-base-v2:epochs=2"``).
TRAINING_SETTINGS: dict[str, type | tuple[type, ...]] = {
    "preset": str,
    "max_seq_len": int,
    "batch_size": int,
    "epochs": int,
    "learning_rate": (int, float),
    "n_folds": int,
    "class_weight": str,
    "top_layers": (int, str),
    "compute_dtype": str,
}
#: ``time_limit`` (``"20m"``, ``"1h"``, seconds) bounds the whole run when ``--time-limit`` is not given.
_TABLE_KEYS["training"] = {**TRAINING_SETTINGS, "adapter_sets": list, "time_limit": (str, int, float)}
#: ``[features]``: ``disable`` lists generated features (by name, as ``kaggle-lora plan`` shows
#: them), kinds (``"code_prefix"``, ``"target_encoding"``, ...) or ``"all"`` to switch off.
_TABLE_KEYS["features"] = {"disable": list}
ALLOWED_KEYS: tuple[str, ...] = (*_SCALAR_KEYS, *_LIST_KEYS, *_TABLE_KEYS)
_CHOICES = {
    ("", "task"): TASKS,
    ("submission", "prediction"): PREDICTIONS,
    ("submission", "dtype"): DTYPES,
    ("submission", "target_transform"): TRANSFORMS,
    ("serialization", "missing"): ("skip", "say"),
}


def _fail(source: str, message: str) -> CompetitionConfigError:
    return CompetitionConfigError(f"{source}: {message}")


def _check_type(source: str, key: str, value: Any, expected: type | tuple[type, ...]) -> None:
    if isinstance(value, bool) and expected is not bool and not (isinstance(expected, tuple) and bool in expected):
        ok = False
    else:
        ok = isinstance(value, expected)
    if not ok:
        names = expected.__name__ if isinstance(expected, type) else " or ".join(t.__name__ for t in expected)
        raise _fail(source, f"`{key}` must be {names}, got {type(value).__name__} {value!r}.")


def validate_config_dict(raw: Mapping[str, Any], source: str = "config") -> dict[str, Any]:
    """Check keys, types and choices of a parsed config; return a normalized copy.

    An unknown key is an error that names it and lists the allowed keys (a typo must not be
    silently ignored). ``target_columns`` also accepts a single string.
    """
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _SCALAR_KEYS:
            _check_type(source, key, value, _SCALAR_KEYS[key])
            out[key] = value
        elif key in _LIST_KEYS:
            if isinstance(value, str) and key in ("target_columns", "aliases"):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise _fail(source, f"`{key}` must be a list of strings, got {value!r}.")
            out[key] = list(value)
        elif key in _TABLE_KEYS:
            if not isinstance(value, Mapping):
                raise _fail(source, f"[{key}] must be a table, got {type(value).__name__}.")
            allowed = _TABLE_KEYS[key]
            table: dict[str, Any] = {}
            for sub, sub_value in value.items():
                if sub not in allowed:
                    raise _fail(
                        source, f"unknown key `{key}.{sub}`; allowed keys in [{key}]: {', '.join(allowed)}."
                    )
                _check_type(source, f"{key}.{sub}", sub_value, allowed[sub])
                table[sub] = sub_value
            out[key] = table
        else:
            raise _fail(source, f"unknown key `{key}`; allowed keys: {', '.join(ALLOWED_KEYS)}.")
    for (table, key), choices in _CHOICES.items():
        value = out.get(key) if not table else out.get(table, {}).get(key)
        if value is not None and value not in choices:
            name = key if not table else f"{table}.{key}"
            raise _fail(source, f"`{name}` is {value!r}; expected one of {', '.join(choices)}.")
    if "metric" in out:
        try:
            out["metric"] = get_metric(out["metric"]).name
        except KeyError as exc:
            raise _fail(source, str(exc.args[0])) from None
    if "threshold" in out.get("submission", {}):
        try:
            out["submission"]["threshold"] = check_setting(out["submission"]["threshold"])
        except ValueError as exc:
            raise _fail(source, f"submission.{exc.args[0]}") from None
    if "schedule" in out and not _is_cron(out["schedule"]):
        raise _fail(source, f"`schedule` {out['schedule']!r} is not a 5-field cron expression (e.g. {DEFAULT_SCHEDULE!r}).")
    _check_training(source, out.get("training", {}))
    disable = out.get("features", {}).get("disable", [])
    if not all(isinstance(v, str) and v for v in disable):
        raise _fail(source, f"`features.disable` must be a list of feature names or kinds (strings), got {disable!r}.")
    rename = out.get("serialization", {}).get("rename", {})
    if not all(isinstance(v, str) for v in rename.values()):
        raise _fail(source, "`serialization.rename` maps column names to readable names (strings).")
    return out


def _check_training(source: str, training: Mapping[str, Any]) -> None:
    """The settings' rules are :class:`~lora_tasks.data.overrides.TrainingOverrides`' (shared with
    a run's options); the types were checked above."""
    try:
        TrainingOverrides(**{k: v for k, v in training.items() if k in TRAINING_SETTINGS})
    except ValidationError as exc:
        raise _fail(source, overrides_problem(exc, "training.")) from None
    sets = training.get("adapter_sets", [])
    if not all(isinstance(v, str) for v in sets):
        raise _fail(source, f"`training.adapter_sets` must be a list of strings like \"expressive\", got {sets!r}.")
    if "time_limit" in training:
        try:
            parse_duration(training["time_limit"])
        except (TypeError, ValueError) as exc:
            raise _fail(source, f"`training.time_limit`: {exc}") from None


_CRON_FIELD = re.compile(r"^(\*|\d+(-\d+)?)(/\d+)?(,(\*|\d+(-\d+)?)(/\d+)?)*$|^[A-Za-z]{3}(-[A-Za-z]{3})?$")


def _is_cron(expr: str) -> bool:
    parts = expr.split()
    return len(parts) == 5 and all(_CRON_FIELD.match(p) for p in parts)



# ------------------------------------------------------------------------------ finding config files


def shipped_competitions_dir() -> Path:
    """The recipes that come with the package: the repo's ``competitions/`` (a checkout or an
    editable install: the files you edit), else the copy a wheel ships as
    ``lora_tasks/_competitions`` (a link to ``competitions/`` in the repo)."""
    import lora_tasks

    package = Path(lora_tasks.__file__).resolve().parent
    repo = package.parent / "competitions"
    return repo if repo.is_dir() else package / "_competitions"


def default_competitions_dir() -> Path:
    """The folder of ``<slug>.toml`` files ``kaggle-lora serve`` lists: ``$KAGGLE_LORA_COMPETITIONS_DIR``,
    else the shipped recipes (:func:`shipped_competitions_dir`)."""
    env = os.environ.get(COMPETITIONS_ENV)
    return Path(env).expanduser() if env else shipped_competitions_dir()


#: Where a user's own configs go: ``competitions/<slug>.toml`` in the working directory.
USER_CONFIG_DIR = "competitions"
#: How the plan names where a config file was found (the "from" column of ``kaggle-lora plan``).
ORIGIN_OPTION = "--config"
ORIGIN_WORKING_DIR = "./competitions/ (working directory)"
ORIGIN_ENV = f"${COMPETITIONS_ENV}"
ORIGIN_SHIPPED = "shipped recipe"


@dataclass(frozen=True)
class ConfigLocation:
    """A config file and where it was found (one of the ``ORIGIN_*`` texts)."""

    path: Path
    origin: str


def config_search_dirs(cwd: Path | None = None) -> list[tuple[Path, str]]:
    """The folders searched for ``<slug>.toml``, first match wins: ``./competitions/`` (the
    user's own, next to where they run), ``$KAGGLE_LORA_COMPETITIONS_DIR``, then the shipped
    recipes. The variable adds a folder; it does not hide the shipped ones. A folder listed twice
    (running inside a checkout, where ``./competitions`` is the shipped folder) is kept once,
    under its later name."""
    found: list[tuple[Path, str]] = [((cwd or Path.cwd()) / USER_CONFIG_DIR, ORIGIN_WORKING_DIR)]
    env = os.environ.get(COMPETITIONS_ENV)
    if env:
        found.append((Path(env).expanduser(), ORIGIN_ENV))
    found.append((shipped_competitions_dir(), ORIGIN_SHIPPED))
    out: list[tuple[Path, str]] = []
    for i, (folder, origin) in enumerate(found):
        real = folder.resolve()
        if any(real == later.resolve() for later, _ in found[i + 1:]):
            continue
        out.append((folder, origin))
    return out


def locate_config(name: str, directory: Path | None = None, *, cwd: Path | None = None) -> ConfigLocation | None:
    """The config file for a slug or alias and where it was found, or None (then everything is
    inferred). ``directory``: search that folder only (tests, ``kaggle-lora serve``)."""
    folders = [(directory, str(directory))] if directory is not None else config_search_dirs(cwd)
    for folder, origin in folders:
        path = list_competitions(folder).get(name)
        if path is not None:
            return ConfigLocation(path.resolve(), origin)
    return None


def read_config_file(path: Path) -> dict[str, Any]:
    """Parse and validate one config file."""
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise CompetitionConfigError(f"Config file {path} does not exist; fix the path (--config PATH).") from None
    except tomllib.TOMLDecodeError as exc:
        raise CompetitionConfigError(f"{path}: not valid TOML ({exc}); fix the syntax.") from None
    return validate_config_dict(raw, source=str(path))


def list_competitions(directory: Path | None = None) -> dict[str, Path]:
    """Every name a config in ``directory`` answers to (file stem, slug, aliases) -> its file."""
    directory = directory or default_competitions_dir()
    names: dict[str, Path] = {}
    if not directory.is_dir():
        return names
    for path in sorted(directory.glob("*.toml")):
        raw = read_config_file(path)
        for name in (path.stem, raw.get("slug", path.stem), *raw.get("aliases", [])):
            other = names.get(name)
            if other is not None and other != path:
                raise CompetitionConfigError(f"Name {name!r} is claimed by both {other} and {path}; remove one alias.")
            names[name] = path
    return names


def find_config_file(name: str, directory: Path | None = None) -> Path | None:
    """The config file for a slug or alias, or None (then everything is inferred). Without
    ``directory``, the folders of :func:`config_search_dirs` in order."""
    found = locate_config(name, directory)
    return found.path if found is not None else None


def fix_text(slug: str, line: str, flag: str | None = None) -> str:
    """The one fix of an error inference cannot solve, as text to copy: the flag, and the config
    line in the user's own file (``competitions/<slug>.toml`` where ``kaggle-lora`` runs, or the
    file given with ``--config``), e.g. ``Fix: pass `--target label` or write
    `target_columns = ["label"]` in competitions/<slug>.toml.``"""
    where = f"competitions/{slug}.toml (next to where you run kaggle-lora, or the file of --config)"
    return f"Fix: pass `{flag}` or write `{line}` in {where}." if flag else f"Fix: write `{line}` in {where}."


def toml_list(values: list[str] | tuple[str, ...]) -> str:
    """``["a", "b"]`` as TOML writes a list of strings."""
    return "[" + ", ".join(f'"{v}"' for v in values) + "]"
