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
from pathlib import Path
from typing import Any, Mapping

from lora_tasks.ensemble.thresholds import check_setting
from lora_tasks.metrics import TASK_TYPES, get_metric

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
    ("training", "compute_dtype"): ("auto", "float32", "bfloat16"),
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
    from lora_tasks.data.autoconfig import PRESETS

    if "preset" in training and training["preset"] not in PRESETS:
        raise _fail(source, f"`training.preset` is {training['preset']!r}; expected one of {', '.join(PRESETS)}.")
    for key in ("max_seq_len", "batch_size", "epochs", "n_folds", "learning_rate"):
        if key in training and training[key] <= 0:
            raise _fail(source, f"`training.{key}` must be positive, got {training[key]!r}.")
    top = training.get("top_layers")
    if top is not None and not (top == "all" or (isinstance(top, int) and top > 0)):
        raise _fail(source, f"`training.top_layers` is {top!r}; give a positive number of layers or \"all\".")
    sets = training.get("adapter_sets", [])
    if not all(isinstance(v, str) for v in sets):
        raise _fail(source, f"`training.adapter_sets` must be a list of strings like \"expressive\", got {sets!r}.")
    if "time_limit" in training:
        # lora_tasks.budget imports lora_tasks.data: a cycle at module level
        from lora_tasks.budget.duration import parse_duration

        try:
            parse_duration(training["time_limit"])
        except (TypeError, ValueError) as exc:
            raise _fail(source, f"`training.time_limit`: {exc}") from None


_CRON_FIELD = re.compile(r"^(\*|\d+(-\d+)?)(/\d+)?(,(\*|\d+(-\d+)?)(/\d+)?)*$|^[A-Za-z]{3}(-[A-Za-z]{3})?$")


def _is_cron(expr: str) -> bool:
    parts = expr.split()
    return len(parts) == 5 and all(_CRON_FIELD.match(p) for p in parts)



# ------------------------------------------------------------------------------ finding config files


def default_competitions_dir() -> Path:
    """The folder of ``<slug>.toml`` files: ``$KAGGLE_LORA_COMPETITIONS_DIR``, else the repo's
    ``competitions/`` (a checkout or an editable install: the files you edit), else the copy a
    wheel ships as ``lora_tasks/_competitions`` (a link to ``competitions/`` in the repo)."""
    env = os.environ.get(COMPETITIONS_ENV)
    if env:
        return Path(env).expanduser()
    import lora_tasks

    package = Path(lora_tasks.__file__).resolve().parent
    repo = package.parent / "competitions"
    return repo if repo.is_dir() else package / "_competitions"


def read_config_file(path: Path) -> dict[str, Any]:
    """Parse and validate one config file."""
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise CompetitionConfigError(f"{path}: not valid TOML ({exc}); fix the syntax.") from None
    return validate_config_dict(raw, source=str(path))


def list_competitions(directory: Path | None = None) -> dict[str, Path]:
    """Every name a config answers to (file stem, slug, aliases) -> its file."""
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
    """The config file for a slug or alias, or None (then everything is inferred)."""
    return list_competitions(directory).get(name)
