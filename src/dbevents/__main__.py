"""``python -m dbevents``: the ``dbevents`` command."""

from .cli import main

main()
