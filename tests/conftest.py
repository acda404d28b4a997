from __future__ import annotations

import http.client
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from flask_partnerstack_stripe import testing
from flask_partnerstack_stripe.extension import State, get_state

from .apphost import SECRET, create_app

#: The PostgreSQL server to test against. Each test session creates a database of its
#: own there (and drops it at the end), so two runs at once never share tables.
POSTGRES_SERVER_URL = os.environ.get(
    "PARTNERSTACK_TEST_POSTGRES_URL", "postgresql+psycopg://root@127.0.0.1:5432/test"
)
REQUIRE_POSTGRES = os.environ.get("REQUIRE_POSTGRES") == "1"
#: The MySQL/MariaDB server to test against, the same way (a database per test session).
MARIADB_SERVER_URL = os.environ.get(
    "PARTNERSTACK_TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/mysql?charset=utf8mb4"
)
#: REQUIRE_SERVICES=1 (set by .ci/run): every database server must be there.
REQUIRE_SERVICES = os.environ.get("REQUIRE_SERVICES") == "1"


class SessionDatabases:
    """Databases this test session created on a server, each under a name of its own."""

    def __init__(self) -> None:
        self.created: dict[str, str] = {}  # server URL -> this session's database URL
        self.problems: dict[str, str] = {}

    def url(self, server_url: str) -> str:
        """A fresh database on ``server_url``'s server for this session; raises if unreachable."""
        if server_url in self.problems:
            raise ConnectionError(self.problems[server_url])
        if server_url not in self.created:
            name = f"pst_test_{os.getpid()}_{secrets.token_hex(4)}"  # "test": see send-test-event
            try:
                self._run(server_url, self._create(server_url, name))
            except Exception as error:
                self.problems[server_url] = (
                    f"{sa.make_url(server_url).render_as_string(hide_password=True)} is "
                    f"unreachable ({type(error).__name__})"
                )
                raise ConnectionError(self.problems[server_url]) from None
            self.created[server_url] = (
                sa.make_url(server_url).set(database=name).render_as_string(hide_password=False)
            )
        return self.created[server_url]

    def drop_all(self) -> None:
        for server_url, url in self.created.items():
            name = sa.make_url(url).database
            if sa.make_url(server_url).get_backend_name() == "mysql":
                self._run(server_url, f"DROP DATABASE IF EXISTS `{name}`")
            else:
                self._run(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.created.clear()

    @staticmethod
    def _create(server_url: str, name: str) -> str:
        if sa.make_url(server_url).get_backend_name() == "mysql":
            return f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"
        return f'CREATE DATABASE "{name}"'

    @staticmethod
    def _run(server_url: str, statement: str) -> None:
        engine = sa.create_engine(server_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
        try:
            with engine.connect() as connection:
                connection.execute(sa.text(statement))
        finally:
            engine.dispose()


SESSION_DATABASES = SessionDatabases()


def pytest_sessionfinish(session: pytest.Session) -> None:
    SESSION_DATABASES.drop_all()


def postgres_problem() -> str | None:
    """Why PostgreSQL cannot be used, or None when it can."""
    try:
        SESSION_DATABASES.url(POSTGRES_SERVER_URL)
    except ConnectionError as error:
        return str(error)
    return None


def mariadb_problem() -> str | None:
    """Why MariaDB/MySQL cannot be used, or None when it can."""
    try:
        SESSION_DATABASES.url(MARIADB_SERVER_URL)
    except ConnectionError as error:
        return str(error)
    return None


def pytest_report_header() -> list[str]:
    lines = []
    problem = postgres_problem()
    if problem is None:
        lines.append(f"PostgreSQL tests: {SESSION_DATABASES.url(POSTGRES_SERVER_URL)}")
    elif REQUIRE_POSTGRES or REQUIRE_SERVICES:
        lines.append(f"PostgreSQL REQUIRED but {problem}: its tests will fail")
    else:
        lines.append(
            f"!!! {problem}: PostgreSQL tests are SKIPPED (REQUIRE_POSTGRES=1 makes this fatal)"
        )
    problem = mariadb_problem()
    if problem is None:
        lines.append(f"MariaDB tests: {SESSION_DATABASES.url(MARIADB_SERVER_URL)}")
    elif REQUIRE_SERVICES:
        lines.append(f"MariaDB REQUIRED but {problem}: its tests will fail")
    else:
        lines.append(
            f"!!! {problem}: MariaDB tests are SKIPPED (REQUIRE_SERVICES=1 makes this fatal)"
        )
    return lines


def use_postgres() -> str:
    """This session's own PostgreSQL database (created on first use), or skip/fail."""
    problem = postgres_problem()
    if problem is not None:
        if REQUIRE_POSTGRES or REQUIRE_SERVICES:
            pytest.fail(f"REQUIRE_POSTGRES=1 but {problem}")
        pytest.skip(problem)
    return SESSION_DATABASES.url(POSTGRES_SERVER_URL)


def use_mariadb() -> str:
    """This session's own MariaDB database (created on first use, utf8mb4), or skip/fail."""
    problem = mariadb_problem()
    if problem is not None:
        if REQUIRE_SERVICES:
            pytest.fail(f"REQUIRE_SERVICES=1 but {problem}")
        pytest.skip(problem)
    return SESSION_DATABASES.url(MARIADB_SERVER_URL)


#: The databases every database test runs on.
DATABASES = ["sqlite", "postgresql", "mariadb"]


def use_database(name: str, tmp_path: Any, file: str = "app_test.db") -> str:
    """A URL for ``name`` (one of :data:`DATABASES`): a file for SQLite, else this session's."""
    if name == "postgresql":
        return use_postgres()
    if name == "mariadb":
        return use_mariadb()
    return f"sqlite:///{tmp_path / file}"


@pytest.fixture(params=DATABASES)
def database_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    return use_database(request.param, tmp_path)


@pytest.fixture
def app_config() -> dict[str, Any]:
    """Extra config for the ``app`` fixture; override it in a test module or with indirect."""
    return {}


@pytest.fixture
def app(database_url: str, app_config: dict[str, Any]) -> Iterator[Flask]:
    app = create_app(database_url, **app_config)
    db = get_state(app).db
    with app.app_context():
        db.drop_all()
        db.create_all()
    yield app
    with app.app_context():
        db.session.remove()
        db.drop_all()
        db.engine.dispose()


@pytest.fixture
def state(app: Flask) -> State:
    return get_state(app)


@pytest.fixture
def models(state: State) -> Any:
    return state.models


@pytest.fixture
def rows(app: Flask, state: State) -> Any:
    """``rows(Model, **filters)``: the committed rows, read in a fresh session each time."""
    with app.app_context():
        engine = state.db.engine

    def read(model: Any, **filters: Any) -> list[Any]:
        with Session(engine) as session:
            return list(session.scalars(sa.select(model).filter_by(**filters).order_by(model.id)))

    return read


@pytest.fixture(autouse=True)
def _push_request_context() -> None:
    """Replace pytest-flask's fixture of this name, which pushes one request context for
    the whole test: every client request would then share its app context and its
    ``db.session``. Here, as in production, each request gets its own."""


# --- a real server ---------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]

#: How each server model is started, as users run them: gunicorn's sync workers
#: (processes), gunicorn's gthread workers (processes with threads), and ``flask run``
#: (Werkzeug's development server, threaded by default).
SERVER_COMMANDS: dict[str, list[str]] = {
    "gunicorn-sync": [
        "-m", "gunicorn", "--workers", "4", "--graceful-timeout", "5",
        "--bind", "127.0.0.1:{port}", "tests.apphost:create_app()",
    ],
    "gunicorn-gthread": [
        "-m", "gunicorn", "--workers", "2", "--worker-class", "gthread", "--threads", "8",
        "--graceful-timeout", "5", "--bind", "127.0.0.1:{port}", "tests.apphost:create_app()",
    ],
    "flask-run": ["-m", "flask", "--app", "tests.apphost", "run", "--port", "{port}"],
}  # fmt: skip


class Server:
    def __init__(self, port: int, log: Path, signal_log: Path) -> None:
        self.port = port
        self.log = log
        self.signal_log = signal_log

    def post(self, body: str | bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            connection.request("POST", "/partnerstack/webhook", body=body, headers=headers)
            response = connection.getresponse()
            return response.status, json.loads(response.read() or b"{}")
        finally:
            connection.close()

    def post_event(self, event: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        payload = json.dumps(event)
        return self.post(payload, {"Stripe-Signature": testing.sign(payload, SECRET)})

    def log_text(self) -> str:
        return self.log.read_text()

    def signals(self) -> list[tuple[str, ...]]:
        """The data signals the server's receivers got, one tuple of words each (apphost)."""
        if not self.signal_log.exists():
            return []
        return [tuple(line.split(" ")) for line in self.signal_log.read_text().splitlines()]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def server_env() -> dict[str, str]:
    """Extra environment for the ``server`` fixture's workers; override it in a module."""
    return {}


@pytest.fixture
def server_database_url(database_url: str) -> str:
    """The database URL the server's workers use; a module may route it through a proxy."""
    return database_url


@pytest.fixture
def server_kind() -> str:
    """Which of ``SERVER_COMMANDS`` the ``server`` fixture starts; a module may parametrize it."""
    return "gunicorn-sync"


@pytest.fixture
def server(app, server_kind, server_database_url, server_env, tmp_path) -> Iterator[Server]:
    """A real server (``server_kind``) serving the test host app on ``database_url``.

    The ``app`` fixture has created the tables; the server's workers never do.
    """
    port, log, signal_log = free_port(), tmp_path / "server.log", tmp_path / "signals.log"
    command = [part.format(port=port) for part in SERVER_COMMANDS[server_kind]]
    env = {
        **os.environ,
        **server_env,
        "DATABASE_URL": server_database_url,
        "PARTNERSTACK_TEST_SIGNAL_LOG": str(signal_log),
    }
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, *command],
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"{server_kind} did not start:\n" + log.read_text())
                time.sleep(0.1)
        time.sleep(0.5)  # let every worker boot, so the first requests race for real
        yield Server(port, log, signal_log)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:  # pragma: no cover
            process.kill()
            process.wait()
