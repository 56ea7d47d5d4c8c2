"""Where a ledger is: parsing its location, and whether it could be written, without SQLite;
how a location (or any text) is shown without its secrets; and files only their owner reads.

Kept apart from ``_ledger`` so that checking a location at configuration (``@traced_handler``
checks the environment's when it decorates, at import) loads no ``sqlite3`` or ``pathlib``:
it lengthens the cold starts gpuledger measures.

:func:`mask_secrets` is the one masking function: the ledger's messages, the CLI's errors,
``ConfigError`` texts and the logger's processor (``_logging``) all go through it.
:func:`private_file` creates a spool or ledger readable by its owner only (they hold user ids and
costs), before SQLite opens it.
"""

from __future__ import annotations

import os
import re
from typing import Final

from gpuledger._errors import ConfigError, LedgerError

__all__ = [
    "MASK",
    "MEMORY",
    "check_ledger_location",
    "is_postgres",
    "mask_secrets",
    "parse_location",
    "private_file",
    "unwritable_reason",
]

MEMORY: Final = ":memory:"
"""SQLite's in-memory database."""
_URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_POSTGRES_SCHEMES = frozenset({"postgresql", "postgres"})
MASK: Final = "***"
"""What a secret is replaced with."""

# --- secrets ---------------------------------------------------------------------------------

_USER_SCHEMES: Final = frozenset(
    {"postgresql", "postgres", "mysql", "redis", "rediss", "mongodb", "mongodb+srv", "amqp"}
)
"""Schemes whose user part without a ``:`` is a user name, kept; in any other URL
(``https://TOKEN@host``) it is a credential."""
_USERINFO: Final = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://)([^\s'\"<>?#]*)@")
"""A URL's scheme and user part, up to the last ``@`` before the query, a space or a quote (a
password with a raw ``/`` or ``@`` in it is masked whole)."""
_SECRET_KEY: Final = (
    r"(?:ssl)?pass(?:word|wd)?|pwd|[a-z_-]*token|api[_-]?key|apikey|[a-z_-]*secret"  # noqa: S105
    r"|pseudonym[_-]?key"
)
"""The names of secret parameters (not a secret: ruff's S105 misreads the name)."""
_SECRET_PARAMETER: Final = re.compile(
    rf"(?i)(\b(?:{_SECRET_KEY})\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&'\"]*)"
)
"""``password=...`` in a query string or a libpq keyword/value DSN (quoted or not), and the
same for tokens, API keys and secrets."""
_SECRET_HEADER: Final = re.compile(
    r"(?i)(\b(?:proxy-)?authorization|\bdd-api-key|\bx-api-key|\bapi-key|\bx-auth-token"
    r"|\bcookie)(['\"]?\s*[:=]\s*['\"]?)(?:((?:bearer|basic|token|digest)(?:\s+|%20)))?"
    r"([^\s,'\"&;]+)"
)
"""An authentication header, as ``Name: value``, ``name=value`` (OTLP's headers setting) or a
dict's repr; the scheme word (``Bearer``) is kept."""
_OTLP_HEADERS: Final = re.compile(
    r"(?i)(\bOTEL_EXPORTER_OTLP(?:_[A-Z]+)?_HEADERS['\"]?\s*[:=]\s*['\"]?)([^\s'\"]+)"
)
"""The OTLP headers setting, whose every value may be a credential: masked whole."""


def mask_secrets(text: str) -> str:
    """``text`` with every secret it may carry replaced by :data:`MASK`.

    The password (or a lone token) in the user part of any URL or DSN (``postgresql://``,
    ``https://``, ``redis://``...), ``password=``/``sslpassword=``/``token=``/``api_key=``
    parameters in a query string or a libpq keyword/value DSN, authentication headers
    (``Authorization``, ``DD-API-KEY``...) and the values of ``OTEL_EXPORTER_OTLP_HEADERS``.
    Text without a secret comes back unchanged. Parsed by hand, not by ``urllib``: it must work
    on malformed URLs (which errors name), and it masks too much rather than too little.
    """
    if "://" in text and not any(character.isspace() for character in text.strip()):
        text = _mask_location(text.strip())
    text = _USERINFO.sub(_mask_userinfo, text)
    text = _SECRET_PARAMETER.sub(lambda match: f"{match.group(1)}{MASK}", text)
    text = _SECRET_HEADER.sub(
        lambda match: f"{match.group(1)}{match.group(2)}{match.group(3) or ''}{MASK}", text
    )
    return _OTLP_HEADERS.sub(lambda match: f"{match.group(1)}{MASK}", text)


def _mask_userinfo(match: re.Match[str]) -> str:
    scheme, userinfo = match.group(1), match.group(2)
    if ":" in userinfo:
        return f"{scheme}{userinfo.partition(':')[0]}:{MASK}@"
    if scheme[:-3].lower() in _USER_SCHEMES or not userinfo:
        return match.group(0)
    return f"{scheme}{MASK}@"


