//! A real browser for tests: Debian's headless Chromium driven by its
//! ChromeDriver over W3C WebDriver (plain HTTP and JSON on loopback). The
//! client is the few commands the tests use, written here: the Rust
//! WebDriver crates bring an HTTP client stack and a cookie jar the tests
//! do not need.
//!
//! Panics with the browser's own message on any failure: these are tests.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The W3C name of an element reference in WebDriver's JSON.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A Chromium session; closed (and its driver stopped) on drop.
pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
    profile: PathBuf,
}

/// An element of the page.
pub struct Element<'a> {
    browser: &'a Browser,
    id: String,
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
    l.local_addr().expect("its address").port()
}

impl Browser {
    /// Starts ChromeDriver and a headless Chromium of `width`x`height`.
    /// `None` (the test skips, saying so) when they are not installed;
    /// under `CI=true` that is a failure.
    pub fn start(width: u32, height: u32) -> Option<Browser> {
        let (chromium, driver) = (Path::new("/usr/bin/chromium"), Path::new("/usr/bin/chromedriver"));
        if !chromium.exists() || !driver.exists() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true but chromium or chromedriver is missing: scripts/deps.sh installs them"
            );
            eprintln!("skipping: chromium and chromium-driver are not installed (scripts/deps.sh)");
            return None;
        }
        // A port taken between here and ChromeDriver binding it fails the
        // start below, loudly; nothing else listens on loopback here.
        let port = free_port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver");
        let profile = std::env::temp_dir().join(format!("weir-browser-{}-{port}", std::process::id()));
        let mut b = Browser {
            driver: child,
            port,
            session: String::new(),
            profile,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut args: Vec<String> = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
        ]
        .map(String::from)
        .to_vec();
        args.push(format!("--window-size={width},{height}"));
        args.push(format!("--user-data-dir={}", b.profile.display()));
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args},
        }}});
        let v = b.call("POST", "/session", Some(caps));
        b.session = v["sessionId"].as_str().expect("a session id").to_owned();
        Some(b)
    }

    /// One WebDriver command: its `value`, or a panic with the error.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.try_call(method, path, body).unwrap_or_else(|e| panic!("{e}"))
    }

    /// One WebDriver command: its `value`, or the browser's error.
    fn try_call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connecting to chromedriver");
        s.set_read_timeout(Some(Duration::from_secs(60)))
            .expect("a read timeout");
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.port,
            body.len()
        );
        s.write_all(req.as_bytes()).expect("writing to chromedriver");
        // ChromeDriver keeps the connection open whatever the request
        // says: read the headers, then exactly the body they announce.
        let mut raw = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        let payload = loop {
            let n = s.read(&mut buf).expect("reading from chromedriver");
            assert!(n > 0, "{method} {path}: chromedriver closed the connection");
            raw.extend_from_slice(&buf[..n]);
            let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let body = &raw[end + 4..];
            if head.contains("transfer-encoding: chunked") {
                let text = String::from_utf8_lossy(body);
                if text.contains("\r\n0\r\n") || text.starts_with("0\r\n") {
                    break dechunk(&text);
                }
                continue;
            }
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or_else(|| panic!("{method} {path}: no content-length in {head}"));
            if body.len() >= len {
                break String::from_utf8_lossy(&body[..len]).into_owned();
            }
        };
        let v: Value =
            serde_json::from_str(&payload).unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {payload}"));
        let value = v["value"].clone();
        if let Some(err) = value.get("error") {
            return Err(format!("{method} {path}: {err}: {}", value["message"]));
        }
        Ok(value)
    }

    fn at(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    pub fn goto(&self, url: &str) {
        self.call("POST", &self.at("/url"), Some(json!({ "url": url })));
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page.
    pub fn eval(&self, script: &str, args: Value) -> Value {
        self.call(
            "POST",
            &self.at("/execute/sync"),
            Some(json!({"script": script, "args": args})),
        )
    }

    /// Runs `script` asynchronously: it ends by calling the last of its
    /// `arguments` with the result (WebDriver's execute/async).
    pub fn eval_async(&self, script: &str, args: Value) -> Value {
        self.call(
            "POST",
            &self.at("/execute/async"),
            Some(json!({"script": script, "args": args})),
        )
    }

    /// The first element `css` selects, if any.
    pub fn find(&self, css: &str) -> Option<Element<'_>> {
        let found = self.call(
            "POST",
            &self.at("/elements"),
            Some(json!({"using": "css selector", "value": css})),
        );
        let id = found.as_array()?.first()?[ELEMENT].as_str()?.to_owned();
        Some(Element { browser: self, id })
    }

    /// Waits (up to `timeout`) until `check` gives a value.
    pub fn wait<'b, T>(&'b self, what: &str, timeout: Duration, mut check: impl FnMut(&'b Browser) -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(t) = check(self) {
                return t;
            }
            assert!(Instant::now() < deadline, "waited {timeout:?} for {what}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A PNG of the window.
    pub fn screenshot(&self) -> Vec<u8> {
        let b64 = self.call("GET", &self.at("/screenshot"), None);
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().expect("base64 PNG"))
            .expect("a base64 PNG")
    }
}

impl Element<'_> {
    /// A real click (WebDriver moves the pointer to the element's
    /// centre), or why not: a page that redraws may have replaced the
    /// element (a stale reference), so callers find and click again.
    pub fn click(&self) -> Result<(), String> {
        let b = self.browser;
        b.try_call("POST", &b.at(&format!("/element/{}/click", self.id)), Some(json!({})))
            .map(|_| ())
    }

    pub fn text(&self) -> Result<String, String> {
        let b = self.browser;
        b.try_call("GET", &b.at(&format!("/element/{}/text", self.id)), None)
            .map(|v| v.as_str().unwrap_or_default().to_owned())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            // Closing the session ends Chromium; a failure here must not
            // panic while a test is already panicking.
            let path = self.at("");
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.call("DELETE", &path, None)));
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}
