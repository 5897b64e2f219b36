"""The backup tests' database and bucket: a PostgreSQL database of varied data (the `database`
fixture), a fresh S3 bucket on the moto server (`bucket`), what a restore must reproduce
(`contents`) and `shipyard ...` run as the CronJob runs it (`shipyard_cli`).

A pytest plugin (tests/conftest.py loads it), so every backup test module shares the fixtures.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.servers.postgres import PostgresServer
from tests.servers.s3 import S3Server

SCHEMA = """
CREATE TYPE mood AS ENUM ('ok', 'sad');
CREATE TABLE customers (
    id bigserial PRIMARY KEY, name text NOT NULL, email text UNIQUE, balance numeric(12, 2),
    joined timestamptz, birthday date, mood mood, tags text[], prefs jsonb, avatar bytea,
    score double precision
);
CREATE TABLE orders (
    id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES customers (id), total numeric(10, 2), note text
);
CREATE INDEX orders_customer ON orders (customer_id);
CREATE SCHEMA audit;
CREATE TABLE audit.events (at timestamptz DEFAULT now(), what text);
CREATE VIEW big_spenders AS SELECT customer_id, sum(total) FROM orders GROUP BY 1;
INSERT INTO customers (name, email, balance, joined, birthday, mood, tags, prefs, avatar, score)
SELECT 'Customer ' || g, 'c' || g || '@example.com', g * 1.5,
       '2024-01-01 12:00+02'::timestamptz + g * interval '1 hour', date '1990-01-01' + g,
       (CASE WHEN g % 3 = 0 THEN 'sad' ELSE 'ok' END)::mood, ARRAY['a', 'b' || g],
       jsonb_build_object('n', g, 'dark', g % 2 = 0), decode(md5(g::text), 'hex'),
       CASE WHEN g % 7 = 0 THEN NULL ELSE g / 3.0 END
FROM generate_series(1, 2000) g;
INSERT INTO orders (customer_id, total, note)
SELECT 1 + g % 2000, g % 500, CASE WHEN g % 5 = 0 THEN E'multi\\nline, "quoted"' END
FROM generate_series(1, 5000) g;
INSERT INTO audit.events (what) VALUES ('created'), (NULL);
CREATE TABLE kinds (
    b bool, s int2, r real, v varchar(20), c char(5), raw bytea, u uuid, j jsonb, d date,
    tm time, tz timetz, ts timestamp, tstz timestamptz, iv interval, ip inet, net cidr,
    mac macaddr, words text[], nums int4[], nothing text
);
INSERT INTO kinds
SELECT g % 2 = 0, g, g / 7.0, 'v' || g, 'c' || g % 10, decode(md5(g::text), 'hex'),
       md5(g::text)::uuid, jsonb_build_object('g', g), date '2020-01-01' + g,
       time '10:00' + g * interval '1 minute', timetz '10:00+02',
       timestamp '2020-01-01' + g * interval '1 hour',
       timestamptz '2020-01-01 00:00+05' + g * interval '1 day', g * interval '1 second',
       ('10.0.0.' || g % 250)::inet, '10.1.0.0/16', '08:00:2b:01:02:03', ARRAY['x' || g, NULL],
       ARRAY[g, g + 1], NULL
FROM generate_series(1, 300) g;
"""


def contents(server: PostgresServer, dbname: str) -> dict[str, Any]:
    """Every table's rows (as sorted text), the sequences' positions and the views: what a
    restore must reproduce exactly."""
    with server.connect(dbname) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        tables = conn.execute(
            "SELECT schemaname || '.' || tablename FROM pg_tables"
            " WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1"
        ).fetchall()
        data: dict[str, Any] = {}
        for (table,) in tables:
            rows = conn.execute(f"SELECT t::text FROM {table} t").fetchall()  # noqa: S608
            data[table] = sorted(r[0] for r in rows)
        data["sequences"] = conn.execute(
            "SELECT sequencename, last_value FROM pg_sequences ORDER BY 1"
        ).fetchall()
        data["views"] = conn.execute(
            "SELECT viewname, definition FROM pg_views WHERE schemaname = 'public'"
        ).fetchall()
        data["indexes"] = conn.execute(
            "SELECT indexname FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1"
        ).fetchall()
    return data


@pytest.fixture
def database(postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh database with varied data; libpq's environment points at it."""
    name = postgres_server.create_database("app")
    with postgres_server.connect(name) as conn:
        conn.execute(SCHEMA)
    for key, value in postgres_server.env(name).items():
        monkeypatch.setenv(key, value)
    return name


@pytest.fixture
def bucket(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket on the moto server; boto3's environment points at it."""
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    name = f"backups-{os.urandom(4).hex()}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


def shipyard_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`shipyard ...` as the CronJob runs it: a separate process configured by environment."""
    return subprocess.run(
        [sys.executable, "-m", "shipyard.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


@dataclass(frozen=True)
class Process:
    """One line of /proc/PID/stat, the fields the tests read."""

    pid: int
    name: str
    state: str
    ppid: int
    pgrp: int


def processes() -> list[Process]:
    """Every process now running (from /proc; one that exits meanwhile is left out)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # PID (COMMAND) STATE PPID PGRP ...: the command may hold spaces and parentheses.
            state, ppid, pgrp = stat[stat.rindex(")") + 2 :].split()[:3]
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            found.append(Process(int(entry.name), name, state, int(ppid), int(pgrp)))
    return found


def children(pid: int, name: str) -> list[int]:
    """Process ids of `name` processes whose parent is `pid` (from /proc)."""
    return [p.pid for p in processes() if p.ppid == pid and p.name == name]
