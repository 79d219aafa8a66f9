"""Submitting once, reading the score back, and never submitting one file twice (real client, fake server)."""

from __future__ import annotations

import json
import math
import multiprocessing
import time
from pathlib import Path

import pandas as pd
import pytest
from _kaggle_helpers import DATASETS, SAMPLE, SHARED, needs_datasets, prediction, sha, write
from sklearn.metrics import accuracy_score, f1_score, mean_squared_log_error

from lora_tasks import kaggle as kio
from lora_tasks.testing import fake_kaggle as fk

pytestmark = needs_datasets
pytest_plugins = ["_kaggle_helpers"]  # the shared fixtures: isolated_home, creds, solutions, server, client


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




@pytest.mark.parametrize("slug", SHARED)
def test_submit_and_read_back_the_right_score(slug, client, server, solutions, tmp_path):
    path = prediction(slug, tmp_path)
    kio.validate_submission(path, DATASETS / slug / SAMPLE[slug])
    result = kio.submit(slug, path, "baseline", f"run-{slug}", tmp_path / "state", client)
    assert result.ref > 0 and result.status == "PENDING" and not result.reused
    assert result.description == f"baseline [run:run-{slug}] [sha256:{sha(path)}]"
    scored = kio.wait_for_score(slug, result.ref, client, timeout_s=5, poll_s=0.01)
    expected = _expected_score(slug, path, solutions[slug])
    assert 0 < expected and expected != 1.0
    assert scored.status == "COMPLETE"
    assert scored.public_score == pytest.approx(expected, rel=1e-12)
    assert len(server.submissions_for(slug)) == 1


def test_intent_file_is_written_withsha(client, tmp_path):
    path = prediction("titanic", tmp_path)
    result = kio.submit("titanic", path, "m", "run-intent", tmp_path / "state", client)
    intent = json.loads((tmp_path / "state" / "submission-titanic-run-intent.json").read_text())
    assert intent["sha256"] == sha(path) == result.sha256
    assert intent["ref"] == result.ref and intent["state"] == "submitted"


def test_lost_create_answer_retry_does_not_duplicate(client, server, tmp_path):
    path = prediction("titanic", tmp_path)
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
    path = prediction("titanic", tmp_path)
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
        kio.submit("titanic", prediction("titanic", tmp_path), "m", "run-limit", tmp_path / "s", client)
    assert "00:00 UTC" in str(info.value)
    assert not kio.is_retryable(info.value)


def test_rules_not_accepted_on_submit_names_the_url(client, server, tmp_path):
    server.inject(fk.FAULT_403_RULES, method="StartSubmissionUpload")
    with pytest.raises(kio.RulesNotAcceptedError, match=r"https://www.kaggle.com/competitions/titanic/rules"):
        kio.submit("titanic", prediction("titanic", tmp_path), "m", "run-rules", tmp_path / "s", client)


def test_run_id_reused_for_another_file_is_refused(client, tmp_path):
    first = prediction("titanic", tmp_path)
    kio.submit("titanic", first, "m", "run-x", tmp_path / "state", client)
    other = write(pd.read_csv(first).assign(Survived=0), tmp_path / "other.csv")
    with pytest.raises(kio.RunIdConflictError, match="new run id"):
        kio.submit("titanic", other, "m", "run-x", tmp_path / "state", client)


def test_scoring_error_is_fatal(client, server, tmp_path):
    bad = write(pd.DataFrame({"PassengerId": [1], "Survived": [1]}), tmp_path / "bad.csv")
    result = kio.submit("titanic", bad, "unvalidated", "run-err", tmp_path / "state", client)
    with pytest.raises(kio.SubmissionScoringError, match="rows") as info:
        kio.wait_for_score("titanic", result.ref, client, timeout_s=5, poll_s=0.01)
    assert not kio.is_retryable(info.value)


def test_wait_is_bounded_and_rides_out_transient_errors(solutions, creds, tmp_path):
    with fk.serve(DATASETS, solutions, pending_polls=1_000) as srv:
        client = kio.KaggleClient(srv.url, timeout=5)
        result = kio.submit("titanic", prediction("titanic", tmp_path), "m", "run-wait", tmp_path / "s", client)
        srv.inject(fk.FAULT_500, method="ListSubmissions")
        waits: list[float] = []
        with pytest.raises(kio.ScoringTimeoutError, match="not scored within") as info:
            kio.wait_for_score("titanic", result.ref, client, timeout_s=0.3, poll_s=0.02, sleep=lambda s: (waits.append(s), time.sleep(s)))
        assert kio.is_retryable(info.value)
        assert len(waits) >= 2 and waits[1] > waits[0]  # backs off


def test_prefect_retry_condition_unwraps_failed_state():
    from prefect.states import Completed, Failed

    assert kio.prefect_retry_condition(None, None, Failed(data=kio.RateLimitedError("429", retry_after=1)))
    assert not kio.prefect_retry_condition(None, None, Failed(data=kio.NotFoundError("404")))
    assert not kio.prefect_retry_condition(None, None, Completed(data=1))


