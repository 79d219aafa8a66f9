"""Kaggle I/O against the fake Kaggle server, through the real ``kaggle`` client (no mocks).

Every test isolates HOME and KAGGLE_CONFIG_DIR in tmp_path, so the user's ~/.kaggle is never read
or written. Timeouts and polls are made short through parameters, never by sleeping.
"""

from __future__ import annotations

import hashlib
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, f1_score, mean_squared_log_error

from lora_tasks import kaggle as kio
from lora_tasks.testing import fake_kaggle as fk

DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
SHARED = ["titanic", "house-prices-advanced-regression-techniques", "nlp-getting-started"]
SAMPLE = {
    "titanic": "gender_submission.csv",
    "house-prices-advanced-regression-techniques": "sample_submission.csv",
    "nlp-getting-started": "sample_submission.csv",
}

pytestmark = pytest.mark.skipif(not DATASETS.is_dir(), reason=f"shared datasets missing at {DATASETS}")


# ------------------------------------------------------------------------------------------
# fixtures
# ------------------------------------------------------------------------------------------


@pytest.fixture
def isolated_home(tmp_path, monkeypatch) -> Path:
    """A HOME and KAGGLE_CONFIG_DIR with no credentials at all."""
    home = tmp_path / "home"
    (home / ".kaggle").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(home / ".kaggle"))
    for name in ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_ENVIRONMENT", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture
def creds(isolated_home, monkeypatch) -> Path:
    """Legacy username/key credentials of the fake server, via environment variables."""
    monkeypatch.setenv("KAGGLE_USERNAME", fk.DEFAULT_USERNAME)
    monkeypatch.setenv("KAGGLE_KEY", fk.DEFAULT_KEY)
    return isolated_home


@pytest.fixture(scope="module")
def solutions(tmp_path_factory) -> dict[str, Path]:
    return fk.derive_solutions(DATASETS, tmp_path_factory.mktemp("solutions"))


@pytest.fixture
def server(solutions):
    with fk.serve(DATASETS, solutions, pending_polls=1) as srv:
        yield srv


@pytest.fixture
def client(server, creds) -> kio.KaggleClient:
    return kio.KaggleClient(server.url, timeout=5)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _snapshot(folder: Path) -> dict[str, str]:
    return {p.name: _sha(p) for p in sorted(folder.iterdir()) if p.is_file()}


# ------------------------------------------------------------------------------------------
# downloads
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("slug", SHARED)
def test_download_each_shared_competition_byte_identical(slug, client, server, tmp_path):
    folder = kio.download_competition(slug, tmp_path / "data", client)
    assert folder == tmp_path / "data" / slug
    original = {p.name: _sha(p) for p in (DATASETS / slug).iterdir()}
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
    assert _sha(folder / "train.csv") == _sha(DATASETS / "titanic" / "train.csv")


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
    import requests

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
# validation
# ------------------------------------------------------------------------------------------


@pytest.fixture
def titanic_sample() -> Path:
    return DATASETS / "titanic" / "gender_submission.csv"


