"""Kaggle client layer against the fake Kaggle server, through the real ``kaggle`` client (no mocks):
downloads, error classification, Retry-After, credentials and tokens, slug and zip-slip guards.

Timeouts and polls are made short through parameters, never by sleeping.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import requests
from _kaggle_helpers import DATASETS, SHARED, needs_datasets, prediction, sha

from lora_tasks import kaggle as kio
from lora_tasks.testing import fake_kaggle as fk

pytestmark = needs_datasets
pytest_plugins = ["_kaggle_helpers"]  # the shared fixtures: isolated_home, creds, solutions, server, client


def _snapshot(folder: Path) -> dict[str, str]:
    return {p.name: sha(p) for p in sorted(folder.iterdir()) if p.is_file()}


# ------------------------------------------------------------------------------------------
# downloads
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("slug", SHARED)
def test_download_each_shared_competition_byte_identical(slug, client, server, tmp_path):
    folder = kio.download_competition(slug, tmp_path / "data", client)
    assert folder == tmp_path / "data" / slug
    original = {p.name: sha(p) for p in (DATASETS / slug).iterdir()}
    got = _snapshot(folder)
    assert got.pop(kio.MANIFEST_NAME)
    assert got == original
    assert ("GET", "zip") in server.requests


def test_list_files_reports_names_and_sizes(client):
    files = kio.list_files("titanic", client)
    assert {f.name: f.size for f in files} == {
        "gender_submission.csv": 3258,
        "test.csv": 28629,
        "train.csv": 61194,
    }


def test_second_download_is_skipped_when_unchanged(client, server, tmp_path):
    kio.download_competition("titanic", tmp_path, client)
    zips_before = server.requests.count(("GET", "zip"))
    kio.download_competition("titanic", tmp_path, client)
    assert server.requests.count(("GET", "zip")) == zips_before == 1


def test_download_again_when_local_file_changed(client, server, tmp_path):
    folder = kio.download_competition("titanic", tmp_path, client)
    (folder / "train.csv").write_text("tampered")
    kio.download_competition("titanic", tmp_path, client)
    assert server.requests.count(("GET", "zip")) == 2
    assert sha(folder / "train.csv") == sha(DATASETS / "titanic" / "train.csv")


def test_a_same_size_edit_is_downloaded_again_and_named(client, server, tmp_path, caplog):
    """Issue 35 item 3: one flipped label keeps the size (and here the date); the manifest's
    sha256, recorded at download time, still tells the file changed."""
    folder = kio.download_competition("titanic", tmp_path, client)
    manifest = (folder / kio.MANIFEST_NAME).read_text()
    assert sha(folder / "train.csv") in manifest
    train = folder / "train.csv"
    stat = train.stat()
    lines = train.read_bytes().split(b"\n")
    first = lines[1].split(b",")
    first[1] = b"1" if first[1] == b"0" else b"0"  # Survived flipped: same length
    lines[1] = b",".join(first)
    train.write_bytes(b"\n".join(lines))
    os.utime(train, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert train.stat().st_size == stat.st_size and sha(train) != sha(DATASETS / "titanic" / "train.csv")
    caplog.set_level(logging.INFO, logger="lora_tasks.kaggle")
    kio.download_competition("titanic", tmp_path, client)
    assert server.requests.count(("GET", "zip")) == 2
    assert sha(train) == sha(DATASETS / "titanic" / "train.csv")
    assert "train.csv" in caplog.text and "differ from what was downloaded" in caplog.text
    kio.download_competition("titanic", tmp_path, client)  # and now it is up to date again
    assert server.requests.count(("GET", "zip")) == 2


@pytest.mark.parametrize(
    "fault, expected",
    [(fk.FAULT_TRUNCATED_ZIP, kio.CorruptDownloadError), (fk.FAULT_CUT_CONNECTION, kio.RetryableKaggleError)],
)
def test_broken_zip_leaves_previous_data_intact(fault, expected, client, server, tmp_path):
    data = tmp_path / "data"
    folder = kio.download_competition("titanic", data, client)
    (folder / "train.csv").write_text("local edit forces a new download")
    before = _snapshot(folder)
    server.inject(fault, method="zip")
    with pytest.raises(expected) as info:
        kio.download_competition("titanic", data, client)
    assert kio.is_retryable(info.value)
    assert _snapshot(folder) == before
    assert sorted(p.name for p in data.iterdir()) == ["titanic"]  # no partial folders left


def test_broken_zip_on_first_download_creates_nothing(client, server, tmp_path):
    server.inject(fk.FAULT_TRUNCATED_ZIP, method="zip")
    with pytest.raises(kio.CorruptDownloadError, match="Retry the download"):
        kio.download_competition("titanic", tmp_path / "data", client)
    assert list((tmp_path / "data").iterdir()) == []


# ------------------------------------------------------------------------------------------
# error classification
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fault, method, expected, fragment, retryable",
    [
        (fk.FAULT_401, "ListDataFiles", kio.CredentialsError, "settings/api", False),
        (fk.FAULT_403_RULES, "DownloadDataFiles", kio.RulesNotAcceptedError, "kaggle.com/competitions/titanic/rules", False),
        (fk.FAULT_404, "ListDataFiles", kio.NotFoundError, "Check the slug", False),
        (fk.FAULT_429, "ListDataFiles", kio.RateLimitedError, "Retry after 500 s", True),
        (fk.FAULT_500, "DownloadDataFiles", kio.KaggleServerError, "server error (500)", True),
    ],
)
def test_download_faults_are_classified(fault, method, expected, fragment, retryable, client, server, tmp_path):
    # A wait longer than MAX_RETRY_AFTER_S is not waited out inside the call: it is raised.
    server.inject(fault, method=method, retry_after=500)
    with pytest.raises(expected) as info:
        kio.download_competition("titanic", tmp_path, client)
    assert fragment in str(info.value)
    assert kio.is_retryable(info.value) is retryable
    assert isinstance(info.value, kio.FatalKaggleError) is (not retryable)
    if fault == fk.FAULT_429:
        assert info.value.retry_after == 500
        assert kio.retry_after_seconds(info.value) == 500
    assert not (tmp_path / "titanic").exists()


def test_unknown_competition_is_not_found(client):
    with pytest.raises(kio.NotFoundError, match="no-such-competition"):
        kio.list_files("no-such-competition", client)


def test_slow_answer_times_out_as_retryable(server, creds):
    slow_client = kio.KaggleClient(server.url, timeout=0.2)
    server.inject(fk.FAULT_SLOW, method="ListDataFiles", delay=2.0)
    with pytest.raises(kio.KaggleConnectionError, match="in time") as info:
        kio.list_files("titanic", slow_client)
    assert kio.is_retryable(info.value)


def test_unreachable_server_is_retryable(creds, tmp_path):
    with fk.serve(DATASETS) as srv:
        url = srv.url
    with pytest.raises(kio.KaggleConnectionError, match="connection to Kaggle failed") as info:
        kio.list_files("titanic", kio.KaggleClient(url, timeout=1))
    assert kio.is_retryable(info.value)


def test_is_retryable_on_raw_and_foreign_errors():
    assert kio.is_retryable(requests.ConnectionError("down"))
    assert kio.is_retryable(requests.ReadTimeout("slow"))
    assert not kio.is_retryable(ValueError("bug"))
    assert kio.is_retryable(kio.RetryableKaggleError("x", retry_after=3))
    assert not kio.is_retryable(kio.SubmissionValidationError("x"))
    assert issubclass(kio.SubmissionLimitError, kio.FatalKaggleError)
    assert issubclass(kio.CredentialsError, kio.KaggleIOError)


# ------------------------------------------------------------------------------------------
# credentials
# ------------------------------------------------------------------------------------------


def test_missing_credentials_is_our_clear_error(isolated_home, server, capsys):
    client = kio.KaggleClient(server.url, timeout=5)
    with pytest.raises(kio.CredentialsError) as info:
        kio.list_files("titanic", client)
    text = str(info.value)
    assert "No Kaggle credentials found" in text
    assert "KAGGLE_API_TOKEN" in text and "kaggle.com/settings/api" in text
    assert server.requests == []  # failed before any request
    assert "Authentication required" not in capsys.readouterr().out  # the client's help is swallowed


def test_kaggle_json_in_config_dir_is_used(isolated_home, server, tmp_path):
    (isolated_home / ".kaggle" / "kaggle.json").write_text(
        f'{{"username": "{fk.DEFAULT_USERNAME}", "key": "{fk.DEFAULT_KEY}"}}'
    )
    (isolated_home / ".kaggle" / "kaggle.json").chmod(0o600)
    assert [f.name for f in kio.list_files("titanic", kio.KaggleClient(server.url))][0] == "gender_submission.csv"


@pytest.mark.parametrize("where", ["env", "file"])
def test_bearer_token_is_introspected_and_used(where, isolated_home, server, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    if where == "env":
        monkeypatch.setenv("KAGGLE_API_TOKEN", fk.DEFAULT_TOKEN)
    else:
        (isolated_home / ".kaggle" / "access_token").write_text(fk.DEFAULT_TOKEN + "\n")
    files = kio.list_files("titanic", kio.KaggleClient(server.url, timeout=5))
    assert len(files) == 3
    assert server.requests[0] == ("POST", "IntrospectToken")
    assert fk.DEFAULT_TOKEN not in caplog.text


def test_credentials_never_leak(isolated_home, server, monkeypatch, caplog, capsys, tmp_path):
    secret = "s3cr3t-key-should-never-show-up"
    monkeypatch.setenv("KAGGLE_USERNAME", fk.DEFAULT_USERNAME)
    monkeypatch.setenv("KAGGLE_KEY", secret)
    caplog.set_level(logging.DEBUG)
    client = kio.KaggleClient(server.url, timeout=5)
    with pytest.raises(kio.CredentialsError) as info:
        kio.download_competition("titanic", tmp_path, client)
    monkeypatch.setenv("KAGGLE_KEY", fk.DEFAULT_KEY)
    good = kio.KaggleClient(server.url, timeout=5)
    sub = tmp_path / "sub.csv"
    sub.write_bytes((DATASETS / "titanic" / "gender_submission.csv").read_bytes())
    result = kio.submit("titanic", sub, "leak check", "leak-1", tmp_path / "state", good)
    out = capsys.readouterr()
    haystacks = [
        str(info.value),
        repr(info.value),
        repr(client),
        repr(good),
        repr(result),
        caplog.text,
        out.out,
        out.err,
        *(p.read_text() for p in (tmp_path / "state").iterdir()),
    ]
    for text in haystacks:
        assert secret not in text
        assert fk.DEFAULT_KEY not in text
    assert "401" in str(info.value)




# ------------------------------------------------------------------------------------------
# Retry-After
# ------------------------------------------------------------------------------------------


def test_retry_after_delays_the_next_request(client, server, caplog):
    server.inject(fk.FAULT_429, method="ListDataFiles", retry_after=3)
    files = kio.list_files("titanic", client)
    assert len(files) == 3
    first, second = server.times_of("ListDataFiles")
    assert second - first >= 3.0
    assert "Kaggle asked to wait 3 s while listing files for 'titanic'" in caplog.text


def test_retry_after_gives_up_after_a_few_waits(client, server):
    server.inject(fk.FAULT_429, times=10, method="ListDataFiles", retry_after=0.05)
    with pytest.raises(kio.RateLimitedError) as info:
        kio.list_files("titanic", client)
    assert info.value.retry_after == 0.05
    assert len(server.times_of("ListDataFiles")) == kio.client.RETRY_AFTER_TRIES + 1


# ------------------------------------------------------------------------------------------
# tokens
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, fragment",
    [
        ("KGAT_0123456789 abcdef0123", "contains spaces"),
        ('{"username": "me", "key": "0123456789abcdef"}', "contents of kaggle.json"),
        ("'KGAT_0123456789abcdef0123'", "wrapped in quotes"),
        ("KGAT_0123456789abcdef0123\n", "line break"),
        ("KGAT_12", "fewer than any Kaggle token"),
        ("~/.kaggle/no_such_token.txt", "no such file exists"),
    ],
    ids=["space", "kaggle-json", "quotes", "newline", "short", "missing-file"],
)
def test_malformed_token_is_reported_as_invalid(value, fragment, creds, server, monkeypatch):
    # Legacy credentials exist too (creds): a malformed token is still an error, never skipped.
    monkeypatch.setenv("KAGGLE_API_TOKEN", value)
    with pytest.raises(kio.CredentialsError) as info:
        kio.list_files("titanic", kio.KaggleClient(server.url, timeout=5))
    text = str(info.value)
    assert "KAGGLE_API_TOKEN" in text and fragment in text
    assert "Expected one line of letters, digits" in text
    assert "No Kaggle credentials found" not in text
    if "no such file" not in fragment:
        assert value.strip() not in text  # the token itself is never shown
    assert server.requests == []  # refused before any request


def test_token_file_with_bad_content_names_the_file(isolated_home, server, monkeypatch, tmp_path):
    token_file = tmp_path / "token.txt"
    token_file.write_text("my token is KGAT_0123456789abcdef\n")
    monkeypatch.setenv("KAGGLE_API_TOKEN", str(token_file))
    with pytest.raises(kio.CredentialsError, match="names the file .*token.txt.* is not a valid Kaggle API token"):
        kio.list_files("titanic", kio.KaggleClient(server.url, timeout=5))


def test_well_formed_but_rejected_token_is_not_called_missing(isolated_home, server, monkeypatch):
    monkeypatch.setenv("KAGGLE_API_TOKEN", "KGAT_revoked_0123456789abcdef")
    with pytest.raises(kio.CredentialsError) as info:
        kio.list_files("titanic", kio.KaggleClient(server.url, timeout=5))
    assert "KAGGLE_API_TOKEN is set but Kaggle did not accept the token" in str(info.value)
    assert server.requests == [("POST", "IntrospectToken")]


def test_rejected_token_is_named_even_with_other_credentials(creds, server, monkeypatch):
    # The client's HTTP layer would send the rejected token anyway (a bare 401 on every call).
    monkeypatch.setenv("KAGGLE_API_TOKEN", "KGAT_revoked_0123456789abcdef")
    with pytest.raises(kio.CredentialsError, match="KAGGLE_API_TOKEN is set but Kaggle did not accept the token"):
        kio.list_files("titanic", kio.KaggleClient(server.url, timeout=5))
    assert server.requests == [("POST", "IntrospectToken")]


# ------------------------------------------------------------------------------------------
# slugs and zip-slip
# ------------------------------------------------------------------------------------------


BAD_SLUGS = ["../evil", "a/b", "..", "", "titanic/../titanic", " titanic", "titanic\\x"]


@pytest.mark.parametrize("slug", BAD_SLUGS)
def test_slug_with_path_parts_is_refused(slug, client, server, tmp_path):
    data = tmp_path / "work" / "data"
    data.mkdir(parents=True)
    sub = prediction("titanic", tmp_path)
    for attempt in (
        lambda: kio.download_competition(slug, data, client),
        lambda: kio.submit(slug, sub, "m", "run-1", tmp_path / "work" / "state", client),
        lambda: kio.list_files(slug, client),
        lambda: kio.competition_metric(slug, client),
    ):
        with pytest.raises(kio.InvalidSlugError, match="is not valid: use the last part of") as info:
            attempt()
        assert isinstance(info.value, ValueError) and not kio.is_retryable(info.value)
    assert server.requests == []
    assert list(data.iterdir()) == [] and not (tmp_path / "work" / "state").exists()


def test_zip_with_parent_path_member_is_refused(client, server, tmp_path):
    data = tmp_path / "work" / "data"
    server.inject(fk.FAULT_ZIP_SLIP, method="zip")
    with pytest.raises(kio.CorruptDownloadError, match=r"zip member '\.\./evil\.csv' points outside the folder"):
        kio.download_competition("titanic", data, client)
    assert list(tmp_path.rglob("evil.csv")) == []  # nothing written anywhere, inside or outside
    assert list(data.iterdir()) == []  # and no partial folder left behind
    assert ("GET", "zip") in server.requests


@pytest.mark.parametrize("endpoint", ["http://10.0.0.4:8765", "http://kaggle.example.org", "http://192.168.1.2",
                                      "http://[2001:db8::1]:80", "ftp://127.0.0.1", "127.0.0.1:8765"])
def test_plain_http_to_another_host_is_refused_before_any_request(endpoint, creds):
    """Issue 35 item 9: the credentials would cross the network in clear."""
    with pytest.raises(kio.InsecureEndpointError) as err:
        kio.KaggleClient(endpoint)
    assert endpoint in str(err.value) and "https://" in str(err.value)
    assert not kio.is_retryable(err.value)


@pytest.mark.parametrize("endpoint", ["https://kaggle.example.org", "http://127.0.0.1:8765", "http://localhost:1",
                                      "http://127.1.2.3", "http://[::1]:8765/"])
def test_https_or_this_machine_is_accepted(endpoint):
    assert kio.KaggleClient(endpoint).endpoint == endpoint.rstrip("/")


def test_the_download_step_refuses_a_remote_http_endpoint(creds, tmp_path):
    from lora_tasks.steps.download import download_data

    with pytest.raises(kio.InsecureEndpointError, match="plain http to '192.0.2.7'"):
        download_data("titanic", tmp_path / "data", "http://192.0.2.7:8080")
    assert not (tmp_path / "data").exists()
