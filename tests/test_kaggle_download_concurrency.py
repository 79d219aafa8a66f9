"""Downloads that overlap: two runs at once, a reader during a re-download, an interrupted
download; through the real ``kaggle`` client against the fake server (no mocks of our code).

The remote competition is a copy of the shared titanic folder, so a test can change a remote
file and force a re-download.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest
from _kaggle_helpers import DATASETS, needs_datasets, sha

from lora_tasks import kaggle as kio
from lora_tasks.data import load_competition
from lora_tasks.kaggle import files as kfiles
from lora_tasks.testing import fake_kaggle as fk

pytestmark = needs_datasets
pytest_plugins = ["_kaggle_helpers"]  # isolated_home, creds

SLUG = "titanic"


@pytest.fixture
def remote(tmp_path) -> Path:
    """A private copy of the competition that the fake server serves (tests may change it)."""
    root = tmp_path / "remote"
    shutil.copytree(DATASETS / SLUG, root / SLUG)
    return root


@pytest.fixture
def own_server(remote):
    with fk.serve(remote) as srv:
        yield srv


@pytest.fixture
def own_client(own_server, creds) -> kio.KaggleClient:
    return kio.KaggleClient(own_server.url, timeout=10)


def _remote_snapshot(remote: Path) -> dict[str, str]:
    return {p.name: sha(p) for p in sorted((remote / SLUG).iterdir()) if p.is_file()}


def _local_snapshot(folder: Path) -> dict[str, str]:
    return {p.name: sha(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != kio.MANIFEST_NAME}


def _change_remote_train(remote: Path) -> None:
    """A new version of train.csv upstream: fewer rows, so size and date both change."""
    path = remote / SLUG / "train.csv"
    frame = pd.read_csv(path)
    frame.iloc[: len(frame) // 2].to_csv(path, index=False)
    stat = path.stat()
    os.utime(path, (stat.st_atime, stat.st_mtime + 3600))


class _Messages(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _download_in_process(url: str, data: str, barrier, results) -> None:
    """One 'run' in its own process: authenticate, wait for the other, then download."""
    messages = _Messages()
    logger = logging.getLogger("lora_tasks.kaggle")
    logger.addHandler(messages)
    logger.setLevel(logging.INFO)
    client = kio.KaggleClient(url, timeout=30).authenticate()
    barrier.wait(timeout=60)
    folder = kio.download_competition(SLUG, data, client)
    results.put((str(folder), messages.lines))


def test_two_processes_download_once_and_both_see_every_file(own_server, own_client, remote, tmp_path):
    data = tmp_path / "work" / "data"
    # A slow zip keeps the first download busy while the second run lists and reaches the lock.
    own_server.inject(fk.FAULT_SLOW, method="zip", delay=2.0)
    context = multiprocessing.get_context("spawn")  # no fork of a process with server threads
    barrier, results = context.Barrier(2), context.Queue()
    workers = [
        context.Process(target=_download_in_process, args=(own_server.url, str(data), barrier, results))
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert {folder for folder, _ in outcomes} == {str(data / SLUG)}
    assert _local_snapshot(data / SLUG) == _remote_snapshot(remote)
    assert own_server.requests.count(("GET", "zip")) == 1  # the lock made the second run skip
    assert own_server.requests.count(("POST", "ListDataFiles")) == 2
    messages = [" | ".join(lines) for _, lines in outcomes]
    assert sum("Downloaded competition" in m for m in messages) == 1
    assert sum("by another run meanwhile" in m and "Waiting for another run" in m for m in messages) == 1
    assert sorted(p.name for p in data.iterdir()) == [SLUG]  # no scratch folder left by either run
    config = load_competition(SLUG, data_dir=data)
    assert config.data_dir == data / SLUG


class _LookAtEveryStep:
    """A reader that looks at the folder right before every rename and delete of the process,
    through an audit hook: so it looks between any two such steps of the swap, however short the
    gap. A thread that polls can miss a gap of microseconds (it did: two renames passed three runs
    in a row); this cannot. (The atomic exchange, a C call through ctypes, raises no event: it has
    no gap to look into.)"""

    active: _LookAtEveryStep | None = None
    installed = False
    EVENTS = ("os.rename", "os.remove", "os.rmdir", "shutil.rmtree")

    def __init__(self, folder: Path, names: set[str]) -> None:
        self.folder, self.names = folder, names
        self.looks = 0
        self.problems: list[str] = []
        self._inside = False

    @classmethod
    def hook(cls, event: str, args: tuple) -> None:
        self = cls.active
        if self is None or self._inside or event not in cls.EVENTS:
            return
        self._inside = True  # the look's own calls raise audit events too
        try:
            self.looks += 1
            present = {p.name for p in self.folder.iterdir()} if self.folder.is_dir() else set()
            if not self.names <= present:
                self.problems.append(f"before {event}: files absent: {sorted(self.names - present)}")
        finally:
            self._inside = False

    def __enter__(self) -> _LookAtEveryStep:
        if not _LookAtEveryStep.installed:  # audit hooks cannot be removed: one, switched by `active`
            sys.addaudithook(_LookAtEveryStep.hook)
            _LookAtEveryStep.installed = True
        _LookAtEveryStep.active = self
        return self

    def __exit__(self, *exc: object) -> None:
        _LookAtEveryStep.active = None


def test_reader_never_sees_the_folder_missing_during_a_redownload(own_server, own_client, remote, tmp_path):
    data = tmp_path / "data"
    folder = kio.download_competition(SLUG, data, own_client)
    old_rows = len(pd.read_csv(folder / "train.csv"))
    names = set(_remote_snapshot(remote))
    _change_remote_train(remote)
    new_rows = len(pd.read_csv(remote / SLUG / "train.csv"))
    assert new_rows != old_rows

    done = threading.Event()
    problems: list[str] = []
    seen_rows: list[int] = []

    def read_until_done() -> None:
        finishing_reads = 0
        while finishing_reads < 20:  # keep reading a little after the download returned
            if done.is_set():
                finishing_reads += 1
            try:
                present = {p.name for p in folder.iterdir()}
                if not names <= present:
                    problems.append(f"files absent: {sorted(names - present)}")
                seen_rows.append(len(pd.read_csv(folder / "train.csv")))
            except (OSError, ValueError) as exc:  # a missing folder/file or a half-written CSV
                problems.append(repr(exc))

    reader = threading.Thread(target=read_until_done)
    own_server.inject(fk.FAULT_SLOW, method="zip", delay=0.5)  # reads before the swap, too
    reader.start()
    try:
        with _LookAtEveryStep(folder, names) as every_step:
            assert kio.download_competition(SLUG, data, own_client) == folder
    finally:
        done.set()
        reader.join(timeout=60)
    assert problems == []
    assert every_step.problems == [], "a reader between two steps of the swap found the folder incomplete"
    assert every_step.looks >= 1, "the hook looked (at least before the manifest's rename)"
    assert old_rows in seen_rows and new_rows in seen_rows  # the reader ran across the swap
    assert set(seen_rows) == {old_rows, new_rows}
    assert seen_rows.index(new_rows) > seen_rows.index(old_rows)
    assert seen_rows[seen_rows.index(new_rows) :].count(old_rows) == 0  # never back to the old one
    assert _local_snapshot(folder) == _remote_snapshot(remote)
    assert sorted(p.name for p in data.iterdir()) == [SLUG]


def test_interrupted_redownload_keeps_the_previous_version(own_server, own_client, remote, tmp_path):
    data = tmp_path / "data"
    folder = kio.download_competition(SLUG, data, own_client)
    before = _local_snapshot(folder)
    _change_remote_train(remote)
    own_server.inject(fk.FAULT_TRUNCATED_ZIP, method="zip")
    with pytest.raises(kio.CorruptDownloadError, match="truncated or damaged"):
        kio.download_competition(SLUG, data, own_client)
    assert _local_snapshot(folder) == before
    assert sorted(p.name for p in data.iterdir()) == [SLUG]
    # The lock was released with the failure: the retry gets the new version.
    kio.download_competition(SLUG, data, own_client)
    assert _local_snapshot(folder) == _remote_snapshot(remote) != before
    assert own_server.requests.count(("GET", "zip")) == 3


def test_scratch_left_by_a_killed_download_is_removed_by_the_next_download(own_client, remote, tmp_path):
    data = tmp_path / "data"
    folder = kio.download_competition(SLUG, data, own_client)
    stale = data / f".{SLUG}.partial.999999.deadbeef-abc123"
    (stale / "zip").mkdir(parents=True)
    (stale / "zip" / "titanic.zip").write_bytes(b"half a zip")
    other = data / ".other-competition.partial.999999.deadbeef-abc123"  # not this competition's
    other.mkdir()
    _change_remote_train(remote)
    kio.download_competition(SLUG, data, own_client)
    assert not stale.exists() and other.is_dir()
    assert _local_snapshot(folder) == _remote_snapshot(remote)


def test_redownload_without_atomic_exchange_falls_back_to_renames(own_server, own_client, remote, tmp_path, monkeypatch):
    # A platform or file system without renameat2/renamex_np: the swap is two renames.
    monkeypatch.setattr(kfiles, "_EXCHANGE", None)
    assert kfiles.exchange_paths(tmp_path, tmp_path) is False
    data = tmp_path / "data"
    folder = kio.download_competition(SLUG, data, own_client)
    _change_remote_train(remote)
    kio.download_competition(SLUG, data, own_client)
    assert _local_snapshot(folder) == _remote_snapshot(remote)
    assert sorted(p.name for p in data.iterdir()) == [SLUG]


@pytest.mark.skipif(kfiles._EXCHANGE is None, reason="no atomic exchange call on this platform")
def test_exchange_paths_swaps_two_folders(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    (first / "one.csv").write_text("1")
    (second / "two.csv").write_text("2")
    assert kfiles.exchange_paths(first, second) is True
    assert [p.name for p in first.iterdir()] == ["two.csv"]
    assert [p.name for p in second.iterdir()] == ["one.csv"]
    with pytest.raises(OSError, match="swapping"):
        kfiles.exchange_paths(first, tmp_path / "missing")


def test_exclusive_lock_makes_a_second_holder_wait(caplog):
    name = f"test-{os.getpid()}-{threading.get_ident()}.lock"
    order: list[str] = []
    holding, second_started = threading.Event(), threading.Event()

    def second() -> None:
        second_started.set()
        with kfiles.exclusive_lock(name, "waiting for the first holder"):
            order.append("second")

    caplog.set_level(logging.INFO, logger="lora_tasks.kaggle.files")
    with kfiles.exclusive_lock(name) as path:
        holding.set()
        thread = threading.Thread(target=second)
        thread.start()
        second_started.wait(timeout=10)
        thread.join(timeout=0.5)  # it cannot get the lock while this block holds it
        assert thread.is_alive()
        order.append("first")
    thread.join(timeout=10)
    assert order == ["first", "second"]
    assert "waiting for the first holder" in caplog.text
    assert path.parent == kfiles.lock_dir() and oct(path.parent.stat().st_mode & 0o777) == oct(0o700)
