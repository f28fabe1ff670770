"""The release engines (ENGINE "backends.release", "backends.release.dj_db_conn_pool").

``hold_connection()`` keeps one connection for a block, for session work on purpose.
"""

from backends.session import hold_connection

__all__ = ["hold_connection"]
