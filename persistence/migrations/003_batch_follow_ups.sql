-- 003: batches that finish durably: follow-up commands, cancel, batches filled over time.
--
-- follow_ups: the batch's follow-up commands, written when it was created:
--   {"on_complete" | "on_success" | "on_failure": {"domain", "command_type", "command_id",
--    "data", "max_attempts"}}; each is inserted as a command by the statement in which its
--   event happens (see persistence/batch_counts.py), under the id stored here.
-- first_failure_at: when the first member failed, was canceled or entered the
--   troubleshooting queue (set once: the on_failure follow-up's event).
-- is_open: more commands may be added (create_batch(open=True)); an open batch never
--   completes. close_batch and cancel_batch close it.
-- canceled_at, canceled_by, cancel_reason: set once, by cancel_batch.
ALTER TABLE triobus.batch
    ADD COLUMN follow_ups       jsonb,
    ADD COLUMN first_failure_at timestamptz,
    ADD COLUMN is_open          boolean NOT NULL DEFAULT false,
    ADD COLUMN canceled_at      timestamptz,
    ADD COLUMN canceled_by      text,
    ADD COLUMN cancel_reason    text,
    ADD CONSTRAINT batch_open_is_not_finished CHECK (NOT (is_open AND completed_at IS NOT NULL)),
    ADD CONSTRAINT batch_canceled_is_closed CHECK (canceled_at IS NULL OR NOT is_open);
