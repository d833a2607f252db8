"""What dbevents needs to know about a mapper or a table, computed once and cached.

Changes are per table row and keyed by column name, while objects are keyed by
attribute; these specs translate between the two without asking SQLAlchemy's
inspection API on every row.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast, final

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm

from ._compat import NO_VALUE

__all__ = [
    "DATABASE_ACTIONS",
    "MapperSpec",
    "TableSpec",
    "attribute_key",
    "captured_key",
    "captured_keys",
    "column_name",
    "mapper_spec",
    "table_spec",
]

_MISSING: Any = object()


def column_name(column: Any) -> str:
    """A column's (or table's) name as a plain ``str``.

    SQLAlchemy's names are ``quoted_name``, a ``str`` subclass with slots, which
    the garbage collector tracks; so it tracks every tuple and dict that holds
    one, and rows keyed by such names, many thousands of them in a big commit,
    would each count towards its next full collection.
    """
    return str(column.name)


@final
class TableSpec:
    """A table's full name, its key columns and its column names, in table order."""

    __slots__ = (
        "_link",
        "_model",
        "_row_writers",
        "columns",
        "key_columns",
        "name",
        "pk",
        "table",
        "unique_keys",
    )

    def __init__(self, table: sa.Table) -> None:
        self.table = table
        self.name: str = str(table.fullname)  # (a plain str: see column_name)
        self.columns = tuple(column_name(column) for column in table.columns)
        primary = tuple(column_name(column) for column in table.primary_key.columns)
        #: a table without a primary key is keyed by all of its columns
        self.pk = primary or self.columns
        #: the column names of each unique key: the primary key, unique constraints and
        #: unique indexes, each once
        unique = [primary] if primary else []
        for item in (*table.constraints, *table.indexes):
            if isinstance(item, sa.UniqueConstraint) or getattr(item, "unique", False):
                names = tuple(column_name(column) for column in getattr(item, "columns", ()))
                if names and names not in unique:
                    unique.append(names)
        self.unique_keys = tuple(unique)
        #: their columns: an UPDATE that sets one takes PostgreSQL's stronger row lock
        #: (see dispatch.stored.locked)
        self.key_columns = frozenset(name for key in unique for name in key)
        self._model: Any = _MISSING
        self._link = False
        self._row_writers: tuple[sa_orm.Mapper[Any], ...] = ()

    @property
    def link(self) -> bool:
        """Whether this is a many-to-many (``secondary``) table: rows are LINK/UNLINK."""
        self._resolve()
        return self._link

    @property
    def secondary_of_mapped(self) -> tuple[sa_orm.Mapper[Any], ...]:
        """For a mapped table that a relationship also writes as its ``secondary`` (an
        association object with a many-to-many view beside it, not viewonly): the base
        mappers of the classes mapped to it; else empty.

        The flush writes such a relationship's rows with Core statements: rows no object
        holds, which no mapper event reports.
        """
        self._resolve()
        return self._row_writers

    def mapped_class(self) -> type[Any] | None:
        """The class mapped to this table (the base of an inheritance chain), if any; for
        the spec of an ORM statement's rows, the class the statement names."""
        self._resolve()
        return self._model  # type: ignore[no-any-return]

    def of_class(self, model: type[Any]) -> TableSpec:
        """This table's spec for the rows of ``model`` (a subclass stored in it, say)."""
        spec = copy.copy(self)
        spec._model, spec._link = model, False
        return spec

    def _resolve(self) -> None:
        if self._model is not _MISSING:
            return
        from ._compat import all_mappers

        owners: list[sa_orm.Mapper[Any]] = []
        link = written = False
        for mapper in all_mappers():
            if mapper.local_table is self.table and (
                mapper.inherits is None or mapper.inherits.local_table is not self.table
            ):
                owners.append(mapper)
            for rel in mapper.relationships:
                if rel.secondary is self.table:
                    link, written = True, written or not rel.viewonly
        self._model = owners[0].class_ if len(owners) == 1 else None
        self._link = link and not owners
        self._row_writers = tuple(m.base_mapper for m in owners) if written else ()


@final
class TablePart:
    """One table of a mapper: which attribute holds each column."""

    __slots__ = ("columns", "left_to_defaults", "pk", "pk_keys", "pk_names", "spec")

    def __init__(self, spec: TableSpec, mapper: sa_orm.Mapper[Any]) -> None:
        self.spec = spec
        #: (column name, attribute key or None when the mapper does not map it)
        self.columns: tuple[tuple[str, str | None], ...] = tuple(
            (column_name(column), attribute_key(mapper, column)) for column in spec.table.columns
        )
        by_name = dict(self.columns)
        self.pk: tuple[tuple[str, str | None], ...] = tuple(
            (name, by_name[name]) for name in spec.pk
        )
        #: the attribute key of each primary key column (None: not mapped)
        self.pk_keys: tuple[str | None, ...] = tuple(key for _, key in self.pk)
        self.pk_names: frozenset[str] = frozenset(spec.pk)
        #: the columns of the subclasses sharing this table (single-table inheritance) that
        #: this mapper does not map, with the value an INSERT of its rows leaves in them
        #: (their default; NO_VALUE when the database or a function computes it)
        self.left_to_defaults: tuple[tuple[str, Any], ...] = tuple(
            (column_name(column), _inserted_default(column))
            for column, (_, key) in zip(spec.table.columns, self.columns, strict=True)
            if key is None and _mapped_by_another(mapper, spec.table, column)
        )

    def key_of(self, values: Mapping[str, Any]) -> tuple[Any, ...]:
        """The primary key of this table's row among an object's attribute values.

        A key column without an attribute (key None) is None: ``values`` never has a None key.
        """
        get = cast("Callable[[str | None], Any]", values.get)
        return tuple(map(get, self.pk_keys))


