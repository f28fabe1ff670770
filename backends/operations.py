"""The release engines' DatabaseOperations: Django's, with ORM reads run by ``backends.compiler``."""

from django.db.backends.postgresql.operations import DatabaseOperations as PostgreSQLOperations


class RetryReadsOperations(PostgreSQLOperations):
    compiler_module = "backends.compiler"
