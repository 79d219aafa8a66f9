"""Unpack a competition's zip, and the table zips inside it, within bounds.

Why bounded: a zip says how big each member is, but a hostile or damaged one can expand a few
hundred kilobytes into gigabytes and fill the disk before anything notices. Every member is
therefore copied in chunks and counted as it is written: a member of the outer zip may not pass
the size Kaggle lists for that file (with a margin), an inner zip's members may not pass a
fixed multiple of the inner zip's own size (Kaggle lists only the zip), and nothing passes a
hard cap on the whole download. The first member past its bound stops the unpacking with an
:class:`UnpackLimitError` that names it; the caller's scratch folder is then dropped, and the
previous data folder stays as it was.

Why inner zips at all: older competitions ship ``train.csv.zip``, ``test.csv.zip`` and
``sampleSubmission.csv.zip`` inside the download (restaurant-revenue-prediction,
jigsaw-toxic-comment-classification-challenge), or ``train.zip`` holding ``train.csv``
(nyc-taxi-trip-duration). An inner zip that holds a table is unpacked next to itself, with the
same path checks as the outer one, and then removed; a zip of images is left as it is. What
each inner zip became is returned, so the download manifest can tell later runs the folder is
complete without the zip.
"""

from __future__ import annotations

import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from lora_tasks.data.layout import table_suffix

from .errors import CorruptDownloadError, FatalKaggleError

logger = logging.getLogger(__name__)

MAX_BYTES_ENV = "KAGGLE_LORA_MAX_UNPACKED_BYTES"
MAX_RATIO_ENV = "KAGGLE_LORA_MAX_UNPACK_RATIO"
_CHUNK = 1 << 20
#: Folders of macOS metadata that old competition zips carry; never data.
_SKIPPED_PREFIXES = ("__MACOSX/",)


class UnpackLimitError(FatalKaggleError):
    """A zip member unpacks past its bound (damaged or hostile archive); nothing was kept."""


@dataclass(frozen=True)
class UnpackLimits:
    """How far unpacking may go.

    ``margin`` x the listed size + ``slack_bytes`` for a member Kaggle lists; ``max_ratio`` x
    an inner zip's size + ``slack_bytes`` for everything inside it; ``hard_cap_bytes`` for the
    whole download. :meth:`from_env` reads the last two from ``$KAGGLE_LORA_MAX_UNPACKED_BYTES``
    and ``$KAGGLE_LORA_MAX_UNPACK_RATIO``, the way out for a genuine competition past them.
    """

    margin: float = 1.05
    slack_bytes: int = 1 << 20
    max_ratio: float = 200.0
    hard_cap_bytes: int = 1 << 40

    @classmethod
    def from_env(cls) -> UnpackLimits:
        limits = cls()
        cap, ratio = os.environ.get(MAX_BYTES_ENV), os.environ.get(MAX_RATIO_ENV)
        try:
            return cls(
                margin=limits.margin, slack_bytes=limits.slack_bytes,
                max_ratio=float(ratio) if ratio else limits.max_ratio,
                hard_cap_bytes=int(cap) if cap else limits.hard_cap_bytes,
            )
        except ValueError:
            raise FatalKaggleError(
                f"${MAX_BYTES_ENV} ({cap!r}) must be a whole number of bytes and ${MAX_RATIO_ENV} ({ratio!r}) a "
                "number; fix or unset them."
            ) from None


@dataclass(frozen=True)
class UnpackedFile:
    """A file that came out of an inner zip: its path in the data folder and its size."""

    name: str
    size: int


class _Budget:
    """Bytes written so far, against the hard cap."""

    def __init__(self, limits: UnpackLimits, where: str):
        self.limits, self.where, self.used = limits, where, 0

    def add(self, count: int, member: str) -> None:
        self.used += count
        if self.used > self.limits.hard_cap_bytes:
            raise UnpackLimitError(
                f"{self.where}: unpacking stopped at zip member {member!r}: the download passed the hard cap of "
                f"{self.limits.hard_cap_bytes:,} bytes unpacked. If the competition really is that big, raise "
                f"${MAX_BYTES_ENV}."
            )


def check_member_paths(bundle: zipfile.ZipFile, dest: Path, where: str) -> None:
    """Refuse members that would land outside ``dest`` (``../x``, absolute paths)."""
    root = dest.resolve()
    for name in bundle.namelist():
        if not (dest / name).resolve().is_relative_to(root):
            raise CorruptDownloadError(f"{where}: zip member {name!r} points outside the folder; refusing it.")


