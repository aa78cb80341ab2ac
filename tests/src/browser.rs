//! A real, headless Chromium (Debian's `chromium`), driven over W3C WebDriver by Debian's
//! `chromedriver` — for everything a person sees (the portal, issue 19). `deploy/local/stack.sh`
//! installs both. The client is a few JSON calls over plain HTTP to the driver on loopback; no
//! WebDriver crate (the protocol we use is small and stable: W3C WebDriver, level 2).
//!
//! Screenshots go under `target/screenshots/` (docs embed some of them).

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The element reference's key in WebDriver's JSON (W3C).
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Chromium's flags: headless as root in a container, and no background traffic (this machine
/// has no network beyond package registries; Chromium's background connections fail by the
/// dozen without these — local-stack.md).
const CHROMIUM_ARGS: &[&str] = &[
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,900",
];

/// One browser session; the driver (and with it the browser) is killed when dropped.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: Client<HttpConnector, Full<Bytes>>,
    _profile: TempDir,
}

/// An element found on the page.
pub struct Element(String);

impl Browser {
    /// Starts chromedriver on a free port and a session in a fresh profile. The local stack's
    /// certificates are self-signed by its own CA, which this profile does not know: the
    /// session accepts them (what a test needs; a person's browser would be told the CA).
    pub async fn start() -> Browser {
        let port = crate::free_port();
        let driver = Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, so that dropping kills the browser it started too.
            .process_group(0)
            .spawn()
            .expect("chromedriver (deploy/local/stack.sh installs chromium-driver)");
        let http = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        let base = format!("http://127.0.0.1:{port}");
        let profile = TempDir::new("chromium-profile");
        let mut b = Browser {
            driver,
            base,
            session: String::new(),
            http,
            _profile: profile,
        };
        let started = Instant::now();
        while b.call("GET", "/status", None).await.is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "chromedriver did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|a| a.to_string()).collect();
        args.push(format!("--user-data-dir={}", b._profile.0.display()));
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args}
        }}});
        let v = b
            .call("POST", "/session", Some(caps))
            .await
            .expect("a browser session");
        b.session = v["sessionId"].as_str().expect("a session id").to_string();
        b
    }

    /// One WebDriver command: its `value`, or the driver's error as text.
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let req = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            )))
            .expect("a request");
        let resp = self.http.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
        if status.is_success() {
            Ok(v["value"].clone())
        } else {
            Err(format!("{method} {path}: {status}: {}", v["value"]))
        }
    }

    async fn session_call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let path = format!("/session/{}{path}", self.session);
        self.call(method, &path, body)
            .await
            .unwrap_or_else(|e| panic!("WebDriver: {e}"))
    }

    pub async fn goto(&self, url: &str) {
        self.session_call("POST", "/url", Some(json!({ "url": url })))
            .await;
    }

    pub async fn url(&self) -> String {
        self.session_call("GET", "/url", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub async fn title(&self) -> String {
        self.session_call("GET", "/title", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Waits (up to 10 s) for the page's title to be `expected`: after a click that navigates,
    /// the next page may still be loading.
    pub async fn wait_title(&self, expected: &str) {
        let what = format!("the page's title is not {expected:?}");
        poll_until(|| self.title(), |t| t == expected, &what).await;
    }

    /// The first element matching a CSS selector, waiting up to 10 s for it to appear.
    pub async fn find(&self, css: &str) -> Element {
        let started = Instant::now();
        loop {
            let path = format!("/session/{}/element", self.session);
            let found = self
                .call(
                    "POST",
                    &path,
                    Some(json!({"using": "css selector", "value": css})),
                )
                .await;
            match found {
                Ok(v) => {
                    return Element(
                        v[ELEMENT]
                            .as_str()
                            .unwrap_or_else(|| panic!("an element, not {v}"))
                            .to_string(),
                    )
                }
                Err(e) if started.elapsed() > Duration::from_secs(10) => {
                    panic!("no element {css:?} on {}: {e}", self.url().await)
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// The visible text of the first element matching `css`.
    pub async fn text(&self, css: &str) -> String {
        self.read_element(css, "text").await
    }

    /// The current value of the first element matching `css` (a form field).
    pub async fn value(&self, css: &str) -> String {
        self.read_element(css, "property/value").await
    }

    /// Reads `what` of the first element matching `css`. An element can go stale between
    /// finding and reading it: a form post that returns to a page of the same title replaces
    /// the page under a test that waited on the title. Then it is found again on the new page.
    async fn read_element(&self, css: &str, what: &str) -> String {
        let started = Instant::now();
        loop {
            let e = self.find(css).await;
            let path = format!("/session/{}/element/{}/{what}", self.session, e.0);
            match self.call("GET", &path, None).await {
                Ok(v) => return v.as_str().unwrap_or_default().to_string(),
                // Chromium says it either way: "stale element reference", or (156, when the
                // node went between the find and the read) "does not belong to the document".
                Err(err)
                    if (err.contains("stale element")
                        || err.contains("does not belong to the document"))
                        && started.elapsed() < Duration::from_secs(10) => {}
                Err(err) => panic!("WebDriver: {err}"),
            }
        }
    }

    /// Resizes the window (a taller one shows a whole page in a screenshot).
    pub async fn resize(&self, width: u32, height: u32) {
        self.session_call(
            "POST",
            "/window/rect",
            Some(json!({ "width": width, "height": height })),
        )
        .await;
    }

    /// How many elements match `css` now.
    pub async fn count(&self, css: &str) -> usize {
        self.session_call(
            "POST",
            "/elements",
            Some(json!({"using": "css selector", "value": css})),
        )
        .await
        .as_array()
        .map_or(0, Vec::len)
    }

    /// Waits (up to 10 s) until exactly `n` elements match `css`: after a form that posts and
    /// comes back to a page of the same title, the title says nothing about which page is up.
    pub async fn wait_count(&self, css: &str, n: usize) {
        let what = format!("the elements matching {css:?} are not {n}");
        poll_until(|| self.count(css), |now| *now == n, &what).await;
    }

    /// Waits (up to 10 s) until the first element matching `css` says `needle` (a notice that
    /// replaces an earlier one on a page of the same title).
    pub async fn wait_text(&self, css: &str, needle: &str) {
        let what = format!("{css:?} does not say {needle:?}");
        poll_until(|| self.text(css), |now| now.contains(needle), &what).await;
    }

    /// Types `text` into the first element matching `css` (after clearing it).
    pub async fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        self.session_call("POST", &format!("/element/{}/clear", e.0), Some(json!({})))
            .await;
        self.session_call(
            "POST",
            &format!("/element/{}/value", e.0),
            Some(json!({ "text": text })),
        )
        .await;
    }

    pub async fn click(&self, css: &str) {
        let e = self.find(css).await;
        self.session_call("POST", &format!("/element/{}/click", e.0), Some(json!({})))
            .await;
    }

    /// The page's cookies, as WebDriver reports them (name, value, httpOnly, secure, sameSite…).
    pub async fn cookies(&self) -> Vec<Value> {
        self.session_call("GET", "/cookie", None)
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Saves a PNG of the viewport as `target/screenshots/<name>.png`; returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let b64 = self.session_call("GET", "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().expect("base64"))
            .expect("a PNG");
        let dir = screenshots_dir();
        std::fs::create_dir_all(&dir).expect("target/screenshots");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("writing a screenshot");
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The session ended first, so chromedriver quits Chromium cleanly (killed, its
        // processes would linger as zombies); a blocking request, as Drop cannot await.
        let quit = format!(
            "DELETE /session/{} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.session
        );
        if let Ok(mut c) = std::net::TcpStream::connect(self.base.trim_start_matches("http://")) {
            use std::io::{Read, Write};
            let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
            let _ = c.write_all(quit.as_bytes());
            // The answer's first bytes come once the browser has quit (the driver may keep
            // the connection open, so not read to its end).
            let _ = c.read(&mut [0u8; 1024]);
        }
        // Then the driver's whole group, whatever is left of it.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.driver.id())])
            .status();
        let _ = self.driver.wait();
    }
}

/// `target/screenshots` of this workspace.
pub fn screenshots_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/screenshots")
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> TempDir {
        let n: u64 = rand::random();
        let p = std::env::temp_dir().join(format!("posflow-{what}-{n:016x}"));
        std::fs::create_dir_all(&p).expect("a temporary directory");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Polls `probe` every 100 ms until `done` holds, for 10 s at most; then panics with `what` and
/// the last value. The one wait loop behind every `wait_*` of [`Browser`].
async fn poll_until<T: std::fmt::Debug, F: std::future::Future<Output = T>>(
    mut probe: impl FnMut() -> F,
    done: impl Fn(&T) -> bool,
    what: &str,
) -> T {
    let started = Instant::now();
    loop {
        let now = probe().await;
        if done(&now) {
            return now;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what} after 10 s: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
