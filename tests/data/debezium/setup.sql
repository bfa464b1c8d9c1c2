-- The type matrix and the tables of the Debezium golden workload
-- (scripts/debezium-golden/run.py; tests/integration/test_formats_golden.py).
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN posint AS integer CHECK (VALUE > 0);

CREATE TABLE types (
  id int PRIMARY KEY,
  c_bool boolean,
  c_bit1 bit(1),
  c_bit10 bit(10),
  c_varbit bit varying(16),
  c_int2 smallint,
  c_int4 integer,
  c_int8 bigint,
  c_oid oid,
  c_real real,
  c_float8 double precision,
  c_num numeric(12, 3),
  c_numv numeric,
  c_money money,
  c_char char(3),
  c_varchar varchar(20),
  c_text text,
  c_bytea bytea,
  c_date date,
  c_time time,
  c_time3 time(3),
  c_timetz timetz,
  c_ts timestamp,
  c_ts3 timestamp(3),
  c_tstz timestamptz,
  c_interval interval,
  c_uuid uuid,
  c_json json,
  c_jsonb jsonb,
  c_xml xml,
  c_inet inet,
  c_cidr cidr,
  c_macaddr macaddr,
  c_point point,
  c_int4range int4range,
  c_int8range int8range,
  c_numrange numrange,
  c_tsrange tsrange,
  c_tstzrange tstzrange,
  c_daterange daterange,
  c_enum mood,
  c_int_arr integer[],
  c_text_arr text[],
  c_domain posint,
  c_box box,
  c_lseg lseg,
  c_polygon polygon,
  c_circle circle,
  c_macaddr8 macaddr8,
  c_int2_arr smallint[],
  c_num_arr numeric(6, 2)[],
  c_bytea_arr bytea[],
  c_date_arr date[],
  c_ts_arr timestamp[],
  c_tstz_arr timestamptz[],
  c_uuid_arr uuid[],
  c_enum_arr mood[],
  c_tstz3 timestamptz(3),
  c_time0 time(0),
  c_ts0 timestamp(0)
);

-- REPLICA IDENTITY DEFAULT: before of an update is null, of a delete the key.
CREATE TABLE plain (id int PRIMARY KEY, v text, n int);
-- REPLICA IDENTITY FULL: before is the whole old row.
CREATE TABLE full_row (id int PRIMARY KEY, v text, n int);
ALTER TABLE full_row REPLICA IDENTITY FULL;
-- A TOASTed column an update does not touch.
CREATE TABLE toasted (id int PRIMARY KEY, big text, small int);
ALTER TABLE toasted ALTER COLUMN big SET STORAGE EXTERNAL;
-- A composite key.
CREATE TABLE two_keys (a int, b text, v int, PRIMARY KEY (a, b));
-- The last statement of the workload writes here: the end marker.
CREATE TABLE zz_end (id int PRIMARY KEY);

CREATE PUBLICATION golden_pub FOR TABLE types, plain, full_row, toasted, two_keys, zz_end;
