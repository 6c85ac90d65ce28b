//! The flows' records: Incode webhook records and approval decisions (the idempotency ledger), and the TeleSign token
//! ledger, in one of two backends behind [`Store`]: the embedded SQLite file (the default, for a single node) or
//! PostgreSQL ([`postgres`], for a fleet, whose replicas then share the rows). This file is the SQLite one. Created and migrated at start; every query runs on the blocking pool so the request
//! path never waits on disk inside the async runtime. Stores no secrets: TeleSign tokens are kept as SHA-256 digests.
//! Rows older than the retention are purged at start and then by the first write of every hour.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use crate::unix_time::now_secs;

pub(crate) mod postgres;
pub(crate) use postgres::PostgresConfig;

/// Schema migrations, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE incode_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        interview_id TEXT NOT NULL,
        onboarding_status TEXT NOT NULL,
        client_id TEXT,
        flow_id TEXT,
        external_id TEXT,
        received_at INTEGER NOT NULL
    );
    CREATE INDEX incode_events_interview ON incode_events (interview_id);
    CREATE TABLE incode_approvals (
        interview_id TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        reason TEXT NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE TABLE telesign_tokens (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        xid TEXT NOT NULL,
        phone TEXT NOT NULL,
        issued_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        token_sha256 TEXT NOT NULL
    );
    CREATE INDEX telesign_tokens_xid ON telesign_tokens (xid);
    CREATE INDEX telesign_tokens_phone ON telesign_tokens (phone, issued_at);",
    // Who minted each token, so that the ledger is read by that caller only; rows from before are nobody's.
    "ALTER TABLE telesign_tokens ADD COLUMN caller TEXT NOT NULL DEFAULT '';
    CREATE INDEX telesign_tokens_caller ON telesign_tokens (caller, xid);",
];

/// How often writes purge rows past the retention.
const PURGE_EVERY_SECS: i64 = 3600;

/// A pending approval older than this is taken to be abandoned (the process died mid-call) and may be claimed again.
const STALE_CLAIM_SECS: i64 = 300;

/// The database failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Opening or migrating the file failed.
    #[error("flows.database {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rusqlite::Error,
    },
    /// A query failed.
    #[error("database query failed: {0}")]
    Query(#[from] rusqlite::Error),
    /// The blocking task running a query was lost, or the connection lock was poisoned by a panic.
    #[error("database worker failed")]
    Worker,
    /// PostgreSQL could not be reached or a statement failed.
    #[error("flows database (PostgreSQL): {0}")]
    Postgres(String),
}

/// The flows' records, in whichever backend is configured.
#[derive(Debug, Clone)]
pub(crate) enum Store {
    /// The embedded file.
    Sqlite(Sqlite),
    /// A PostgreSQL database shared by the fleet.
    Postgres(Arc<postgres::Postgres>),
}

impl Store {
    /// Open (creating if needed) and migrate the SQLite database at `path`.
    pub(crate) fn open(path: &Path, retention: Duration) -> Result<Self, StoreError> {
        Sqlite::open(path, retention).map(Store::Sqlite)
    }

    /// The PostgreSQL database of `cfg`; connected and migrated by [`Store::prepare`] (or on first use).
    pub(crate) fn postgres(cfg: &PostgresConfig, retention: Duration) -> Result<Self, StoreError> {
        postgres::Postgres::new(cfg, retention).map(Store::Postgres)
    }

    /// Connect to and migrate a PostgreSQL database now, when serving starts (the file was opened at build).
    pub(crate) async fn prepare(&self) {
        if let Store::Postgres(p) = self {
            p.prepare().await;
        }
    }

    /// The `/readyz` check of a PostgreSQL database: ready, with whether it is reachable.
    pub(crate) fn readiness(&self) -> Option<(String, bool, String)> {
        match self {
            Store::Sqlite(_) => None,
            Store::Postgres(p) => Some(p.readiness()),
        }
    }

