//! The flows' records in PostgreSQL, for a fleet: every replica reads and writes the same rows, so the TeleSign
//! ledger answers on any replica and an Incode interview is approved once however many replicas get its webhook
//! (the claim is one `INSERT ... ON CONFLICT DO UPDATE ... WHERE` on the interview's primary key: exactly one
//! replica's statement returns the row). tokio-postgres with a deadpool pool: the maintained async driver without
//! sqlx's compile-time machinery. Connects when serving starts (never in `credgate check`) and runs the versioned
//! migrations then, under an advisory lock so replicas starting together migrate once; when the database is not
//! there yet, the first use tries again. Reachability is a `/readyz` detail (ready either way: a down database
//! fails the flow requests that need a record, not the proxy).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU8, Ordering};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use rustls::pki_types::CertificateDer;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use tokio::sync::OnceCell;
use tokio_postgres::NoTls;

use super::{
    Claim, Decision, IncodeEvent, PURGE_EVERY_SECS, STALE_CLAIM_SECS, StoreError, TokenRecord,
};
use crate::unix_time::now_secs;

/// Schema migrations, applied in order; `credgate_schema.version` records how many ran.
const MIGRATIONS: &[&str] = &["CREATE TABLE incode_events (
        id BIGSERIAL PRIMARY KEY,
        interview_id TEXT NOT NULL,
        onboarding_status TEXT NOT NULL,
        client_id TEXT,
        flow_id TEXT,
        external_id TEXT,
        received_at BIGINT NOT NULL
    );
    CREATE INDEX incode_events_interview ON incode_events (interview_id);
    CREATE TABLE incode_approvals (
        interview_id TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        reason TEXT NOT NULL,
        updated_at BIGINT NOT NULL
    );
    CREATE TABLE telesign_tokens (
        id BIGSERIAL PRIMARY KEY,
        xid TEXT NOT NULL,
        phone TEXT NOT NULL,
        issued_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        token_sha256 TEXT NOT NULL,
        caller TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX telesign_tokens_xid ON telesign_tokens (xid);
    CREATE INDEX telesign_tokens_phone ON telesign_tokens (phone, issued_at);
    CREATE INDEX telesign_tokens_caller ON telesign_tokens (caller, xid);"];

/// The advisory lock migrations run under (any constant shared by every replica).
const MIGRATION_LOCK: i64 = 0x6372_6564_6761_7465;

/// `[flows] postgres_*`, validated.
#[derive(Debug, Serialize)]
pub struct PostgresConfig {
    /// `postgres://user:password@host:port/db` (may carry a password).
    #[serde(serialize_with = "crate::config::show::redacted")]
    pub url: SecretString,
    /// TLS (`sslmode=require`), the server's certificate verified.
    pub tls: bool,
    /// CAs trusted besides the webpki roots.
    #[serde(serialize_with = "crate::config::show::certs")]
    pub ca: Vec<CertificateDer<'static>>,
    /// Most connections the pool opens.
    pub pool_size: usize,
    /// Longest wait to connect, and for a pooled connection.
    #[serde(serialize_with = "humantime_serde::serialize")]
    pub connect_timeout: Duration,
}

/// The flows' PostgreSQL database.
pub(crate) struct Postgres {
    pool: Pool,
    migrated: OnceCell<()>,
    retention_secs: i64,
    last_purge: AtomicI64,
    /// [`UNKNOWN`], [`UP`] or [`DOWN`]: how the last attempt to get a migrated connection went.
    health: AtomicU8,
}

const UNKNOWN: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres").finish_non_exhaustive()
    }
}

fn query(e: tokio_postgres::Error) -> StoreError {
    StoreError::Postgres(e.to_string())
}

impl Postgres {
    /// A pool for `cfg`; connects to nothing yet.
    pub(crate) fn new(cfg: &PostgresConfig, retention: Duration) -> Result<Arc<Self>, StoreError> {
        let mut pg: tokio_postgres::Config = cfg
            .url
            .expose_secret()
            .parse()
            // The parser's message may quote the URL: say only that it is not one.
            .map_err(|_| {
                StoreError::Postgres("flows.postgres_url is not a PostgreSQL URL".into())
            })?;
        pg.connect_timeout(cfg.connect_timeout);
        pg.application_name("credgate");
        let recycling = || ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = if cfg.tls {
            let tls = crate::http_client::tls_client_config(&cfg.ca)
                .map_err(|e| StoreError::Postgres(format!("TLS: {e}")))?;
            Manager::from_config(
                pg,
                postgres_rustls::MakeTlsConnector::new(tokio_rustls::TlsConnector::from(Arc::new(
                    tls,
                ))),
                recycling(),
            )
        } else {
            Manager::from_config(pg, NoTls, recycling())
        };
        let pool = Pool::builder(manager)
            .max_size(cfg.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(cfg.connect_timeout))
            .create_timeout(Some(cfg.connect_timeout))
            .build()
            .map_err(|e| StoreError::Postgres(format!("pool: {e}")))?;
        Ok(Arc::new(Self {
            pool,
            migrated: OnceCell::new(),
            retention_secs: i64::try_from(retention.as_secs()).unwrap_or(i64::MAX),
            last_purge: AtomicI64::new(0),
            health: AtomicU8::new(UNKNOWN),
        }))
    }

