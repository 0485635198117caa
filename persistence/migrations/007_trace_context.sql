-- 007: the W3C trace context (traceparent, tracestate) a command carries from the span
-- that sent it to its handler's span; NULL when no span was being recorded.
ALTER TABLE triobus.command ADD COLUMN trace_context jsonb;