def _write(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_csv(path, index=False)
    return path


def test_valid_submission_passes(titanic_sample):
    check = kio.validate_submission(titanic_sample, titanic_sample)
    assert check.rows == 418 and check.columns == ("PassengerId", "Survived")
    assert check.sha256 == _sha(titanic_sample)


@pytest.mark.parametrize(
    "mutate, fragment",
    [
        (lambda f: f.rename(columns={"Survived": "survived"}), "columns are"),
        (lambda f: f[["Survived", "PassengerId"]], "same order"),
        (lambda f: f.iloc[:-1], "417 rows but sample_submission has 418"),
        (lambda f: f.assign(PassengerId=f.PassengerId + 10_000), "values not in sample_submission"),
        (lambda f: f.assign(PassengerId=[892] * len(f)), "duplicate PassengerId"),
        (lambda f: f.assign(Survived=f.Survived.astype(float).where(f.index != 3)), "NaN"),
        (lambda f: f.assign(Survived=f.Survived.astype(float).where(f.index != 3, np.inf)), "infinite"),
        (lambda f: f.assign(Survived=f.Survived * 0.5), "must hold integers"),
        (lambda f: f.assign(Survived="yes"), "must be numeric"),
    ],
    ids=["column-name", "column-order", "length", "ids", "duplicate-ids", "nan", "inf", "float-labels", "text"],
)
def test_invalid_submissions_are_rejected(mutate, fragment, titanic_sample, tmp_path):
    bad = _write(mutate(pd.read_csv(titanic_sample)), tmp_path / "bad.csv")
    with pytest.raises(kio.SubmissionValidationError) as info:
        kio.validate_submission(bad, titanic_sample)
    assert fragment in str(info.value)
    assert "nothing was uploaded" in str(info.value)
    assert not kio.is_retryable(info.value)


def test_float_target_accepts_floats(tmp_path):
    sample = DATASETS / "house-prices-advanced-regression-techniques" / "sample_submission.csv"
    frame = pd.read_csv(sample)
    sub = _write(frame.assign(SalePrice=frame.SalePrice.round(0).astype(int)), tmp_path / "s.csv")
    assert kio.validate_submission(sub, sample).rows == 1459


def test_invalid_file_is_never_uploaded(client, server, titanic_sample, tmp_path):
    bad = _write(pd.read_csv(titanic_sample).iloc[:10], tmp_path / "bad.csv")
    with pytest.raises(kio.SubmissionValidationError):
        kio.submit("titanic", bad, "m", "run-v", tmp_path / "state", client, sample_submission_path=titanic_sample)
    assert server.requests == []
    assert not (tmp_path / "state").exists()


# ------------------------------------------------------------------------------------------
# submit and score
# ------------------------------------------------------------------------------------------


def _expected_score(slug: str, submission: Path, solution: Path) -> float:
    sub, sol = pd.read_csv(submission), pd.read_csv(solution)
    id_col, target = sol.columns[0], sol.columns[1]
    merged = sol.merge(sub, on=id_col, suffixes=("_true", "_pred"))
    y_true, y_pred = merged[f"{target}_true"], merged[f"{target}_pred"]
    if slug == "titanic":
        return accuracy_score(y_true, y_pred)
    if slug == "nlp-getting-started":
        return f1_score(y_true, y_pred)
    return math.sqrt(mean_squared_log_error(y_true, y_pred))


def _prediction(slug: str, tmp_path: Path) -> Path:
    """A plausible, imperfect prediction for each shared competition."""
    test = pd.read_csv(DATASETS / slug / "test.csv")
    if slug == "titanic":
        frame = pd.DataFrame({"PassengerId": test.PassengerId, "Survived": (test.Sex == "female").astype(int)})
    elif slug == "nlp-getting-started":
        frame = pd.DataFrame({"id": test.id, "target": test.text.str.contains("fire|storm", case=False).astype(int)})
    else:
        frame = pd.DataFrame({"Id": test.Id, "SalePrice": 60_000.0 + 90.0 * test.GrLivArea})
    return _write(frame, tmp_path / f"{slug}-submission.csv")


@pytest.mark.parametrize("slug", SHARED)
def test_submit_and_read_back_the_right_score(slug, client, server, solutions, tmp_path):
    path = _prediction(slug, tmp_path)
    kio.validate_submission(path, DATASETS / slug / SAMPLE[slug])
    result = kio.submit(slug, path, "baseline", f"run-{slug}", tmp_path / "state", client)
    assert result.ref > 0 and result.status == "PENDING" and not result.reused
    assert result.description == f"baseline [run:run-{slug}] [sha256:{_sha(path)}]"
    scored = kio.wait_for_score(slug, result.ref, client, timeout_s=5, poll_s=0.01)
    expected = _expected_score(slug, path, solutions[slug])
    assert 0 < expected and expected != 1.0
    assert scored.status == "COMPLETE"
    assert scored.public_score == pytest.approx(expected, rel=1e-12)
    assert len(server.submissions_for(slug)) == 1


def test_intent_file_is_written_with_sha(client, tmp_path):
    path = _prediction("titanic", tmp_path)
    result = kio.submit("titanic", path, "m", "run-intent", tmp_path / "state", client)
    intent = __import__("json").loads((tmp_path / "state" / "submission-titanic-run-intent.json").read_text())
    assert intent["sha256"] == _sha(path) == result.sha256
    assert intent["ref"] == result.ref and intent["state"] == "submitted"


def test_lost_create_answer_retry_does_not_duplicate(client, server, tmp_path):
    path = _prediction("titanic", tmp_path)
    server.inject(fk.FAULT_LOSE_RESPONSE, method="CreateSubmission")
    with pytest.raises(kio.RetryableKaggleError) as info:
        kio.submit("titanic", path, "m", "run-lost", tmp_path / "state", client)
    assert kio.is_retryable(info.value)
    assert len(server.submissions_for("titanic")) == 1  # the server stored it anyway
    again = kio.submit("titanic", path, "m", "run-lost", tmp_path / "state", client)
    assert again.reused
    assert again.ref == server.submissions_for("titanic")[0].ref
    assert len(server.submissions_for("titanic")) == 1
    assert [m for _, m in server.requests].count("StartSubmissionUpload") == 1


def test_silent_upload_failure_is_detected_and_retry_submits_once(client, server, tmp_path):
    path = _prediction("titanic", tmp_path)
    server.inject(fk.FAULT_UPLOAD_FAILED, method="upload")
    with pytest.raises(kio.SilentSubmitFailure, match="Could not submit to competition") as info:
        kio.submit("titanic", path, "m", "run-silent", tmp_path / "state", client)
    assert kio.is_retryable(info.value)
    assert server.submissions_for("titanic") == []
    result = kio.submit("titanic", path, "m", "run-silent", tmp_path / "state", client)
    assert not result.reused
    assert [s.ref for s in server.submissions_for("titanic")] == [result.ref]


def test_submission_limit_says_what_to_do(client, server, tmp_path):
    server.inject(fk.FAULT_SUBMISSION_LIMIT, method="CreateSubmission")
    with pytest.raises(kio.SubmissionLimitError, match="daily submission limit") as info:
        kio.submit("titanic", _prediction("titanic", tmp_path), "m", "run-limit", tmp_path / "s", client)
    assert "00:00 UTC" in str(info.value)
    assert not kio.is_retryable(info.value)


def test_rules_not_accepted_on_submit_names_the_url(client, server, tmp_path):
    server.inject(fk.FAULT_403_RULES, method="StartSubmissionUpload")
    with pytest.raises(kio.RulesNotAcceptedError, match=r"https://www.kaggle.com/competitions/titanic/rules"):
        kio.submit("titanic", _prediction("titanic", tmp_path), "m", "run-rules", tmp_path / "s", client)


def test_run_id_reused_for_another_file_is_refused(client, tmp_path):
    first = _prediction("titanic", tmp_path)
    kio.submit("titanic", first, "m", "run-x", tmp_path / "state", client)
    other = _write(pd.read_csv(first).assign(Survived=0), tmp_path / "other.csv")
    with pytest.raises(kio.RunIdConflictError, match="new run id"):
        kio.submit("titanic", other, "m", "run-x", tmp_path / "state", client)


def test_scoring_error_is_fatal(client, server, tmp_path):
    bad = _write(pd.DataFrame({"PassengerId": [1], "Survived": [1]}), tmp_path / "bad.csv")
    result = kio.submit("titanic", bad, "unvalidated", "run-err", tmp_path / "state", client)
    with pytest.raises(kio.SubmissionScoringError, match="rows") as info:
        kio.wait_for_score("titanic", result.ref, client, timeout_s=5, poll_s=0.01)
    assert not kio.is_retryable(info.value)


def test_wait_is_bounded_and_rides_out_transient_errors(solutions, creds, tmp_path):
    with fk.serve(DATASETS, solutions, pending_polls=1_000) as srv:
        client = kio.KaggleClient(srv.url, timeout=5)
        result = kio.submit("titanic", _prediction("titanic", tmp_path), "m", "run-wait", tmp_path / "s", client)
        srv.inject(fk.FAULT_500, method="ListSubmissions")
        waits: list[float] = []
        with pytest.raises(kio.ScoringTimeoutError, match="not scored within") as info:
            kio.wait_for_score("titanic", result.ref, client, timeout_s=0.3, poll_s=0.02, sleep=lambda s: (waits.append(s), __import__("time").sleep(s)))
        assert kio.is_retryable(info.value)
        assert len(waits) >= 2 and waits[1] > waits[0]  # backs off


def test_prefect_retry_condition_unwraps_failed_state():
    from prefect.states import Completed, Failed

    assert kio.prefect_retry_condition(None, None, Failed(data=kio.RateLimitedError("429", retry_after=1)))
    assert not kio.prefect_retry_condition(None, None, Failed(data=kio.NotFoundError("404")))
    assert not kio.prefect_retry_condition(None, None, Completed(data=1))


def test_recorded_submission_is_never_repeated_even_if_not_listed(client, server, tmp_path):
    path = _prediction("titanic", tmp_path)
    first = kio.submit("titanic", path, "m", "run-rec", tmp_path / "state", client)
    server.submissions.clear()  # e.g. pushed off the first page of ListSubmissions
    again = kio.submit("titanic", path, "m", "run-rec", tmp_path / "state", client)
    assert again.reused and again.ref == first.ref
    assert [m for _, m in server.requests].count("CreateSubmission") == 1
