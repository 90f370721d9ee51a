//! The schema, embedded in the binary and applied at start. Several replicas may start at once:
//! a session-level advisory lock serialises them, and each migration runs in its own
//! transaction together with the row that records it, so a crash leaves nothing half applied.

use super::{Database, PgError};

/// `pg_advisory_lock` key for migrations ("reflow-m" in ASCII).
const MIGRATION_LOCK: i64 = 0x7265_666c_6f77_2d6d;

/// (version, name, SQL). Append only: an applied migration is never edited.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "sessions",
        r#"
CREATE TABLE reflow_sessions (
    id                  text PRIMARY KEY,
    owner               text NOT NULL,          -- identity fingerprint (hex)
    scope               text NOT NULL,          -- '' aggregated, else 'namespace/name'
    protocol_version    text NOT NULL,
    client_info         jsonb NOT NULL,
    client_capabilities jsonb NOT NULL,
    upstreams           jsonb NOT NULL,         -- per target: sealed upstream session id, version
    resources           jsonb NOT NULL,         -- resource URI -> target key
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    expires_at          timestamptz NOT NULL    -- sliding: last use + idle timeout
);
CREATE INDEX reflow_sessions_expires_at ON reflow_sessions (expires_at);
"#,
    ),
    (
        2,
        "audit events",
        r#"
CREATE TABLE reflow_audit_events (
    id          uuid PRIMARY KEY,               -- uuid v7 from the dataplane: replays are idempotent
    time        timestamptz NOT NULL,
    user_name   text NOT NULL,
    session_id  text,
    method      text NOT NULL,
    target      text,
    name        text,
    decision    text,                           -- allow | deny | NULL (no decision needed)
    policy      text,
    outcome     text NOT NULL,
    duration_ms double precision NOT NULL,
    trace_id    text NOT NULL
);
CREATE INDEX reflow_audit_events_time ON reflow_audit_events (time);
CREATE INDEX reflow_audit_events_user_time ON reflow_audit_events (user_name, time);
CREATE INDEX reflow_audit_events_target_time ON reflow_audit_events (target, time);
CREATE INDEX reflow_audit_events_denials ON reflow_audit_events (time) WHERE decision = 'deny';
"#,
    ),
    (
        3,
        "notifications too large for NOTIFY",
        r#"
CREATE TABLE reflow_notifications (
    id          bigserial PRIMARY KEY,
    session_id  text NOT NULL,
    message     jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX reflow_notifications_created_at ON reflow_notifications (created_at);
"#,
    ),
    (
        4,
        "session claims and log level",
        r#"
ALTER TABLE reflow_sessions
    ADD COLUMN claims    jsonb,                 -- {user, groups, roles} the session last saw
    ADD COLUMN log_level text;                  -- what logging/setLevel asked for
"#,
    ),
    (
        5,
        "replicas and what each owns",
        r#"
CREATE TABLE reflow_replicas (
    id          text PRIMARY KEY,
    address     text NOT NULL,                  -- base URL other replicas hand requests to
    proof       text NOT NULL,                  -- HMAC of id and address under the replica token
    seen_at     timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE reflow_owners (
    key         text PRIMARY KEY,               -- 's:' session id, 'p:' digest of a parked state
    replica     text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX reflow_owners_created_at ON reflow_owners (created_at);
"#,
    ),
    (
        6,
        "subscriptions on a session's own children",
        r#"
ALTER TABLE reflow_sessions
    ADD COLUMN subscriptions jsonb;             -- target key -> resource URIs (stateful STDIO)
"#,
    ),
    (
        20,
        "the snapshot each replica serves",
        r#"
ALTER TABLE reflow_replicas
    ADD COLUMN snapshot_version bigint,         -- the snapshot version it served at its last beat
    ADD COLUMN snapshot_hash    text;
"#,
    ),
    (
        21,
        "console logouts and used login states",
        r#"
CREATE TABLE reflow_console_revoked (
    key         text PRIMARY KEY,               -- 'login id' logged out, or 'state:' keyed digest
    expires_at  timestamptz NOT NULL            -- when the cookie it refuses expires anyway
);
CREATE INDEX reflow_console_revoked_expires_at ON reflow_console_revoked (expires_at);
"#,
    ),
    (
        30,
        "the replay buffer of session streams",
        r#"
CREATE TABLE reflow_stream_events (
    session_id  text NOT NULL,
    stream      int8 NOT NULL,                  -- 0: the GET stream, else a POST reply stream
    seq         int8 NOT NULL,                  -- the event id's number, unique in the session
    data        text NOT NULL,                  -- the JSON-RPC message as sent
    bytes       int4 NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (session_id, seq)
);
CREATE INDEX reflow_stream_events_created_at ON reflow_stream_events (created_at);
"#,
    ),
];

/// Applies the migrations this database has not seen, under the migration lock.
pub async fn migrate(db: &Database) -> Result<(), PgError> {
    // A dedicated connection: if anything fails, closing it releases the advisory lock.
    let (mut client, connection) = db.dedicated().await?;
    let conn = tokio::spawn(async move {
        let _ = connection.await;
    });
    let out = apply(&mut client).await;
    drop(client);
    let _ = conn.await;
    out
}

async fn apply(client: &mut tokio_postgres::Client) -> Result<(), PgError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS reflow_schema_migrations (
                 version    integer PRIMARY KEY,
                 name       text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await?;
    let applied: Vec<i32> = client
        .query("SELECT version FROM reflow_schema_migrations", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for &(version, name, sql) in MIGRATIONS {
        if applied.contains(&version) {
            continue;
        }
        let failed = |source| PgError::Migration {
            version,
            name,
            source,
        };
        let tx = client.transaction().await.map_err(failed)?;
        tx.batch_execute(sql).await.map_err(failed)?;
        tx.execute(
            "INSERT INTO reflow_schema_migrations (version, name) VALUES ($1, $2)",
            &[&version, &name],
        )
        .await
        .map_err(failed)?;
        tx.commit().await.map_err(failed)?;
        tracing::info!(version, name, "applied database migration");
    }
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await?;
    Ok(())
}
