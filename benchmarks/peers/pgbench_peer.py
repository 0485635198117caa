"""The SQL ceiling for a job queue, measured with pgbench.

    python pgbench_peer.py DSN PGBENCH [--jobs 20000] [--batch 25] [--clients 1]

Creates a plain jobs table (JOBS rows, status 'todo', a partial index on the open ones) and
a log table in DSN (a fresh database), then runs pgbench with CLIENTS clients, each doing
JOBS / (BATCH * CLIENTS) rounds of the script below: one statement claims BATCH rows
(`FOR UPDATE SKIP LOCKED`, status 'doing') and returns their ids; a second marks them
'done' with one multi-row update and inserts one log row per job (triobus writes an audit
row per completion). Both are autocommit transactions, as triobus's claim and completion
are. Prints one JSON line: jobs, batch, clients, seconds, jobs_per_s (pgbench's rate
without connection set-up, in rows); checks that every row ended up done and logged.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile

import psycopg

SCHEMA = """
CREATE TABLE jobs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    status text NOT NULL DEFAULT 'todo',
    payload jsonb NOT NULL DEFAULT '{}',
    claimed_at timestamptz,
    done_at timestamptz
);
CREATE INDEX jobs_todo ON jobs (id) WHERE status = 'todo';
CREATE TABLE job_log (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id bigint NOT NULL,
    event text NOT NULL,
    at timestamptz NOT NULL DEFAULT now()
);
"""

SCRIPT = """\
WITH candidates AS (
    SELECT id FROM jobs WHERE status = 'todo' ORDER BY id LIMIT :batch
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE jobs SET status = 'doing', claimed_at = now()
    FROM candidates WHERE jobs.id = candidates.id RETURNING jobs.id
)
SELECT array_agg(id)::text AS ids FROM claimed
\\gset
WITH done AS (
    UPDATE jobs SET status = 'done', done_at = now()
    WHERE id = ANY (:ids::bigint[]) RETURNING id
)
INSERT INTO job_log (job_id, event) SELECT id, 'COMPLETED' FROM done;
"""

DEADLINE = 600.0  # seconds


def main(options: argparse.Namespace) -> None:
    rounds, rest = divmod(options.jobs, options.batch * options.clients)
    if rest or not rounds:
        raise SystemExit("JOBS must be a positive multiple of BATCH * CLIENTS")
    with psycopg.connect(options.dsn, autocommit=True) as conn:
        conn.execute(SCHEMA)
        conn.execute(
            "INSERT INTO jobs (status) SELECT 'todo' FROM generate_series(1, %s)", (options.jobs,)
        )
        conn.execute("VACUUM ANALYZE jobs")
    with tempfile.NamedTemporaryFile("w", suffix=".sql") as script:
        script.write(SCRIPT)
        script.flush()
        clients = str(options.clients)
        argv = [options.pgbench, "--no-vacuum", "--protocol=prepared", "-f", script.name]
        argv += ["-D", f"batch={options.batch}", "-c", clients, "-j", clients]
        argv += ["-t", str(rounds), options.dsn]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=DEADLINE)
    if result.returncode != 0:
        raise SystemExit(f"pgbench failed ({result.returncode}):\n{result.stderr[-2000:]}")
    tps = re.search(r"^tps = ([\d.]+) \(without initial connection time\)", result.stdout, re.M)
    if tps is None:
        raise SystemExit(f"no tps in pgbench's output:\n{result.stdout[-2000:]}")
    with psycopg.connect(options.dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM jobs WHERE status = 'done'),"
            " (SELECT count(*) FROM job_log)"
        ).fetchone()
    if row != (options.jobs, options.jobs):
        raise SystemExit(f"{row} rows done and logged, expected {options.jobs}")
    jobs_per_s = float(tps.group(1)) * options.batch
    result_line = {
        "peer": "pgbench",
        "batch": options.batch,
        "clients": options.clients,
        "jobs": options.jobs,
        "seconds": options.jobs / jobs_per_s,
        "jobs_per_s": jobs_per_s,
    }
    print(json.dumps(result_line), flush=True)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dsn")
    parser.add_argument("pgbench", help="path of the pgbench program")
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=25)
    parser.add_argument("--clients", type=int, default=1)
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse(sys.argv[1:]))
