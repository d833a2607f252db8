"""The cache backend: the latest state of every row and the recent change sets, in memory.

The JSON mirror in ``DATA_DIR`` is kept by :class:`dbevents.flask.DBEvents` itself.
"""

from crm.db import events
from dbevents import MemorySink

cache = MemorySink(history=1000)
events.add_sink(cache)
