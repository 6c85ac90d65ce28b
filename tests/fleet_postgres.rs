//! Fleet mode's records on a real PostgreSQL: two replicas with `flows.postgres_url` share the TeleSign ledger and
//! the Incode approval ledger, so any replica answers `token-status` and an interview is approved once.
mod support;

use http::Method;
use serde_json::json;
use support::fake_http::call;
use support::fake_incode;
use support::postgres::Postgres;
use support::{TestGateway, start_gateway};

const API_KEY: &str = "api-key-1";
const ADMIN_TOKEN: &str = "admin-token-1";
const HOOK_SECRET: &str = "hook-secret-1";

fn url(gw: &TestGateway, path: &str) -> String {
    format!("http://127.0.0.1:{}{path}", gw.addr().port())
}

/// A replica serving TeleSign and Incode with its records in `pg`.
async fn replica(pg: &Postgres, incode_url: &str) -> TestGateway {
    start_gateway(&format!(
        r#"
[[listeners]]
address = "127.0.0.1:0"
tls = false

[credentials.incode_admin]
kind = "static"
allowed_hosts = ["127.0.0.1"]
headers = {{ "X-Incode-Hardware-Id" = "{ADMIN_TOKEN}", "x-api-key" = "{API_KEY}", "api-version" = "1.0" }}

[flows]
postgres_url = "{pg}"
postgres_pool_size = 4

[flows.telesign]
customer_id = "CUSTOMER-0001"
api_key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlBQkNERUY="

[flows.incode]
api_url = "{incode_url}"
api_key = "{API_KEY}"
flow_id = "flow-123"
client_id = "acme"
admin_credential = "incode_admin"
redirect_origins = ["https://app.example.com"]
timeout = "5s"

[flows.incode.webhook]
header = "X-Webhook-Secret"
secret = "{HOOK_SECRET}"

[[routes]]
path_prefix = "/telesign"
flow = "telesign"
auth = "none"

[[routes]]
path_prefix = "/incode/hooks"
flow = "incode_webhooks"
auth = "none"
"#,
        pg = pg.url()
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_postgres_share_the_telesign_ledger_and_approve_an_interview_once() {
    let pg = Postgres::start().await;
    let incode = fake_incode::start(API_KEY, ADMIN_TOKEN).await;
    let a = replica(&pg, &incode.url()).await;
    let b = replica(&pg, &incode.url()).await;

    // A token minted on a is in the ledger b reads.
    let minted = call(
        Method::GET,
        &url(&a, "/telesign/token/15551234567/order-7"),
        &[],
        "",
    )
    .await;
    assert_eq!(minted.status, 200, "{}", minted.text());
    let status = call(
        Method::GET,
        &url(&b, "/telesign/token-status/order-7"),
        &[],
        "",
    )
    .await;
    assert_eq!(status.status, 200, "{}", status.text());
    assert!(status.text().contains("order-7"), "{}", status.text());
    // The ledger holds the digest, never the token.
    let rows = pg.psql("SELECT xid, token_sha256 FROM telesign_tokens");
    assert!(rows.contains("order-7"), "{rows}");
    assert!(!rows.contains(&minted.text()), "{rows}");

    // The same finished interview delivered to both replicas at once: one approve call.
    let event = json!({"interviewId": "iv-twice", "onboardingStatus": "ONBOARDING_FINISHED",
                       "clientId": "acme", "flowId": "flow-123"})
    .to_string();
    let headers = [
        ("x-webhook-secret", HOOK_SECRET),
        ("content-type", "application/json"),
    ];
    let (ua, ub) = (
        url(&a, "/incode/hooks/approve"),
        url(&b, "/incode/hooks/approve"),
    );
    let (ra, rb) = tokio::join!(
        call(Method::POST, &ua, &headers, &event),
        call(Method::POST, &ub, &headers, &event)
    );
    assert_eq!(
        (ra.status.as_u16(), rb.status.as_u16()),
        (200, 200),
        "{} / {}",
        ra.text(),
        rb.text()
    );
    assert_eq!(
        incode.seen("/omni/process/approve").len(),
        1,
        "approved exactly once"
    );
    let decisions = pg.psql("SELECT state FROM incode_approvals WHERE interview_id = 'iv-twice'");
    assert_eq!(decisions.trim(), "approved");
    // Delivered again later, to either replica: still once.
    let again = call(Method::POST, &ub, &headers, &event).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.json()["repeated"], true, "{}", again.text());
    assert_eq!(incode.seen("/omni/process/approve").len(), 1);
    // Migrations ran once for both replicas.
    assert_eq!(pg.psql("SELECT version FROM credgate_schema").trim(), "1");
}

/// A gateway serving TeleSign alone, its `[flows]` PostgreSQL settings `postgres`.
async fn telesign_on(postgres: &str) -> TestGateway {
    start_gateway(&format!(
        r#"
[[listeners]]
address = "127.0.0.1:0"
tls = false
[flows]
{postgres}
[flows.telesign]
customer_id = "CUSTOMER-0001"
api_key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlBQkNERUY="
[[routes]]
path_prefix = "/telesign"
flow = "telesign"
auth = "none"
"#
    ))
    .await
}

/// The `/readyz` check of the flows database: ready, and its detail.
fn database_check(gw: &TestGateway) -> Option<(bool, String)> {
    gw.gw
        .readiness()
        .into_iter()
        .find(|(name, _, _)| name == "flows database")
        .map(|(_, ready, detail)| (ready, detail))
}

/// A TeleSign token request, which records the token in the ledger.
async fn mint(gw: &TestGateway, xid: &str) -> support::fake_http::Got {
    call(
        Method::GET,
        &url(gw, &format!("/telesign/token/15551234567/{xid}")),
        &[],
        "",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_unreachable_is_a_503_with_retry_after() {
    let (_held, addr) = support::closed_port();
    let gw = telesign_on(&format!(
        "postgres_url = \"postgres://credgate:hunter2@127.0.0.1:{}/postgres\"",
        addr.port()
    ))
    .await;
    let got = mint(&gw, "o-1").await;
    assert_eq!(got.status, 503, "{}", got.text());
    assert_eq!(got.json()["code"], "flow_storage_unavailable");
    assert!(got.headers.contains_key("retry-after"));
    assert_eq!(
        database_check(&gw),
        Some((
            true,
            "degraded: postgresql unreachable; flow requests that need a record answer 503"
                .to_owned()
        )),
        "ready, and saying the database is down"
    );
    assert!(!got.text().contains("hunter2"));
}

/// A PostgreSQL that takes TCP connections over TLS only: with `sslmode=require` and its CA as `postgres_ca` the
/// ledger is written over TLS; without the CA its certificate is refused, and without `sslmode=require` the server
/// refuses the plain connection: both a 503, nothing written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_tls_verifies_the_server_and_plain_connections_are_not_made() {
    let certs = support::certs::make();
    let pg = Postgres::start_tls(&certs).await;
    let tls_url = format!("{}?sslmode=require", pg.url());
    let gw = telesign_on(&format!(
        "postgres_url = \"{tls_url}\"\npostgres_ca = \"{}\"",
        certs.ca.display()
    ))
    .await;
    let got = mint(&gw, "o-tls").await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(pg.psql("SELECT count(*) FROM telesign_tokens").trim(), "1");
    let over_tls = pg.psql(
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.application_name = 'credgate' AND s.ssl",
    );
    assert_ne!(
        over_tls.trim(),
        "0",
        "the gateway's pooled connection is TLS"
    );

    for (postgres, what) in [
        (
            format!("postgres_url = \"{tls_url}\""),
            "a CA it does not trust",
        ),
        (
            format!("postgres_url = \"{}\"", pg.url()),
            "a plain connection",
        ),
    ] {
        let gw = telesign_on(&postgres).await;
        let got = mint(&gw, "o-refused").await;
        assert_eq!(got.status, 503, "{what}: {}", got.text());
        assert_eq!(got.json()["code"], "flow_storage_unavailable", "{what}");
    }
    assert_eq!(pg.psql("SELECT count(*) FROM telesign_tokens").trim(), "1");
}

/// The database is connected to and migrated when serving starts, before any flow request, and `/readyz` says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_is_migrated_when_serving_starts() {
    let pg = Postgres::start().await;
    let gw = telesign_on(&format!("postgres_url = \"{}\"", pg.url())).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while database_check(&gw) != Some((true, "postgresql up".to_owned())) {
        assert!(
            std::time::Instant::now() < deadline,
            "never migrated: {:?}",
            database_check(&gw)
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(pg.psql("SELECT version FROM credgate_schema").trim(), "1");
    assert_eq!(pg.psql("SELECT count(*) FROM telesign_tokens").trim(), "0");
}
