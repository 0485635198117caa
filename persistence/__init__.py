"""triobus.persistence: the PostgreSQL store (schema, migrations, SQL, records, driver).

Nothing here imports `triobus.actors`: the actors call the store, never the reverse.
"""
