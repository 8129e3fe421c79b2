"""Tables for tests: every common PostgreSQL type with its edge values (round trips),
and the small tables the data endpoint tests serve."""

from __future__ import annotations

ALL_BYTES = bytes(range(256))
UID = "0f8e7d6c-5b4a-4938-a716-554433221100"

EVERYTHING = f"""
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE everything (
    id integer PRIMARY KEY,
    c_small smallint, c_int integer, c_big bigint,
    c_num numeric, c_num_scaled numeric(12,2),
    c_real real, c_double double precision,
    c_text text NOT NULL DEFAULT '', c_varchar varchar(40), c_char char(5),
    c_bool boolean DEFAULT true,
    c_date date, c_time time, c_timetz timetz, c_ts timestamp, c_tstz timestamptz DEFAULT now(),
    c_interval interval, c_uuid uuid, c_bytea bytea, c_json json, c_jsonb jsonb,
    c_int_arr integer[], c_text_arr text[], c_mood mood
);
INSERT INTO everything VALUES
 (1, 32767, 2147483647, -9223372036854775808,
  12345678901234567890.123456789, 1234567890.12,
  'NaN', 'Infinity',
  'héllo wörld ✓ 🎉 日本', 'abc', 'ab', true,
  '2024-02-29', '23:59:59.999999', '12:34:56+05:30', '2024-01-02 03:04:05.123456',
  '2024-01-02 03:04:05+02', '1 year 2 months 3 days 04:05:06.5', '{UID}',
  decode('{ALL_BYTES.hex()}', 'hex'), '{{"b": 1, "a": [1, 2.5, "x"]}}',
  '{{"a": {{"b": [1, {{"c": null}}]}}, "z": "ü"}}', '{{}}', '{{{{a,b}},{{c,NULL}}}}', 'happy'),
 (2, -32768, -2147483648, 9223372036854775807,
  0.000000000000000001, -0.50,
  '-Infinity', '-0',
  '', '', 'abcde', false,
  '0001-01-01', '00:00:00', '00:00:00-03', '1999-12-31 23:59:59',
  '2024-06-30 23:00:00-07:30', '-1 year -2 months +3 days -04:05:06.5', '{UID.upper()}',
  '', '"just a string"', '[]', '{{1,NULL,3}}',
  '{{"with \\"quote\\"","back\\\\slash","",NULL,"a,b"}}', 'sad'),
 (3, 0, 0, 0, 'NaN', 0, 3.25, 1e308, 'x', NULL, NULL, NULL,
  '2024-03-10', '12:00:00', '12:00:00+00', '2024-03-10 12:00:00',
  '2024-03-10 12:00:00+00', '0', NULL, NULL, 'null', '{{"k": 1.5e-7}}', '{{{{1,2}},{{3,4}}}}',
  '{{}}', 'ok'),
 (4, NULL, NULL, NULL, NULL, NULL, 'NaN', 'NaN', '', NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (5, NULL, NULL, NULL, NULL, NULL, NULL, NULL, '', NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
UPDATE everything SET c_bool = NULL, c_tstz = NULL WHERE id >= 4;
UPDATE everything SET c_real = NULL, c_double = NULL WHERE id = 5;
"""

# The data endpoint tests' tables, created by name (tests/integration/data_endpoints).
DATA_ENDPOINT_TABLES: dict[str, str] = {
    "dt_items": """
        CREATE TABLE dt_items (id integer PRIMARY KEY, label text NOT NULL);
        INSERT INTO dt_items SELECT g, 'item ' || g FROM generate_series(1, 10) g;
    """,
    "dt_secret": """
        CREATE TABLE dt_secret (id integer PRIMARY KEY, code text);
        INSERT INTO dt_secret VALUES (1, 'x'), (2, 'y');
    """,
    "dt_parents": """
        CREATE TABLE dt_parents (id integer PRIMARY KEY, name text NOT NULL);
        INSERT INTO dt_parents VALUES (1, 'one'), (2, 'two'), (3, 'three');
    """,
    "dt_children": """
        CREATE TABLE dt_children (
            parent_id integer NOT NULL REFERENCES dt_parents (id),
            seq integer NOT NULL,
            code varchar(40) NOT NULL,
            price numeric(10, 2),
            qty integer NOT NULL DEFAULT 0,
            PRIMARY KEY (parent_id, seq),
            UNIQUE (code)
        );
        INSERT INTO dt_children (parent_id, seq, code, price)
        SELECT p, s, 'c-' || p || '-' || s, p * 10 + s + 0.25
        FROM generate_series(1, 3) p, generate_series(1, 7) s;
    """,
    "dt_rows": """
        CREATE TABLE dt_rows (id integer PRIMARY KEY, label text NOT NULL);
        INSERT INTO dt_rows SELECT g, 'row ' || g FROM generate_series(1, 150) g;
    """,
    "dt_big": """
        CREATE TABLE dt_big (id integer PRIMARY KEY, v text NOT NULL);
        -- inserted in reverse so that storage order is not key order
        INSERT INTO dt_big SELECT g, 'v' || g FROM generate_series(2345, 1, -1) g;
    """,
    "dt_nopk": """
        CREATE TABLE dt_nopk (a integer, b text);
        INSERT INTO dt_nopk VALUES (3, 'c'), (1, 'a'), (2, 'b');
    """,
    "dt_words": """
        CREATE TABLE dt_words (w text PRIMARY KEY);
        INSERT INTO dt_words VALUES ('alpha'), ('beta'), ('gamma');
    """,
    "dt_stamped": """
        CREATE TABLE dt_stamped (
            id integer PRIMARY KEY,
            label text,
            seq smallint,
            at timestamptz,
            day date,
            amount numeric(6, 2),
            flag boolean
        );
        INSERT INTO dt_stamped SELECT g, 'row ' || g, 100 - g,
               timestamptz '2024-01-01 00:00:00+00' + g * interval '1 hour',
               date '2024-01-01' + g, g * 1.5, mod(g, 2) = 0
        FROM generate_series(1, 10) g;
        UPDATE dt_stamped SET at = NULL, seq = NULL WHERE id = 10;
    """,
    "dt_values": """
        CREATE TABLE dt_values (
            id integer PRIMARY KEY,
            amount numeric(20, 6),
            ratio double precision,
            blob bytea,
            uid uuid,
            at timestamptz,
            doc jsonb,
            nums integer[]
        );
        INSERT INTO dt_values VALUES
         (1, 1234567890.123456, 'NaN', '\\x00ff10',
          'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11', '2024-03-01 12:34:56.789+02',
          '{"b": [1, 2.5, "x"], "a": null}', '{1,NULL,3}'),
         (2, 0.000001, 'Infinity', '', '00000000-0000-0000-0000-000000000000',
          '1999-12-31 23:59:59-08', '[]', '{}'),
         (3, -1.5, '-Infinity', '\\xdeadbeef', NULL, '2024-06-30 00:00:00+00', '"s"',
          '{-7}'),
         (4, 'NaN', 0.1, NULL, NULL, NULL, 'null', NULL),
         (5, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
    """,
}
