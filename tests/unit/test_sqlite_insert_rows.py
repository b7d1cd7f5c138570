"""``sqlite._insert_rows``: many rows a statement, the same rows as ``executemany``."""

from __future__ import annotations

import sqlite3

import pytest

from chainmail import sqlite as cm_sqlite


def _table() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT, n INTEGER)")
    return conn


@pytest.mark.parametrize("count", [0, 1, 2, 63, 127, 128, 129, 255, 300, 1000])
def test_every_row_lands_once_in_order(count: int) -> None:
    rows = [(k, f"v{k}", k * 3) for k in range(count)]
    conn = _table()
    cm_sqlite._insert_rows(conn, "INSERT INTO t (k, v, n)", 3, rows)
    assert conn.execute("SELECT k, v, n FROM t ORDER BY rowid").fetchall() == rows


def test_a_chunk_is_one_statement_not_a_statement_a_row() -> None:
    conn = _table()
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    cm_sqlite._insert_rows(conn, "INSERT INTO t (k, v, n)", 3, [(k, "x", k) for k in range(300)])
    # 300 = 128 + 128 + 32 + 8 + 4: five statements.
    assert sum(s.startswith("INSERT") for s in statements) == 5


def test_conflict_clauses_apply_row_by_row_as_with_executemany() -> None:
    rows = [(1, "a", 1), (2, "b", 2), (1, "c", 3)]
    ignored, many = _table(), _table()
    cm_sqlite._insert_rows(ignored, "INSERT OR IGNORE INTO t (k, v, n)", 3, rows)
    many.executemany("INSERT OR IGNORE INTO t (k, v, n) VALUES (?, ?, ?)", rows)
    assert (
        ignored.execute("SELECT * FROM t").fetchall() == many.execute("SELECT * FROM t").fetchall()
    )
    upserted = _table()
    upserted.execute("INSERT INTO t VALUES (2, 'old', 0)")
    cm_sqlite._insert_rows(
        upserted,
        "INSERT INTO t (k, v, n)",
        3,
        [(2, "new", 5), (3, "c", 6)],
        " ON CONFLICT (k) DO UPDATE SET v=excluded.v, n=excluded.n",
    )
    assert upserted.execute("SELECT * FROM t ORDER BY k").fetchall() == [(2, "new", 5), (3, "c", 6)]


def test_a_failing_row_fails_the_statement_and_the_caller_sees_it() -> None:
    conn = _table()
    with pytest.raises(sqlite3.IntegrityError):
        cm_sqlite._insert_rows(conn, "INSERT INTO t (k, v, n)", 3, [(1, "a", 1), (1, "b", 2)])


def test_statements_stay_within_the_connections_parameter_limit() -> None:
    # SQLite before 3.32 allows 999 parameters a statement: 12 columns fit 83
    # rows, so chunks are of 64 rows there (1,536 parameters would fail).
    conn = sqlite3.connect(":memory:")
    columns = ", ".join(f"c{i}" for i in range(12))
    conn.execute(f"CREATE TABLE w ({columns})")
    conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
    rows = [tuple(range(r, r + 12)) for r in range(300)]
    assert cm_sqlite._insert_rows(conn, f"INSERT INTO w ({columns})", 12, rows) == 300
    assert conn.execute(f"SELECT {columns} FROM w ORDER BY rowid").fetchall() == rows


def test_the_count_is_of_rows_changed_not_rows_given() -> None:
    conn = _table()
    conn.execute("INSERT INTO t VALUES (5, 'there', 0)")
    rows = [(k, "new", k) for k in range(10)]
    assert cm_sqlite._insert_rows(conn, "INSERT OR IGNORE INTO t (k, v, n)", 3, rows) == 9


@pytest.mark.parametrize(("count", "size"), [(1, 1), (2, 2), (3, 4), (5, 8), (512, 512)])
def test_in_lists_are_padded_to_a_power_of_two_with_nulls(count: int, size: int) -> None:
    marks, params = cm_sqlite._in_list(list(range(count)))
    assert marks == "(" + ", ".join("?" * size) + ")"
    assert params == [*range(count), *[None] * (size - count)]
    conn = _table()
    conn.executemany("INSERT INTO t VALUES (?, 'x', 0)", [(k,) for k in range(1000)])
    (found,) = conn.execute(f"SELECT COUNT(*) FROM t WHERE k IN {marks}", params).fetchone()
    assert found == count