    /// Connect and migrate now (when serving starts); a failure is logged and left to the first use to retry.
    pub(crate) async fn prepare(&self) {
        // The outcome is logged and shown on /readyz by `client`.
        let _ = self.client(false).await;
    }

    /// The `/readyz` detail: always ready, degraded while the database is unreachable.
    pub(crate) fn readiness(&self) -> (String, bool, String) {
        let detail = match self.health.load(Ordering::Relaxed) {
            UP => "postgresql up",
            DOWN => "degraded: postgresql unreachable; flow requests that need a record answer 503",
            _ => "postgresql not reached yet",
        };
        ("flows database".to_owned(), true, detail.to_owned())
    }

    /// Record how getting a connection went, logging each change between up and down once.
    fn note(&self, result: &Result<deadpool_postgres::Object, StoreError>) {
        let now = if result.is_ok() { UP } else { DOWN };
        let was = self.health.swap(now, Ordering::Relaxed);
        match (was, result) {
            (UP, Ok(_)) | (DOWN, Err(_)) => {}
            (_, Ok(_)) => tracing::info!("flows database (PostgreSQL) reachable"),
            (_, Err(e)) => {
                tracing::warn!(error = %e, "flows database (PostgreSQL) unreachable; flow requests that need a record answer 503 until it is back")
            }
        }
    }

