"""Bounded unpacking of a competition's zip and of the table zips inside it.

Zip bombs are made in the test (a few megabytes of zeros deflate to a few kilobytes): each is
stopped with an error naming the member, past the size Kaggle lists, past the inner zip's
ratio, or past the hard cap. Inner zips (``train.csv.zip``) are unpacked with the same path
checks, macOS metadata left out, and a download holding them is up to date the next time.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from lora_tasks import kaggle as kio
from lora_tasks.kaggle.unpack import MAX_BYTES_ENV, UnpackLimitError, UnpackLimits, unpack_download
from lora_tasks.testing import fake_kaggle as fk

BOMB = 24 << 20  # unpacked bytes of each bomb member; deflates to ~25 kB


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        for name, data in members.items():
            bundle.writestr(name, data)
    return buffer.getvalue()


def _archive(tmp_path: Path, members: dict[str, bytes]) -> Path:
    path = tmp_path / "download.zip"
    path.write_bytes(_zip_bytes(members))
    return path


def _dest(tmp_path: Path) -> Path:
    dest = tmp_path / "out"
    dest.mkdir()
    return dest


def test_a_member_past_its_listed_size_stops_the_unpacking(tmp_path):
    archive = _archive(tmp_path, {"test.csv": b"id\n1\n", "train.csv": b"0" * BOMB})
    assert archive.stat().st_size < 100_000
    with pytest.raises(UnpackLimitError) as err:
        unpack_download(archive, _dest(tmp_path), {"test.csv": 5, "train.csv": 2_000}, where="test")
    assert "'train.csv'" in str(err.value) and "Kaggle lists it at 2,000 bytes" in str(err.value)
    assert (tmp_path / "out" / "train.csv").stat().st_size <= 2_000 * 1.05 + (1 << 20) + (1 << 20)


def test_an_unlisted_member_shares_the_listed_total(tmp_path):
    archive = _archive(tmp_path, {"train.csv": b"id\n1\n", "extra/notes.txt": b"x" * BOMB})
    with pytest.raises(UnpackLimitError, match="'extra/notes.txt'"):
        unpack_download(archive, _dest(tmp_path), {"train.csv": 5}, where="test")


def test_a_listing_without_sizes_bounds_by_the_hard_cap_alone(tmp_path, monkeypatch):
    body = b"id,x\n" + b"1,2\n" * 600
    archive = _archive(tmp_path, {"train.csv": body})
    unpack_download(archive, _dest(tmp_path), {"train.csv": 0}, where="test")  # a real file, size not listed
    assert (tmp_path / "out" / "train.csv").read_bytes() == body
    monkeypatch.setenv(MAX_BYTES_ENV, "1000")
    (tmp_path / "out" / "train.csv").unlink()
    with pytest.raises(UnpackLimitError, match="'train.csv'"):
        unpack_download(archive, tmp_path / "out", {"train.csv": 0}, where="test")


def test_an_inner_zip_may_not_pass_its_ratio(tmp_path):
    inner = _zip_bytes({"train.csv": b"0" * BOMB})
    archive = _archive(tmp_path, {"train.csv.zip": inner})
    with pytest.raises(UnpackLimitError) as err:
        unpack_download(archive, _dest(tmp_path), {"train.csv.zip": len(inner)}, where="test")
    assert "inner zip 'train.csv.zip'" in str(err.value) and "'train.csv'" in str(err.value)
    assert "KAGGLE_LORA_MAX_UNPACK_RATIO" in str(err.value)


def test_the_hard_cap_bounds_the_whole_download(tmp_path, monkeypatch):
    monkeypatch.setenv(MAX_BYTES_ENV, "3000")
    body = b"id,x\n" + b"1,2\n" * 600  # 2,405 bytes each, honestly listed
    archive = _archive(tmp_path, {"train.csv": body, "test.csv": body})
    with pytest.raises(UnpackLimitError) as err:
        unpack_download(archive, _dest(tmp_path), {"train.csv": len(body), "test.csv": len(body)}, where="test")
    assert "'test.csv'" in str(err.value) and "3,000 bytes" in str(err.value) and MAX_BYTES_ENV in str(err.value)


def test_inner_table_zips_are_unpacked_and_removed(tmp_path):
    """restaurant-revenue-prediction: train.csv.zip and test.csv.zip beside sampleSubmission.csv."""
    train, test = b"Id,revenue\n0,1\n", b"Id\n1\n"
    members = {
        "train.csv.zip": _zip_bytes({"train.csv": train, "__MACOSX/._train.csv": b"junk"}),
        "test.csv.zip": _zip_bytes({"test.csv": test}),
        "sampleSubmission.csv": b"Id,Prediction\n1,0\n",
        "images.zip": _zip_bytes({"a.jpg": b"\xff\xd8"}),  # no table: left as it is
    }
    dest = _dest(tmp_path)
    unpacked = unpack_download(_archive(tmp_path, members), dest, {k: len(v) for k, v in members.items()}, where="t")
    assert sorted(p.name for p in dest.iterdir()) == ["images.zip", "sampleSubmission.csv", "test.csv", "train.csv"]
    assert (dest / "train.csv").read_bytes() == train and (dest / "test.csv").read_bytes() == test
    assert {k: [(f.name, f.size) for f in v] for k, v in unpacked.items()} == {
        "test.csv.zip": [("test.csv", len(test))], "train.csv.zip": [("train.csv", len(train))]}


def test_an_inner_zip_member_outside_the_folder_is_refused(tmp_path):
    inner = _zip_bytes({"../../evil.csv": b"id\n1\n"})
    with pytest.raises(kio.CorruptDownloadError, match="points outside the folder"):
        unpack_download(_archive(tmp_path, {"train.csv.zip": inner}), _dest(tmp_path), {"train.csv.zip": len(inner)},
                        where="t")
    assert not (tmp_path / "evil.csv").exists()


def test_a_member_that_fails_its_crc_is_named(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as bundle:
        bundle.writestr("train.csv", b"id,x\n1,2\n")
    data = buffer.getvalue().replace(b"1,2", b"1,3", 1)  # the stored bytes change, the CRC does not
    archive = tmp_path / "download.zip"
    archive.write_bytes(data)
    with pytest.raises(kio.CorruptDownloadError, match="'train.csv' of the zip fails its CRC check"):
        unpack_download(archive, _dest(tmp_path), {"train.csv": 9}, where="t")


def test_limits_from_the_environment_must_be_numbers(monkeypatch):
    monkeypatch.setenv(MAX_BYTES_ENV, "lots")
    with pytest.raises(kio.FatalKaggleError, match=MAX_BYTES_ENV):
        UnpackLimits.from_env()


# ------------------------------------------------------------------------------ through the fake server


def _serve_nested(root: Path, slug: str, train: bytes) -> None:
    folder = root / slug
    folder.mkdir(parents=True)
    (folder / "train.csv.zip").write_bytes(_zip_bytes({"train.csv": train}))
    (folder / "test.csv.zip").write_bytes(_zip_bytes({"test.csv": b"id,x\n9,1\n"}))
    (folder / "sample_submission.csv").write_text("id,y\n9,0\n")


def test_a_download_with_inner_zips_is_unpacked_and_then_up_to_date(tmp_path, creds):
    _serve_nested(tmp_path / "remote", "nested", b"id,x,y\n1,2,0\n2,3,1\n")
    with fk.serve(tmp_path / "remote") as server:
        client = kio.KaggleClient(server.url, timeout=10)
        folder = kio.download_competition("nested", tmp_path / "data", client)
        assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == [
            "sample_submission.csv", "test.csv", "train.csv"]
        assert pd.read_csv(folder / "train.csv")["y"].tolist() == [0, 1]
        assert kio.download_competition("nested", tmp_path / "data", client) == folder
        assert len(server.times_of("zip")) == 1, "the unpacked files stand for the inner zips: no second download"


def test_a_served_zip_bomb_keeps_the_previous_folder(tmp_path, creds):
    remote = tmp_path / "remote"
    _serve_nested(remote, "bomb", b"id,x,y\n1,2,0\n")
    with fk.serve(remote) as server:
        client = kio.KaggleClient(server.url, timeout=10)
        folder = kio.download_competition("bomb", tmp_path / "data", client)
        before = (folder / "train.csv").read_bytes()
        (remote / "bomb" / "train.csv.zip").write_bytes(_zip_bytes({"train.csv": b"0" * BOMB}))
        with pytest.raises(UnpackLimitError, match="'train.csv'"):
            kio.download_competition("bomb", tmp_path / "data", client)
        assert (folder / "train.csv").read_bytes() == before
        assert not list((tmp_path / "data").glob(".bomb.partial*")), "the scratch folder is gone"
