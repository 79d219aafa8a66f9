"""The fake Kaggle server itself: wire format, auth, hidden solutions, scoring, proxy route, CLI."""

from __future__ import annotations

import base64
import io
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import requests
from sklearn.metrics import accuracy_score

from lora_tasks.testing import fake_kaggle as fk

DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
RPC = "/api/v1/competitions.CompetitionApiService/"

pytestmark = pytest.mark.skipif(not DATASETS.is_dir(), reason=f"shared datasets missing at {DATASETS}")


def _basic(user: str = fk.DEFAULT_USERNAME, key: str = fk.DEFAULT_KEY) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{key}".encode()).decode()}


@pytest.fixture
def server():
    with fk.serve(DATASETS) as srv:
        yield srv


def test_serves_on_a_free_local_port(server):
    assert server.url == f"http://127.0.0.1:{server.port}"
    assert server.port > 0


def test_download_redirects_to_zip_with_length_and_date(server):
    answer = requests.post(server.url + RPC + "DownloadDataFiles", json={"competitionName": "titanic"},
                           headers=_basic(), allow_redirects=False, timeout=5)
    assert answer.status_code == 302
    zipped = requests.get(answer.headers["Location"], timeout=5)
    assert zipped.headers["Content-Length"] == str(len(zipped.content))
    assert zipped.headers["Last-Modified"].endswith("GMT")
    with zipfile.ZipFile(io.BytesIO(zipped.content)) as bundle:
        assert bundle.testzip() is None
        assert sorted(bundle.namelist()) == ["gender_submission.csv", "test.csv", "train.csv"]
        assert bundle.read("train.csv") == (DATASETS / "titanic" / "train.csv").read_bytes()


@pytest.mark.parametrize(
    "headers, status",
    [
        ({}, 401),
        (_basic(key="wrong"), 401),
        ({"Authorization": "Bearer nope"}, 401),
        (_basic(), 200),
        ({"Authorization": f"Bearer {fk.DEFAULT_TOKEN}"}, 200),
    ],
    ids=["none", "bad-basic", "bad-bearer", "basic", "bearer"],
)
def test_basic_and_bearer_auth(server, headers, status):
    answer = requests.post(server.url + RPC + "ListDataFiles", json={"competitionName": "titanic"},
                           headers=headers, timeout=5)
    assert answer.status_code == status
    if status == 401:
        assert answer.json() == {"code": 401, "message": "Unauthenticated"}


def test_solution_file_is_hidden(tmp_path):
    comp = tmp_path / "toy"
    comp.mkdir()
    (comp / "test.csv").write_text("id,x\n1,0.5\n")
    (comp / fk.SOLUTION_FILE_NAME).write_text("id,target\n1,1\n")
    with fk.serve(tmp_path) as srv:
        listing = requests.post(srv.url + RPC + "ListDataFiles", json={"competitionName": "toy"},
                                headers=_basic(), timeout=5).json()
        assert [f["name"] for f in listing["files"]] == ["test.csv"]
        hidden = requests.get(f"{srv.url}/files/toy/{fk.SOLUTION_FILE_NAME}", timeout=5)
        assert hidden.status_code == 404


def test_fault_is_used_up_after_times(server):
    server.inject(fk.FAULT_500, times=2, method="ListDataFiles")
    codes = [
        requests.post(server.url + RPC + "ListDataFiles", json={"competitionName": "titanic"},
                      headers=_basic(), timeout=5).status_code
        for _ in range(3)
    ]
    assert codes == [500, 500, 200]


def test_429_carries_retry_after(server):
    server.inject(fk.FAULT_429, retry_after=3)
    answer = requests.post(server.url + RPC + "ListDataFiles", json={"competitionName": "titanic"},
                           headers=_basic(), timeout=5)
    assert answer.status_code == 429 and answer.headers["Retry-After"] == "3"


def test_unknown_fault_is_refused(server):
    with pytest.raises(ValueError, match="unknown fault"):
        server.inject("teapot")


def test_score_submission_matches_sklearn():
    solution = pd.DataFrame({"id": [1, 2, 3, 4], "target": [1, 0, 1, 1]})
    submission = pd.DataFrame({"id": [4, 3, 2, 1], "target": [1, 0, 0, 1]})  # other order
    assert fk.score_submission(submission, solution, "accuracy") == accuracy_score([1, 0, 1, 1], [1, 0, 0, 1])
    with pytest.raises(ValueError, match="ids"):
        fk.score_submission(submission.assign(id=[9, 3, 2, 1]), solution, "accuracy")


def test_derived_solutions_are_deterministic(tmp_path):
    first = fk.derive_solutions(DATASETS, tmp_path / "a")
    second = fk.derive_solutions(DATASETS, tmp_path / "b")
    assert set(first) == {"titanic", "house-prices-advanced-regression-techniques", "nlp-getting-started"}
    for slug in first:
        assert first[slug].read_bytes() == second[slug].read_bytes()
    titanic = pd.read_csv(first["titanic"])
    assert len(titanic) == 418 and 0 < titanic.Survived.mean() < 1


def _isolated_cli_env(server: fk.FakeKaggleServer, tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = server.client_env()
    env.update({"HOME": str(home), "KAGGLE_CONFIG_DIR": str(home / ".kaggle")})
    env.pop("XDG_CONFIG_HOME", None)
    return env


def test_kaggle_cli_in_subprocess_through_proxy_route(tmp_path):
    solution = tmp_path / "solution.csv"
    sample = pd.read_csv(DATASETS / "titanic" / "gender_submission.csv")
    sample.assign(Survived=1 - sample.Survived).to_csv(solution, index=False)  # everything wrong
    with fk.serve(DATASETS, {"titanic": solution}, pending_polls=0) as srv:
        env = _isolated_cli_env(srv, tmp_path)
        assert "NO_PROXY" not in env and env["KAGGLE_API_ENVIRONMENT"] == "LOCALHOST"
        done = subprocess.run(
            [sys.executable, "-m", "kaggle", "competitions", "submit", "-c", "titanic",
             "-f", str(DATASETS / "titanic" / "gender_submission.csv"), "-m", "from the cli"],
            env=env, capture_output=True, text=True, timeout=60,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "Successfully submitted to titanic" in done.stdout
        stored = srv.submissions_for("titanic")
        assert len(stored) == 1 and stored[0].description == "from the cli"
        assert stored[0].content == (DATASETS / "titanic" / "gender_submission.csv").read_bytes()
        listed = subprocess.run(
            [sys.executable, "-m", "kaggle", "competitions", "submissions", "-c", "titanic", "-v"],
            env=env, capture_output=True, text=True, timeout=60,
        )
        assert listed.returncode == 0, listed.stdout + listed.stderr
        assert "COMPLETE" in listed.stdout and ",0.0," in listed.stdout  # all-wrong file scores 0


def test_runs_as_a_command(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "lora_tasks.testing.fake_kaggle", "--data", str(DATASETS), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        first_line = proc.stdout.readline()
        assert "Fake Kaggle serving" in first_line
        url = first_line.rsplit(" at ", 1)[1].strip()
        answer = requests.post(url + RPC + "ListDataFiles", json={"competitionName": "nlp-getting-started"},
                               headers=_basic(), timeout=5)
        assert sorted(f["name"] for f in answer.json()["files"]) == ["sample_submission.csv", "test.csv", "train.csv"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
