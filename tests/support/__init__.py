"""What the tests share, in one place: real servers and processes, and ledger helpers.

- ``processes``: starting and stopping processes on 127.0.0.1 (free ports, logs, the ``atexit``
  safety net): every server below starts through it.
- ``services``: Redis, PostgreSQL and S3 (moto) fixtures.
- ``receivers``: OpenTelemetry receivers (rotel, Datadog's test agent) fixtures.
- ``upstreams``: model servers (Cog, Potassium, plain HTTP) fixtures.
- ``venvs``: venvs made once per machine for servers whose dependencies must not meet ours.
- ``sidecars``: in-process sidecars with a spool and a ledger in a test's folder.
- ``ledgers``: the ``ledger_location`` fixture (SQLite and PostgreSQL) and reading a ledger
  another process writes.

``tests/conftest.py`` loads the fixture modules with ``pytest_plugins``. Records for tests come
from the public ``gpuledger.testing.make_record``.
"""
