"""Every private SQLAlchemy detail dbevents relies on, in one place.

SQLAlchemy 2.0 and 2.1 differ in some of these; ``tests/test_compat.py``
checks each one on the installed version, so an upgrade that breaks one fails
there first, with a clear name.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, TypeVar

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm

__all__ = [
    "NO_VALUE",
    "all_mappers",
    "await_in_greenlet",
    "committed_state",
    "in_greenlet",
    "sa_version",
]

T = TypeVar("T")

#: "no value loaded", as found in InstanceState.committed_state
NO_VALUE: Any = sa_orm.LoaderCallableStatus.NO_VALUE

sa_version: tuple[int, int] = tuple(int(p) for p in sa.__version__.split(".")[:2])  # type: ignore[assignment]


def committed_state(state: sa_orm.InstanceState[Any]) -> dict[str, Any]:
    """The values attributes had before they were modified since the last flush or load.

    Private: ``InstanceState.committed_state``.  Writing an old value into it is
    what ``active_history=True`` would have done on the attribute.
    """
    return state.committed_state


def in_greenlet() -> bool:
    """Whether we run inside SQLAlchemy's asyncio greenlet bridge (AsyncSession)."""
    try:
        from sqlalchemy.util.concurrency import in_greenlet as check
    except ImportError:  # pragma: no cover - greenlet not installed
        return False
    return bool(check())


def await_in_greenlet(awaitable: Awaitable[T]) -> T:
    """Await from synchronous code running under AsyncSession (2.0: await_only, 2.1: await_)."""
    import sqlalchemy.util as sa_util

    waiter = getattr(sa_util, "await_", None) or sa_util.await_only
    return waiter(awaitable)  # type: ignore[no-any-return]


def all_mappers() -> list[sa_orm.Mapper[Any]]:
    """Every mapper of every live registry (private: ``mapperlib._all_registries``)."""
    from sqlalchemy.orm import mapperlib

    return [mapper for reg in mapperlib._all_registries() for mapper in reg.mappers]
