#!/bin/sh
# The variables of edoburu/pgbouncer that docker-compose.yml sets, written to pgbouncer.ini.
set -e
rest=${DATABASE_URL#*://}; userpass=${rest%%@*}; hostpart=${rest#*@}
user=${userpass%%:*}; password=${userpass#*:}
hostport=${hostpart%%/*}; name=${hostpart#*/}
host=${hostport%%:*}; port=${hostport#*:}
echo "\"$user\" \"$password\"" > /tmp/userlist.txt
cat > /tmp/pgbouncer.ini <<INI
[databases]
$name = host=$host port=$port
[pgbouncer]
listen_addr = 0.0.0.0
listen_port = 5432
unix_socket_dir =
auth_type = ${AUTH_TYPE:-md5}
auth_file = /tmp/userlist.txt
pool_mode = ${POOL_MODE:-session}
max_client_conn = ${MAX_CLIENT_CONN:-100}
default_pool_size = ${DEFAULT_POOL_SIZE:-20}
${MAX_DB_CONNECTIONS:+max_db_connections = $MAX_DB_CONNECTIONS}
ignore_startup_parameters = extra_float_digits
admin_users = $user
INI
exec "$@"
