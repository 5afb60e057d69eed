//! The service map's HTTP side, over real sockets: the page and its
//! script served with a policy that forbids outside fetches, bad filter
//! flags refused with `weir observe`'s reason, and streams bounded per
//! kind (one more than allowed is told to come back later).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weir_relay::ui::{UiLimits, router};
use weir_relay::{Limits, Relay};

async fn serve(streams: usize) -> std::net::SocketAddr {
    let relay = Relay::new(Vec::new(), Limits::default());
    let limits = UiLimits {
        streams,
        ..Default::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binding");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(weir_relay::ui::serve(listener, router(relay, limits, None)));
    addr
}

/// Sends a GET and returns the status line, the headers and what of the
/// body came within `wait` (streams never end).
async fn get(addr: std::net::SocketAddr, path: &str, wait: Duration) -> (String, String, TcpStream) {
    let mut s = TcpStream::connect(addr).await.expect("connecting");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .expect("writing");
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    let status = text.lines().next().unwrap_or_default().to_owned();
    (status, text, s)
}

#[tokio::test]
async fn a_policy_check_without_a_source_of_the_cluster_says_how_to_enable_it() {
    let addr = serve(4).await;
    let mut s = TcpStream::connect(addr).await.expect("connecting");
    let body = "kind: NetworkPolicy\n";
    s.write_all(
        format!(
            "POST /api/policy/check HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .expect("writing");
    let mut text = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut text)).await;
    assert!(text.starts_with("HTTP/1.1 404"), "{text}");
    assert!(text.contains("--policy-check"), "{text}");
}

#[tokio::test]
async fn the_page_loads_nothing_from_elsewhere_and_bad_flags_are_refused_with_the_reason() {
    let addr = serve(4).await;
    let (status, text, _) = get(addr, "/", Duration::from_millis(500)).await;
    assert!(status.contains("200"), "{text}");
    assert!(text.contains("content-security-policy: default-src 'self'"), "{text}");
    assert!(text.contains(r#"<script src="map.js">"#), "{text}");
    let (status, text, _) = get(addr, "/map.js", Duration::from_millis(500)).await;
    assert!(status.contains("200") && text.contains("EventSource"), "{status}");
    assert!(
        !text.contains("http://") && !text.contains("https://"),
        "the script fetches nothing outside"
    );

    let (status, text, _) = get(addr, "/api/map", Duration::from_millis(500)).await;
    assert!(status.contains("200") && text.contains(r#""nodes":[]"#), "{text}");

    let (status, text, _) = get(addr, "/api/flows/events?from-pdo=x", Duration::from_millis(500)).await;
    assert!(
        status.contains("400") && text.contains("--from-pdo is not a filter flag"),
        "{text}"
    );
    let (status, text, _) = get(addr, "/api/flows/events?verdict=MAYBE", Duration::from_millis(500)).await;
    assert!(
        status.contains("400") && text.contains("invalid --verdict value: MAYBE"),
        "{text}"
    );
    let (status, text, _) = get(
        addr,
        "/api/flows/events?from-namespace=a&namespace=b",
        Duration::from_millis(500),
    )
    .await;
    assert!(status.contains("400"), "hubble's conflict table holds here too: {text}");
}

#[tokio::test]
async fn streams_are_bounded_and_a_closed_one_frees_its_place() {
    let addr = serve(1).await;
    let (status, text, held) = get(addr, "/api/map/events", Duration::from_millis(1500)).await;
    assert!(status.contains("200") && text.contains("text/event-stream"), "{text}");
    assert!(text.contains("event: map"), "the first map comes at once: {text}");
    let (status, text, _) = get(addr, "/api/map/events", Duration::from_millis(500)).await;
    assert!(status.contains("503") && text.contains("retry-after"), "{text}");
    // Flow streams have their own places.
    let (status, text, flows) = get(addr, "/api/flows/events?verdict=DROPPED", Duration::from_millis(500)).await;
    assert!(status.contains("200"), "{text}");
    drop((held, flows));
    // The server sees the close at its next write: within a keep-alive.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _, _) = get(addr, "/api/map/events", Duration::from_millis(300)).await;
        if status.contains("200") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the place was never freed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
