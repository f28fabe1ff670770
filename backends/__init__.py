"""PostgreSQL engines that measure, and optionally shorten, how long connections are held.

ENGINE                                  pool                  gives the connection back
backends.release                        Django's (psycopg)    when the cursor closes / the transaction ends
backends.release.dj_db_conn_pool        SQLAlchemy QueuePool  same
backends.baseline                       Django's (psycopg)    at the end of the request (stock Django)
backends.baseline.dj_db_conn_pool       SQLAlchemy QueuePool  same

Add "backends" to INSTALLED_APPS for the system checks.
"""
