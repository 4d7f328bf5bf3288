"""The source of truth on SQLAlchemy: tables, the personality store and the transactional
outbox with its sweeper. The only package that imports SQLAlchemy."""
