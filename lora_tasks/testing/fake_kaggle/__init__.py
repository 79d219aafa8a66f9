"""A fake Kaggle API server: real HTTP on 127.0.0.1, speaking what the official client speaks.

Why: the Kaggle I/O layer must be tested with the real ``kaggle``/``kagglesdk`` client (its
request shapes, redirects, silent failures and missing retries are the point), and the whole
pipeline must run offline on a fresh machine (the ``demo`` competition). Mocks of the client
would test our assumptions about it instead of the client itself.

What it serves (the subset of ``competitions.CompetitionApiService`` we use, plus
``security.OAuthService/IntrospectToken``), every call a JSON ``POST`` to
``/api/v1/{Service}/{Method}`` (``/v1/...`` is accepted too):

* ``ListCompetitions`` (``search``; each competition's ``evaluationMetric``, as Kaggle names it);
* ``ListDataFiles``; ``DownloadDataFiles`` / ``DownloadDataFile`` (answer 302 to a zip/file built
  on the fly, with Content-Length and Last-Modified);
* ``StartSubmissionUpload`` (``token``, ``createUrl``) then a raw ``PUT`` to ``createUrl``, then
  ``CreateSubmission`` (``message``, ``ref``); ``ListSubmissions`` (score, status).

Competitions are the sub-folders of a data folder; their files are served with paths relative
to it (a competition whose files sit in ``data/`` lists and zips ``data/train.csv``). A file named
``solution.csv`` at the top of one is hidden (never listed or served) and used for scoring;
solutions can also be given explicitly.
Faults are injectable per test with :meth:`FakeKaggleServer.inject`. Request lines in proxy form
(``POST http://localhost/api/v1/... HTTP/1.1``) are accepted, so the ``kaggle`` CLI can reach the
server through ``HTTP_PROXY`` (see :meth:`FakeKaggleServer.client_env`).

Run it as a command: ``python -m lora_tasks.testing.fake_kaggle --data DIR --port N``.

The package: :mod:`.scoring` (Kaggle's scoring, by :mod:`lora_tasks.metrics`), :mod:`.state`
(credentials, fault kinds, stored submissions), :mod:`.handler` (the HTTP routes), :mod:`.server`
(:class:`FakeKaggleServer`, :func:`serve`) and :mod:`.__main__` (the command).
"""

from .scoring import KAGGLE_METRIC_NAMES, derive_solutions, listing_name, metric_of, score_submission
from .server import FakeKaggleServer, serve
from .state import (
    COMPETITION_META_FILE,
    DEFAULT_KEY,
    DEFAULT_METRICS,
    DEFAULT_TOKEN,
    DEFAULT_USERNAME,
    FAULT_401,
    FAULT_403_RULES,
    FAULT_404,
    FAULT_429,
    FAULT_500,
    FAULT_CUT_CONNECTION,
    FAULT_LOSE_RESPONSE,
    FAULT_SLOW,
    FAULT_SUBMISSION_LIMIT,
    FAULT_TRUNCATED_ZIP,
    FAULT_UPLOAD_FAILED,
    FAULT_ZIP_SLIP,
    FAULTS,
    LIMIT_MESSAGE,
    RULES_MESSAGE,
    SOLUTION_FILE_NAME,
    Fault,
    StoredSubmission,
    load_submissions,
    save_submissions,
)

__all__ = [
    "COMPETITION_META_FILE", "DEFAULT_KEY", "DEFAULT_METRICS", "DEFAULT_TOKEN", "DEFAULT_USERNAME", "FAULTS",
    "FAULT_401", "FAULT_403_RULES", "FAULT_404", "FAULT_429", "FAULT_500", "FAULT_CUT_CONNECTION",
    "FAULT_LOSE_RESPONSE", "FAULT_SLOW", "FAULT_SUBMISSION_LIMIT", "FAULT_TRUNCATED_ZIP", "FAULT_UPLOAD_FAILED",
    "FAULT_ZIP_SLIP", "KAGGLE_METRIC_NAMES", "LIMIT_MESSAGE", "RULES_MESSAGE", "SOLUTION_FILE_NAME", "Fault",
    "FakeKaggleServer", "StoredSubmission", "derive_solutions", "listing_name", "load_submissions", "metric_of",
    "save_submissions", "score_submission", "serve",
]
