"""Schema revisions of the results database (Alembic), shipped inside the package.

``controller.results.database`` configures Alembic in code (no ``alembic.ini``): the script location
is this folder, and ``env.py`` runs every revision on the connection ``database`` hands it, in one
transaction (on SQLite under ``BEGIN IMMEDIATE`` with foreign keys off, see ``database.upgrade_db``).

``versions/0001_baseline.py`` is the schema the release at commit bf4204a created. A schema change
is a new file ``versions/000N_<what>.py`` with ``revision = "000N"`` and ``down_revision`` the
previous one, plus the same change to the models in ``store.py``; ``test_migrations`` fails until
the two agree. SQLite cannot ALTER a column (relax NOT NULL, change a type, drop a constraint), so
write such changes in batch mode, which copies the table on SQLite and is a plain ALTER elsewhere::

    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("label", existing_type=sa.String(64), nullable=True)

Adding a column needs no batch mode: it must be nullable or have a ``server_default``, so that
the rows already there (months of nightly results) stay valid.
"""
