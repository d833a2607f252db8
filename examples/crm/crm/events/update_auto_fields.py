"""Give every new record a unique 5-character id, and stamp its authors and times.

On every write path (the unit of work and bulk statements); values set by the
caller are kept, and nothing is stamped while events are muted (``flask loaddata``).
"""

from crm.db import events
from crm.models import RECORD_MODELS
from dbevents.fields import stamp_insert, stamp_update

for model in RECORD_MODELS:
    events.listens_for(model, "before_insert")(stamp_insert)
    events.listens_for(model, "before_update")(stamp_update)
