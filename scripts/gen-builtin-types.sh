#!/usr/bin/env bash
# Regenerates src/pg/builtin_types.rs from a running Postgres: PGHOST, PGPORT and PGUSER as for psql.
set -euo pipefail
out="$(dirname "$0")/../src/pg/builtin_types.rs"
{
  sed -n '1,/^pub(super) const BUILTIN_TYPES/p' "$out"
  psql -X -At -F ' ' -c "select oid, typname, case when typcategory = 'A' and typelem <> 0 then typelem else 0 end
                         from pg_type where oid < 16384 order by oid" |
    awk '{printf "    (%s, \"%s\", %s),\n", $1, $2, $3}'
  echo "];"
} > "$out.tmp"
mv "$out.tmp" "$out"
