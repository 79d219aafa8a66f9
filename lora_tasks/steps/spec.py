"""What Kaggle says about a competition beyond its files, kept beside the data, and the
competition spec every step reads.

Why a record beside the data: the metric a competition is scored by is not in its CSVs but in
Kaggle's listing (``evaluation_metric``). The download step is the one that talks to Kaggle, so
it writes that text into the data folder (:data:`METADATA_NAME`); prepare, plan and the
scikit-learn members then resolve the same spec from the folder alone (offline, and the
folder's content keys their cached results, so another metric is another result).
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path

from lora_tasks.data.competition import (
    CompetitionConfig,
    find_config_file,
    load_competition,
    read_config_file,
)
from lora_tasks.data.source import CompetitionSource, as_source

#: The record's file name inside the competition's data folder.
METADATA_NAME = "kaggle-lora-metadata.json"


@dataclass(frozen=True)
class CompetitionMetadata:
    """Kaggle's listing of one competition, as far as a run needs it.

    ``evaluation_metric``: Kaggle's own name of the metric ("Root Mean Squared Error"), None when
    the listing has none, Kaggle could not be asked, or a config file names the metric anyway.
    """

    slug: str
    evaluation_metric: str | None = None

    def save(self, folder: str | os.PathLike) -> Path:
        """Write the record into ``folder`` (temp name, then rename: never a half file)."""
        path = Path(folder) / METADATA_NAME
        tmp = path.with_name(f".{METADATA_NAME}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            tmp.write_text(json.dumps(asdict(self), sort_keys=True, indent=1))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    @classmethod
    def find(cls, data_dir: str | os.PathLike, slug: str) -> CompetitionMetadata | None:
        """The record in ``data_dir`` (the competition's folder) or ``data_dir/<slug>`` (its
        parent), None when there is none (data that was not downloaded by a run)."""
        base = Path(data_dir)
        for path in (base / METADATA_NAME, base / slug / METADATA_NAME):
            if path.is_file():
                data = json.loads(path.read_text())
                return cls(slug=str(data.get("slug", slug)), evaluation_metric=data.get("evaluation_metric") or None)
        return None


def competition_slug(name: str | CompetitionSource, competitions_dir: str | os.PathLike | None = None) -> str:
    """The Kaggle slug of a config name or alias (``house-prices`` -> the long slug), or of a
    :class:`CompetitionSource` (its config file's ``slug``, else its name)."""
    if isinstance(name, CompetitionSource):
        return name.slug
    path = find_config_file(name, Path(competitions_dir) if competitions_dir else None)
    return read_config_file(path).get("slug", name) if path else name


def config_names_metric(competition: str | CompetitionSource) -> bool:
    """Whether the competition's config file names its metric (then Kaggle's is not asked for)."""
    return bool(as_source(competition).file_settings.get("metric"))


def competition_spec(competition: str | CompetitionSource, data_dir: str | os.PathLike) -> CompetitionConfig:
    """The competition as every step sees it: the config file (if any) over what the data says,
    with Kaggle's ``evaluation_metric`` from the download's record when no config names a metric.
    ``competition``: a name (its config file is found by name) or the run's
    :class:`CompetitionSource` (the config file and the ``--target`` / ``--id`` it chose)."""
    source = as_source(competition)
    found = CompetitionMetadata.find(data_dir, source.slug)
    return load_competition(source.name, data_dir=data_dir, source=source,
                            kaggle_metric=found.evaluation_metric if found else None)
