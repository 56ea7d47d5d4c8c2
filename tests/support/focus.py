"""The FinOps Foundation's FOCUS validator (``focus-validator`` from PyPI), run on a CSV.

Release 1.0.0 is the newest that runs on Python 3.11. It is built from source with pandas,
pyarrow, pandera and sqlglot (and needs ``multimethod<1.11``, which it does not pin), so it lives
in a venv of its own, made once per machine under ``cache_dir()`` (tests/support/venvs.py:
``python -m venv``, then ``pip install``, each step time-bounded) and reused after.

Quirks of that release, each handled here:

- it exits 0 whatever it found: :func:`run_focus_validator` reads its output and returns each
  failed check with its example values;
- it reads its currency list from ``focus_validator/utils/currency_codes.csv`` relative to the
  working directory, so it runs in its venv's site-packages;
- four of its FOCUS 1.0 rules name columns no FOCUS version has (``Provider``, ``Publisher``,
  ``InvoiceIssuer``, ``ResourceID``; FOCUS 0.5 and 1.0 name them ``ProviderName``,
  ``PublisherName``, ``InvoiceIssuerName``, ``ResourceId``): :func:`with_validator_aliases`
  copies those columns under the validator's names, so that its checks run on our values
  instead of failing on the missing names;
- its ``SkuPriceId_Nullable`` rule queries ``ChargeType``, a FOCUS 0.5 column that 1.0
  replaced with ``ChargeCategory``: on any FOCUS 1.0 file it fails with ``KeyError("ChargeType")``
  (:data:`VALIDATOR_BUG`).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import re
import subprocess
from pathlib import Path
from typing import Final

from .processes import log_tail
from .venvs import PYTHON_VERSION, cached_venv, clean_env

FOCUS_VALIDATOR_VERSION: Final = "1.0.0"
FOCUS_VALIDATOR_REQUIREMENTS: Final = (
    f"focus-validator=={FOCUS_VALIDATOR_VERSION}",
    # Its pandera 0.17 asks for any multimethod, and does not work with 1.11 or later.
    "multimethod<1.11",
)
VALIDATE_TIMEOUT_S: Final = 120.0

VALIDATOR_COLUMN_ALIASES: Final = {
    "Provider": "ProviderName",
    "Publisher": "PublisherName",
    "InvoiceIssuer": "InvoiceIssuerName",
    "ResourceID": "ResourceId",
}
"""The validator's misnamed columns -> the FOCUS 1.0 columns they stand for."""

VALIDATOR_BUG: Final = ("SkuPriceId_Nullable", 'KeyError("ChargeType")')
"""The one failure the validator reports on every FOCUS 1.0 file: its rule's SQL reads the
FOCUS 0.5 column ``ChargeType``; the error is the validator's, not the file's."""

_FAILURE = re.compile(
    r"^(?P<check>\S+) failed:\n\tDescription:(?P<description>.*)\n\tRows: (?P<rows>.*)\n"
    r"\tExample values: (?P<values>.*)$",
    re.MULTILINE,
)


@dataclasses.dataclass(frozen=True, slots=True)
class ValidatorReport:
    """What the validator printed, and the checks it said failed (check -> example values)."""

    output: str
    failures: dict[str, str]

    @property
    def succeeded(self) -> bool:
        return "Validation succeeded." in self.output and not self.failures


def focus_validator_venv() -> Path:
    """The venv holding the validator, made on first use (VenvUnavailable if it cannot be)."""
    return cached_venv(
        f"focus-validator-{FOCUS_VALIDATOR_VERSION}-py{PYTHON_VERSION}",
        list(FOCUS_VALIDATOR_REQUIREMENTS),
        lambda venv: [str(venv / "bin" / "focus-validator"), "--supported-versions"],
    )


def site_packages(venv: Path) -> Path:
    """The venv's site-packages, where the validator's package is."""
    return next(venv.glob("lib/python*/site-packages/focus_validator")).parent


def with_validator_aliases(focus_csv: str) -> str:
    """``focus_csv`` with each of :data:`VALIDATOR_COLUMN_ALIASES` added as a copy of the FOCUS
    column it stands for (the file a FOCUS 1.0 producer writes has only FOCUS's names)."""
    rows = list(csv.DictReader(io.StringIO(focus_csv)))
    header = next(csv.reader(io.StringIO(focus_csv)))
    out = io.StringIO()
    writer = csv.DictWriter(out, [*header, *VALIDATOR_COLUMN_ALIASES], lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {**row, **{alias: row[name] for alias, name in VALIDATOR_COLUMN_ALIASES.items()}}
        )
    return out.getvalue()


def run_focus_validator(venv: Path, data_file: Path, log: Path) -> ValidatorReport:
    """Validate ``data_file`` against FOCUS 1.0; its output also goes to ``log``."""
    argv = [
        str(venv / "bin" / "focus-validator"),
        "--data-file", str(data_file.resolve()),
        "--validate-version", "1.0",
    ]  # fmt: skip
    try:
        result = subprocess.run(
            argv,
            cwd=site_packages(venv),
            env=clean_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=VALIDATE_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"focus-validator took over {VALIDATE_TIMEOUT_S:g} s on {data_file}"
        ) from None
    output = result.stdout + result.stderr
    log.write_text(output, encoding="utf-8")
    if result.returncode != 0 or not (
        "Validation succeeded." in output or "Validation failed!" in output
    ):
        raise AssertionError(
            f"focus-validator did not finish (status {result.returncode}); log {log}:\n"
            f"{log_tail(log)}"
        )
    failures = {match["check"]: match["values"].strip() for match in _FAILURE.finditer(output)}
    if "Validation failed!" in output and not failures:
        raise AssertionError(f"focus-validator failed with nothing we could read:\n{output}")
    return ValidatorReport(output, failures)
