"""The differential fidelity test's workload (tests/integration/test_fidelity.py).

Values are drawn from PostgreSQL's own regression suite -- the type matrix of
``src/test/regress/sql/{int2,int4,int8,float4,float8,numeric,money,interval,
timestamp,timestamptz,date,time,timetz,json,jsonb,arrays,rangetypes,
multirangetypes,geometry,inet,macaddr,bit,tstypes,xml,pg_lsn}.sql`` (their
boundary and odd-format values: ``-178000000 years``, ``'1.2345678901234e+200'``,
``4714-11-24 BC``, denormal floats, ``[0:2]`` bounds, ...), from
``contrib/test_decoding/sql/{ddl,toast,messages,truncate}.sql`` (TOAST
unchanged columns, key changes, REPLICA IDENTITY FULL, truncate, messages) and
from wal2json's type tests -- and run under database settings that change how
values print (:data:`DATABASE_SETTINGS`).
"""

from __future__ import annotations

from typing import Final

SCHEMA: Final = "fid"

# Set with ALTER DATABASE before any slot connects: a walsender that used them
# would print lossy (extra_float_digits), ambiguous (DateStyle DMY, sql_standard
# intervals) or differently spelled (escape bytea, local times) values.
DATABASE_SETTINGS: Final = {
    "extra_float_digits": "-15",
    "DateStyle": "SQL, DMY",
    "IntervalStyle": "sql_standard",
    "TimeZone": "America/St_Johns",
    "bytea_output": "escape",
    "lc_monetary": "C.utf8",  # the only other locale a minimal machine has
    "search_path": f"{SCHEMA}, public",
}

DDL: Final = [
    f"create schema {SCHEMA}",
    f"set search_path = {SCHEMA}",
    "create type mood as enum ('sad', 'ok', 'very happy')",
    "create type complex as (r float8, i float8, note text)",
    "create type wrapper as (c complex, tags text[], m mood)",
    "create domain posint as int check (value > 0)",
    "create domain price as numeric(12, 4)",
    "create domain labels as text[]",
    "create domain doc as jsonb",
    "create domain stamp as timestamptz",
    """create table matrix (
        id int primary key,
        b bool, ch "char", nm name, i2 int2, i4 int4, i8 int8, o oid,
        f4 float4, f8 float8, n numeric, n2 numeric(12, 2), m money,
        t text, vc varchar(10), bp char(5),
        by bytea, d date, tm time, tmz timetz, ts timestamp, tsz timestamptz,
        iv interval, u uuid, j json, jb jsonb, jp jsonpath, x xml,
        ip inet, cd cidr, mac macaddr, mac8 macaddr8, bt bit(4), vb varbit,
        pt point, ln line, ls lseg, bx box, pa path, pg polygon, ci circle,
        tv tsvector, tq tsquery, lsn pg_lsn, rc regclass, rt regtype,
        xi xid, ti tid, ov oidvector, snap pg_snapshot,
        r4 int4range, rn numrange, rtz tstzrange, rd daterange, r8 int8range, rts tsrange,
        mr4 int4multirange, mrn nummultirange, mrd datemultirange
    )""",
    """create table arrays (
        id int primary key,
        a_i4 int4[], a_i4_2d int4[][], a_t text[], a_f8 float8[], a_f4 float4[],
        a_n numeric[], a_iv interval[], a_jb jsonb[], a_j json[], a_tz timestamptz[],
        a_d date[], a_by bytea[], a_b bool[], a_bx box[], a_u uuid[], a_m money[],
        a_mood mood[], a_cx complex[], a_r int4range[], a_tmz timetz[]
    )""",
    """create table custom (
        id posint primary key, feel mood, c complex, w wrapper, p price,
        l labels, dc doc, s stamp
    )""",
    "create table full_rows (k int primary key, v text, f float8, iv interval, jb jsonb)",
    "alter table full_rows replica identity full",
    """create table toasted (
        id serial primary key, big1 text, rand1 float8, big2 text, small text
    )""",
    "alter table toasted alter column big1 set storage external",
    "create table deep (id int primary key, jb jsonb, j json)",
]

