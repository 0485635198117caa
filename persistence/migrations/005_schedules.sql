-- 005: periodic commands.
--
-- One row per schedule name. The definition (domain, command_type, cron, timezone, data)
-- is the one last declared; `version` counts its changes, so a runtime that computed a
-- tick from an older definition cannot send it.
-- sent_through: every tick at or before this instant is done (sent, or skipped as too
--   late); a tick is sent by the transaction that moves sent_through up to it, and each
--   tick's command id is derived from (name, tick). The row is never pruned, so a tick
--   stays done after retention removed its command.
-- last_tick: the latest tick sent (NULL before the first).
CREATE TABLE triobus.schedule (
    name text PRIMARY KEY,
    domain text NOT NULL,
    command_type text NOT NULL,
    cron text NOT NULL,
    timezone text NOT NULL,
    data jsonb NOT NULL,
    version integer NOT NULL DEFAULT 1,
    declared_at timestamptz NOT NULL DEFAULT now(),
    sent_through timestamptz NOT NULL,
    last_tick timestamptz
);