def test_recorded_submission_is_never_repeated_even_if_not_listed(client, server, tmp_path):
    path = prediction("titanic", tmp_path)
    first = kio.submit("titanic", path, "m", "run-rec", tmp_path / "state", client)
    server.submissions.clear()  # e.g. pushed off the first page of ListSubmissions
    again = kio.submit("titanic", path, "m", "run-rec", tmp_path / "state", client)
    assert again.reused and again.ref == first.ref
    assert [m for _, m in server.requests].count("CreateSubmission") == 1


# ------------------------------------------------------------------------------------------
# at most one submission per file, across runs
# ------------------------------------------------------------------------------------------


def test_description_carries_run_and_file_hash(client, server, tmp_path):
    path = prediction("titanic", tmp_path)
    kio.submit("titanic", path, "first try", "run-tags", tmp_path / "state", client)
    (listed,) = kio.list_submissions("titanic", client)
    assert listed.run_id == "run-tags" and listed.sha256 == sha(path)
    assert kio.find_submission_by_sha("titanic", sha(path), client).ref == listed.ref


@pytest.mark.parametrize("same_state_dir", [True, False], ids=["same-state-dir", "state-lost"])
def test_run_killed_after_create_then_a_new_run_submits_nothing_new(same_state_dir, client, server, tmp_path):
    path = prediction("titanic", tmp_path)
    server.inject(fk.FAULT_LOSE_RESPONSE, method="CreateSubmission")  # accepted, answer lost
    with pytest.raises(kio.RetryableKaggleError):
        kio.submit("titanic", path, "m", "run-killed", tmp_path / "state", client)
    assert len(server.submissions_for("titanic")) == 1
    state = tmp_path / "state" if same_state_dir else tmp_path / "other-machine"
    again = kio.submit("titanic", path, "m", "run-fresh", state, client)
    assert again.reused and again.ref == server.submissions_for("titanic")[0].ref
    assert again.run_id == "run-killed"  # the earlier run's submission, found by the file hash
    assert len(server.submissions_for("titanic")) == 1
    assert [m for _, m in server.requests].count("CreateSubmission") == 1
    intent = json.loads((state / "submission-titanic-run-fresh.json").read_text())
    assert intent["ref"] == again.ref and intent["state"] == "submitted"


def test_another_file_is_submitted(client, server, tmp_path):
    first = prediction("titanic", tmp_path)
    kio.submit("titanic", first, "m", "run-1", tmp_path / "state", client)
    other = write(pd.read_csv(first).assign(Survived=0), tmp_path / "other.csv")
    result = kio.submit("titanic", other, "m", "run-2", tmp_path / "state", client)
    assert not result.reused
    assert len(server.submissions_for("titanic")) == 2


def test_resubmit_overrides_on_purpose(client, server, tmp_path):
    path = prediction("titanic", tmp_path)
    first = kio.submit("titanic", path, "m", "run-1", tmp_path / "state", client)
    second = kio.submit("titanic", path, "again", "run-2", tmp_path / "state", client, resubmit=True)
    assert not second.reused and second.ref != first.ref
    assert len(server.submissions_for("titanic")) == 2
    retry = kio.submit("titanic", path, "again", "run-2", tmp_path / "state", client, resubmit=True)
    assert retry.reused and retry.ref == second.ref, "a retry of one run never submits twice"
    assert len(server.submissions_for("titanic")) == 2


def test_rate_limited_create_is_waited_out_and_submits_once(client, server, tmp_path):
    server.inject(fk.FAULT_429, method="CreateSubmission", retry_after=0.2)
    result = kio.submit("titanic", prediction("titanic", tmp_path), "m", "run-429", tmp_path / "state", client)
    assert [s.ref for s in server.submissions_for("titanic")] == [result.ref]
    first, second = server.times_of("CreateSubmission")
    assert second - first >= 0.2


def _submit_in_process(url: str, path: str, state: str, run_id: str, barrier, results) -> None:
    """One 'run' in its own process: authenticate, wait for the other, then submit."""
    client = kio.KaggleClient(url, timeout=10).authenticate()
    barrier.wait(timeout=60)
    result = kio.submit("titanic", path, "race", run_id, state, client)
    results.put((run_id, result.ref, result.reused))


def _submit_from_two_processes(url: str, path: Path, states: list[Path]) -> list[tuple[str, int, bool]]:
    """Runs ``run-1`` and ``run-2`` in two processes that submit ``path`` at the same moment, each
    with its state folder; their (run id, ref, reused), sorted."""
    context = multiprocessing.get_context("spawn")  # no fork of a process with server threads
    barrier, results = context.Barrier(2), context.Queue()
    workers = [context.Process(target=_submit_in_process,
                               args=(url, str(path), str(state), f"run-{n}", barrier, results))
               for n, state in zip((1, 2), states, strict=True)]
    for worker in workers:
        worker.start()
    outcomes = sorted(results.get(timeout=120) for _ in workers)
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    return outcomes


def test_two_processes_started_at_once_submit_once(client, server, tmp_path):
    path = prediction("titanic", tmp_path)
    outcomes = _submit_from_two_processes(server.url, path, [tmp_path / "state"] * 2)
    assert len(server.submissions_for("titanic")) == 1
    assert {ref for _, ref, _ in outcomes} == {server.submissions_for("titanic")[0].ref}
    assert sorted(reused for _, _, reused in outcomes) == [False, True]