TABLES: Final = [
    f"{SCHEMA}.{t}" for t in ("matrix", "arrays", "custom", "full_rows", "toasted", "deep")
]

# One row of `matrix` per tuple; columns in table order after id.
_MATRIX_ROWS: Final = [
    (
        "true",
        "'x'",
        "'pg_class'",
        "-32768",
        "2147483647",
        "-9223372036854775808",
        "4294967295",
        "'1.1'",
        "'1.2345678901234e+200'",
        "'12345678901234567890.123456789012345'",
        "'-1.50'",
        "'$1,000.50'",
        "E'quote '' \"dq\" \\\\ back\\ttab\\nnew \U0001f642 \u2028'",
        "'short'",
        "'ab'",
        "'\\x00ff'",
        "'2024-02-29'",
        "'13:14:15.123456'",
        "'12:00:00+05:30'",
        "'2024-02-29 13:14:15.123456'",
        "'2024-02-29 13:14:15.5+02'",
        "'1 year 2 mons 3 days 04:05:06.789'",
        "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
        '\'{"a":1,  "a":2, "big": 123456789012345678901234567890}\'',
        '\'{"x": 1e400, "y": 0.1000000000000000000001, "s": "\\ud83d\\ude00"}\'',
        "'$.a[*] ? (@ > 1)'",
        "'<a x=\"1\">t&amp;</a>'",
        "'192.168.1.5/24'",
        "'10.0.0.0/8'",
        "'08:00:2b:01:02:03'",
        "'08:00:2b:01:02:03:04:05'",
        "B'1010'",
        "B'101'",
        "'(1.2345678901234567,2)'",
        "'{1,-1,0}'",
        "'[(0,0),(1,1)]'",
        "'(1,1),(0,0)'",
        "'[(0,0),(1,1),(2,0)]'",
        "'((0,0),(1,1),(1,0))'",
        "'<(0,0),1.5>'",
        "'a fat cat sat'",
        "'fat & (rat | cat)'",
        "'16/B374D848'",
        "'fid.matrix'",
        "'integer'",
        "'12345'",
        "'(1,2)'",
        "'1 2 3'",
        "'10:20:10,14,15'",
        "'[1,5)'",
        "'(1.5,2.50]'",
        "'[2024-01-01 00:00+00,infinity)'",
        "'empty'",
        "'[-9223372036854775808,0)'",
        "'[2024-01-01,2024-02-01)'",
        "'{[1,3),[5,7)}'",
        "'{(1.5,2.5]}'",
        "'{}'",
    ),
    (
        "false",
        "'\\'",
        "'x y'",
        "32767",
        "-2147483648",
        "4567890123456789",
        "0",
        "'3.4028235e+38'",
        "'4.9e-324'",
        "'NaN'",
        "'0.00'",
        "'-92233720368547758.08'",
        "''",
        "''",
        "''",
        "''",
        "'4714-11-24 BC'",
        "'24:00:00'",
        "'00:00:00+15:59'",
        "'294276-12-31 23:59:59.999999'",
        "'4714-11-24 00:00:00+00 BC'",
        "'-178000000 years'",
        "'00000000-0000-0000-0000-000000000000'",
        "E'{\\r\\n  \"k\": [1, 2.50]\\n}'",
        "'123456789012345678901234567890'",
        "'strict $'",
        "'<!-- c -->'",
        "'::ffff:1.2.3.4'",
        "'2001:db8::/32'",
        "'ff:ff:ff:ff:ff:ff'",
        "'00:00:00:00:00:00:00:00'",
        "B'0000'",
        "B''",
        "'(1e-300,-0)'",
        "'{0,1,-5}'",
        "'[(1e300,0),(0,0)]'",
        "'(0,0),(0,0)'",
        "'((0,0))'",
        "'((0,0),(0,1))'",
        "'<(1,1),0>'",
        "''",
        "'!a'",
        "'0/0'",
        "'pg_class'",
        "'character varying'",
        "'4294967295'",
        "'(0,0)'",
        "''",
        "'1:1:'",
        "'(,)'",
        "'[-Infinity,NaN]'",
        "'(-infinity,2024-01-01 00:00+05:30)'",
        "'[-infinity,infinity)'",
        "'empty'",
        "'[,2024-01-01 10:00)'",
        "'{}'",
        "'{[0,0]}'",
        "'{[2024-01-01,)}'",
    ),
    (
        "null",
        "'\\001'",
        "''",
        "0",
        "0",
        "0",
        "1",
        "'-0'",
        "'-Infinity'",
        "'-Infinity'",
        "'99999999.99'",
        "'0'",
        "'NULL'",
        "'0123456789'",
        "'abcde'",
        "E'\\\\000abc\\\\377'",
        "'infinity'",
        "'00:00:00'",
        "'23:59:59.999999-03:30'",
        "'-infinity'",
        "'epoch'",
        "'-1 year -2 mons +3 days -04:05:06'",
        "'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'",
        "'\"\\ud800 lone\"'",
        "'[]'",
        "'$'",
        "'x'",
        "'0.0.0.0/0'",
        "'0.0.0.0/0'",
        "'08002b010203'",
        "'08002b0102030405'",
        "B'1111'",
        "B'1'",
        "'(0.1,0.2)'",
        "'{-0.5,1,0.1}'",
        "'[(0.1,0.2),(0.3,0.4)]'",
        "'(0.3,0.4),(0.1,0.2)'",
        "'[(0.1,0.2)]'",
        "'((0.1,0.2),(0.3,0.4),(0.5,0.6))'",
        "'<(0.1,0.2),0.3>'",
        "'''quoted'' a:1A b:2B,3'",
        "'a:* & !b'",
        "'FFFFFFFF/FFFFFFFF'",
        "'-'",
        "'timestamp with time zone[]'",
        "'0'",
        "'(4294967295,65535)'",
        "'0'",
        "'5:5:'",
        "'[0,0]'",
        "'[0.00,0.0]'",
        "'[2024-07-01 12:00+00,2024-07-01 12:00:00.000001+00]'",
        "'[2024-02-29,2024-02-29]'",
        "'(9223372036854775806,)'",
        "'[epoch,infinity]'",
        "'{[1,2],[3,4]}'",
        "'{}'",
        "'{empty}'",
    ),
]

