"""Where Kaggle credentials are looked for, and what to tell the user when they are wrong.

Why our own checks: the official client drops a token it cannot use without a word
(``_authenticate_with_access_token`` logs at DEBUG and moves on), so a mistyped
``KAGGLE_API_TOKEN`` ends as "No Kaggle credentials found", which sends the user looking for
a file instead of at the variable they set. Here a malformed token is named as such, with the
form it should have. Token values never appear in any text (only their length).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import TOKEN_SETTINGS_URL

TOKEN_VARIABLE = "KAGGLE_API_TOKEN"
# Kaggle's API tokens are one line of URL-safe characters (today "KGAT_" and hex digits);
# the check is deliberately looser than today's format so a new token style still passes.
_TOKEN_PATTERN = re.compile(r"[A-Za-z0-9_.~+/=-]+")
_MIN_TOKEN_LENGTH = 16
TOKEN_FORM = (
    "one line of letters, digits and '_', '-', '.' (e.g. KGAT_ followed by hex digits), as "
    f"copied from {TOKEN_SETTINGS_URL} (\"Generate New Token\"), or the path of a file holding it"
)


def kaggle_config_dir() -> Path:
    """Where ``kaggle.json`` is looked for: ``KAGGLE_CONFIG_DIR``, ``~/.kaggle``, ``~/.config/kaggle``.

    Same order as the official client, but evaluated now (the client fixes it at import time).
    """
    configured = os.environ.get("KAGGLE_CONFIG_DIR")
    if configured:
        return Path(configured)
    home = Path(os.path.expanduser("~"))
    legacy = home / ".kaggle"
    if legacy.exists():
        return legacy
    xdg = os.environ.get("XDG_CONFIG_HOME") or str(home / ".config")
    return Path(xdg) / "kaggle"


def token_problem() -> str | None:
    """Why the configured access token cannot work, or None (no token, or a well-formed one).

    Looks where the client looks first: ``KAGGLE_API_TOKEN`` (a token, or the path of a file
    holding one), then ``~/.kaggle/access_token``. A set-but-malformed token is an error even if
    other credentials exist: the user meant that token, and silently using another account's
    key would be worse than stopping.
    """
    value = os.environ.get(TOKEN_VARIABLE)
    if value is not None:
        if Path(value).exists():
            return _content_problem(Path(value), f"{TOKEN_VARIABLE} names the file {value}, whose content")
        if _looks_like_path(value):
            return (
                f"{TOKEN_VARIABLE} looks like a file path ({value}) but no such file exists. "
                f"Expected {TOKEN_FORM}."
            )
        problem = _shape_problem(value)
        if problem:
            return f"{TOKEN_VARIABLE} is set but is not a valid Kaggle API token: {problem}. Expected {TOKEN_FORM}. Fix or unset {TOKEN_VARIABLE}."
        return None
    token_file = Path(os.path.expanduser("~/.kaggle/access_token"))
    if token_file.is_file():
        return _content_problem(token_file, f"the token file {token_file}")
    return None


def _content_problem(path: Path, what: str) -> str | None:
    try:
        text = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        return f"{what} cannot be read as text ({type(exc).__name__}). Expected {TOKEN_FORM}."
    if not text:
        return None  # the client skips an empty file too; other credentials may follow
    problem = _shape_problem(text)
    if problem:
        return f"{what} is not a valid Kaggle API token: {problem}. Expected {TOKEN_FORM}."
    return None


def _shape_problem(token: str) -> str | None:
    if not token.strip():
        return "it is empty"
    if token.lstrip().startswith("{"):
        return (
            "it looks like the contents of kaggle.json (username and key), which belong in "
            "KAGGLE_USERNAME and KAGGLE_KEY or in ~/.kaggle/kaggle.json"
        )
    if token != token.strip():
        return "it has leading or trailing spaces or a line break"
    if token[0] in "\"'" or token[-1] in "\"'":
        return "it is wrapped in quotes"
    if not _TOKEN_PATTERN.fullmatch(token):
        return "it contains spaces or characters that never occur in a token"
    if len(token) < _MIN_TOKEN_LENGTH:
        return f"it has {len(token)} characters, fewer than any Kaggle token"
    return None


def _looks_like_path(value: str) -> bool:
    return value.startswith(("/", "~", "./", "../")) or value.endswith((".json", ".txt", "access_token"))


def missing_credentials_message() -> str:
    """Nothing usable was found: say every place a token can go."""
    config = kaggle_config_dir() / "kaggle.json"
    return (
        "No Kaggle credentials found. Create an API token at "
        f"{TOKEN_SETTINGS_URL} (\"Generate New Token\") and either export {TOKEN_VARIABLE}=<token>, "
        "or save it to ~/.kaggle/access_token, or put {\"username\": ..., \"key\": ...} in "
        f"{config} (chmod 600). To run offline without an account, use the 'demo' competition "
        "with the fake Kaggle server (lora_tasks.testing.fake_kaggle)."
    )


def rejected_token_message() -> str:
    """A well-formed token was set and Kaggle did not accept it."""
    return (
        f"{TOKEN_VARIABLE} is set but Kaggle did not accept the token (expired or revoked). "
        f"Create a new token at {TOKEN_SETTINGS_URL} and export {TOKEN_VARIABLE}=<token>, or "
        f"unset {TOKEN_VARIABLE} to use ~/.kaggle/kaggle.json (when it is set, the client sends "
        "this token on every request, whatever else is configured)."
    )
