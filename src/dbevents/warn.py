"""Warnings that point at the user's line, not at dbevents or SQLAlchemy.

A warning is raised deep inside a flush or an execute, several frames of dbevents and
SQLAlchemy below the line that caused it; a fixed ``stacklevel`` can't reach that line.
``skip_file_prefixes`` would, but only from Python 3.12, so the frames are counted here.
"""

from __future__ import annotations

import sys
import warnings
from types import FrameType
from typing import Final

from .exceptions import DbEventsWarning

__all__ = ["warn"]

#: packages whose frames a warning skips; by module name, not file name, because
#: SQLAlchemy runs functions it generates (its "_go() wrapper"s) from no file of its own
_INTERNAL: Final = frozenset({"dbevents", "sqlalchemy"})


def warn(message: str, category: type[Warning] = DbEventsWarning) -> None:
    """Warn at the first frame that is neither dbevents' nor SQLAlchemy's."""
    frame: FrameType | None = sys._getframe(1)
    level = 2  # the caller's frame, as ``stacklevel`` counts from here
    while frame is not None:
        if not _internal(frame):
            warnings.warn(message, category, stacklevel=level)
            return
        frame, level = frame.f_back, level + 1
    frame = _awaiting_frame()
    if frame is None:
        warnings.warn(message, category, stacklevel=2)
        return
    # under AsyncSession the line that awaited is in another greenlet, where no
    # stacklevel reaches: say where it is, as warnings.warn() would
    module_globals = frame.f_globals
    warnings.warn_explicit(
        message,
        category,
        frame.f_code.co_filename,
        frame.f_lineno,
        module=module_globals.get("__name__", "<string>"),
        registry=module_globals.setdefault("__warningregistry__", {}),
        module_globals=module_globals,
    )


def _internal(frame: FrameType) -> bool:
    module = frame.f_globals.get("__name__") or ""
    return module.partition(".")[0] in _INTERNAL


def _awaiting_frame() -> FrameType | None:
    """The first outside frame of the greenlets that wait for this one (AsyncSession)."""
    greenlet = sys.modules.get("greenlet")  # only imported when in use
    current = greenlet.getcurrent().parent if greenlet is not None else None
    while current is not None:
        frame: FrameType | None = current.gr_frame
        while frame is not None:
            if not _internal(frame):
                return frame
            frame = frame.f_back
        current = current.parent
    return None
