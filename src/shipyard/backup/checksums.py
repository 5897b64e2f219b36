"""Per-table row counts and order-independent checksums, and their comparison.

A backup reads them in the very snapshot pg_dump dumps and keeps them in its manifest; a
verification reads them again from the restored copy, so `compare_stats` proves the restore
reproduces the data (a restore compares row counts only).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg import sql

from shipyard.backup.db import row

# How each column type is hashed by value: its default hash opclass's extended hash function
# (pg_amproc), with the cast some of them need. Values hash the same in any database they are
# restored into, and per-column hashing is about 4x cheaper than formatting the row as text.
# Enums, oids and reg* types would hash their OIDs, which a restore renumbers: a table with any
# type outside this map (or an array of one) is hashed through its row text instead.
COLUMN_HASH = {
    "bool": "hashint4extended({}::int, 0)",
    "int2": "hashint2extended({}, 0)",
    "int4": "hashint4extended({}, 0)",
    "int8": "hashint8extended({}, 0)",
    "numeric": "hash_numeric_extended({}, 0)",
    "float4": "hashfloat4extended({}, 0)",
    "float8": "hashfloat8extended({}, 0)",
    "text": "hashtextextended({}, 0)",
    "varchar": "hashtextextended({}::text, 0)",
    "bpchar": "hashbpcharextended({}, 0)",
    "bytea": "hashtextextended(encode({}, 'hex'), 0)",  # its own takes `internal`
    "uuid": "uuid_hash_extended({}, 0)",
    "jsonb": "jsonb_hash_extended({}, 0)",
    "date": "hashint4extended({} - date '2000-01-01', 0)",
    "time": "time_hash_extended({}, 0)",
    "timetz": "timetz_hash_extended({}, 0)",
    "timestamp": "timestamp_hash_extended({}, 0)",
    "timestamptz": "timestamp_hash_extended({} AT TIME ZONE 'UTC', 0)",
    "interval": "interval_hash_extended({}, 0)",
    "inet": "hashinetextended({}, 0)",
    "cidr": "hashinetextended({}::inet, 0)",
    "macaddr": "hashmacaddrextended({}, 0)",
}
ARRAY_HASH = "hash_array_extended({}, 0)"
TEXT_HASH = sql.SQL("hashtextextended(t::text, 0)")


def _column_hash(columns: list[tuple[str, str, bool]]) -> sql.Composable | None:
    """One row's hash from its columns' hashes (None when a type is not in COLUMN_HASH).

    Each column's hash is shifted by its position before the XOR, so swapped values differ;
    NULL hashes to -1.
    """
    parts: list[sql.Composable] = []
    for position, (name, type_name, builtin) in enumerate(columns):
        element = type_name.removeprefix("_")
        if not builtin or element not in COLUMN_HASH:
            return None
        template = ARRAY_HASH if type_name.startswith("_") else COLUMN_HASH[type_name]
        value = sql.SQL(template).format(sql.Identifier("t", name))
        parts.append(sql.SQL("(coalesce({}, -1) << {})").format(value, position % 64))
    return sql.SQL(" # ").join(parts) if parts else sql.SQL("0::bigint")


def _count_and_hash(
    conn: psycopg.Connection, table: sql.Identifier, row_hash: sql.Composable | None
) -> tuple[Any, ...]:
    """count(*) and the sum of row hashes (or '' without `row_hash`), in a savepoint so a
    failure leaves the surrounding snapshot transaction usable (pg_dump imports it)."""
    if row_hash is None:
        query = sql.SQL("SELECT count(*), '' FROM {} AS t").format(table)
    else:
        query = sql.SQL("SELECT count(*), coalesce(sum({}), 0)::text FROM {} AS t").format(
            row_hash, table
        )
    with conn.transaction():
        return row(conn.execute(query).fetchone())


def table_stats(
    conn: psycopg.Connection, *, checksums: bool = True, methods: Mapping[str, str] | None = None
) -> dict[str, dict[str, Any]]:
    """Row count and an order-independent checksum of every user table's rows.

    The checksum sums a 64-bit hash of each row, so it does not depend on the physical row
    order a restore produces. `methods` (table -> "columns"/"text", from a manifest) makes a
    verification hash each table exactly the way its backup did.
    """
    rows = conn.execute(
        """
        SELECT n.nspname, c.relname, a.attname, ty.typname,
               ty.typnamespace = 'pg_catalog'::regnamespace
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
        LEFT JOIN pg_type ty ON ty.oid = a.atttypid
        WHERE c.relkind = 'r' AND n.nspname <> 'information_schema'
          AND n.nspname NOT LIKE 'pg\\_%'
          AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                          AND d.objid = c.oid AND d.deptype = 'e')
        ORDER BY 1, 2, a.attnum
        """
    ).fetchall()
    tables: dict[tuple[str, str], list[tuple[str, str, bool]]] = {}
    for schema_name, table, column, type_name, builtin in rows:
        columns = tables.setdefault((schema_name, table), [])
        if column is not None:  # a table without columns has one row of NULLs here
            columns.append((column, type_name, builtin))
    stats = {}
    for (schema_name, table), columns in tables.items():
        name = f"{schema_name}.{table}"
        by_column = _column_hash(columns)
        method = (methods or {}).get(name) or ("columns" if by_column is not None else "text")
        row_hash = by_column if method == "columns" and by_column is not None else TEXT_HASH
        ident = sql.Identifier(schema_name, table)
        try:
            counted = _count_and_hash(conn, ident, row_hash if checksums else None)
        except (psycopg.DataError, psycopg.errors.UndefinedFunction):
            # A value the column hash refuses ('infinity' dates) or a hash this server lacks:
            # the row text works everywhere. Any other error (a timeout, the session ended) is
            # the reason, not a cue to hash again. Only while choosing (a backup); a
            # verification must hash exactly as its backup did.
            if method != "columns" or methods:
                raise
            method = "text"
            counted = _count_and_hash(conn, ident, TEXT_HASH)
        stats[name] = {"rows": counted[0], "checksum": counted[1], "hash": method}
    return stats


def compare_stats(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> list[str]:
    """Every difference between the manifest's tables and a restored database's, readable.
    Checksums are compared when `actual` has them (a restore counts rows; verify hashes)."""
    problems = []
    for name in sorted(set(expected) | set(actual)):
        if name not in actual:
            problems.append(f"{name}: missing after restore")
        elif name not in expected:
            problems.append(f"{name}: not in the backup's manifest")
        elif expected[name]["rows"] != actual[name]["rows"]:
            problems.append(
                f"{name}: {actual[name]['rows']} rows, expected {expected[name]['rows']}"
            )
        elif actual[name]["checksum"] and expected[name]["checksum"] != actual[name]["checksum"]:
            problems.append(f"{name}: row checksum differs from the backup's")
    return problems
