-- 002: drop the foreign key from command (domain, batch_id) to batch.
-- PostgreSQL checks a foreign key once per inserted row (a lookup of the batch row FOR KEY
-- SHARE): for a batch of 100,000 commands that was a third of the COPY, the same batch row
-- looked up 100,000 times. It guarded nothing the code does not already keep: batch_id is
-- written only by create_batch, in the transaction that has just inserted the batch row,
-- batch rows are never deleted, and the exact counts (invariant 2) are maintained by the
-- statements that change commands. The state-machine test checks that every batch_id
-- names a stored batch.
ALTER TABLE triobus.command DROP CONSTRAINT command_domain_batch_id_fkey;