    /// Record one Incode webhook delivery.
    pub(crate) async fn record_incode_event(&self, ev: IncodeEvent) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.record_incode_event(ev).await,
            Store::Postgres(p) => p.record_incode_event(ev).await,
        }
    }

    /// Try to become the one delivery (on any replica) that decides `interview_id`. A pending claim older than five
    /// minutes is taken over, so a crash mid-decision does not block the interview forever.
    pub(crate) async fn claim_approval(&self, interview_id: &str) -> Result<Claim, StoreError> {
        match self {
            Store::Sqlite(s) => s.claim_approval(interview_id).await,
            Store::Postgres(p) => p.claim_approval(interview_id).await,
        }
    }

    /// Record the final decision for a claimed interview.
    pub(crate) async fn finish_approval(
        &self,
        interview_id: &str,
        approved: bool,
        reason: &str,
    ) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.finish_approval(interview_id, approved, reason).await,
            Store::Postgres(p) => p.finish_approval(interview_id, approved, reason).await,
        }
    }

    /// Drop a claim whose decision could not be made (a vendor call failed), so a redelivery can try again.
    pub(crate) async fn release_approval(&self, interview_id: &str) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.release_approval(interview_id).await,
            Store::Postgres(p) => p.release_approval(interview_id).await,
        }
    }

    /// Record a minted TeleSign token.
    pub(crate) async fn insert_token(&self, rec: TokenRecord) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.insert_token(rec).await,
            Store::Postgres(p) => p.insert_token(rec).await,
        }
    }

    /// Tokens minted for `xid`, newest first: by `caller` only, or by anyone when `None`.
    pub(crate) async fn tokens_by_xid(
        &self,
        xid: &str,
        caller: Option<String>,
    ) -> Result<Vec<TokenRecord>, StoreError> {
        match self {
            Store::Sqlite(s) => s.tokens("xid", xid.to_owned(), caller).await,
            Store::Postgres(p) => p.tokens("xid", xid.to_owned(), caller).await,
        }
    }

    /// The latest tokens minted for `phone` (digits only), newest first, at most 100: by `caller` only, or by
    /// anyone when `None`.
    pub(crate) async fn tokens_by_phone(
        &self,
        phone: &str,
        caller: Option<String>,
    ) -> Result<Vec<TokenRecord>, StoreError> {
        match self {
            Store::Sqlite(s) => s.tokens("phone", phone.to_owned(), caller).await,
            Store::Postgres(p) => p.tokens("phone", phone.to_owned(), caller).await,
        }
    }
}

/// The embedded SQLite database.
#[derive(Debug, Clone)]
pub(crate) struct Sqlite {
    conn: Arc<Mutex<Connection>>,
    /// Rows older than this many seconds are purged.
    retention_secs: i64,
    /// Unix seconds of the last purge.
    last_purge: Arc<AtomicI64>,
}

/// An Incode webhook event as recorded.
#[derive(Debug, Clone)]
pub(crate) struct IncodeEvent {
    /// Interview (session) id.
    pub interview_id: String,
    /// Onboarding status.
    pub onboarding_status: String,
    /// Client id, when sent.
    pub client_id: Option<String>,
    /// Flow id, when sent.
    pub flow_id: Option<String>,
    /// External id, when sent.
    pub external_id: Option<String>,
}

/// The state of one interview's approval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Decision {
    /// `approved`, `not_approved` or `pending`.
    pub state: String,
    /// Why.
    pub reason: String,
    /// Unix seconds of the last change.
    pub updated_at: i64,
}

/// Result of trying to claim an interview for approval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Claim {
    /// This caller now owns the decision and must finish or release it.
    Won,
    /// A decision exists (or another delivery is deciding right now).
    Taken(Decision),
}

