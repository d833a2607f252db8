"""Database events you can trust for SQLAlchemy."""
