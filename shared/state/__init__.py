"""The service's own tables (models) and their Alembic migrations."""
