"""Which competition a run means, with the user's own choices: the config file (``--config`` or
the one found by name) and the target and id columns given on the command line.

Why one record, resolved once at the start of a run: the steps resolve the competition again
and again (prepare, plan, the scikit-learn members, submit), possibly in other processes or on
other machines whose working directory has no ``./competitions/``. The record carries the
answer, so every step reads the same file and the same columns; and since it holds the config
file's path, a task's cache key covers the file's content (an edited config is a new result).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config_file import (
    ORIGIN_OPTION,
    CompetitionConfigError,
    locate_config,
    read_config_file,
)


@dataclass(frozen=True)
class CompetitionSource:
    """A competition name, the config file a run uses (None: everything is inferred) and where
    it was found, and the columns the run's options name (``--target``, ``--id``)."""

    name: str
    config: Path | None = None
    origin: str | None = None
    target_columns: tuple[str, ...] | None = None
    id_column: str | None = None

    def __str__(self) -> str:
        return self.name

    @classmethod
    def resolve(cls, name: str, *, config: str | Path | None = None, target: str | None = None,
                id_column: str | None = None) -> CompetitionSource:
        """The source of ``name``: ``config`` (a path, as ``--config``) if given, else the file
        found by name (``./competitions/``, ``$KAGGLE_LORA_COMPETITIONS_DIR``, the shipped
        recipes). ``target``: one column, or several separated by commas."""
        if config is not None:
            path = Path(config).expanduser().resolve()
            if not path.is_file():
                raise CompetitionConfigError(
                    f"--config {config}: no such file ({path}); give the path of a competition TOML file, or drop "
                    "--config to use ./competitions/<slug>.toml or the inferred settings.")
            read_config_file(path)  # a broken file fails here, before any download
            found_path, origin = path, ORIGIN_OPTION
        else:
            found = locate_config(name)
            found_path, origin = (found.path, found.origin) if found is not None else (None, None)
        targets = None
        if target is not None:
            targets = tuple(t.strip() for t in target.split(",") if t.strip())
            if not targets:
                raise CompetitionConfigError(f"--target {target!r} names no column; give e.g. --target label.")
        return cls(name=name, config=found_path, origin=origin, target_columns=targets,
                   id_column=id_column.strip() if id_column else None)

    @property
    def file_settings(self) -> dict[str, Any]:
        """The config file's settings, validated (empty without a file)."""
        return read_config_file(self.config) if self.config is not None else {}

    @property
    def slug(self) -> str:
        """The Kaggle slug: the config file's ``slug``, else the name."""
        return str(self.file_settings.get("slug", self.name))

    def option_settings(self) -> dict[str, Any]:
        """What the run's options set, in the config-file schema (they win over the file)."""
        out: dict[str, Any] = {}
        if self.target_columns:
            out["target_columns"] = list(self.target_columns)
        if self.id_column:
            out["id_column"] = self.id_column
        return out


def as_source(competition: str | CompetitionSource) -> CompetitionSource:
    """A step's ``competition`` argument as a source: a plain name finds its config file by name."""
    return competition if isinstance(competition, CompetitionSource) else CompetitionSource.resolve(competition)
