"""Tests of Django's own suite expected to fail on the engines under test, and why.

Each entry names the tests, the engines it applies to, a regular expression that the error
must match (an expected test that fails in another way is reported as a failure), and the
reason; a listed test that passes fails the run too (remove it), unless the entry is not strict.
Keep it short: anything that fails and is not listed here is a bug until shown otherwise.
Stock Django (``--engine django.db.backends.postgresql``) is the reference: the first group
fails there too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

RELEASE = "backends.release"
RELEASE_QUEUEPOOL = "backends.release.dj_db_conn_pool"
BOTH = (RELEASE, RELEASE_QUEUEPOOL)
ANY = ("*",)


@dataclass(frozen=True)
class Difference:
    tests: tuple[str, ...]
    engines: tuple[str, ...]
    error: str
    reason: str
    # False where the test may pass elsewhere (another server, another Django): passing is then
    # fine; True (the engines' own differences) makes a listed test that passes fail the run.
    strict: bool = True

    def applies_to(self, engine: str) -> bool:
        return self.engines == ANY or engine in self.engines

    def matches(self, message: str) -> bool:
        return re.search(self.error, message) is not None


def _schema(*names: str) -> tuple[str, ...]:
    return tuple(f"schema.tests.SchemaTests.{name}" for name in names)


DIFFERENCES: tuple[Difference, ...] = (
    # -- The server, on every engine (stock Django too) ---------------------------------------
    Difference(
        tests=(
            "migrations.test_operations.OperationTests.test_alter_field_pk_fk_db_collation",
            "migrations.test_operations.OperationTests.test_create_fk_models_to_pk_field_db_collation",
            *_schema(
                "test_add_field_db_collation",
                "test_alter_field_db_collation",
                "test_alter_field_type_and_db_collation",
                "test_alter_field_type_preserve_db_collation",
                "test_alter_primary_key_db_collation",
                "test_ci_cs_db_collation",
                "test_db_collation_arrayfield",
                "test_db_collation_charfield",
                "test_db_collation_textfield",
                "test_func_index_collate",
                "test_func_index_collate_f_ordered",
                "test_func_unique_constraint_collate",
                "test_relation_to_collation_charfield",
                "test_unique_with_collation_charfield",
            ),
        ),
        engines=ANY,
        # The second pattern: the test's cleanup drops the table the first error left uncreated.
        error=r'"sv-x-icu"|ICU is not supported|table "schema_foo" does not exist',
        reason="the embedded PostgreSQL is built without ICU: Django's test collation is missing",
        strict=False,
    ),
    Difference(
        tests=_schema(
            "test_add_indexed_charfield",
            "test_add_unique_charfield",
            "test_alter_field_add_db_index_to_charfield_with_unique",
            "test_alter_field_add_index_to_charfield",
            "test_alter_field_add_index_to_textfield",
            "test_alter_field_add_unique_to_charfield",
            "test_alter_field_add_unique_to_charfield_with_db_index",
            "test_alter_field_remove_unique_and_db_index_from_charfield",
            "test_alter_field_swap_unique_and_db_index_with_charfield",
            "test_indexed_charfield_to_textfield",
        ),
        engines=ANY,
        error=r"_not_null'",
        reason="PostgreSQL 18 lists NOT NULL as named constraints, which Django 5.2's tests do not expect",
        strict=False,
    ),
    # -- Both release engines: the connection is back in the pool after each query ------------
    Difference(
        tests=("backends.tests.ThreadTests.test_default_connection_thread_local",),
        engines=BOTH,
        error=r"AssertionError: 1 != 3",
        reason="counts three threads' connection.connection after their cursors closed: all None",
    ),
    # -- The native engine -------------------------------------------------------------------
    Difference(
        tests=("backends.postgresql.tests.Tests.test_pooling_health_checks",),
        engines=(RELEASE,),
        error=r"unexpectedly None",
        reason="the engine checks what the pool hands out itself, so psycopg_pool's check is off",
    ),
    Difference(
        tests=("backends.postgresql.tests.Tests.test_connect_pool",),
        engines=(RELEASE,),
        error=r"PoolExhausted",
        reason="expects psycopg_pool.PoolTimeout from an exhausted pool; the engine raises its "
        "PoolExhausted, an OperationalError (see backends/pool.py for why it is not also a PoolTimeout)",
    ),
    # -- The dj_db_conn_pool engine ----------------------------------------------------------
    Difference(
        tests=(
            "backends.base.test_base.ConnectionHealthChecksTests.test_health_checks_enabled",
            "backends.base.test_base.ConnectionHealthChecksTests.test_set_autocommit_health_checks_enabled",
        ),
        engines=(RELEASE_QUEUEPOOL,),
        error=r"unexpectedly identical: None|is not None",
        reason="reads connection.connection after its cursor closed (skipped on the native pool)",
    ),
    Difference(
        tests=(
            "backends.postgresql.tests.Tests.test_connect_pool",
            "backends.postgresql.tests.Tests.test_pooling_health_checks",
            "backends.postgresql.tests.Tests.test_pooling_not_support_persistent_connections",
            "backends.postgresql.tests.Tests.test_pool_check_can_be_overridden",
        ),
        engines=(RELEASE_QUEUEPOOL,),
        error=r"remove OPTIONS\['pool'\]|unexpectedly None|ImproperlyConfigured not raised|None is not <fun",
        reason="tests of Django's native pool (OPTIONS['pool']), which a QueuePool engine refuses",
    ),
    Difference(
        tests=(
            "backends.postgresql.tests.Tests.test_connect_isolation_level",
            "backends.postgresql.tests.Tests.test_connect_server_side_binding",
            "backends.base.test_base.DatabaseWrapperTests.test_repr",
            "queries.test_sqlcompiler.SQLCompilerTest.test_repr",
            "backends.base.test_base.DatabaseWrapperTests.test_release_memory_without_garbage_collection",
            "transactions.tests.AtomicErrorsTests."
            "test_atomic_prevents_queries_in_broken_transaction_after_client_close",
        ),
        engines=(RELEASE_QUEUEPOOL,),
        error=(
            r"IsolationLevel|ImproperlyConfigured not raised|ServerBindingCursor"
            r"|postgresql connection to default|gc\.garbage|QueuePool object|dbapi_connection is not None"
        ),
        reason="stock django-db-connection-pool fails it too (its own wrapper, repr and cursors)",
    ),
    Difference(
        tests=("backends.postgresql.tests.Tests.test_connect_custom_cursor_factory",),
        engines=(RELEASE_QUEUEPOOL,),
        error=r"cursor_factory|<class 'django\.db\.backends\.postgresql\.base\.Cursor'> !=",
        reason="stock django-db-connection-pool fails it too once a pooled connection exists: it keeps "
        "the cursor factory it was made with",
        strict=False,  # passes when the pool is still empty, so it depends on the order of the tests
    ),
)


def expected_for(engine: str) -> dict[str, Difference]:
    return {test: d for d in DIFFERENCES if d.applies_to(engine) for test in d.tests}
