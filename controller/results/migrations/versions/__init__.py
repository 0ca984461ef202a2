"""The revisions, one file each, in the order their ``down_revision`` chain gives (Alembic skips this file)."""
