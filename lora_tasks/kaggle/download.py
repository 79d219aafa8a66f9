"""Download a competition's files: listed, zipped, verified, swapped in atomically.

Why so careful: a scheduled run must never train on half a download. The zip is fetched into a
temp folder next to the target, every member's CRC is checked, members that would land
outside the folder (``../x``, absolute paths) are refused, every listed file must be present,
nothing may unpack past the sizes Kaggle lists, and inner table zips (``train.csv.zip``) are
unpacked too (:mod:`.unpack`); only then is the folder swapped in, in one atomic exchange: a
reader sees the old folder or the new one, never a missing or half-written one. A manifest of
what Kaggle listed, and of the sha256 of every file as it was unpacked, lets the next run skip
the download when neither Kaggle's listing nor the local files changed (a local edit, even one
that keeps the size, is named in the log and downloaded again). Two runs downloading the same competition
into the same folder at once take turns on a per-competition lock, so the second one finds the
first one's download up to date instead of fetching it again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

from lora_tasks.hashing import sha256_file

from .client import KaggleClient, call, check_slug
from .errors import CorruptDownloadError
from .files import exchange_paths, exclusive_lock, unique_name, write_json
from .unpack import check_member_paths, unpack_download

logger = logging.getLogger(__name__)

MANIFEST_NAME = ".kaggle_download.json"


@dataclass(frozen=True)
class RemoteFile:
    """One file of a competition as Kaggle lists it."""

    name: str
    size: int
    created: str  # ISO timestamp from Kaggle; part of the "unchanged?" check


def list_files(slug: str, client: KaggleClient) -> list[RemoteFile]:
    """List a competition's data files (all pages). Cheap, so downloads use it to skip work."""
    check_slug(slug)
    files: list[RemoteFile] = []
    page_token: str | None = None
    for _ in range(1000):
        response = call(
            slug,
            "listing files",
            lambda token=page_token: client.api.competition_list_files(slug, token, 200),
        )
        for item in response.files or []:
            created = item.creation_date.isoformat() if item.creation_date else ""
            files.append(RemoteFile(name=item.name or item.ref, size=int(item.total_bytes or 0), created=created))
        page_token = response.next_page_token
        if not page_token:
            break
    return files


