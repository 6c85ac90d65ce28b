//! The least a hyper-based proxy can do per request, as a yardstick for `benches/load.sh` (`FLOOR=1`): hyper's
//! HTTP/1.1 server and client codecs and nothing else. One upstream connection per caller connection, opened at
//! accept and driven in the caller's task; the caller's `Authorization` is replaced with a fixed one; no routing,
//! timers, request ids, forwarded headers or hop-by-hop handling.
//!
//! `cargo run --release --example hyper_floor -- LISTEN ORIGIN`, e.g. `127.0.0.1:18096 127.0.0.1:18080`.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;

use http::HeaderValue;
use http::header::AUTHORIZATION;
use hyper::body::Incoming;
use hyper::client::conn::http1 as client;
use hyper::server::conn::http1 as server;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: hyper_floor LISTEN ORIGIN";
    let listen: SocketAddr = args.next().ok_or(usage)?.parse()?;
    let origin: SocketAddr = args.next().ok_or(usage)?.parse()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = TcpListener::bind(listen).await?;
        loop {
            let (tcp, _) = listener.accept().await?;
            tokio::task::spawn_local(async move {
                if let Err(e) = serve(tcp, origin).await {
                    eprintln!("hyper_floor: {e}");
                }
            });
        }
    })
}

async fn serve(tcp: TcpStream, origin: SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
    tcp.set_nodelay(true)?;
    let up = TcpStream::connect(origin).await?;
    up.set_nodelay(true)?;
    let (sender, up_conn) = client::handshake(TokioIo::new(up)).await?;
    let sender = Rc::new(RefCell::new(sender));
    let token = HeaderValue::from_static("Bearer upstream-secret-token");
    let svc = service_fn(move |mut req: Request<Incoming>| {
        req.headers_mut().insert(AUTHORIZATION, token.clone());
        // The returned future owns what it needs: the borrow ends here.
        let sent = sender.borrow_mut().send_request(req);
        async move { sent.await.map(|rsp: Response<Incoming>| rsp) }
    });
    let down = server::Builder::new().serve_connection(TokioIo::new(tcp), svc);
    // Both connections in this one task; the caller's end decides when it is over.
    tokio::select! {
        r = down => r?,
        r = up_conn => r?,
    }
    Ok(())
}
