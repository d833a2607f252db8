"""Where writes are seen: the unit of work, statements, and connections."""
