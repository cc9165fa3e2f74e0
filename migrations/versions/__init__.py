"""Alembic revisions. File names are numbered in apply order; the revision ids inside are the
ones deployed databases already store (alembic_version), so for older files the two differ
(0002_cancellation.py is revision "0010"). A new migration takes the next file number and the
next revision id above the highest in use; tests/unit/test_migration_files.py checks both.
"""