    /// A pooled connection, the migrations run on the first.
    async fn migrated_client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        let client = self
            .pool
            .get()
            .await
            .map_err(|e| StoreError::Postgres(format!("no connection: {e}")))?;
        self.migrated
            .get_or_try_init(|| async {
                migrate(&client).await?;
                tracing::info!(
                    migrations = MIGRATIONS.len(),
                    "flows database (PostgreSQL) migrated"
                );
                Ok::<(), StoreError>(())
            })
            .await?;
        Ok(client)
    }

    /// A pooled connection on a migrated database; the first write of each hour purges old rows first.
    async fn client(&self, writing: bool) -> Result<deadpool_postgres::Object, StoreError> {
        let client = self.migrated_client().await;
        self.note(&client);
        let client = client?;
        let now = now_secs();
        let last = self.last_purge.load(Ordering::Relaxed);
        if writing
            && now.saturating_sub(last) >= PURGE_EVERY_SECS
            && self
                .last_purge
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let cutoff = now.saturating_sub(self.retention_secs);
            let purged = client
                .execute(
                    "DELETE FROM incode_events WHERE received_at < $1",
                    &[&cutoff],
                )
                .await
                .map_err(query)?
                + client
                    .execute(
                        "DELETE FROM incode_approvals WHERE updated_at < $1 AND state != 'pending'",
                        &[&cutoff],
                    )
                    .await
                    .map_err(query)?
                + client
                    .execute(
                        "DELETE FROM telesign_tokens WHERE expires_at < $1",
                        &[&cutoff],
                    )
                    .await
                    .map_err(query)?;
            tracing::debug!(purged, "flows database: rows past the retention purged");
        }
        Ok(client)
    }

    pub(crate) async fn record_incode_event(&self, ev: IncodeEvent) -> Result<(), StoreError> {
        self.client(true)
            .await?
            .execute(
                "INSERT INTO incode_events
                 (interview_id, onboarding_status, client_id, flow_id, external_id, received_at)
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &ev.interview_id,
                    &ev.onboarding_status,
                    &ev.client_id,
                    &ev.flow_id,
                    &ev.external_id,
                    &now_secs(),
                ],
            )
            .await
            .map(drop)
            .map_err(query)
    }

    pub(crate) async fn claim_approval(&self, interview_id: &str) -> Result<Claim, StoreError> {
        let c = self.client(false).await?;
        let now = now_secs();
        // One statement decides: a new row, or a pending claim gone stale, is this replica's; any other row is not.
        let won = c
            .query_opt(
                "INSERT INTO incode_approvals (interview_id, state, reason, updated_at)
                 VALUES ($1, 'pending', 'decision in progress', $2)
                 ON CONFLICT (interview_id) DO UPDATE SET updated_at = EXCLUDED.updated_at
                 WHERE incode_approvals.state = 'pending' AND incode_approvals.updated_at < $3
                 RETURNING interview_id",
                &[&interview_id, &now, &(now - STALE_CLAIM_SECS)],
            )
            .await
            .map_err(query)?;
        if won.is_some() {
            return Ok(Claim::Won);
        }
        let row = c
            .query_one(
                "SELECT state, reason, updated_at FROM incode_approvals WHERE interview_id = $1",
                &[&interview_id],
            )
            .await
            .map_err(query)?;
        Ok(Claim::Taken(Decision {
            state: row.get(0),
            reason: row.get(1),
            updated_at: row.get(2),
        }))
    }

    pub(crate) async fn finish_approval(
        &self,
        interview_id: &str,
        approved: bool,
        reason: &str,
    ) -> Result<(), StoreError> {
        let state = if approved { "approved" } else { "not_approved" };
        self.client(false)
            .await?
            .execute(
                "UPDATE incode_approvals SET state = $2, reason = $3, updated_at = $4 WHERE interview_id = $1",
                &[&interview_id, &state, &reason, &now_secs()],
            )
            .await
            .map(drop)
            .map_err(query)
    }

    pub(crate) async fn release_approval(&self, interview_id: &str) -> Result<(), StoreError> {
        self.client(false)
            .await?
            .execute(
                "DELETE FROM incode_approvals WHERE interview_id = $1 AND state = 'pending'",
                &[&interview_id],
            )
            .await
            .map(drop)
            .map_err(query)
    }

    pub(crate) async fn insert_token(&self, rec: TokenRecord) -> Result<(), StoreError> {
        self.client(true)
            .await?
            .execute(
                "INSERT INTO telesign_tokens (xid, phone, issued_at, expires_at, token_sha256, caller)
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &rec.xid,
                    &rec.phone,
                    &rec.issued_at,
                    &rec.expires_at,
                    &rec.token_sha256,
                    &rec.caller,
                ],
            )
            .await
            .map(drop)
            .map_err(query)
    }

    pub(crate) async fn tokens(
        &self,
        column: &'static str,
        value: String,
        caller: Option<String>,
    ) -> Result<Vec<TokenRecord>, StoreError> {
        // `column` is one of two literals, never input.
        let sql = format!(
            "SELECT xid, phone, issued_at, expires_at, token_sha256, caller FROM telesign_tokens
             WHERE {column} = $1 AND ($2::TEXT IS NULL OR caller = $2) ORDER BY issued_at DESC, id DESC LIMIT 100"
        );
        let rows = self
            .client(false)
            .await?
            .query(&sql, &[&value, &caller])
            .await
            .map_err(query)?;
        Ok(rows
            .iter()
            .map(|r| TokenRecord {
                xid: r.get(0),
                phone: r.get(1),
                issued_at: r.get(2),
                expires_at: r.get(3),
                token_sha256: r.get(4),
                caller: r.get(5),
            })
            .collect())
    }
}

async fn migrate(c: &deadpool_postgres::Object) -> Result<(), StoreError> {
    // One transaction under an advisory lock: replicas starting together run each migration once.
    c.batch_execute("BEGIN").await.map_err(query)?;
    let result = async {
        c.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        c.batch_execute("CREATE TABLE IF NOT EXISTS credgate_schema (version INTEGER NOT NULL)")
            .await?;
        let done: i32 = match c
            .query_opt("SELECT version FROM credgate_schema", &[])
            .await?
        {
            Some(r) => r.get(0),
            None => {
                c.execute("INSERT INTO credgate_schema (version) VALUES (0)", &[])
                    .await?;
                0
            }
        };
        for (i, sql) in MIGRATIONS
            .iter()
            .enumerate()
            .skip(usize::try_from(done).unwrap_or(0))
        {
            c.batch_execute(sql).await?;
            let version = i32::try_from(i + 1).unwrap_or(i32::MAX);
            c.execute("UPDATE credgate_schema SET version = $1", &[&version])
                .await?;
        }
        Ok::<(), tokio_postgres::Error>(())
    }
    .await;
    match result {
        Ok(()) => c.batch_execute("COMMIT").await.map_err(query),
        Err(e) => {
            let _ = c.batch_execute("ROLLBACK").await;
            Err(query(e))
        }
    }
}