_INTERVALS: Final = [
    "'1 mon'",
    "'25:00:00'",
    "'-1 days +02:00:00'",
    "'@ 1 minute'",
    "'6 years'",
    "'5 months 12 hours'",
    "'178000000 years'",
    "'-00:00:00.000001'",
    "'0'",
    "'1 day -1 second'",
    "'-2147483648 days'",
    "'2147483647 mons'",
]

INSERTS: Final = [
    f"insert into matrix values ({i + 1}, {', '.join(row)})" for i, row in enumerate(_MATRIX_ROWS)
] + [
    "insert into matrix (id) values (4)",  # every column NULL
    *(f"insert into matrix (id, iv) values ({100 + i}, {iv})" for i, iv in enumerate(_INTERVALS)),
]

ARRAYS: Final = [
    """insert into arrays values (1,
        '[0:2]={7,8,9}', '{{1,2},{3,NULL}}', '{a,"b c",NULL,"NULL","x\\"y",""}',
        '{1.1,NaN,-Infinity,1e-300,NULL}', '{1.1,3.4028235e+38}',
        '{1.50,NaN,-Infinity,12345678901234567890.12345}',
        '{"1 year 2 mons","25:00:00","-178000000 years",NULL}',
        array['{"n": 123456789012345678901234567890}'::jsonb, '[1e400]', '"s"'],
        array['{"a":1,"a":2}'::json, '"s"'],
        '{"2024-02-29 13:14:15.5+02",infinity,"4714-11-24 00:00:00+00 BC"}',
        '{2024-02-29,-infinity,"0099-01-01"}', '{"\\\\x00ff","\\\\x"}', '{t,f,NULL}',
        '{(1,1),(0,0);(2,2),(1,1)}', '{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}',
        '{"$1.00","-$0.01"}', '{sad,"very happy"}',
        array[row(1.5, -2, 'x"y')::complex, null], '{"[1,5)",empty}',
        '{"12:00:00+05:30:15","00:00:00-15:59"}')""",
    """insert into arrays (id, a_i4, a_i4_2d, a_t, a_f8, a_iv) values (2,
        '[-5:-4]={1,2}', '[1:2][0:1]={{1,2},{3,4}}', '[2:2]={only}', '{}',
        '[0:0]={"1 mon"}')""",
    "insert into arrays (id, a_i4_2d) values (3, '{{{1}},{{2}}}')",  # 3 dimensions
]