def download_competition(
    slug: str, dest_dir: str | os.PathLike[str], client: KaggleClient, *, force: bool = False
) -> Path:
    """Download all files of competition ``slug`` into ``dest_dir/slug`` and return that folder.

    Skips the download when the folder already holds exactly what Kaggle lists (names, sizes
    and dates recorded at the last download) with the content it had then (the sha256 of every
    file, recorded at download time, checked on disk; a changed file is named in the log). Otherwise the zip is
    downloaded and extracted inside a temp folder next to the target, verified (CRC of every
    member, every listed file present), and only then swapped in by one atomic exchange: after
    any failure the previous folder is untouched and no partial file is left behind, and a
    reader never finds the folder missing. The download holds a per-competition lock, so a
    second run that started at the same time waits and then finds it up to date.
    """
    target = Path(dest_dir) / check_slug(slug)
    remote = list_files(slug, client)
    if not force and _is_up_to_date(target, remote):
        logger.info("Competition %s is up to date in %s; skipping download", slug, target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    waiting = f"Waiting for another run that is downloading competition {slug} into {target}"
    with exclusive_lock(_lock_name(target), waiting):
        if not force and _is_up_to_date(target, remote, quiet=True):
            logger.info("Competition %s was downloaded into %s by another run meanwhile; skipping", slug, target)
            return target
        _remove_stale_scratch(target)
        _download_and_swap(slug, target, remote, client)
    logger.info("Downloaded competition %s into %s", slug, target)
    return target


def _lock_name(target: Path) -> str:
    """One lock per competition folder: the slug plus a hash of the real data folder path."""
    where = os.path.realpath(target.parent)
    return f"download-{target.name}-{hashlib.sha256(os.fsencode(where)).hexdigest()[:16]}.lock"


def _remove_stale_scratch(target: Path) -> None:
    """Delete scratch folders of killed downloads (best effort).

    Safe because scratch folders only exist while their run holds the lock, which the caller
    now holds: any one left over belongs to a run that died (e.g. SIGKILL) mid-download.
    """
    for leftover in target.parent.glob(f".{target.name}.partial*"):
        if leftover.is_dir() and not leftover.is_symlink():
            logger.info("Removing %s, left behind by an interrupted download", leftover)
            shutil.rmtree(leftover, ignore_errors=True)


def _download_and_swap(slug: str, target: Path, remote: list[RemoteFile], client: KaggleClient) -> None:
    """Fetch, verify and swap in; the caller holds the competition's lock."""
    scratch_prefix = unique_name(f".{slug}.partial") + "-"
    # ignore_cleanup_errors: removing the old folder is best effort and never fails a download.
    with tempfile.TemporaryDirectory(prefix=scratch_prefix, dir=target.parent, ignore_cleanup_errors=True) as scratch:
        scratch_dir = Path(scratch)
        zip_dir = scratch_dir / "zip"
        zip_dir.mkdir()
        call(
            slug,
            "downloading data",
            lambda: client.api.competition_download_files(slug, path=str(zip_dir), force=True, quiet=True),
        )
        # The client names the file after the redirect URL's extension; take whatever single
        # file it wrote (its ".kaggle-partial" sidecar only exists after a failed transfer).
        archives = sorted(p for p in zip_dir.iterdir() if p.is_file() and not p.name.endswith(".kaggle-partial"))
        if len(archives) != 1:
            raise CorruptDownloadError(
                f"downloading data for competition '{slug}': expected one zip, got "
                f"{[p.name for p in zip_dir.iterdir()]}. Retry the download."
            )
        staged = scratch_dir / slug
        unpacked = _extract_verified(archives[0], staged, slug, remote)
        write_json(staged / MANIFEST_NAME, {"slug": slug, "files": [asdict(f) for f in remote], "unpacked": unpacked,
                                            "sha256": content_hashes(staged)})
        _swap_in(staged, target, scratch_dir)


def content_hashes(folder: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file in ``folder`` but the hidden ones (the manifest)."""
    return {
        str(p.relative_to(folder)): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    }


def _is_up_to_date(target: Path, remote: list[RemoteFile], *, quiet: bool = False) -> bool:
    """Kaggle's listing equals the recorded one and every file still has its recorded content
    (``quiet``: the second look, under the lock, does not repeat the first one's log lines)."""
    manifest = target / MANIFEST_NAME
    if not manifest.is_file() or not remote:
        return False
    try:
        recorded = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return False
    if recorded.get("files") != [asdict(f) for f in remote]:
        return False
    unpacked = recorded.get("unpacked") or {}

    def present(name: str, size: object) -> bool:
        path = target / name
        return path.is_file() and path.stat().st_size == size

    # an inner zip was unpacked and removed: the files it became stand for it
    if not all(
        all(present(str(u.get("name")), u.get("size")) for u in unpacked[f.name]) if f.name in unpacked
        else present(f.name, f.size)
        for f in remote
    ):
        return False
    hashes = recorded.get("sha256")
    if not isinstance(hashes, dict) or not hashes:
        if not quiet:
            logger.info("The manifest in %s records no file hashes (an older download); downloading again",
                        target)
        return False
    changed = sorted(name for name, digest in hashes.items()
                     if not (target / name).is_file() or sha256_file(target / name) != digest)
    if changed and not quiet:
        logger.warning("Files in %s differ from what was downloaded (edited or damaged locally): %s; "
                       "downloading the competition again", target, ", ".join(changed))
    return not changed


def _extract_verified(archive: Path, staged: Path, slug: str, remote: list[RemoteFile]) -> dict[str, list[dict[str, object]]]:
    """Unpack ``archive`` into ``staged`` within the sizes Kaggle lists (:mod:`.unpack`, which
    also unpacks inner table zips) after checking every listed file is in it; returns what
    each inner zip became, for the manifest."""
    where = f"downloading data for competition '{slug}'"
    try:
        with zipfile.ZipFile(archive) as bundle:
            names = bundle.namelist()
            check_member_paths(bundle, staged, where)
            missing = sorted({f.name for f in remote} - {Path(n).name for n in names} - set(names))
            if missing:
                raise CorruptDownloadError(f"{where}: the zip lacks listed files {missing}. Retry the download.")
        staged.mkdir(parents=True)
        unpacked = unpack_download(archive, staged, {f.name: f.size for f in remote}, where=where)
    except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile) as exc:
        raise CorruptDownloadError(
            f"{where}: the zip is truncated or damaged ({exc}). Retry the download."
        ) from exc
    return {name: [asdict(f) for f in files] for name, files in unpacked.items()}


def _swap_in(staged: Path, target: Path, scratch_dir: Path) -> None:
    """Put ``staged`` at ``target``; the old folder ends up at ``staged`` (inside the scratch
    folder, deleted with it).

    A first download is one rename. A replacement is one atomic exchange where the platform
    has one (Linux, macOS); elsewhere two renames through a unique parking name, restoring the
    old folder if the second fails (the lock still keeps other downloads out; only a reader
    could then catch the folder missing for an instant).
    """
    if not os.path.lexists(target):
        os.rename(staged, target)
        return
    if exchange_paths(staged, target):
        return
    logger.debug("No atomic exchange on this platform or file system; swapping %s by two renames", target)
    parking = scratch_dir / unique_name("previous")
    os.replace(target, parking)
    try:
        os.replace(staged, target)
    except OSError:
        os.replace(parking, target)
        raise