/// One minted TeleSign token, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TokenRecord {
    /// The external id (join key for Get Status).
    pub xid: String,
    /// Phone number, digits only.
    pub phone: String,
    /// Unix seconds, the token's `iat`.
    pub issued_at: i64,
    /// Unix seconds, the token's `exp`.
    pub expires_at: i64,
    /// Hex SHA-256 of the token.
    pub token_sha256: String,
    /// Who minted it: the only caller who may read it back (besides an admin).
    pub caller: String,
}

impl Sqlite {
    /// Open (creating if needed) and migrate the database at `path`, then purge rows older than `retention`.
    pub(crate) fn open(path: &Path, retention: Duration) -> Result<Self, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        let mut conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        // WAL lets readers proceed while a writer commits; `journal_mode` answers with a row, hence query_row.
        conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
            .map_err(open_err)?;
        migrate(&mut conn).map_err(open_err)?;
        let retention_secs = i64::try_from(retention.as_secs()).unwrap_or(i64::MAX);
        purge(&conn, now_secs().saturating_sub(retention_secs)).map_err(open_err)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            retention_secs,
            last_purge: Arc::new(AtomicI64::new(now_secs())),
        })
    }

    /// Run `f` under the connection; the first write of each hour purges old rows first.
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let now = now_secs();
        let last = self.last_purge.load(Ordering::Relaxed);
        let due = now.saturating_sub(last) >= PURGE_EVERY_SECS
            && self
                .last_purge
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        let cutoff = now.saturating_sub(self.retention_secs);
        self.run(move |c| {
            if due {
                let purged = purge(c, cutoff)?;
                tracing::debug!(purged, "flows database: rows past the retention purged");
            }
            f(c)
        })
        .await
    }

    async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().map_err(|_| StoreError::Worker)?;
            f(&mut guard).map_err(StoreError::Query)
        })
        .await
        .map_err(|_| StoreError::Worker)?
    }

    /// Record one Incode webhook delivery.
    pub(crate) async fn record_incode_event(&self, ev: IncodeEvent) -> Result<(), StoreError> {
        self.write(move |c| {
            c.execute(
                "INSERT INTO incode_events
                 (interview_id, onboarding_status, client_id, flow_id, external_id, received_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    ev.interview_id,
                    ev.onboarding_status,
                    ev.client_id,
                    ev.flow_id,
                    ev.external_id,
                    now_secs()
                ],
            )
            .map(drop)
        })
        .await
    }

    /// Try to become the one delivery that decides `interview_id`. A pending claim older than five minutes is
    /// taken over, so a crash mid-decision does not block the interview forever.
    pub(crate) async fn claim_approval(&self, interview_id: &str) -> Result<Claim, StoreError> {
        let id = interview_id.to_owned();
        self.run(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let now = now_secs();
            let existing = tx
                .query_row(
                    "SELECT state, reason, updated_at FROM incode_approvals WHERE interview_id = ?1",
                    params![id],
                    |r| {
                        Ok(Decision {
                            state: r.get(0)?,
                            reason: r.get(1)?,
                            updated_at: r.get(2)?,
                        })
                    },
                )
                .optional()?;
            let claim = match existing {
                Some(d) if d.state != "pending" || now - d.updated_at < STALE_CLAIM_SECS => {
                    Claim::Taken(d)
                }
                _ => {
                    tx.execute(
                        "INSERT INTO incode_approvals (interview_id, state, reason, updated_at)
                         VALUES (?1, 'pending', 'decision in progress', ?2)
                         ON CONFLICT (interview_id) DO UPDATE SET updated_at = excluded.updated_at",
                        params![id, now],
                    )?;
                    Claim::Won
                }
            };
            tx.commit()?;
            Ok(claim)
        })
        .await
    }

    /// Record the final decision for a claimed interview.
    pub(crate) async fn finish_approval(
        &self,
        interview_id: &str,
        approved: bool,
        reason: &str,
    ) -> Result<(), StoreError> {
        let (id, reason) = (interview_id.to_owned(), reason.to_owned());
        let state = if approved { "approved" } else { "not_approved" };
        self.run(move |c| {
            c.execute(
                "UPDATE incode_approvals SET state = ?2, reason = ?3, updated_at = ?4 WHERE interview_id = ?1",
                params![id, state, reason, now_secs()],
            )
            .map(drop)
        })
        .await
    }

    /// Drop a claim whose decision could not be made (a vendor call failed), so a redelivery can try again.
    pub(crate) async fn release_approval(&self, interview_id: &str) -> Result<(), StoreError> {
        let id = interview_id.to_owned();
        self.run(move |c| {
            c.execute(
                "DELETE FROM incode_approvals WHERE interview_id = ?1 AND state = 'pending'",
                params![id],
            )
            .map(drop)
        })
        .await
    }

    /// Record a minted TeleSign token.
    pub(crate) async fn insert_token(&self, rec: TokenRecord) -> Result<(), StoreError> {
        self.write(move |c| {
            c.execute(
                "INSERT INTO telesign_tokens (xid, phone, issued_at, expires_at, token_sha256, caller)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    rec.xid,
                    rec.phone,
                    rec.issued_at,
                    rec.expires_at,
                    rec.token_sha256,
                    rec.caller
                ],
            )
            .map(drop)
        })
        .await
    }

    /// Tokens whose `column` is `value`, newest first, at most 100: by `caller` only, or by anyone when `None`.
    async fn tokens(
        &self,
        column: &'static str,
        value: String,
        caller: Option<String>,
    ) -> Result<Vec<TokenRecord>, StoreError> {
        // `column` is one of two literals above, never input.
        let sql = format!(
            "SELECT xid, phone, issued_at, expires_at, token_sha256, caller FROM telesign_tokens
             WHERE {column} = ?1 AND (?2 IS NULL OR caller = ?2) ORDER BY issued_at DESC, id DESC LIMIT 100"
        );
        self.run(move |c| {
            let mut stmt = c.prepare(&sql)?;
            let rows = stmt.query_map(params![value, caller], |r| {
                Ok(TokenRecord {
                    xid: r.get(0)?,
                    phone: r.get(1)?,
                    issued_at: r.get(2)?,
                    expires_at: r.get(3)?,
                    token_sha256: r.get(4)?,
                    caller: r.get(5)?,
                })
            })?;
            rows.collect()
        })
        .await
    }
}

