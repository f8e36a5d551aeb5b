"""All SQL, over asyncpg: one module per context's tables (DESIGN.md, db/).

``pool`` is the only module that knows the pool (create it, open a connection or a transaction,
rerun a unit of work on a race); every other module takes a connection, so a service composes
one transaction across them.  ``store`` writes what ingest indexes, ``retrieve`` reads it for
WADO-RS, ``search`` generates and runs QIDO-RS queries, ``delete`` removes resources,
``statistics`` keeps the planner's statistics fresh, ``access`` holds tenants, clients and the
audit trail, and ``embedded`` starts a private PostgreSQL for development and tests.
Nothing is re-exported here: import the module you need.
"""
