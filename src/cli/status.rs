//! `credgate status`: a running gateway's credentials and issuers, read from its admin listener and printed as two
//! tables, for people on the box.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

/// An admin listener: where, and the token it wants.
pub(super) struct Admin {
    /// Its address.
    pub address: SocketAddr,
    /// Its bearer token, when it has one.
    pub token: Option<SecretString>,
}

/// Both tables, from the admin listener at `admin`.
pub(super) async fn render(admin: &Admin) -> Result<String, std::io::Error> {
    let creds = get(admin, "/admin/credentials").await?;
    let issuers = get(admin, "/admin/issuers").await?;
    let mut out = String::new();
    let rows: Vec<Vec<String>> = list(&creds, "credentials")
        .iter()
        .map(|c| {
            vec![
                text(&c["name"]),
                text(&c["kind"]),
                c.get("state").map_or_else(|| "-".into(), text),
                secs(&c["expires_in_secs"]),
                secs(&c["next_renewal_in_secs"]),
                match c["last_fetch_ok"].as_bool() {
                    Some(true) => "ok".into(),
                    Some(false) => "failed".into(),
                    None => "-".into(),
                },
                c.get("consecutive_failures")
                    .map_or_else(|| "-".into(), |n| n.to_string()),
            ]
        })
        .collect();
    table(
        &mut out,
        &[
            "CREDENTIAL",
            "KIND",
            "STATE",
            "EXPIRES IN",
            "RENEWS IN",
            "LAST FETCH",
            "FAILING",
        ],
        &rows,
    );
    out.push('\n');
    let rows: Vec<Vec<String>> = list(&issuers, "issuers")
        .iter()
        .map(|i| {
            let keys: Vec<String> = i["keys"]
                .as_array()
                .map(|k| {
                    k.iter()
                        .map(|k| format!("{} ({})", text(&k["kid"]), text(&k["type"])))
                        .collect()
                })
                .unwrap_or_default();
            vec![
                text(&i["name"]),
                if i["ready"] == true { "yes" } else { "no" }.into(),
                if keys.is_empty() {
                    "-".into()
                } else {
                    keys.join(", ")
                },
                secs(&i["jwks_age_secs"]),
                i["last_error"].as_str().unwrap_or("-").to_owned(),
            ]
        })
        .collect();
    table(
        &mut out,
        &["ISSUER", "READY", "KEYS", "JWKS AGE", "LAST ERROR"],
        &rows,
    );
    Ok(out)
}

/// `GET path` on the admin listener, as JSON.
async fn get(admin: &Admin, path: &str) -> Result<Value, std::io::Error> {
    let (status, doc) = call(admin, http::Method::GET, path).await?;
    if !status.is_success() {
        return Err(std::io::Error::other(format!(
            "admin listener {}{path}: answered {status}",
            admin.address
        )));
    }
    Ok(doc)
}

/// `credgate reload`: ask the gateway to reload and say how it went; an error when the running config stays.
pub(super) async fn reload(admin: &Admin) -> Result<String, std::io::Error> {
    let (status, doc) = call(admin, http::Method::POST, "/admin/reload").await?;
    if status.is_success() {
        let r = &doc["reload"];
        let detail = text(&r["detail"]);
        Ok(format!(
            "reloaded: config generation {}{}\n",
            r["generation"],
            if detail.is_empty() || detail == "-" {
                String::new()
            } else {
                format!(" ({detail})")
            }
        ))
    } else {
        Err(std::io::Error::other(format!(
            "reload refused ({status}): {}",
            text(&doc["detail"])
        )))
    }
}

/// One request to the admin listener: its status and JSON body.
async fn call(
    admin: &Admin,
    method: http::Method,
    path: &str,
) -> Result<(http::StatusCode, Value), std::io::Error> {
    let address = admin.address;
    let fail =
        |what: String| std::io::Error::other(format!("admin listener {address}{path}: {what}"));
    let tcp = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| fail(e.to_string()))?;
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, address.to_string());
    if let Some(t) = &admin.token {
        req = req.header(
            http::header::AUTHORIZATION,
            format!("Bearer {}", t.expose_secret()),
        );
    }
    let req = req
        .body(Empty::<Bytes>::new())
        .map_err(|e| fail(e.to_string()))?;
    let rsp = sender
        .send_request(req)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let status = rsp.status();
    let body = rsp
        .into_body()
        .collect()
        .await
        .map_err(|e| fail(e.to_string()))?
        .to_bytes();
    let doc =
        serde_json::from_slice(&body).map_err(|e| fail(format!("{status}, not JSON: {e}")))?;
    Ok((status, doc))
}

fn list<'a>(doc: &'a Value, key: &str) -> &'a [Value] {
    doc[key].as_array().map_or(&[], Vec::as_slice)
}

fn text(v: &Value) -> String {
    v.as_str().map_or_else(|| "-".into(), str::to_owned)
}

fn secs(v: &Value) -> String {
    v.as_u64().map_or_else(|| "-".into(), |s| format!("{s}s"))
}

/// `rows` under `head`, in columns as wide as their widest cell.
fn table(out: &mut String, head: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let cells: Vec<String> = cells
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    };
    line(&mut head.iter().copied());
    for r in rows {
        line(&mut r.iter().map(String::as_str));
    }
}
