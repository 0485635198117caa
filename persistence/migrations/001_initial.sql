-- 001: commands (the queue), batches, the audit trail and replies.
-- Released migrations are never edited: later changes go in new numbered files.

CREATE TABLE triobus.batch (
    domain                   text        NOT NULL,
    batch_id                 uuid        NOT NULL,
    name                     text,
    custom_data              jsonb,
    status                   text        NOT NULL DEFAULT 'PENDING',
    total_count              integer     NOT NULL,
    completed_count          integer     NOT NULL DEFAULT 0,
    failed_count             integer     NOT NULL DEFAULT 0,
    canceled_count           integer     NOT NULL DEFAULT 0,
    in_troubleshooting_count integer     NOT NULL DEFAULT 0,
    created_at               timestamptz NOT NULL DEFAULT now(),
    started_at               timestamptz,
    completed_at             timestamptz,
    PRIMARY KEY (domain, batch_id),
    CONSTRAINT batch_status_known CHECK (
        status IN ('PENDING', 'IN_PROGRESS', 'COMPLETED', 'COMPLETED_WITH_FAILURES')),
    CONSTRAINT batch_counts_within_total CHECK (
        completed_count >= 0 AND failed_count >= 0 AND canceled_count >= 0
        AND in_troubleshooting_count >= 0
        AND completed_count + failed_count + canceled_count + in_troubleshooting_count
            <= total_count),
    CONSTRAINT batch_finished_has_completed_at CHECK (
        (status IN ('COMPLETED', 'COMPLETED_WITH_FAILURES')) = (completed_at IS NOT NULL))
);

CREATE INDEX batch_newest ON triobus.batch (domain, created_at DESC);

-- One row per command. This table is the queue: a command is claimable when it is
-- PENDING or IN_PROGRESS with an expired lease, and visible_at <= now().
CREATE TABLE triobus.command (
    domain             text        NOT NULL,
    command_id         uuid        NOT NULL,
    command_type       text        NOT NULL,
    status             text        NOT NULL DEFAULT 'PENDING',
    data               jsonb       NOT NULL,
    correlation_id     uuid        NOT NULL,
    reply_to           text,
    batch_id           uuid,
    attempts           integer     NOT NULL DEFAULT 0,
    max_attempts       integer,
    visible_at         timestamptz NOT NULL DEFAULT now(),
    lease_token        uuid,
    result             jsonb,
    error_type         text,
    error_code         text,
    error_message      text,
    error_details      jsonb,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (domain, command_id),
    FOREIGN KEY (domain, batch_id) REFERENCES triobus.batch (domain, batch_id),
    CONSTRAINT command_status_known CHECK (
        status IN ('PENDING', 'IN_PROGRESS', 'COMPLETED', 'FAILED', 'CANCELED',
                   'IN_TROUBLESHOOTING_QUEUE')),
    CONSTRAINT command_max_attempts_positive CHECK (max_attempts IS NULL OR max_attempts >= 1),
    CONSTRAINT command_leased_while_in_progress CHECK (
        (status = 'IN_PROGRESS') = (lease_token IS NOT NULL))
);

CREATE INDEX command_claimable ON triobus.command (domain, visible_at)
    WHERE status IN ('PENDING', 'IN_PROGRESS');
CREATE INDEX command_newest ON triobus.command (domain, created_at DESC);
CREATE INDEX command_correlation ON triobus.command (correlation_id);
CREATE INDEX command_batch ON triobus.command (domain, batch_id) WHERE batch_id IS NOT NULL;
CREATE INDEX command_troubleshooting ON triobus.command (domain, command_type, updated_at)
    WHERE status = 'IN_TROUBLESHOOTING_QUEUE';

-- Append-only. subject_id is the command id, or the batch id for BATCH_* events.
-- audit_id orders events; occurred_at is informative.
CREATE TABLE triobus.audit (
    audit_id    bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    domain      text        NOT NULL,
    subject_id  uuid        NOT NULL,
    event_type  text        NOT NULL,
    details     jsonb,
    occurred_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE INDEX audit_subject ON triobus.audit (subject_id, audit_id);

-- Replies for commands sent with reply_to; acked replies are deleted.
CREATE TABLE triobus.reply (
    reply_id       bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue          text        NOT NULL,
    domain         text        NOT NULL,
    command_id     uuid        NOT NULL,
    correlation_id uuid        NOT NULL,
    outcome        text        NOT NULL,
    data           jsonb,
    created_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT reply_once_per_command UNIQUE (domain, command_id),
    CONSTRAINT reply_outcome_known CHECK (outcome IN ('SUCCESS', 'FAILED', 'CANCELED'))
);

CREATE INDEX reply_queue ON triobus.reply (queue, reply_id);
