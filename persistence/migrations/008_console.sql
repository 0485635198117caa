-- 008: what the console's overview reads without scanning the commands.
--
-- command_finished_member: the finished members of batches get the index the other
--   finished commands have (command_finished, 004), so the gauges' refresh counts the
--   commands each domain finished in the last minute through the two, never a table scan;
--   the snapshot keeps that count beside the open commands' gauges.
-- command_domain_status: ANALYZE keeps the most common (domain, status) pairs and their
--   share of the rows, from which the overview estimates each domain's finished commands.
-- The index is built in the migration's transaction: sends and acks wait while it builds
-- (on a large table, migrate at a quiet time).
CREATE INDEX command_finished_member ON triobus.command (domain, finished_at)
    WHERE finished_at IS NOT NULL AND batch_id IS NOT NULL;
ALTER TABLE triobus.gauge_snapshot ADD COLUMN finished_last_minute jsonb NOT NULL DEFAULT '{}';
CREATE STATISTICS triobus.command_domain_status (mcv) ON domain, status FROM triobus.command;
