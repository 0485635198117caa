-- 004: retention of finished work.
--
-- finished_at: when the command became terminal (COMPLETED, FAILED, CANCELED), set by the
--   statement that makes it so; a terminal command never changes again, so it is also the
--   age the pruner compares with a retention. Commands finished before this migration get
--   their last update's time.
-- command_finished: the pruner's path to finished commands outside any batch, oldest
--   first (members of a batch are removed with their batch, by batch_finished).
-- reply_created: unacknowledged replies by age.
ALTER TABLE triobus.command ADD COLUMN finished_at timestamptz;
UPDATE triobus.command SET finished_at = updated_at
WHERE status IN ('COMPLETED', 'FAILED', 'CANCELED');
ALTER TABLE triobus.command ADD CONSTRAINT command_finished_when_terminal CHECK (
    (status IN ('COMPLETED', 'FAILED', 'CANCELED')) = (finished_at IS NOT NULL));

CREATE INDEX command_finished ON triobus.command (domain, finished_at)
    WHERE finished_at IS NOT NULL AND batch_id IS NULL;
CREATE INDEX batch_finished ON triobus.batch (domain, completed_at)
    WHERE completed_at IS NOT NULL;
CREATE INDEX reply_created ON triobus.reply (created_at);