def _mask_location(location: str) -> str:
    """One URL, whole: its user part up to the last ``@`` before the query (a raw ``#`` in the
    password included), and its query's secret parameters even with a percent-encoded key."""
    before_query, question, query = location.partition("?")
    scheme, sep, rest = before_query.partition("://")
    userinfo, at, hosts = rest.rpartition("@")
    if at and ":" in userinfo:
        before_query = f"{scheme}{sep}{userinfo.partition(':')[0]}:{MASK}@{hosts}"
    if not question:
        return before_query
    import urllib.parse  # noqa: PLC0415  (only for a URL with a query)

    pairs = query.split("&")
    masked = [
        f"{key}={MASK}"
        if re.fullmatch(_SECRET_KEY, urllib.parse.unquote(key).strip(), re.IGNORECASE)
        else pair
        for key, pair in zip((pair.partition("=")[0] for pair in pairs), pairs, strict=True)
    ]
    return f"{before_query}?{'&'.join(masked)}"


# --- private files -----------------------------------------------------------------------------


def private_file(path: str) -> None:
    """Create the file at ``path``, empty, readable and writable by its owner only (0600), and
    its missing folders 0700, so that SQLite opens a private file (it creates the -wal and -shm
    beside it with the main file's permissions).

    An existing file keeps its mode (a user's choice, not gpuledger's to change). Best effort: a
    failure is left for the opener, which reports it in its own words.
    """
    if not path or path == MEMORY or path.startswith("file:"):
        return
    file = os.path.abspath(path)
    try:
        _private_folders(os.path.dirname(file))
        descriptor = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError:
        return
    os.close(descriptor)


def _private_folders(folder: str) -> None:
    """Make ``folder`` and any missing folder above it, each 0700 (``os.makedirs`` gives the
    intermediate ones the default mode)."""
    missing: list[str] = []
    while not os.path.exists(folder) and folder != os.path.dirname(folder):
        missing.append(folder)
        folder = os.path.dirname(folder)
    for each in reversed(missing):
        try:
            os.mkdir(each, 0o700)
        except FileExistsError:
            continue


def is_postgres(location: str) -> bool:
    match = _URL_SCHEME.match(location.strip())
    return match is not None and match.group(1).lower() in _POSTGRES_SCHEMES


def parse_location(location: str) -> str:
    """The SQLite file path named by ``location``."""
    text = location.strip()
    if not text:
        raise LedgerError("the ledger location is empty")
    match = _URL_SCHEME.match(text)
    if match is None:
        return text if text == MEMORY else os.path.expanduser(text)
    scheme = match.group(1).lower()
    if scheme != "sqlite":
        raise LedgerError(
            f"unknown ledger location {mask_secrets(location)!r}: use a file path, "
            "sqlite:///path or "
            "postgresql://user@host/database"
        )
    rest = text[len("sqlite://") :]
    if not rest.startswith("/") or rest == "/":
        raise LedgerError(
            f"cannot read {mask_secrets(location)!r}: write sqlite:///relative/path.db or "
            "sqlite:////absolute/path.db"
        )
    return os.path.expanduser(rest[1:])


def unwritable_reason(location: str) -> str | None:
    """Why the SQLite ledger at ``location`` could not be created or written; None if it could.

    A cheap look at the file and its folder (no SQLite), for configuration time. None for a
    PostgreSQL ledger, which is checked when it is opened.
    """
    if is_postgres(location):
        return None
    try:
        path = parse_location(location)
    except LedgerError as error:
        return str(error)
    if path == MEMORY:
        return None
    file = os.path.abspath(path)
    folder = os.path.dirname(file)
    if os.path.isdir(file):
        return f"{file} is a directory, not a file"
    if not os.path.exists(folder):
        # A file on the way (/etc/hostname/x.db) makes the folder missing too: say which.
        above = os.path.dirname(folder)
        while not os.path.exists(above) and above != os.path.dirname(above):
            above = os.path.dirname(above)
        if not os.path.isdir(above):
            return f"{above} is not a directory"
        return f"directory {folder!r} does not exist"
    if not os.path.isdir(folder):
        return f"{folder} is not a directory"
    if os.path.exists(file) and not os.access(file, os.R_OK | os.W_OK):
        return f"file {file!r} is not writable"
    if not os.access(folder, os.W_OK | os.X_OK):
        # SQLite creates the file, and its -wal and -shm beside it, in this folder.
        return (
            f"directory {folder!r} is not writable (SQLite writes the ledger and its -wal "
            "and -shm files there)"
        )
    return None


def check_ledger_location(location: str, source: str) -> None:
    """Raise ConfigError if the SQLite ledger at ``location`` could not be created or written,
    so that a ledger that can never be written fails the configuration instead of losing every
    invocation later."""
    reason = unwritable_reason(location)
    if reason is not None:
        raise ConfigError("ledger", mask_secrets(location), reason, source)
