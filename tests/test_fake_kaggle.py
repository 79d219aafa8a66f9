"""The fake Kaggle server itself: wire format, auth, hidden solutions, scoring, proxy route, CLI."""

from __future__ import annotations

import base64
import io
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
from sklearn import metrics as skm
from sklearn.metrics import accuracy_score

from lora_tasks.data.competition import load_competition
from lora_tasks.kaggle import KaggleClient, download_competition
from lora_tasks.testing import fake_kaggle as fk
from lora_tasks.testing.demo import DEMO_EVALUATION_METRIC, build_demo_competition
from lora_tasks.testing.shapes import (
    SHAPES,
    build_shape,
    fake_server_evaluation_metrics,
    fake_server_metrics,
)

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
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "Successfully submitted to titanic" in done.stdout
        stored = srv.submissions_for("titanic")
        assert len(stored) == 1 and stored[0].description == "from the cli"
        assert stored[0].content == (DATASETS / "titanic" / "gender_submission.csv").read_bytes()
        listed = subprocess.run(
            [sys.executable, "-m", "kaggle", "competitions", "submissions", "-c", "titanic", "-v"],
            env=env, capture_output=True, text=True, timeout=60, check=False,
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


def _frames(y_true, y_pred, columns=("target",)):
    ids = list(range(len(y_true)))
    true = pd.DataFrame(np.asarray(y_true).reshape(len(ids), -1), columns=list(columns)).assign(id=ids)
    pred = pd.DataFrame(np.asarray(y_pred).reshape(len(ids), -1), columns=list(columns)).assign(id=ids)
    order = ["id", *columns]
    return pred[order].iloc[::-1], true[order]  # the submission in another row order


RNG = np.random.default_rng(7)
LABELS = RNG.integers(0, 2, size=60)
NOISY = np.where(RNG.random(60) < 0.25, 1 - LABELS, LABELS)
PROBS = np.clip(LABELS * 0.3 + RNG.random(60) * 0.7, 0.01, 0.99)
RATINGS = RNG.integers(0, 5, size=60)
VALUES = RNG.random(60) * 100


@pytest.mark.parametrize(
    "metric, y_true, y_pred, expected",
    [
        ("accuracy", LABELS, NOISY, skm.accuracy_score(LABELS, NOISY)),
        ("f1", LABELS, NOISY, skm.f1_score(LABELS, NOISY)),
        ("mcc", LABELS, NOISY, skm.matthews_corrcoef(LABELS, NOISY)),
        ("qwk", RATINGS, np.clip(RATINGS + RNG.integers(-1, 2, 60), 0, 4), None),
        ("rmse", VALUES, VALUES + 3, 3.0),
        ("rmsle", VALUES, VALUES * 1.1, skm.root_mean_squared_log_error(VALUES, VALUES * 1.1)),
        ("mae", VALUES, VALUES - 2, 2.0),
        ("auc", LABELS, PROBS, skm.roc_auc_score(LABELS, PROBS)),
        ("logloss", LABELS, PROBS, skm.log_loss(LABELS, PROBS)),
    ],
)
def test_each_metric_matches_sklearn(metric, y_true, y_pred, expected):
    submission, solution = _frames(y_true, y_pred)
    if expected is None:  # qwk
        expected = skm.cohen_kappa_score(y_true, submission.sort_values("id").target, weights="quadratic")
    score = fk.score_submission(submission, solution, metric)
    assert score == pytest.approx(expected, rel=1e-9)
    assert metric in fk.KAGGLE_METRIC_NAMES


def test_multiclass_loss_and_mean_columnwise_auc_match_sklearn():
    truth = RNG.integers(0, 3, size=60)
    probs = RNG.dirichlet(np.ones(3), size=60)
    submission, solution = _frames(np.eye(3, dtype=int)[truth], probs, columns=("a", "b", "c"))
    assert fk.score_submission(submission, solution, "multiclass_logloss") == pytest.approx(skm.log_loss(truth, probs))
    onehot = np.eye(3, dtype=int)[truth]
    expected = np.mean([skm.roc_auc_score(onehot[:, j], probs[:, j]) for j in range(3)])
    assert fk.score_submission(submission, solution, "mean_columnwise_auc") == pytest.approx(expected)


def test_labels_are_compared_as_written():
    solution = pd.DataFrame({"id": ["0013_01", "0018_01"], "Transported": ["True", "False"]})
    right = solution.copy()
    as_numbers = solution.assign(Transported=["1", "0"])
    assert fk.score_submission(right, solution, "accuracy") == 1.0
    assert fk.score_submission(as_numbers, solution, "accuracy") == 0.0  # 0/1 is not True/False
    as_floats = pd.DataFrame({"id": [1, 2], "y": ["1.0", "0.0"]})
    assert fk.score_submission(as_floats, pd.DataFrame({"id": [1, 2], "y": [1, 0]}), "accuracy") == 0.0
    yes_no = pd.DataFrame({"id": [1, 2, 3], "y": ["yes", "no", "yes"]})
    assert fk.score_submission(yes_no.assign(y=["yes", "yes", "yes"]), yes_no, "f1") == pytest.approx(0.8)


def test_listing_serves_each_competitions_evaluation_metric(tmp_path):
    for slug in ("alpha", "beta", "gamma"):
        (tmp_path / slug).mkdir()
    with fk.serve(tmp_path, metrics={"alpha": "qwk", "beta": "rmsle"}, evaluation_metrics={"gamma": None}) as srv:
        answer = requests.post(srv.url + RPC + "ListCompetitions", json={"search": "", "pageSize": 2},
                               headers=_basic(), timeout=5).json()
        assert [c["ref"] for c in answer["competitions"]] == [
            "https://www.kaggle.com/competitions/alpha", "https://www.kaggle.com/competitions/beta"]
        assert [c["evaluationMetric"] for c in answer["competitions"]] == [
            "Quadratic Weighted Kappa", "Root Mean Squared Logarithmic Error"]
        rest = requests.post(srv.url + RPC + "ListCompetitions", json={"pageToken": answer["nextPageToken"]},
                             headers=_basic(), timeout=5).json()
        assert [c["title"] for c in rest["competitions"]] == ["Gamma"] and "evaluationMetric" not in rest["competitions"][0]
        found = requests.post(srv.url + RPC + "ListCompetitions", json={"search": "bet"}, headers=_basic(), timeout=5)
        assert [c["title"] for c in found.json()["competitions"]] == ["Beta"]


def test_unknown_metric_is_refused_at_start(tmp_path):
    with pytest.raises(ValueError, match="unknown metric 'kappa'; known: .*'qwk'"):
        fk.FakeKaggleServer(tmp_path, metrics={"x": "kappa"})


def test_the_servers_scores_come_from_the_package_metrics():
    """The fake server scores with lora_tasks.metrics (it aligns and reads Kaggle's text; it keeps
    no metric table of its own): no scikit-learn in its scoring module, and a metric is the package's."""
    import ast
    import inspect

    from lora_tasks.metrics import get_metric
    from lora_tasks.testing.fake_kaggle import scoring

    tree = ast.parse(inspect.getsource(scoring))
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not any(name.startswith("sklearn") for name in imported), imported
    assert fk.metric_of("auc") is get_metric("roc_auc") and fk.metric_of("multiclass_logloss") is get_metric("log_loss")


def test_zip_slip_fault_adds_a_parent_path_member(server):
    server.inject(fk.FAULT_ZIP_SLIP, method="zip")
    evil = requests.get(server.url + "/files/titanic.zip", timeout=5)
    clean = requests.get(server.url + "/files/titanic.zip", timeout=5)
    with zipfile.ZipFile(io.BytesIO(evil.content)) as bundle:
        assert "../evil.csv" in bundle.namelist()
    with zipfile.ZipFile(io.BytesIO(clean.content)) as bundle:
        assert "../evil.csv" not in bundle.namelist()


def test_request_times_are_recorded_in_order(server):
    for _ in range(2):
        requests.post(server.url + RPC + "ListDataFiles", json={"competitionName": "titanic"}, headers=_basic(), timeout=5)
    first, second = server.times_of("ListDataFiles")
    assert first <= second and [r for _, _, r in server.request_log] == ["ListDataFiles", "ListDataFiles"]


# ---- shapes: sub-folders, several columns, metrics named by the competition folder ----------


def test_a_subfolder_is_zipped_and_listed_with_relative_names_and_the_solution_stays_hidden(tmp_path):
    top = build_shape("shape-subfolder", tmp_path)
    with fk.serve(tmp_path) as srv:
        listing = requests.post(srv.url + RPC + "ListDataFiles", json={"competitionName": "shape-subfolder"},
                                headers=_basic(), timeout=5).json()
        names = sorted(f["name"] for f in listing["files"])
        assert names == ["data/sample_submission.csv", "data/test.csv", "data/train.csv"]
        zipped = requests.get(f"{srv.url}/files/shape-subfolder.zip", timeout=5)
        with zipfile.ZipFile(io.BytesIO(zipped.content)) as bundle:
            assert sorted(bundle.namelist()) == names
            assert bundle.read("data/train.csv") == (top / "data" / "train.csv").read_bytes()
        one = requests.get(f"{srv.url}/files/shape-subfolder/data/test.csv", timeout=5)
        assert one.status_code == 200 and one.content == (top / "data" / "test.csv").read_bytes()
        assert requests.get(f"{srv.url}/files/shape-subfolder/{fk.SOLUTION_FILE_NAME}", timeout=5).status_code == 404


def test_the_download_and_the_data_layer_find_files_in_a_subfolder(tmp_path, monkeypatch):
    served = tmp_path / "served"
    build_shape("shape-subfolder", served)
    for name in ("KAGGLE_API_TOKEN", "KAGGLE_API_ENVIRONMENT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "kaggle-home"))
    monkeypatch.setenv("KAGGLE_USERNAME", fk.DEFAULT_USERNAME)
    monkeypatch.setenv("KAGGLE_KEY", fk.DEFAULT_KEY)
    with fk.serve(served) as srv:
        client = KaggleClient(srv.url)
        folder = download_competition("shape-subfolder", tmp_path / "data", client)
        assert (folder / "data" / "train.csv").read_bytes() == (served / "shape-subfolder" / "data" / "train.csv").read_bytes()
        assert not (folder / fk.SOLUTION_FILE_NAME).exists()
        zips = len(srv.times_of("zip"))
        assert download_competition("shape-subfolder", tmp_path / "data", client) == folder
        assert len(srv.times_of("zip")) == zips, "a second download finds the nested files up to date"
    cfg = load_competition("shape-subfolder", data_dir=tmp_path / "data", competitions_dir=tmp_path / "no-configs")
    assert cfg.data_dir == folder / "data" and cfg.target_columns == ("price",)


def test_a_shape_folder_names_its_metric_and_the_listing_shows_kaggles_text(tmp_path):
    for s in SHAPES:
        build_shape(s, tmp_path)
    build_demo_competition(tmp_path)
    with fk.serve(tmp_path) as srv:
        listed = {}
        token = ""
        while True:
            page = requests.post(srv.url + RPC + "ListCompetitions", json={"pageToken": token}, headers=_basic(),
                                 timeout=5).json()
            listed.update({c["ref"].rsplit("/", 1)[1]: c.get("evaluationMetric") for c in page["competitions"]})
            token = page["nextPageToken"]
            if not token:
                break
    assert listed.pop("demo") == DEMO_EVALUATION_METRIC
    assert listed == fake_server_evaluation_metrics()
    assert {s.slug: srv.metric(s.slug) for s in SHAPES} == fake_server_metrics()
    assert srv.metric("demo") == "accuracy"
    with fk.serve(tmp_path, metrics={"shape-regression": "mae"}, evaluation_metrics={"shape-regression": None}) as srv:
        assert srv.metric("shape-regression") == "mae" and srv.evaluation_metric("shape-regression") is None


@pytest.mark.parametrize("s", SHAPES, ids=[s.slug for s in SHAPES])
def test_each_shapes_solution_scores_perfectly_with_its_metric(s, tmp_path):
    top = build_shape(s, tmp_path)
    solution = pd.read_csv(top / fk.SOLUTION_FILE_NAME, dtype=str, keep_default_na=False)
    score = fk.score_submission(solution.iloc[::-1], solution, s.expected.metric)
    perfect = {"log_loss": 0.0, "rmse": 0.0, "rmsle": 0.0, "mcrmse": 0.0}.get(s.expected.metric, 1.0)
    assert score == pytest.approx(perfect, abs=1e-9)


def test_several_columns_score_columnwise_and_one_hot_as_multiclass_loss():
    truth = RNG.integers(0, 3, size=60)
    onehot = np.eye(3, dtype=int)[truth]
    probs = RNG.dirichlet(np.ones(3), size=60)
    submission, solution = _frames(onehot, probs, columns=("low", "mid", "high"))
    assert fk.score_submission(submission, solution, "log_loss") == pytest.approx(skm.log_loss(truth, probs))
    expected_auc = np.mean([skm.roc_auc_score(onehot[:, j], probs[:, j]) for j in range(3)])
    assert fk.score_submission(submission, solution, "mean_columnwise_roc_auc") == pytest.approx(expected_auc)
    values, noisy = RNG.random((60, 2)) * 5, RNG.random((60, 2)) * 5
    submission, solution = _frames(values, noisy, columns=("cohesion", "syntax"))
    expected_rmse = np.mean([skm.root_mean_squared_error(values[:, j], noisy[:, j]) for j in range(2)])
    assert fk.score_submission(submission, solution, "mcrmse") == pytest.approx(expected_rmse)
    assert fk.score_submission(submission, solution, "rmse") == pytest.approx(expected_rmse)
    with pytest.raises(ValueError, match="one-hot"):
        fk.score_submission(*_frames(values, noisy, columns=("a", "b")), "log_loss")


def test_ids_are_compared_as_text():
    solution = pd.DataFrame({"id": ["00241", "00242"], "label": ["1", "0"]})
    assert fk.score_submission(solution.iloc[::-1], solution, "accuracy") == 1.0
    with pytest.raises(ValueError, match="ids"):
        fk.score_submission(solution.assign(id=["241", "242"]), solution, "accuracy")
