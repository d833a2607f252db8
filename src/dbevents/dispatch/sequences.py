"""PostgreSQL: the keys of a bulk INSERT, drawn from the key's sequence before it runs.

A bulk INSERT made to return its keys runs through SQLAlchemy's
``insertmanyvalues``, which renders batches of multi-row VALUES in Python and
costs as much again as the INSERT.  When only the keys are wanted and the key
column takes its values from a sequence, dbevents draws them itself, one
``nextval`` per row in one query, and sends them with the rows: what the
column's default would have done, so the rows, the sequence and the caller's
result (``rowcount``) are as they would have been.  Only when the database
declares exactly that:

- the key is one column of an ordinary table, an identity ``BY DEFAULT`` or a
  column whose default is ``nextval`` of its own sequence (``serial``);
- no trigger or rule on the table could change or redirect a row;
- the INSERT is plain (no upsert, prefix or RETURNING) and sends no key and has
  no default of its own for it.

Anything else returns its keys by RETURNING as before.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import sqlalchemy as sa

from ..mapping import TableSpec
from .returning import plain_insert, sends_value
from .stored import SKIP_CAPTURE, table_name

__all__ = ["drawn_keys"]

_OPTIONS: Final = {SKIP_CAPTURE: True}

#: the key column's sequence, when the database fills the column from it and nothing else
_SEQUENCE_OF: Final = sa.text(
    """
    SELECT s.name
    FROM pg_class c
    JOIN pg_attribute a ON a.attrelid = c.oid
    CROSS JOIN LATERAL (SELECT pg_get_serial_sequence(:table, a.attname) AS name) s
    LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
    WHERE c.oid = CAST(:table AS regclass) AND a.attname = :column AND c.relkind = 'r'
      AND NOT EXISTS (SELECT FROM pg_trigger t WHERE t.tgrelid = c.oid AND NOT t.tgisinternal)
      AND NOT EXISTS (SELECT FROM pg_rewrite r WHERE r.ev_class = c.oid AND r.ev_type = '3')
      AND (a.attidentity = 'd'
           OR pg_get_expr(d.adbin, d.adrelid)
              = format('nextval(%L::regclass)', CAST(s.name AS regclass)))
    """
)
#: one array rather than a row per key: the driver reads it in one go
_NEXT_VALUES: Final = sa.text(
    "SELECT array(SELECT nextval(CAST(:sequence AS regclass)) FROM generate_series(1, :count))"
)


def drawn_keys(
    connection: sa.Connection,
    spec: TableSpec,
    statement: Any,
    parameters: Sequence[Mapping[str, Any]],
) -> tuple[list[dict[str, Any]], list[tuple[Any, ...]]] | None:
    """The parameter sets with a key drawn from the sequence each, and those keys; None
    when the database would not fill the key from it alone (see the module)."""
    table = spec.table
    if (
        connection.dialect.name != "postgresql"
        or len(table.primary_key.columns) != 1
        or not plain_insert(statement)
    ):
        return None
    (key,) = table.primary_key.columns
    # a default of SQLAlchemy's (Python, or a Sequence it renders), or a key sent
    if key.default is not None or sends_value(key, statement, parameters):
        return None
    # the table the INSERT writes: in the schema the connection's schema_translate_map gives it
    name = table_name(connection, table)
    sequence = connection.execute(
        _SEQUENCE_OF, {"table": name, "column": key.name}, execution_options=_OPTIONS
    ).scalar()
    if sequence is None:
        return None
    wanted = {"sequence": sequence, "count": len(parameters)}
    values: list[Any] = connection.execute(
        _NEXT_VALUES, wanted, execution_options=_OPTIONS
    ).scalar_one()
    keyed = [{**p, key.key: value} for p, value in zip(parameters, values, strict=True)]
    return keyed, [(value,) for value in values]
