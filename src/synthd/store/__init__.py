"""Persistence: SQLAlchemy models, database sessions, and files on disk."""
