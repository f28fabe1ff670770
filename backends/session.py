"""Session-level SQL: what makes a release engine keep a connection, and the reset before reuse.

Most SQL leaves nothing behind on the server session once it has run. Some
does: a plain ``SET``, a session advisory lock, a temporary table, ``LISTEN``.
Given back after each query, a connection would take that state to whoever
borrows it next, while the code that set it might run its next query on another
connection. So the release engines read the text of every statement they run
(never its parameters) and, when it is one of these, keep the connection with
the wrapper until ``close()``, as stock Django would, and reset it
(``DISCARD ALL``) before the pool has it back.

Detected, from the statement text alone (any case, after leading comments):

* ``SET`` and ``RESET`` of any setting, ``SET ROLE``, ``SET SESSION
  AUTHORIZATION``, ``SET TIME ZONE``; not ``SET LOCAL``, ``SET CONSTRAINTS``,
  ``SET TRANSACTION``, which end with the transaction;
* a call of ``set_config(...)`` whose third argument is not the literal ``true``;
* a call of ``pg_advisory_lock``, ``pg_advisory_lock_shared``,
  ``pg_try_advisory_lock``, ``pg_try_advisory_lock_shared`` (not the ``_xact_`` ones);
* ``CREATE TEMP``/``TEMPORARY`` objects, and objects created in ``pg_temp``;
* ``LISTEN``, ``PREPARE`` (not ``PREPARE TRANSACTION``), ``DECLARE ... WITH HOLD``, ``LOAD``;
* each statement of a string holding several, separated by ``;``.

Not detected (these still reach the next borrower; use ``hold_connection()``):

* a function, procedure or ``DO`` block that sets state inside (``EXECUTE 'SET ...'``);
* ``SELECT ... INTO TEMP``; ``dblink_connect``; statements sent through the
  driver connection (``connection.connection.execute(...)``), bypassing Django's cursor.

A string literal that merely names ``set_config`` or a lock function pins too:
telling it apart would mean parsing SQL on every query. The ORM's statements
carry their values as parameters, so its queries only ever pin when they call
such a function on purpose (``Func(function="pg_advisory_lock")``).

The common statements are decided from their first six characters and a few
substring searches, a fraction of a microsecond: ``make instructions`` shows the
cost on the ORM path.
"""

from __future__ import annotations

import functools
import re
from contextlib import ContextDecorator

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.db import DEFAULT_DB_ALIAS, connections
from psycopg.pq import TransactionStatus

# Reasons, the `reason` label of db_connections_pinned_total.
SET = "set"
ADVISORY_LOCK = "advisory_lock"
TEMP = "temp"
LISTEN = "listen"
PREPARE = "prepare"
CURSOR_WITH_HOLD = "cursor_with_hold"
LOAD = "load"
HOLD_CONNECTION = "hold_connection"

# What brings a session back to the state of a new connection: closes cursors,
# RESET ALL, SET SESSION AUTHORIZATION DEFAULT, DEALLOCATE ALL, UNLISTEN *,
# pg_advisory_unlock_all(), DISCARD PLANS, TEMP and SEQUENCES. psycopg notices
# it and forgets the statements it had prepared.
RESET_SQL = "DISCARD ALL"

# How statements that never leave session state by their keyword begin, as the
# ORM writes them: only the functions they call can.
_PLAIN_STARTS = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "SAVEPO", "RELEAS", "ROLLBA"})

