"""The settings file: the layer between the environment and the defaults.

Found in this order, the first that exists wins: the file ``GPULEDGER_CONFIG`` names (missing is
an error: the user asked for it), ``./gpuledger.toml``, then the ``[tool.gpuledger]`` table of
``./pyproject.toml`` (a pyproject without it is no settings file). The keys are the settings'
keywords, the values TOML values that the settings' own parsers read (see ``_settings``).

Cold starts pay for this: with no file, finding that out is two failed ``open`` calls, and
``tomllib`` is imported only when a file is there to parse (a ``pyproject.toml`` only when the
word ``gpuledger`` is in it).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Final

from gpuledger._errors import ConfigError

__all__ = ["CONFIG_ENV", "SettingsFile", "read_settings_file"]

CONFIG_ENV: Final = "GPULEDGER_CONFIG"
"""The environment variable naming a settings file; it wins over the two in the working
directory."""
LOCAL_FILE: Final = "gpuledger.toml"
PYPROJECT: Final = "pyproject.toml"
_PYPROJECT_TABLE: Final = "[tool.gpuledger]"


class SettingsFile:
    """A settings file that was found and read.

    A plain class: a dataclass would cost its generated methods at every ``import gpuledger``.
    """

    __slots__ = ("source", "values")

    def __init__(self, source: str, values: Mapping[str, object]) -> None:
        self.source = source
        """Where its values come from, as ``ConfigError.source`` says it: ``file
        /abs/gpuledger.toml`` or ``file /abs/pyproject.toml [tool.gpuledger]``."""
        self.values = values
        """Keyword -> the TOML value, unchecked (``_settings`` checks keys and values)."""


def read_settings_file(environ: Mapping[str, str]) -> SettingsFile | None:
    """The settings file in force, read once; None when there is none.

    Raises ConfigError (setting ``config``) naming the file: a ``GPULEDGER_CONFIG`` that names no
    file, a file that cannot be read, is not UTF-8 TOML, or whose ``[tool.gpuledger]`` is not a
    table.
    """
    named = environ.get(CONFIG_ENV, "").strip()
    if named:
        path = os.path.abspath(os.path.expanduser(named))
        data = _read(path, CONFIG_ENV)
        if data is None:
            raise ConfigError("config", named, "no such file", CONFIG_ENV)
        if os.path.basename(path) == PYPROJECT:
            found = _pyproject(path, data)
            if found is None:
                reason = f"has no {_PYPROJECT_TABLE} table"
                raise ConfigError("config", named, reason, CONFIG_ENV)
            return found
        return SettingsFile(f"file {path}", _parse(path, data, f"file {path}"))
    data = _read(LOCAL_FILE)
    if data is not None:
        path = os.path.abspath(LOCAL_FILE)
        return SettingsFile(f"file {path}", _parse(path, data, f"file {path}"))
    data = _read(PYPROJECT)
    if data is None:
        return None
    return _pyproject(os.path.abspath(PYPROJECT), data)


def _read(path: str, source: str | None = None) -> bytes | None:
    """The file's bytes; None if it does not exist (one ``open`` call, no ``stat``). An error
    says ``source``, by default the file itself."""
    try:
        with open(path, "rb") as file:
            return file.read()
    except FileNotFoundError:
        return None
    except OSError as error:
        path = os.path.abspath(path)
        reason = f"cannot be read: {error.strerror or error}"
        raise ConfigError("config", path, reason, source or f"file {path}") from None


def _pyproject(path: str, data: bytes) -> SettingsFile | None:
    source = f"file {path} {_PYPROJECT_TABLE}"
    if b"gpuledger" not in data:  # most projects' pyproject: no need to parse it
        return None
    tool = _parse(path, data, f"file {path}").get("tool")
    table = tool.get("gpuledger") if isinstance(tool, dict) else None
    if table is None:
        return None
    if not isinstance(table, dict):
        raise ConfigError("config", path, f"{_PYPROJECT_TABLE} must be a table", source)
    return SettingsFile(source, table)


def _parse(path: str, data: bytes, source: str) -> dict[str, object]:
    import tomllib  # noqa: PLC0415  (only when a file is there: not on a cold start without one)

    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError("config", path, "not UTF-8 text", source) from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError("config", path, f"not valid TOML: {error}", source) from None
