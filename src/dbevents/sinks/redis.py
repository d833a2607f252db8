"""Redis Streams: each change set (or each change) appended to a stream with ``XADD``.

Every entry carries the change set's ``id``, so consumers (consumer groups
scale them out) drop the duplicates that at-least-once delivery through the
relay can bring.  Entries hold the change set as JSON under ``changeset``;
with ``per_change=True`` there is one entry per change, whose ``changeset``
holds that change alone (and its table's key columns, where the change set
tells them), with ``index`` and ``count`` telling its place: duplicates are
then the entries with the same ``id`` and ``index``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, final

from ..changes import ChangeSet

try:
    import redis
    from redis.commands.core import Script
except ImportError as error:  # pragma: no cover - exercised in a subprocess
    raise ImportError(
        "dbevents.sinks.redis needs the redis package: pip install 'dbevents[redis]'"
    ) from error

__all__ = ["RedisStreamSink"]

Fields = dict[str | bytes, str | bytes]

# A batch in one command: ARGV[1] is the MAXLEN ('' for none), then each entry as its
# number of fields and its field/value pairs.  One command instead of one per entry
# spares the client most of its per-command work (packing, parsing each reply).
_APPEND_ALL = """
local head = {KEYS[1]}
if ARGV[1] ~= '' then head = {KEYS[1], 'MAXLEN', '~', ARGV[1]} end
local i, count = 2, 0
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  local args = {unpack(head)}
  args[#args + 1] = '*'
  for j = i + 1, i + 2 * n do args[#args + 1] = ARGV[j] end
  redis.call('XADD', unpack(args))
  i = i + 1 + 2 * n
  count = count + 1
end
return count
"""


@final
class RedisStreamSink:
    """Append committed change sets to the Redis stream ``stream``.

    Use it directly as a sink, or behind :func:`dbevents.relay` (which hands it
    whole batches: one round trip per batch).

    :param url_or_client: a ``redis://`` URL, or a ``redis.Redis`` client to use
        (then left open by :meth:`close`).
    :param stream: the stream's key.
    :param maxlen: trim the stream to about this many entries (``XADD MAXLEN ~``).
    :param per_change: one entry per change instead of one per change set.
    """

    __slots__ = ("_append_all", "_owned", "client", "maxlen", "per_change", "stream")

    def __init__(
        self,
        url_or_client: str | redis.Redis[Any],
        stream: str,
        maxlen: int | None = None,
        per_change: bool = False,
    ) -> None:
        if not stream:
            raise ValueError("RedisStreamSink: stream must be a non-empty key")
        if maxlen is not None and maxlen < 1:
            raise ValueError("RedisStreamSink: maxlen must be at least 1, or None")
        self._owned = isinstance(url_or_client, str)
        #: the client entries are written with
        self.client: redis.Redis[Any] = (
            redis.Redis.from_url(url_or_client) if isinstance(url_or_client, str) else url_or_client
        )
        self.stream = stream
        self.maxlen = maxlen
        self.per_change = per_change
        # None once the server refuses scripts (ACLs, renamed commands): batches are
        # pipelined instead
        self._append_all: Script | None = self.client.register_script(_APPEND_ALL)

    def publish(self, changeset: ChangeSet) -> None:
        """Append ``changeset``: one ``XADD``, or a pipeline of them with ``per_change``."""
        if self.per_change:
            self.publish_many([changeset])
            return
        (fields,) = self._entries(changeset)
        self.client.xadd(self.stream, fields, maxlen=self.maxlen, approximate=True)

    def publish_many(self, changesets: Sequence[ChangeSet]) -> None:
        """Append several change sets in order, in one round trip.

        One script call appends them all; where the server does not run scripts,
        one pipeline of ``XADD`` commands does.
        """
        entries = [fields for changeset in changesets for fields in self._entries(changeset)]
        if self._append_all is not None:
            arguments: list[Any] = ["" if self.maxlen is None else self.maxlen]
            for fields in entries:
                arguments.append(len(fields))
                for pair in fields.items():
                    arguments.extend(pair)
            try:
                self._append_all(keys=[self.stream], args=arguments)
                return
            except redis.exceptions.ResponseError as error:
                if not _refused(error):
                    raise
                self._append_all = None
        pipeline = self.client.pipeline(transaction=False)
        for fields in entries:
            pipeline.xadd(self.stream, fields, maxlen=self.maxlen, approximate=True)
        pipeline.execute()

    def close(self) -> None:
        """Close the client if this sink made it from a URL."""
        if self._owned:
            self.client.close()

    def _entries(self, changeset: ChangeSet) -> Iterable[Fields]:
        if not self.per_change:
            yield {"id": changeset.id, "changeset": changeset.to_json()}
            return
        changes = changeset.changes  # (decodes a change set passed on, and its key columns)
        count = str(len(changes))
        # the key columns its JSON told (a relay's change sets), each entry its table's; one
        # made in this process knows them itself, as the entry's change set does
        told = changeset._keys
        keys: dict[str, Mapping[str, tuple[str, ...]]] = {}
        for index, change in enumerate(changes):
            single = ChangeSet(changeset.id, changeset.committed_at, changeset.actor, (change,))
            if told is not None:
                table = change.table
                key = keys.get(table)
                if key is None:
                    key = keys[table] = {table: told[table]} if table in told else {}
                object.__setattr__(single, "_keys", key)
            yield {
                "id": changeset.id,
                "index": str(index),
                "count": count,
                "table": change.table,
                "op": change.op.value,
                "changeset": single.to_json(),
            }

    def __repr__(self) -> str:
        return f"RedisStreamSink(stream={self.stream!r})"


def _refused(error: redis.exceptions.ResponseError) -> bool:
    """Whether the server refuses to run scripts at all (rather than the script failing)."""
    if isinstance(error, redis.exceptions.NoPermissionError):
        return True
    return "unknown command" in str(error).lower()
