"""Change set ids: unique, and sortable by the time they were made (the ULID layout)."""

from __future__ import annotations

import os
import threading
import time

__all__ = ["new_id"]

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_id_lock = threading.Lock()
_last_id = [0, 0]


def new_id() -> str:
    """Return a 26-character id that sorts by creation time (ULID layout).

    Ids made in one process are strictly increasing, even within a millisecond.
    """
    with _id_lock:
        millis = time.time_ns() // 1_000_000
        if millis <= _last_id[0]:
            millis, randomness = _last_id[0], _last_id[1] + 1
        else:
            randomness = int.from_bytes(os.urandom(10), "big") >> 1
        _last_id[0], _last_id[1] = millis, randomness
    value = (millis << 80) | (randomness & ((1 << 80) - 1))
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))
