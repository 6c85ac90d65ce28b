//! Bodies stream through the gateway in both directions: a 1 GiB upload and a 1 GiB download pass while the
//! process's peak resident memory grows by far less than the body. The gateway runs in this process, so its memory is
//! this process's memory; the test is alone in its binary so that no other test disturbs the measurement.
mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use support::upstream::{self, Behaviour};

const GIB: u64 = 1 << 30;
const CHUNK: usize = 64 * 1024;
/// Far below the body size: what the gateway may buffer at most, with room for allocator noise.
const MAX_GROWTH_KIB: u64 = 100 * 1024;

/// `VmRSS` or `VmHWM` of this process, in KiB.
fn proc_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} not in /proc/self/status"))
}

/// Reset the peak (`VmHWM`) to the current RSS, so the next reading is the peak of what follows.
fn reset_peak() {
    // Linux >= 4.0; on failure the peak only over-counts, which cannot hide a regression.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn config(url: &str) -> String {
    format!(
        r#"
[[listeners]]
address = "127.0.0.1:0"
tls = false
[upstreams.u]
url = "{url}"
response_timeout = "10m"
[[routes]]
path_prefix = "/"
upstream = "u"
auth = "none"
max_body_bytes = {max}
"#,
        max = 2 * GIB
    )
}

async fn connect(
    addr: std::net::SocketAddr,
) -> hyper::client::conn::http1::SendRequest<StreamBody<BodyStream>> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    sender
}

type BodyStream =
    futures_util::stream::BoxStream<'static, Result<hyper::body::Frame<Bytes>, std::io::Error>>;

/// `len` bytes as a stream of 64 KiB frames sharing one buffer: the test itself allocates nothing per frame.
fn generated(len: u64) -> StreamBody<BodyStream> {
    use futures_util::StreamExt;
    let chunk = Bytes::from(vec![b'u'; CHUNK]);
    let stream = futures_util::stream::unfold(len, move |left| {
        let chunk = chunk.clone();
        async move {
            if left == 0 {
                return None;
            }
            let take = left.min(CHUNK as u64) as usize;
            Some((
                Ok(hyper::body::Frame::data(chunk.slice(..take))),
                left - take as u64,
            ))
        }
    });
    StreamBody::new(stream.boxed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_streams_both_ways_with_bounded_memory() {
    let up = upstream::start(Behaviour::Ok).await;
    let gw = support::start_gateway(&config(&up.url())).await;

    // Upload: chunked, so nothing tells the gateway the size in advance.
    reset_peak();
    let before = proc_kib("VmRSS:");
    let started = Instant::now();
    let mut sender = connect(gw.addr()).await;
    let req = Request::post("/upload")
        .header("host", "localhost")
        .body(generated(GIB))
        .expect("request");
    let rsp = tokio::time::timeout(Duration::from_secs(600), sender.send_request(req))
        .await
        .expect("upload finished in time")
        .expect("upload response");
    assert_eq!(rsp.status(), StatusCode::OK);
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body_len, GIB, "the upstream counted every byte");
    assert!(seen[0].body_complete);
    let growth = proc_kib("VmHWM:").saturating_sub(before);
    eprintln!(
        "upload: 1 GiB in {:?}, peak RSS growth {growth} KiB",
        started.elapsed()
    );
    assert!(
        growth < MAX_GROWTH_KIB,
        "peak RSS grew by {growth} KiB during a 1 GiB upload"
    );

    // Download: the upstream streams 1 GiB back; count it frame by frame without keeping it.
    let down = upstream::start(Behaviour::Download(GIB)).await;
    let gw2 = support::start_gateway(&config(&down.url())).await;
    reset_peak();
    let before = proc_kib("VmRSS:");
    let started = Instant::now();
    let mut sender = connect(gw2.addr()).await;
    let req = Request::get("/download")
        .header("host", "localhost")
        .body(generated(0))
        .expect("request");
    let rsp = sender.send_request(req).await.expect("download response");
    assert_eq!(rsp.status(), StatusCode::OK);
    let mut body = rsp.into_body();
    let mut got = 0u64;
    let count = async {
        while let Some(frame) = body.frame().await {
            got += frame
                .expect("frame")
                .data_ref()
                .map_or(0, |d| d.len() as u64);
        }
    };
    tokio::time::timeout(Duration::from_secs(600), count)
        .await
        .expect("download finished in time");
    assert_eq!(got, GIB, "every byte came back");
    let growth = proc_kib("VmHWM:").saturating_sub(before);
    eprintln!(
        "download: 1 GiB in {:?}, peak RSS growth {growth} KiB",
        started.elapsed()
    );
    assert!(
        growth < MAX_GROWTH_KIB,
        "peak RSS grew by {growth} KiB during a 1 GiB download"
    );
}
