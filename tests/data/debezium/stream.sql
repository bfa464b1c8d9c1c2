-- The streamed workload; one statement per transaction unless BEGIN/COMMIT says otherwise.
SET TimeZone = 'UTC';
INSERT INTO types VALUES (
  1, true, B'1', B'1010000011', B'101', 32767, -2147483648, 9223372036854775807, 4000000000,
  1.5, 3.141592653589793, 123456789.125, 12345678901234567890.0000000001, 1234.56,
  'ab', 'varchar value', 'text with ünïcode', '\x00ff10',
  '2024-02-29', '13:14:15.123456', '13:14:15.123', '13:14:15.5+05:30',
  '2024-01-02 03:04:05.123456', '2024-01-02 03:04:05.123', '2024-01-02 03:04:05.123456+02',
  '3 days 04:05:06.5', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
  '{"a": 1, "b": [true, null, 2.5]}', '{"b": [true, null], "a": 1}', '<x>1</x>',
  '192.168.0.1/24', '10.0.0.0/8', '08:00:2b:01:02:03', '(1.5,-2)',
  '[1,10)', '[5,)', '(1.5,2.5]', '[2024-01-01 00:00,2024-01-02 00:00)',
  '[2024-01-01 00:00+00,2024-01-02 00:00+00)', '[2024-01-01,2024-02-01)', 'happy',
  '{1,NULL,3}', '{"a b",c}', 7,
  '(1,2),(3,4)', '[(0,0),(1,1)]', '((0,0),(1,0),(1,1))', '<(1,1),2>', '08:00:2b:01:02:03:04:05',
  '{1,2}', '{1.50,NULL}', '{"\\x0102"}', '{2024-01-01}', '{"2024-01-02 03:04:05.5"}',
  '{"2024-01-02 03:04:05.5+00"}', '{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}', '{ok,sad}',
  '2024-01-02 03:04:05.123+00', '13:14:15', '2024-01-02 03:04:05'
);
INSERT INTO types (id) VALUES (2);
INSERT INTO types (id, c_num, c_numv, c_real, c_float8, c_interval, c_date, c_ts, c_tstz, c_time)
  VALUES (3, -0.5, -7, -0.25, 1e300, '-3 days -00:00:01', '1969-12-31', '1969-12-31 23:59:59.999999',
          '1970-01-01 00:00:00+00', '00:00:00');
UPDATE types SET c_text = 'changed', c_int4 = 5 WHERE id = 1;
DELETE FROM types WHERE id = 2;
UPDATE plain SET v = 'updated' WHERE id = 1;
UPDATE plain SET id = 10 WHERE id = 2;
DELETE FROM plain WHERE id = 1;
INSERT INTO full_row VALUES (1, 'full', 1), (2, 'full two', 2);
UPDATE full_row SET n = 5 WHERE id = 1;
DELETE FROM full_row WHERE id = 2;
INSERT INTO toasted SELECT 1, string_agg(md5(i::text), '') , 1 FROM generate_series(1, 200) i;
UPDATE toasted SET small = 2 WHERE id = 1;
UPDATE two_keys SET v = 11 WHERE a = 1;
DELETE FROM two_keys WHERE a = 1;
BEGIN;
INSERT INTO plain VALUES (20, 'tx a', 1);
INSERT INTO full_row VALUES (20, 'tx b', 2);
SELECT pg_logical_emit_message(true, 'golden', 'transactional message');
COMMIT;
SELECT pg_logical_emit_message(false, 'golden', 'non-transactional message');
TRUNCATE plain;
INSERT INTO zz_end VALUES (1);
