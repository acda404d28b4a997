"""A host's own ``flask db migrate`` picks up our tables, and finds nothing new the second time."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import sqlalchemy as sa

from .conftest import use_mariadb, use_postgres

pytestmark = pytest.mark.slow

HOST_APP = textwrap.dedent(
    """
    import os

    from flask import Flask
    from flask_migrate import Migrate
    from flask_sqlalchemy import SQLAlchemy

    from flask_partnerstack_stripe import PartnerStackStripe

    db = SQLAlchemy()
    partnerstack = PartnerStackStripe(db=db)


    class Order(db.Model):
        id = db.Column(db.Integer, primary_key=True)


    def create_app():
        app = Flask(__name__)
        app.config["SQLALCHEMY_DATABASE_URI"] = os.environ["DATABASE_URL"]
        db.init_app(app)
        Migrate(app, db)
        partnerstack.init_app(app)
        return app
    """
)


def flask_db(host: Path, database_url: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "hostapp:create_app", "db", *args],
        cwd=host,
        env={**os.environ, "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def migration_database(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'host.db'}"
        return
    if request.param == "mariadb":
        # A database of its own (MySQL's schemas are databases), utf8mb4 like the host's.
        server = sa.make_url(use_mariadb())
        name = f"migrate_{secrets.token_hex(4)}"
        engine = sa.create_engine(server)
        with engine.begin() as connection:
            connection.execute(sa.text(f"CREATE DATABASE {name} CHARACTER SET utf8mb4"))
        try:
            yield server.set(database=name).render_as_string(hide_password=False)
        finally:
            with engine.begin() as connection:
                connection.execute(sa.text(f"DROP DATABASE {name}"))
            engine.dispose()
        return
    # A schema of its own, so the host's alembic_version and tables stay apart.
    schema = f"migrate_{secrets.token_hex(4)}"
    engine = sa.create_engine(use_postgres())
    with engine.begin() as connection:
        connection.execute(sa.text(f"CREATE SCHEMA {schema}"))
    try:
        yield f"{use_postgres()}?options=-csearch_path%3D{schema}"
    finally:
        with engine.begin() as connection:
            connection.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        engine.dispose()


def host_with_a_migration(tmp_path: Path, database_url: str) -> tuple[Path, Path]:
    """A host app whose ``flask db init`` and ``migrate`` ran: its folder and the script."""
    host = tmp_path / "host"
    host.mkdir()
    (host / "hostapp.py").write_text(HOST_APP)
    flask_db(host, database_url, "init")
    flask_db(host, database_url, "migrate", "-m", "initial")
    [migration] = (host / "migrations" / "versions").glob("*.py")
    return host, migration


def test_host_migrations_include_our_tables(tmp_path, migration_database):
    host, migration = host_with_a_migration(tmp_path, migration_database)
    script = migration.read_text()
    for table in (
        "partnerstack_customer",
        "partnerstack_transaction",
        "partnerstack_stripe_account",
        "partnerstack_webhook_event",
        "order",
    ):
        assert f"op.create_table('{table}'" in script
    assert "uq_partnerstack_webhook_event_stripe_event_id" in script
    flask_db(host, migration_database, "upgrade")

    again = flask_db(host, migration_database, "migrate", "-m", "nothing")
    assert "No changes in schema detected" in again
    assert len(list((host / "migrations" / "versions").glob("*.py"))) == 1

    engine = sa.create_engine(migration_database)
    try:
        tables = set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert {"partnerstack_customer", "partnerstack_transaction", "alembic_version"} <= tables


#: The README's MySQL/MariaDB step for a generated downgrade: delete the blocks that drop
#: the indexes of a table dropped right after (dropping the table drops them; MySQL refuses
#: to drop first an index that a foreign key uses).
INDEX_DROPS = re.compile(
    r"\n    with op\.batch_alter_table\('(\w+)', schema=None\) as batch_op:\n"
    r"(?:        batch_op\.drop_index\(.*\)\n)+\n(?=    op\.drop_table\('\1'\))"
)


def test_host_migrations_downgrade_and_upgrade_again(tmp_path, migration_database):
    host, migration = host_with_a_migration(tmp_path, migration_database)
    if migration_database.startswith("mysql"):
        script = migration.read_text()
        edited, dropped = INDEX_DROPS.subn("\n", script)
        assert dropped >= 4, script  # the tables with indexes of their own
        migration.write_text(edited)
    flask_db(host, migration_database, "upgrade")
    flask_db(host, migration_database, "downgrade", "base")
    engine = sa.create_engine(migration_database)
    try:
        assert set(sa.inspect(engine).get_table_names()) <= {"alembic_version"}
        flask_db(host, migration_database, "upgrade")
        tables = set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert {"partnerstack_customer", "partnerstack_commission", "order"} <= tables