def unpack_download(
    archive: Path, dest: Path, listed: dict[str, int], *, where: str, limits: UnpackLimits | None = None
) -> dict[str, list[UnpackedFile]]:
    """Unpack the competition zip ``archive`` into the existing folder ``dest``, then each inner
    zip that holds a table; return ``{inner zip's name: the files it became}``.

    ``listed``: Kaggle's ``{file name: size}``. A listed member may grow to ``margin`` x its
    size + ``slack_bytes``; an unlisted one shares what is left of the listed total.
    """
    limits = limits or UnpackLimits.from_env()
    budget = _Budget(limits, where)
    # a size of 0 is a listing without sizes: such files are bounded by the hard cap alone
    sized = bool(listed) and all(size > 0 for size in listed.values())
    total_allowed = int(sum(listed.values()) * limits.margin) + limits.slack_bytes if sized else limits.hard_cap_bytes
    with zipfile.ZipFile(archive) as bundle:
        check_member_paths(bundle, dest, where)
        for info in bundle.infolist():
            if info.is_dir():
                continue
            size = listed.get(info.filename, listed.get(PurePosixPath(info.filename).name))
            if size:
                bound, why = int(size * limits.margin) + limits.slack_bytes, f"Kaggle lists it at {size:,} bytes"
            elif sized:
                bound, why = max(0, total_allowed - budget.used), f"Kaggle lists {sum(listed.values()):,} bytes in all"
            else:
                bound, why = limits.hard_cap_bytes, f"the hard cap, ${MAX_BYTES_ENV}"
            _copy_member(bundle, info, dest / info.filename, bound, why, where, budget)
    unpacked: dict[str, list[UnpackedFile]] = {}
    for inner in sorted(p for p in dest.rglob("*") if p.is_file() and p.name.lower().endswith(".zip")):
        files = _unpack_inner(inner, dest, where, limits, budget)
        if files is not None:
            unpacked[inner.relative_to(dest).as_posix()] = files
    return unpacked


def _holds_tables(bundle: zipfile.ZipFile) -> bool:
    return any(table_suffix(n) for n in bundle.namelist() if not n.startswith(_SKIPPED_PREFIXES))


def _unpack_inner(
    inner: Path, dest: Path, where: str, limits: UnpackLimits, budget: _Budget
) -> list[UnpackedFile] | None:
    """Unpack one inner zip next to itself and remove it; None (kept as is) when it holds no table."""
    name = inner.relative_to(dest).as_posix()
    inner_where = f"{where}, inner zip {name!r}"
    try:
        with zipfile.ZipFile(inner) as bundle:
            if not _holds_tables(bundle):
                return None
            check_member_paths(bundle, inner.parent, inner_where)
            bound = int(inner.stat().st_size * limits.max_ratio) + limits.slack_bytes
            why = f"{limits.max_ratio:g} x the inner zip's {inner.stat().st_size:,} bytes (${MAX_RATIO_ENV})"
            written: list[UnpackedFile] = []
            used = 0
            for info in bundle.infolist():
                if info.is_dir() or info.filename.startswith(_SKIPPED_PREFIXES):
                    continue
                target = inner.parent / info.filename
                if target.exists():
                    logger.warning("%s: %s already exists (listed on its own); keeping that one", inner_where, target.name)
                    continue
                count = _copy_member(bundle, info, target, bound - used, why, inner_where, budget)
                used += count
                written.append(UnpackedFile(target.relative_to(dest).as_posix(), count))
    except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile) as exc:
        raise CorruptDownloadError(f"{inner_where} is truncated or damaged ({exc}). Retry the download.") from exc
    inner.unlink()
    logger.info("Unpacked %s into %s", name, ", ".join(f.name for f in written))
    return written


def _copy_member(
    bundle: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, bound: int, why: str, where: str, budget: _Budget
) -> int:
    """Copy one member to ``target`` in chunks, stopping once it passes ``bound`` bytes; the
    member's CRC is checked by zipfile as the last chunk is read."""
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    try:
        with bundle.open(info) as source, open(target, "wb") as out:
            while chunk := source.read(_CHUNK):
                written += len(chunk)
                if written > bound:
                    raise UnpackLimitError(
                        f"{where}: zip member {info.filename!r} unpacks past {bound:,} bytes ({why}); the archive "
                        "is damaged or hostile, so nothing of it was kept. Retry the download; if it happens again, "
                        "do not use this file."
                    )
                budget.add(len(chunk), info.filename)
                out.write(chunk)
    except zipfile.BadZipFile as exc:
        raise CorruptDownloadError(f"{where}: member {info.filename!r} of the zip fails its CRC check ({exc}). "
                                   "Retry the download.") from exc
    return written
