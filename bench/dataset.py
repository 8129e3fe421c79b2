"""The measured table: 16 deterministic columns of mixed types, about 230 bytes a row."""

from __future__ import annotations

TABLE = "bench_rows"

DDL = f"""
CREATE TABLE {TABLE} (
    id          bigint PRIMARY KEY,
    qty         integer NOT NULL,
    score       smallint,
    counter     bigint NOT NULL,
    price       numeric(12,2) NOT NULL,
    rate        numeric(8,5),
    sku         text NOT NULL,
    tag         varchar(16) NOT NULL,
    title       text NOT NULL,
    description text,
    active      boolean NOT NULL,
    born        date,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz,
    ref         uuid NOT NULL,
    attrs       jsonb NOT NULL
)
"""

COLUMNS = 16

# Every value is a function of g alone, so two runs with the same --rows fill
# the same table. Some columns are NULL on a fixed share of rows, so `merge`
# (COALESCE of incoming non-null values) has something to keep.
_FILL = f"""
INSERT INTO {TABLE}
SELECT
    g,
    (g * 7919) % 100000,
    CASE WHEN g % 13 = 0 THEN NULL ELSE (g % 32000)::smallint END,
    g * 1000003,
    ((g * 37) % 10000000) / 100.0,
    CASE WHEN g % 11 = 0 THEN NULL ELSE ((g % 99991) / 99991.0)::numeric(8,5) END,
    'SKU-' || lpad(g::text, 10, '0'),
    (ARRAY['red', 'green', 'blue', 'amber', 'violet'])[g % 5 + 1],
    'Item ' || g || ' ' || left(md5(g::text), (8 + g % 17)::int),
    CASE WHEN g % 10 = 0 THEN NULL
         ELSE left(repeat(md5((g * 3)::text), 3), (20 + (g * 7) % 60)::int) END,
    g % 2 = 0,
    CASE WHEN g % 17 = 0 THEN NULL ELSE date '1950-01-01' + (g % 25000)::int END,
    timestamptz '2015-01-01 00:00:00+00' + g * interval '37 seconds',
    CASE WHEN g % 4 = 0 THEN NULL
         ELSE timestamptz '2015-01-01 00:00:00+00' + g * interval '37 seconds'
              + (g % 86400) * interval '1 second' END,
    md5('ref' || g)::uuid,
    jsonb_build_object('v', g % 1000, 'tags', jsonb_build_array('t' || (g % 7), 't' || (g % 11)),
                       'ok', g % 3 = 0)
FROM generate_series({{start}}::bigint, {{stop}}::bigint) AS g
"""


def fill_sql(start: int, stop: int) -> str:
    """The INSERT that adds rows start..stop (inclusive); no parameters to escape."""
    return _FILL.format(start=int(start), stop=int(stop))


# Order-independent digest of the whole table's contents (same column types
# on both sides, so the text forms compare). Cheap enough to run after every
# measured copy, outside its timing.
DIGEST = f"SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)::numeric), 0)::text FROM {TABLE} t"

SIZE = f"""
SELECT pg_relation_size('{TABLE}'), pg_total_relation_size('{TABLE}'),
       (SELECT avg(pg_column_size(t.*))::float FROM (SELECT * FROM {TABLE} LIMIT 100000) t)
"""
