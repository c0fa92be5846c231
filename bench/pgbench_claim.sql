-- allot's claim → release loop on PostgreSQL, for pgbench (bench/peers/postgres.ts).
-- Each client alternates: a claim transaction, then a release transaction of what it
-- claimed (pgbench keeps a client's variables from one transaction to the next, and
-- \gset carries the claimed id over). So pgbench's odd transactions are claims, its even
-- ones releases, and --log times each statement alone. Run with -D held=0.
-- The holder is the client's number. A claim or a release that matches no row fails
-- \gset ("expected one row"), which aborts the client: pgbench then exits non-zero.
\if :held
UPDATE pool SET holder = NULL WHERE id = :id AND holder = :client_id RETURNING id AS released \gset
\set held 0
\else
UPDATE pool SET holder = :client_id, fencing = nextval('fence') WHERE id = (SELECT id FROM pool WHERE holder IS NULL LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING id, fencing \gset
\set held 1
\endif