/// Delete rows older than `cutoff` (Unix seconds): webhook records, decided approvals and expired ledger entries. A
/// pending approval is kept (its claim expires on its own). Returns how many rows went.
fn purge(c: &Connection, cutoff: i64) -> rusqlite::Result<usize> {
    Ok(
        c.execute("DELETE FROM incode_events WHERE received_at < ?1", [cutoff])?
            + c.execute(
                "DELETE FROM incode_approvals WHERE updated_at < ?1 AND state != 'pending'",
                [cutoff],
            )?
            + c.execute(
                "DELETE FROM telesign_tokens WHERE expires_at < ?1",
                [cutoff],
            )?,
    )
}

fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    let done: usize = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(done) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i + 1)?;
    }
    tx.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database path in a fresh temp directory, removed with the value.
    struct TempDb(PathBuf);

    impl Drop for TempDb {
        fn drop(&mut self) {
            if let Some(dir) = self.0.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }

    fn sqlite(s: &Store) -> &Sqlite {
        match s {
            Store::Sqlite(s) => s,
            Store::Postgres(_) => panic!("an SQLite store"),
        }
    }

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn record(xid: &str, expires_at: i64) -> TokenRecord {
        TokenRecord {
            xid: xid.into(),
            phone: "15551234567".into(),
            issued_at: expires_at - 90,
            expires_at,
            token_sha256: "h".into(),
            caller: "c".into(),
        }
    }

    #[tokio::test]
    async fn rows_past_the_retention_are_purged_at_start_and_by_the_hourly_write() {
        let db = temp_db("retention");
        let store = Store::open(&db.0, DAY).expect("open");
        let old = now_secs() - 2 * 24 * 3600;
        store
            .insert_token(record("old", old))
            .await
            .expect("insert");
        store
            .insert_token(record("new", now_secs() + 90))
            .await
            .expect("insert");
        let count = |s: &Store| -> i64 {
            let c = sqlite(s).conn.lock().expect("lock");
            c.query_row("SELECT count(*) FROM telesign_tokens", [], |r| r.get(0))
                .expect("count")
        };
        assert_eq!(count(&store), 2, "no purge within the hour");
        // An hour later the next write purges.
        sqlite(&store)
            .last_purge
            .store(now_secs() - PURGE_EVERY_SECS, Ordering::Relaxed);
        store
            .insert_token(record("newer", now_secs() + 90))
            .await
            .expect("insert");
        assert_eq!(count(&store), 2, "the old row is gone, the new ones stay");
        assert!(
            store
                .tokens_by_xid("old", None)
                .await
                .expect("read")
                .is_empty()
        );
        // And at start.
        store
            .insert_token(record("old2", old))
            .await
            .expect("insert");
        drop(store);
        let store = Store::open(&db.0, DAY).expect("reopen");
        assert_eq!(count(&store), 2);
    }

    #[tokio::test]
    async fn the_ledger_is_read_by_the_caller_that_minted_unless_no_caller_is_given() {
        let db = temp_db("ledger-caller");
        let store = Store::open(&db.0, DAY).expect("open");
        store
            .insert_token(record("x", now_secs() + 90))
            .await
            .expect("insert");
        let by = |c: Option<&str>| store.tokens_by_xid("x", c.map(str::to_owned));
        assert_eq!(by(Some("c")).await.expect("read").len(), 1);
        assert!(by(Some("other")).await.expect("read").is_empty());
        assert_eq!(by(None).await.expect("read").len(), 1);
    }

    fn temp_db(tag: &str) -> TempDb {
        let dir = std::env::temp_dir().join(format!("credgate-store-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let p = dir.join("flows.db");
        let _ = std::fs::remove_file(&p);
        TempDb(p)
    }

    #[tokio::test]
    async fn claim_is_exclusive_and_released_claims_can_be_retaken() {
        let db = temp_db("claim");
        let store = Store::open(&db.0, DAY).expect("open");
        assert_eq!(store.claim_approval("i1").await.expect("claim"), Claim::Won);
        match store.claim_approval("i1").await.expect("claim") {
            Claim::Taken(d) => assert_eq!(d.state, "pending"),
            Claim::Won => panic!("second claim must not win"),
        }
        store.release_approval("i1").await.expect("release");
        assert_eq!(store.claim_approval("i1").await.expect("claim"), Claim::Won);
        store
            .finish_approval("i1", true, "overall OK")
            .await
            .expect("finish");
        match store.claim_approval("i1").await.expect("claim") {
            Claim::Taken(d) => assert_eq!(
                (d.state.as_str(), d.reason.as_str()),
                ("approved", "overall OK")
            ),
            Claim::Won => panic!("decided interview must not be claimed"),
        }
    }

    #[test]
    fn migrations_are_recorded_and_reopening_keeps_data() {
        let db = temp_db("reopen");
        {
            let s = Store::open(&db.0, DAY).expect("open");
            let c = sqlite(&s).conn.lock().expect("lock");
            c.execute(
                "INSERT INTO telesign_tokens (xid, phone, issued_at, expires_at, token_sha256) VALUES ('x', '1', 1, 9999999999, 'h')",
                [],
            )
            .expect("insert");
        }
        let s = Store::open(&db.0, DAY).expect("reopen");
        let c = sqlite(&s).conn.lock().expect("lock");
        let v: usize = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .expect("version");
        assert_eq!(v, MIGRATIONS.len());
        let n: i64 = c
            .query_row("SELECT count(*) FROM telesign_tokens", [], |r| r.get(0))
            .expect("count");
        assert_eq!(n, 1);
    }
}