def _mapped_by_another(mapper: sa_orm.Mapper[Any], table: sa.Table, column: sa.Column[Any]) -> bool:
    """Whether a class of ``mapper``'s hierarchy stored in ``table`` maps ``column``."""
    return any(
        other.local_table is table and attribute_key(other, column) is not None
        for other in mapper.base_mapper.self_and_descendants
    )


def _inserted_default(column: sa.Column[Any]) -> Any:
    """The value an INSERT that does not name ``column`` stores in it; NO_VALUE when the
    database or a function computes it, known once the row is read back."""
    default = column.default
    if column.server_default is not None or (
        default is not None and not (isinstance(default, sa.ColumnDefault) and default.is_scalar)
    ):
        return NO_VALUE
    return None if default is None else default.arg


@final
class MapperSpec:
    """A mapped class: its tables, attribute ↔ column map, and what the flush may change."""

    __slots__ = (
        "attribute_of_column",
        "attribute_of_param",
        "column_keys",
        "columns_of_key",
        "generated_keys",
        "identity_keys",
        "many_to_one",
        "mapper",
        "model",
        "name",
        "one_to_many",
        "parts",
        "passive_deletes",
        "pk_keys",
        "python_onupdate_keys",
        "scalar_defaults",
    )

    def __init__(self, mapper: sa_orm.Mapper[Any]) -> None:
        self.mapper = mapper
        self.model: type[Any] = mapper.class_
        self.name: str = mapper.class_.__name__
        tables = [t for t in mapper.tables if isinstance(t, sa.Table)]
        self.parts = tuple(TablePart(table_spec(t), mapper) for t in _base_first(tables))
        columns_of_key: dict[str, list[tuple[int, str]]] = {}
        #: column name -> attribute key; column key (a statement's parameter) -> attribute key
        self.attribute_of_column: dict[str, str] = {}
        self.attribute_of_param: dict[str, str] = {}
        for index, part in enumerate(self.parts):
            for table_column, (name, key) in zip(
                part.spec.table.columns, part.columns, strict=True
            ):
                if key is not None:
                    columns_of_key.setdefault(key, []).append((index, name))
                    self.attribute_of_column[name] = key
                    self.attribute_of_param[table_column.key] = key
        #: attribute key -> [(part index, column name)], for every column attribute
        self.columns_of_key = {key: tuple(cols) for key, cols in columns_of_key.items()}
        self.column_keys = frozenset(self.columns_of_key)
        #: the attributes of the primary key columns of every table of the mapper
        self.pk_keys = frozenset(key for part in self.parts for key in part.pk_keys if key)
        #: the attribute of each value of an identity key (``mapper.primary_key``), or None
        self.identity_keys = tuple(attribute_key(mapper, column) for column in mapper.primary_key)
        #: attributes the database or SQLAlchemy may set during an UPDATE without history
        generated: set[str] = set()
        python_onupdate: set[str] = set()
        defaults: dict[str, Any] = {}
        for prop in mapper.column_attrs:
            for column in prop.columns:
                if not isinstance(column, sa.Column):
                    continue
                if column.onupdate is not None or column.server_onupdate is not None:
                    generated.add(prop.key)
                onupdate = column.onupdate
                if isinstance(onupdate, sa.ColumnDefault) and onupdate.is_callable:
                    python_onupdate.add(prop.key)
                default = column.default
                if (
                    isinstance(default, sa.ColumnDefault)
                    and default.is_scalar
                    and prop.key not in defaults
                ):
                    defaults[prop.key] = default.arg
        if mapper.version_id_col is not None:
            generated.add(mapper.get_property_by_column(mapper.version_id_col).key)
        self.generated_keys = frozenset(generated)
        #: generated attributes whose onupdate is a Python function, called per row: after
        #: an UPDATE of many rows in one executemany, SQLAlchemy leaves the first row's value
        #: on every object (its ``_postfetch`` reads the first parameter set), so the values
        #: stored are read back instead
        self.python_onupdate_keys = frozenset(python_onupdate)
        #: scalar Python-side defaults, shown to before_insert callbacks
        self.scalar_defaults = defaults
        #: many-to-one relationship key -> ((local attribute, remote attribute), ...)
        self.many_to_one: dict[str, tuple[tuple[str, str], ...]] = {}
        for rel in mapper.relationships:
            if rel.direction is sa_orm.MANYTOONE and rel.secondary is None:
                pairs = []
                for remote, local in rel.synchronize_pairs:
                    local_key = attribute_key(mapper, local)
                    remote_key = attribute_key(rel.mapper, remote)
                    if local_key and remote_key:
                        pairs.append((local_key, remote_key))
                self.many_to_one[rel.key] = tuple(pairs)
        #: one-to-many relationships: the flush writes the keys of the objects they gain or lose
        self.one_to_many = frozenset(
            rel.key
            for rel in mapper.relationships
            if rel.direction is sa_orm.ONETOMANY and rel.secondary is None and not rel.viewonly
        )

        #: relationships whose rows the database itself deletes or updates along with a
        #: deleted row, by the ON DELETE of their foreign key, when the flush leaves them to
        #: it (``passive_deletes``): relationship -> that ON DELETE action
        self.passive_deletes = {
            rel: action
            for rel in mapper.relationships
            if rel.passive_deletes
            and not rel.viewonly
            and rel.direction is not sa_orm.MANYTOONE
            and (action := _on_delete(rel, mapper))
        }

    def rows_of(self, values: dict[str, Any]) -> list[dict[str, Any]]:
        """Split attribute values into one column-name row per table (missing: skipped)."""
        return [
            {name: values[key] for name, key in part.columns if key is not None and key in values}
            for part in self.parts
        ]


