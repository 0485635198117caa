-- 006: the database gauges of the metrics (commands waiting per domain and status, the
-- oldest runnable one's age), computed by one process at a time and read by all: one
-- row, replaced whole.
CREATE TABLE triobus.gauge_snapshot (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    computed_at timestamptz NOT NULL,
    gauges jsonb NOT NULL
);