# ------------------------------------------------------------------------------------------
# a ref Kaggle does not list (issue 31: the rerun that waited 15 minutes)
# ------------------------------------------------------------------------------------------


def test_a_ref_the_listing_never_shows_is_a_clear_error_after_a_few_polls(client, server, tmp_path):
    path = prediction("titanic", tmp_path)
    first = kio.submit("titanic", path, "m", "run-gone", tmp_path / "state", client)
    server.submissions.clear()  # the server that made it is gone (the offline demo's rerun)
    polls: list[float] = []
    with pytest.raises(kio.SubmissionNotListedError) as info:
        kio.wait_for_score("titanic", first.ref, client, timeout_s=900, poll_s=0.01, sleep=polls.append)
    text = str(info.value)
    assert str(first.ref) in text and "'titanic'" in text and "--resubmit" in text
    assert len(polls) == kio.scores.NOT_LISTED_POLLS - 1  # a short grace, not the 900 s timeout
    assert not kio.is_retryable(info.value)  # the task must not retry a wait that cannot end


def test_a_ref_listed_late_is_still_waited_for(client, server, tmp_path):
    """The grace counts answers in a row without the ref: one that shows up within it is scored."""
    path = prediction("titanic", tmp_path)
    result = kio.submit("titanic", path, "m", "run-late", tmp_path / "state", client)
    kept = list(server.submissions)
    server.submissions.clear()
    calls: list[float] = []

    def sleep(seconds: float) -> None:
        calls.append(seconds)
        if len(calls) == kio.scores.NOT_LISTED_POLLS - 1:
            server.submissions.extend(kept)  # listed again just before the last allowed poll

    scored = kio.wait_for_score("titanic", result.ref, client, timeout_s=30, poll_s=0.01, sleep=sleep)
    assert scored.ref == result.ref and scored.public_score is not None


def test_a_server_with_a_state_file_keeps_its_submissions_across_restarts(solutions, creds, tmp_path):
    state = tmp_path / "state" / "fake-kaggle-submissions.json"
    with fk.serve(DATASETS, solutions, pending_polls=0, state_file=state) as srv:
        client = kio.KaggleClient(srv.url, timeout=5)
        made = kio.submit("titanic", prediction("titanic", tmp_path), "m", "run-keep", tmp_path / "s", client)
        first = kio.wait_for_score("titanic", made.ref, client, timeout_s=5, poll_s=0.01)
    assert not list(state.parent.glob("*.tmp"))  # written through a temporary file and a rename
    with fk.serve(DATASETS, solutions, pending_polls=0, state_file=state) as srv:
        client = kio.KaggleClient(srv.url, timeout=5)
        again = kio.wait_for_score("titanic", made.ref, client, timeout_s=5, poll_s=0.01)
        listed = kio.list_submissions("titanic", client)
    assert again.public_score == first.public_score
    assert [s.ref for s in listed] == [made.ref] and listed[0].sha256 == made.sha256


def test_two_processes_in_two_work_dirs_submit_once(client, server, tmp_path):
    """Issue 35 item 2: each run has its own work dir (so its own state folder and lock); with a
    slow submission list, both used to find nothing listed and upload. The lock in the user's
    cache folder (shared by the spawned processes through HOME) makes the second one wait and
    find the first one's submission."""
    path = prediction("titanic", tmp_path)
    server.inject(fk.FAULT_SLOW, method="ListSubmissions", delay=1.0, times=4)
    outcomes = _submit_from_two_processes(server.url, path, [tmp_path / f"work-{n}" / "state" for n in (1, 2)])
    assert len(server.submissions_for("titanic")) == 1, "one file, one submission, whatever the work dir"
    assert sorted(reused for _, _, reused in outcomes) == [False, True]
    assert (kio.submission.machine_lock_dir() / "submission-titanic.lock").is_file()


def test_two_servers_on_one_state_file_list_each_others_submissions(solutions, creds, tmp_path):
    """Two offline demo runs at once in one work dir each start a server on the same state file:
    a submission made through one is listed (and scored) by the other, and refs never clash."""
    state = tmp_path / "state" / "fake-kaggle-submissions.json"
    with fk.serve(DATASETS, solutions, pending_polls=0, state_file=state) as one, \
            fk.serve(DATASETS, solutions, pending_polls=0, state_file=state) as two:
        first, second = kio.KaggleClient(one.url, timeout=5), kio.KaggleClient(two.url, timeout=5)
        path = prediction("titanic", tmp_path)
        made = kio.submit("titanic", path, "m", "run-a", tmp_path / "a", first)
        seen = kio.wait_for_score("titanic", made.ref, second, timeout_s=5, poll_s=0.01)
        other = kio.submit("titanic", write(pd.read_csv(path).assign(Survived=0), tmp_path / "zeros.csv"), "m",
                           "run-b", tmp_path / "b", second)
    assert seen.ref == made.ref and seen.public_score is not None
    assert other.ref != made.ref