CUSTOM: Final = [
    """insert into custom values (1, 'very happy', row(1.1, -0.0, 'a,b'),
        row(row(1e300, 1e-300, null), '{x,"y z"}', 'sad'), 12.3456,
        '{one,"two words",NULL}', '{"deep": {"n": 1.000000000000000000001}}',
        '2024-02-29 13:14:15.5+02')""",
    "insert into custom (id) values (2)",
]

DEEP: Final = [
    # jsonb nested 300, 500 and 5,000 levels: never a crash, never a stuck slot
    *(
        f"insert into deep values ({depth}, "
        f"(repeat('[', {depth}) || '1' || repeat(']', {depth}))::jsonb, "
        f"(repeat('{{\"a\": ', {depth}) || 'null' || repeat('}}', {depth}))::json)"
        for depth in (300, 500, 501, 5000)
    ),
]

CHANGES: Final = [
    # a plain update (REPLICA IDENTITY DEFAULT: no old row), a key change, deletes
    "update matrix set f8 = '0.1', iv = '1 mon', t = 't2', jb = '[1.10]' where id = 1",
    "update matrix set id = 5 where id = 2",
    "delete from matrix where id = 3",
    "update arrays set a_i4 = '{1,2,3}' where id = 1",
    "update custom set feel = 'sad', c = row(2, 3, null) where id = 1",
    # REPLICA IDENTITY FULL: whole old rows, NULLs included
    "insert into full_rows values (1, 'a', 1.1, '1 year', '{\"x\": 1}'), "
    "(2, null, null, null, null)",
    "update full_rows set v = 'b', f = '1.2345678901234567' where k = 1",
    "update full_rows set k = 3 where k = 2",
    "delete from full_rows where k = 1",
    # TOAST (contrib/test_decoding/sql/toast.sql): unchanged values are not resent
    """insert into toasted (big1, rand1, big2, small)
        select string_agg(g.i::text, ''), 1.5,
               repeat(string_agg(to_char(g.i, 'FM0000'), ''), 50), 's'
        from generate_series(1, 2000) g(i)""",
    "update toasted set small = 'changed' where id = 1",
    "update toasted set rand1 = 123.456, big1 = big1 || 'x' where id = 1",
    "delete from toasted where id = 1",
    # transactional logical messages (contrib/test_decoding/sql/messages.sql)
    "select pg_logical_emit_message(true, 'fid', 'hello ''world''')",
    "select pg_logical_emit_message(true, 'fid', '\\x00ff'::bytea)",
    "begin; insert into full_rows values (10, 'in tx'); "
    "select pg_logical_emit_message(true, 'fid', ''); delete from full_rows where k = 10; commit",
    # truncate (contrib/test_decoding/sql/truncate.sql)
    "truncate full_rows, toasted restart identity cascade",
    "truncate deep",
]

WORKLOAD: Final = [*INSERTS, *ARRAYS, *CUSTOM, *DEEP, *CHANGES]