_LEADING = re.compile(r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/|\()*", re.S)
_WORDS = re.compile(r"[A-Za-z_]+")
_CREATE_TEMP = re.compile(r"CREATE\s+(?:OR\s+REPLACE\s+)?(?:(?:GLOBAL|LOCAL)\s+)?TEMP(?:ORARY)?\b", re.I)
_WITH_HOLD = re.compile(r"\bWITH\s+HOLD\b", re.I)
_SET_CONFIG_CALL = re.compile(r"\bset_config\s*\(", re.I)
_LOCAL_FLAGS = frozenset({"true", "'true'", "'t'", "'on'", "'yes'", "'1'", "true::boolean", "true::bool"})

# Keywords of statements that end with the transaction or only take state away.
_SET_IN_TRANSACTION = frozenset({"LOCAL", "CONSTRAINTS", "TRANSACTION"})


def session_state(sql) -> str | None:
    """Why running `sql` leaves state on the session that outlives it (a reason above), or None."""
    if type(sql) is not str:
        sql = _text(sql)
    if sql[:6] in _PLAIN_STARTS and ";" not in sql:
        # The ORM's own statements end here, after four substring searches.
        return _function_reason(sql)
    for statement in sql.split(";"):
        reason = _statement_reason(statement)
        if reason is not None:
            return reason
    return None


def _text(sql) -> str:
    if isinstance(sql, bytes):
        return sql.decode("utf-8", "replace")
    as_string = getattr(sql, "as_string", None)  # psycopg.sql.Composable
    if as_string is not None:
        try:
            return as_string(None)
        except Exception:  # noqa: BLE001 - a part that needs a connection to quote: keep what str() says
            pass
    return str(sql)


def _function_reason(sql: str) -> str | None:
    if "advisory_lock" in sql or "ADVISORY_LOCK" in sql:
        return ADVISORY_LOCK
    if ("set_config" in sql or "SET_CONFIG" in sql) and _sets_config_for_the_session(sql):
        return SET
    # Function names in mixed case (Pg_Advisory_Lock) go unnoticed: rare, and
    # looking for them costs a lower-cased copy of every query.
    return None


def _statement_reason(statement: str) -> str | None:
    text = statement[_LEADING.match(statement).end() :]
    words = _WORDS.findall(text[:64])
    if not words:
        return None
    keyword = words[0].upper()
    second = words[1].upper() if len(words) > 1 else ""
    if keyword == "SET":
        return None if second in _SET_IN_TRANSACTION else SET
    if keyword == "RESET":
        return SET
    if keyword == "LISTEN":
        return LISTEN
    if keyword == "PREPARE":
        return None if second == "TRANSACTION" else PREPARE
    if keyword == "DECLARE":
        return CURSOR_WITH_HOLD if _WITH_HOLD.search(text) else None
    if keyword == "LOAD":
        return LOAD
    if keyword == "CREATE":
        return TEMP if _CREATE_TEMP.match(text) or "pg_temp." in text.lower() else None
    return _function_reason(text)


def _sets_config_for_the_session(sql: str) -> bool:
    """Whether a set_config() call in `sql` has a third argument other than a literal true."""
    for call in _SET_CONFIG_CALL.finditer(sql):
        arguments = _arguments(sql, call.end())
        if len(arguments) != 3 or arguments[2].strip().lower() not in _LOCAL_FLAGS:
            return True  # false, a parameter, an expression: may be for the session
    return False


def _arguments(sql: str, start: int) -> list[str]:
    """The top-level arguments of the call whose "(" ends just before `start`."""
    arguments, depth, quote, begin = [], 0, None, start
    for index in range(start, len(sql)):
        char = sql[index]
        if quote:
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char == "(":
            depth += 1
        elif char == ")":
            if depth == 0:
                arguments.append(sql[begin:index])
                return arguments
            depth -= 1
        elif char == "," and depth == 0:
            arguments.append(sql[begin:index])
            begin = index + 1
    return arguments  # unbalanced: the caller treats it as for the session


def reset(driver_connection) -> None:
    """Bring a psycopg connection back to the session state of a new one (``DISCARD ALL``).

    Raises what the driver raises: the caller then throws the connection away.
    """
    if driver_connection.pgconn.transaction_status != TransactionStatus.IDLE:
        driver_connection.rollback()  # DISCARD ALL cannot run inside a transaction
    if not driver_connection.autocommit:
        driver_connection.autocommit = True
    driver_connection.execute(RESET_SQL)


class SessionStateCursorMixin:
    """A cursor of a release engine: tells the wrapper when a statement leaves session state."""

    def execute(self, sql, params=None):
        reason = session_state(sql)
        if reason is not None:
            # Before running it: if it fails half-way, keeping the connection is still right.
            self.db.keep_for_session_state(reason)
        return super().execute(sql, params)

    def executemany(self, sql, param_list):
        reason = session_state(sql)
        if reason is not None:
            self.db.keep_for_session_state(reason)
        return super().executemany(sql, param_list)


class hold_connection(ContextDecorator):  # noqa: N801 - used like a function, as transaction.atomic
    """Keep one connection for a block, without a transaction, for session work on purpose.

        from backends.release import hold_connection

        with hold_connection():
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_lock(%s)", [job_id])
                ...  # every query here runs on the same server session
                cursor.execute("SELECT pg_advisory_unlock(%s)", [job_id])

    On a release engine the connection is borrowed on entering and stays until
    the outermost block ends; then, if session-level SQL ran inside, it is reset
    (``DISCARD ALL``) and given back, as after any query. Blocks nest, take
    ``using=`` for another database, and work as a decorator, of a plain
    function or an ``async def`` one. On any other engine the connection is
    kept until the request ends anyway, and the block changes nothing.

    In async code, ``async with`` keeps the connection across awaits::

        async with hold_connection():
            await sync_to_async(set_statement_timeout)("2s")  # a plain SET
            product = await Product.objects.aget(pk=pk)
            await shipping.estimate(product)  # the session waits, kept
            reviews = await product.reviews.acount()  # same session, timeout still set

    The async ORM runs its queries on the request's thread (a thread-sensitive
    sync_to_async), on that thread's connection; entering and leaving the
    block run there too, so the hold applies to the connection those queries
    use.
    """

    def __init__(self, using: str | None = None) -> None:
        self.using = DEFAULT_DB_ALIAS if using is None else using

    def __enter__(self):
        wrapper = connections[self.using]
        if hasattr(wrapper, "hold"):
            wrapper.hold()
        return wrapper

    def __exit__(self, *exc_info) -> None:
        wrapper = connections[self.using]
        if hasattr(wrapper, "hold"):
            wrapper.unhold()

    async def __aenter__(self):
        return await sync_to_async(self.__enter__, thread_sensitive=True)()

    async def __aexit__(self, *exc_info) -> None:
        await sync_to_async(self.__exit__, thread_sensitive=True)(*exc_info)

    def __call__(self, func):
        # ContextDecorator would enter and leave around the call that makes the
        # coroutine, before any of its body ran: hold across the awaits instead.
        if iscoroutinefunction(func):

            @functools.wraps(func)
            async def held(*args, **kwargs):
                async with self._recreate_cm():
                    return await func(*args, **kwargs)

            return markcoroutinefunction(held)
        return super().__call__(func)
