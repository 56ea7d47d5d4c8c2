"""The in-process agent's side of the sidecar: records and start notices over loopback HTTP.

With ``sidecar`` set (``GPULEDGER_SIDECAR=http://127.0.0.1:4319``) the background writer POSTs
each batch of finished records to the sidecar's ``/v1/records`` instead of writing the ledger and
exporting itself; the sidecar answers only once they are in its spool on disk, so an
acknowledged record survives this process being killed or frozen. Each invocation's start is
sent as soon as the writer wakes (``/v1/starts``), so an invocation whose process dies mid-way
is still recorded, by the sidecar, as ``killed``.

Each body says the record format it is in (``{"format": RECORD_FORMAT, "records": [...]}``,
``gpuledger._record``): a sidecar older than this worker then keeps a record with an outcome it
does not know, rather than refusing the batch (``sidecar._validation``), and one newer reads it
as the version it was.

The client is ``http.client`` on one kept-alive connection: no dependency, and a loopback POST of
a batch costs well under a millisecond. Any failure (refused, timeout, a 5xx, a 4xx) raises
:class:`SidecarError`; the agent then falls back to its own ledger and says so once.
"""

from __future__ import annotations

import http.client
import json
import urllib.parse
from collections.abc import Sequence
from typing import Any, Final

from gpuledger._errors import SidecarError
from gpuledger._record import RECORD_FORMAT

__all__ = ["SidecarClient", "SidecarError", "parse_sidecar_url"]

DEFAULT_PORT: Final = 4319


def parse_sidecar_url(url: str) -> tuple[str, int]:
    """``http://host:port`` -> ``(host, port)``; raises ValueError saying what is wrong."""
    parts = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme != "http":
        raise ValueError(f"the sidecar speaks plain HTTP on loopback; got scheme {parts.scheme!r}")
    if not parts.hostname:
        raise ValueError("no host in the sidecar URL (expected http://127.0.0.1:4319)")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise ValueError("the port is not a number") from None
    return parts.hostname, port


class SidecarClient:
    """POSTs JSON to the sidecar over one kept-alive connection (one thread uses it)."""

    def __init__(self, url: str, *, token: str | None = None, timeout_s: float = 2.0) -> None:
        self.url = url
        self.host, self.port = parse_sidecar_url(url)
        self._timeout_s = timeout_s
        self._headers = {"Content-Type": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._connection: http.client.HTTPConnection | None = None

    def send_records(self, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Hand finished records to the sidecar; returns its answer once they are spooled."""
        return self._post("/v1/records", {"format": RECORD_FORMAT, "records": list(records)})

    def send_starts(self, starts: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Tell the sidecar these invocations started."""
        return self._post("/v1/starts", {"format": RECORD_FORMAT, "starts": list(starts)})

    def _post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        try:
            body = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
        except ValueError as error:  # NaN or infinity in a record: JSON has none
            raise SidecarError(f"cannot send to the sidecar: {error}") from None
        for attempt in (1, 2):  # a kept-alive connection the sidecar closed: reconnect once
            connection = self._connect()
            try:
                connection.request("POST", path, body=body, headers=self._headers)
                response = connection.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException) as error:
                self.close()
                if attempt == 2 or not isinstance(
                    error, http.client.RemoteDisconnected | BrokenPipeError | ConnectionResetError
                ):
                    raise SidecarError(
                        f"sidecar at {self.url} unreachable: {type(error).__name__}: {error}"
                    ) from None
                continue
            if response.status != 200:
                raise SidecarError(
                    f"sidecar at {self.url} answered {response.status} to {path}: "
                    f"{data[:300].decode(errors='replace')}"
                )
            try:
                answer: dict[str, Any] = json.loads(data or b"{}")
            except ValueError:
                answer = {}
            return answer
        raise AssertionError("unreachable")  # pragma: no cover

    def _connect(self) -> http.client.HTTPConnection:
        if self._connection is None:
            self._connection = http.client.HTTPConnection(
                self.host, self.port, timeout=self._timeout_s
            )
        return self._connection

    def close(self) -> None:
        """Close the connection (the next send opens a new one)."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None
