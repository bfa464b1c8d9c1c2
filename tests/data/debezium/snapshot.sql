-- Rows that exist before capture starts: they arrive as snapshot reads (op r).
INSERT INTO plain VALUES (1, 'snap one', 1), (2, 'snap two', 2);
INSERT INTO two_keys VALUES (1, 'x', 10);