_mapper_specs: dict[sa_orm.Mapper[Any], MapperSpec] = {}
_table_specs: dict[sa.Table, TableSpec] = {}
#: the specs of a table for the rows of a class other than the one mapped to it
_class_specs: dict[tuple[sa.Table, type[Any]], TableSpec] = {}


def mapper_spec(mapper: sa_orm.Mapper[Any]) -> MapperSpec:
    """Return the cached spec of ``mapper``."""
    spec = _mapper_specs.get(mapper)
    if spec is None:
        spec = _mapper_specs[mapper] = MapperSpec(mapper)
    return spec


def table_spec(table: sa.Table, model: type[Any] | None = None) -> TableSpec:
    """Return the cached spec of ``table`` (ORM statements carry an annotated copy of it).

    :param model: the mapped class whose rows are written, when an ORM statement names
        one: a subclass stored in the table (single-table or joined inheritance) has its
        rows attributed to it, with its capture level, as on the unit of work.
    """
    table = table._deannotate()  # (a plain Table is its own)
    spec = _table_specs.get(table)
    if spec is None:
        spec = _table_specs[table] = TableSpec(table)
    if model is None or model is spec.mapped_class():
        return spec
    of_class = _class_specs.get((table, model))
    if of_class is None:
        of_class = _class_specs[(table, model)] = spec.of_class(model)
    return of_class


def captured_key(table: str) -> tuple[str, ...] | None:
    """The key columns of the table called ``table`` whose writes dbevents has seen, or None:
    never seen, or tables of that name with other keys were (two MetaData, say)."""
    return _keys_by_name().get(table) or None


def captured_keys(tables: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """The key columns of those of ``tables`` that :func:`captured_key` knows."""
    by_name = _keys_by_name()
    return {table: key for table in tables if (key := by_name.get(table))}


#: (number of table specs indexed, key columns by table name; () when ambiguous)
_key_index: tuple[int, dict[str, tuple[str, ...]]] = (0, {})


def _keys_by_name() -> dict[str, tuple[str, ...]]:
    """The key columns of every table spec made (the tables whose rows change sets hold,
    Core and association tables included), by name; indexed anew when one was added."""
    global _key_index
    indexed, by_name = _key_index
    if indexed == len(_table_specs):
        return by_name
    specs = list(_table_specs.values())
    by_name = {}
    for spec in specs:
        if by_name.setdefault(spec.name, spec.pk) != spec.pk:
            by_name[spec.name] = ()  # ambiguous, and stays so
    _key_index = (len(specs), by_name)
    return by_name


def attribute_key(mapper: sa_orm.Mapper[Any], column: sa.ColumnElement[Any]) -> str | None:
    """The key of the attribute ``mapper`` maps ``column`` to; None if it maps none."""
    try:
        return mapper.get_property_by_column(column).key
    except sa_orm.exc.UnmappedColumnError:
        return None


#: the ON DELETE / ON UPDATE actions by which the database itself changes the rows that refer
#: to a row
DATABASE_ACTIONS = ("CASCADE", "SET NULL", "SET DEFAULT")


def _on_delete(rel: sa_orm.RelationshipProperty[Any], mapper: sa_orm.Mapper[Any]) -> str | None:
    """The ON DELETE action the foreign key of ``rel``'s rows (or of its ``secondary``
    rows) to ``mapper``'s table takes when a row of it is deleted, if it changes them."""
    for column in rel.remote_side:
        for fk in getattr(column, "foreign_keys", ()):
            action = (fk.ondelete or "").upper()
            if action in DATABASE_ACTIONS and fk.column.table in mapper.tables:
                return action
    return None


def _base_first(tables: list[sa.Table]) -> list[sa.Table]:
    # joined inheritance: the base table first, the order rows are inserted in
    return list(sa.schema.sort_tables(tables))
