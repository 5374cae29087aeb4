//! The "Settings → API Keys" page of the example server, driven in a real headless Chromium over
//! WebDriver (chromedriver), against the example app served on an ephemeral loopback port.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/chromium.sh` installs them). Without
//! them each test prints why it is skipped and returns, unless `API_KEYS_REQUIRE_BROWSER=1`, in
//! which case it fails. `CHROMEDRIVER` and `CHROME` override where the binaries are looked for.
//!
//! Screenshots land in `target/admin-page/`.

#[path = "../examples/server/app.rs"]
#[allow(dead_code)]
mod app;

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use api_keys::{AnyStore, Keyring, MasterKey, MemoryStore, Policy};
use fantoccini::elements::Element;
use fantoccini::key::Key;
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

const DAY: u64 = 86_400;

/// One browser at a time: the machine has two cores and each Chromium is heavy.
static BROWSER_SLOT: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---- finding the browser -------------------------------------------------------------------

struct Binaries {
    chromedriver: PathBuf,
    chrome: PathBuf,
}

fn find_binary(env: &str, candidates: &[&str]) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in candidates {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// The binaries, or `None` (with the reason printed) when the test must be skipped.
fn binaries(test: &str) -> Option<Binaries> {
    let chromedriver = find_binary("CHROMEDRIVER", &["chromedriver"]);
    let chrome = find_binary("CHROME", &["chromium", "chromium-browser", "google-chrome"]);
    match (chromedriver, chrome) {
        (Some(chromedriver), Some(chrome)) => Some(Binaries {
            chromedriver,
            chrome,
        }),
        (driver, chrome) => {
            let why = format!(
                "chromedriver {}, chromium {} (install Debian's `chromium` and \
                 `chromium-driver`, e.g. `source .ci/chromium.sh && browser_install`)",
                if driver.is_some() {
                    "found"
                } else {
                    "not found"
                },
                if chrome.is_some() {
                    "found"
                } else {
                    "not found"
                },
            );
            if std::env::var("API_KEYS_REQUIRE_BROWSER").as_deref() == Ok("1") {
                panic!("{test}: API_KEYS_REQUIRE_BROWSER=1 but {why}");
            }
            // Straight to stderr, past the test harness's output capture, so a skip is seen.
            let line = format!("{test}: skipped: {why}\n");
            let _ = std::io::stderr().write_all(line.as_bytes());
            None
        }
    }
}

// ---- processes and directories that clean up after themselves --------------------------------

/// chromedriver, started in a process group of its own so that dropping the guard (also when a
/// test panics before closing its session) ends it and every browser process it started.
struct ChildGuard(Child);

impl ChildGuard {
    fn spawn(mut command: Command) -> std::io::Result<ChildGuard> {
        command.process_group(0).spawn().map(ChildGuard)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir = std::env::temp_dir().join(format!(
            "api-keys-{tag}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_loopback_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ---- the harness: app + HTTP client + browser ----------------------------------------------

struct Harness {
    base: String,
    state: app::AppState,
    http: HttpClient<HttpConnector, Full<Bytes>>,
    manager: String,
    member: String,
    browser: Client,
    _driver: ChildGuard,
    _profile: TempDir,
    server: Option<(
        tokio::task::JoinHandle<()>,
        tokio::sync::oneshot::Sender<()>,
    )>,
    addr: SocketAddr,
    _slot: tokio::sync::MutexGuard<'static, ()>,
}

struct Reply {
    status: StatusCode,
    json: Value,
}

impl Harness {
    async fn start(test: &str) -> Option<Harness> {
        Harness::start_with(test, demo_state()).await
    }

    async fn start_with(test: &str, state: app::AppState) -> Option<Harness> {
        let bins = binaries(test)?;
        let slot = BROWSER_SLOT.lock().await;

        // The example app, on an ephemeral loopback port.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let server = serve_on(listener, state.clone());
        let base = format!("http://{addr}");
        let http = HttpClient::builder(TokioExecutor::new()).build_http();

        // chromedriver on a free loopback port, chromium with a fresh profile.
        let port = free_loopback_port();
        let mut command = Command::new(&bins.chromedriver);
        command
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let driver = ChildGuard::spawn(command).expect("start chromedriver");
        let driver_addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut ready = false;
        for _ in 0..200 {
            if TcpStream::connect(driver_addr).is_ok() {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(ready, "chromedriver did not listen on {driver_addr}");

        let profile = TempDir::new("chromium-profile");
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": bins.chrome,
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-dev-shm-usage",
                    "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.0.display()),
                ],
            }),
        );
        let browser = ClientBuilder::new(HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://{driver_addr}"))
            .await
            .expect("WebDriver session with chromium");

        let manager = state.session("acme", "alice", "manager").unwrap();
        let member = state.session("acme", "bob", "member").unwrap();
        Some(Harness {
            base,
            state,
            http,
            manager,
            member,
            browser,
            _driver: driver,
            _profile: profile,
            server: Some(server),
            addr,
            _slot: slot,
        })
    }

    /// Stops the server (its open connections close) and starts `state` on the same port: a
    /// restart, with a new session-signing key.
    async fn restart(&mut self, state: app::AppState) {
        let (task, stop) = self.server.take().unwrap();
        let _ = stop.send(());
        task.await.unwrap();
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.server = Some(serve_on(listener, state.clone()));
        self.manager = state.session("acme", "alice", "manager").unwrap();
        self.member = state.session("acme", "bob", "member").unwrap();
        self.state = state;
    }

    async fn finish(self) {
        self.browser.close().await.unwrap();
    }

    // -- HTTP, from the test's own client --

    async fn call(
        &self,
        method: Method,
        path: &str,
        session: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some(s) = session {
            req = req.header("x-demo-session", s);
        }
        let body = match body {
            Some(b) => {
                req = req.header("content-type", "application/json");
                Full::new(Bytes::from(b.to_string()))
            }
            None => Full::new(Bytes::new()),
        };
        let res = self.http.request(req.body(body).unwrap()).await.unwrap();
        let status = res.status();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply { status, json }
    }

    /// `GET /metrics` with a bearer token: the status tells whether the key works.
    async fn metrics_status(&self, token: &str) -> StatusCode {
        let req = Request::builder()
            .uri(format!("{}/metrics", self.base))
            .header("authorization", format!("Bearer {token}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        self.http.request(req).await.unwrap().status()
    }

    /// A key made through the JSON API as the manager: (id, token).
    async fn create_key(&self, name: &str) -> (String, String) {
        let r = self
            .call(
                Method::POST,
                "/api/keys",
                Some(&self.manager.clone()),
                Some(json!({"name": name, "scopes": ["prometheus"]})),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json);
        (
            r.json["info"]["id"].as_str().unwrap().to_owned(),
            r.json["key"].as_str().unwrap().to_owned(),
        )
    }

    // -- the browser --

    /// Opens the page through a fresh one-time login link, as a person would from the link the
    /// server prints.
    async fn open_page(&self) {
        let nonce = self.state.login_nonce().unwrap();
        // From elsewhere, so that a second call loads the page again (a new fragment alone
        // would not).
        self.browser.goto("about:blank").await.unwrap();
        self.browser
            .goto(&format!("{}/settings/api-keys#login={nonce}", self.base))
            .await
            .unwrap();
        self.wait_js("document.getElementById('whoami') !== null")
            .await;
        self.wait_js(
            "document.getElementById('whoami').textContent !== '' && \
             (!document.getElementById('key-table').hidden || \
              !document.getElementById('list-empty').hidden)",
        )
        .await;
        // Count CSP violations from here on: the page must cause none.
        self.js(
            "window.__cspViolations = 0; document.addEventListener('securitypolicyviolation', \
             () => { window.__cspViolations += 1; });",
        )
        .await;
    }

    async fn js(&self, body: &str) -> Value {
        self.browser.execute(body, vec![]).await.unwrap()
    }

    /// Waits (bounded: 15 s) until a JavaScript expression is true.
    async fn wait_js(&self, expr: &str) {
        let script = format!("return !!({expr});");
        for _ in 0..300 {
            if self.js(&script).await == Value::Bool(true) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("timed out waiting for: {expr}");
    }

    async fn css(&self, selector: &str) -> Element {
        self.browser.find(Locator::Css(selector)).await.unwrap()
    }

    async fn count(&self, selector: &str) -> usize {
        self.browser
            .find_all(Locator::Css(selector))
            .await
            .unwrap()
            .len()
    }

    async fn value(&self, selector: &str) -> String {
        self.css(selector)
            .await
            .prop("value")
            .await
            .unwrap()
            .unwrap_or_default()
    }

    /// An element's text, with runs of white space collapsed to one space.
    async fn text(&self, selector: &str) -> String {
        let sel = serde_json::to_string(selector).unwrap();
        self.js(&format!(
            "return document.querySelector({sel}).textContent;"
        ))
        .await
        .as_str()
        .unwrap()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
    }

    /// Opens the Limits dialog of key `id`.
    async fn open_limits(&self, id: &str) {
        self.css(&format!("tr[data-key-id=\"{id}\"] .action-limits"))
            .await
            .click()
            .await
            .unwrap();
        self.wait_js("document.getElementById('limits-dialog').open")
            .await;
    }

    /// Saves the open Limits dialog and waits for it to close.
    async fn save_limits(&self) {
        self.css("#limits-save").await.click().await.unwrap();
        self.wait_js("!document.getElementById('limits-dialog').open")
            .await;
    }

    async fn row_status(&self, id: &str) -> String {
        self.text(&format!("tr[data-key-id=\"{id}\"] .badge")).await
    }

    async fn csp_violations(&self) -> i64 {
        self.js("return window.__cspViolations;")
            .await
            .as_i64()
            .unwrap()
    }

    /// Picks the session of `who` ("manager" or "member") in the page's picker.
    async fn choose_session(&self, who: &str) {
        let labels = self
            .js("return Array.from(document.querySelectorAll('#session option')).map(o => o.textContent);")
            .await;
        let i = labels
            .as_array()
            .unwrap()
            .iter()
            .position(|l| l.as_str().unwrap().contains(who))
            .expect("the picker lists every session");
        self.css("#session")
            .await
            .select_by_value(&i.to_string())
            .await
            .unwrap();
        self.wait_js(&format!(
            "document.getElementById('session').value === '{i}' && \
             document.getElementById('whoami').textContent !== ''"
        ))
        .await;
    }

    async fn screenshot(&self, name: &str) -> PathBuf {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/admin-page");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, self.browser.screenshot().await.unwrap()).unwrap();
        path
    }
}

/// Serves `state` on `listener` as `main.rs` does, until the sender is used.
fn serve_on(
    listener: tokio::net::TcpListener,
    state: app::AppState,
) -> (
    tokio::task::JoinHandle<()>,
    tokio::sync::oneshot::Sender<()>,
) {
    let addr = listener.local_addr().unwrap();
    let limits = app::Limits::default();
    let router = app::guard(app::router(state), addr, limits);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        app::serve(listener, router, limits, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    (task, stop)
}

/// The example app's state over a fresh in-memory store and a random master key.
fn demo_state() -> app::AppState {
    let keyring = Keyring::new(1, MasterKey::generate());
    app::AppState::new(AnyStore::new(MemoryStore::new()), keyring).expect("app state")
}

/// WebDriver's "Set Permission" (W3C Permissions extension), which chromedriver implements.
#[derive(Debug)]
struct SetPermission(&'static str);

impl WebDriverCompatibleCommand for SetPermission {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!(
            "session/{}/permissions",
            session.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (hyper::Method, Option<String>) {
        let body = json!({"descriptor": {"name": self.0}, "state": "granted"});
        (Method::POST, Some(body.to_string()))
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `YYYY-MM-DD HH:MM UTC`, as the list's Expires column shows it.
fn utc_date_time(unix: u64) -> String {
    let t = api_keys::time::OffsetDateTime::from_unix_timestamp(unix as i64).unwrap();
    format!("{} {:02}:{:02} UTC", utc_date(unix), t.hour(), t.minute())
}

fn utc_date(unix: u64) -> String {
    let t = api_keys::time::OffsetDateTime::from_unix_timestamp(unix as i64).unwrap();
    format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day())
}

// ---- the scenarios -------------------------------------------------------------------------

/// Generate with the defaults: 90 days preselected, the expiry shown is 90 days from now, the
/// token is shown once, works on `/metrics`, and is never kept in storage or the URL.
#[tokio::test]
async fn generate_with_defaults_shows_the_key_once_and_it_works() {
    let Some(h) = Harness::start("generate_with_defaults").await else {
        return;
    };
    h.open_page().await;

    // The form opens from the keyboard, with focus on the name field.
    h.css("#open-generate")
        .await
        .send_keys(&Key::Enter)
        .await
        .unwrap();
    h.wait_js("!document.getElementById('generate-panel').hidden")
        .await;
    assert_eq!(
        h.js("return document.activeElement.id;").await,
        json!("key-name")
    );
    // The "Key expiration" list comes from the policy, with its default (90 days) preselected.
    assert_eq!(h.value("#key-expiry").await, "days:90");
    let options = h
        .js("return Array.from(document.querySelectorAll('#key-expiry option')).map(o => o.value);")
        .await;
    assert_eq!(
        options,
        json!([
            "days:7", "days:30", "days:60", "days:90", "days:180", "days:365", "custom"
        ])
    );
    assert!(
        h.text("#key-expiry-help")
            .await
            .contains("90 days from now")
    );
    // Escape closes the form and focus goes back to its button; Enter opens it again.
    h.css("#key-name")
        .await
        .send_keys(&Key::Escape)
        .await
        .unwrap();
    h.wait_js("document.getElementById('generate-panel').hidden")
        .await;
    assert_eq!(
        h.js("return document.activeElement.id;").await,
        json!("open-generate")
    );
    h.browser
        .active_element()
        .await
        .unwrap()
        .send_keys(&Key::Enter)
        .await
        .unwrap();
    h.wait_js("!document.getElementById('generate-panel').hidden")
        .await;
    assert_eq!(h.value("#key-expiry").await, "days:90");

    let name = "Prometheus scraper (prod)";
    h.css("#key-name").await.send_keys(name).await.unwrap();
    h.screenshot("generate-form.png").await;
    let before = now_unix();
    // Enter in the name field submits the form.
    h.css("#key-name")
        .await
        .send_keys(&Key::Enter)
        .await
        .unwrap();
    h.wait_js("!document.getElementById('new-key-panel').hidden")
        .await;
    let after = now_unix();

    let token = h.value("#new-key-token").await;
    assert!(token.starts_with("sak_"), "a token is shown");
    assert!(
        h.text("#new-key-warning")
            .await
            .contains("It will not be shown again"),
        "the warning is plain"
    );

    // The expiration shown is 90 days from now.
    let expires_el = h.css("#new-key-expires").await;
    let shown: u64 = expires_el
        .attr("data-unix")
        .await
        .unwrap()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (before + 90 * DAY..=after + 90 * DAY).contains(&shown),
        "expiry {shown} is 90 days after [{before}, {after}]"
    );
    assert_eq!(expires_el.text().await.unwrap(), utc_date(shown));

    // The list shows the new key, active, with the same expiry.
    h.wait_js("document.querySelectorAll('#key-rows tr').length === 1")
        .await;
    assert_eq!(h.text("#key-rows .key-name").await, name);
    assert_eq!(h.text("#key-rows .badge").await, "Active");
    // The list shows the time of day too.
    assert_eq!(
        h.text("#key-rows .col-expires time").await,
        utc_date_time(shown)
    );
    assert_eq!(h.text("#key-rows .col-last-used").await, "Never used");
    assert_eq!(
        h.count("#key-rows button.action-reveal").await,
        0,
        "reveal is off"
    );

    // The token shown once authenticates /metrics; a wrong one does not.
    assert_eq!(h.metrics_status(&token).await, StatusCode::OK);
    let mut wrong = token.clone();
    wrong.pop();
    wrong.push(if token.ends_with('A') { 'B' } else { 'A' });
    assert_eq!(h.metrics_status(&wrong).await, StatusCode::UNAUTHORIZED);

    // Never in a URL or web storage.
    let url = h.browser.current_url().await.unwrap();
    assert!(!url.as_str().contains(&token));
    // (The tab's sessionStorage holds the demo sessions from the login link, so that a
    // reload keeps them; never a key.)
    assert_eq!(h.js("return localStorage.length;").await, json!(0));
    let stored = h
        .js("return JSON.stringify(Object.entries(sessionStorage));")
        .await;
    assert!(!stored.as_str().unwrap().contains(&token));

    // Copy button: the Clipboard API puts the key on the clipboard (the page falls back to
    // selecting the key when a browser refuses; headless Chromium on loopback allows it).
    h.css("#copy-key").await.click().await.unwrap();
    h.wait_js("document.getElementById('copy-status').textContent !== ''")
        .await;
    assert_eq!(h.text("#copy-status").await, "Copied to the clipboard.");
    // Reading it back needs the clipboard-read permission (the page itself never reads).
    h.browser
        .issue_cmd(SetPermission("clipboard-read"))
        .await
        .unwrap();
    let clipboard = h
        .browser
        .execute_async(
            "const done = arguments[arguments.length - 1]; \
             navigator.clipboard.readText().then(t => done('ok:' + t), e => done('error ' + e));",
            vec![],
        )
        .await
        .unwrap();
    assert!(
        clipboard.as_str() == Some(&format!("ok:{token}")),
        "the clipboard does not hold the key: {}",
        clipboard
            .as_str()
            .unwrap_or("")
            .split(':')
            .next()
            .unwrap_or("")
    );
    h.screenshot("new-key.png").await;

    // "Done" removes the token from the page.
    h.css("#new-key-done").await.click().await.unwrap();
    h.wait_js("document.getElementById('new-key-panel').hidden")
        .await;
    assert_eq!(h.value("#new-key-token").await, "");
    assert!(!h.source_contains(&token).await, "token left in the DOM");
    assert_eq!(
        h.js("return document.activeElement.id;").await,
        json!("open-generate"),
        "focus returns to the button"
    );

    // Last use shows up after the key was used (once the manager's buffered uses are written).
    h.state.manager.flush_last_use().await.unwrap();
    h.open_page().await;
    h.wait_js("document.querySelectorAll('#key-rows tr').length === 1")
        .await;
    assert_eq!(h.text("#key-rows .col-last-used time").await.len(), 10);
    assert_eq!(h.csp_violations().await, 0);

    // Make the list look like a real organization's for the screenshot.
    let r = h
        .call(
            Method::POST,
            "/api/keys",
            Some(&h.manager.clone()),
            Some(json!({"name": "SCIM provisioning (Okta)", "scopes": ["scim"]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let (old_id, _) = h.create_key("Legacy exporter").await;
    let r = h
        .call(
            Method::POST,
            &format!("/api/keys/{old_id}/revoke"),
            Some(&h.manager.clone()),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = h
        .call(
            Method::POST,
            "/api/keys",
            Some(&h.manager.clone()),
            Some(json!({"name": "Staging scraper", "scopes": ["prometheus", "scim"], "expiry": {"days": 7}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    h.open_page().await;
    h.wait_js("document.querySelectorAll('#key-rows tr').length === 4")
        .await;
    let badges = h
        .js("return Array.from(document.querySelectorAll('#key-rows .badge')).map(b => b.textContent).sort();")
        .await;
    assert_eq!(
        badges,
        json!(["Active", "Active", "Expires in 7 days", "Revoked"])
    );
    assert!(h.fits_the_window().await, "horizontal overflow at 1280 px");
    h.screenshot("list.png").await;

    // Smaller windows: still readable, nothing wider than the window.
    for width in [1180, 1100, 1024, 1000, 900, 600, 400, 320] {
        h.browser.set_window_size(width, 900).await.unwrap();
        h.wait_js(&format!("window.innerWidth <= {width}")).await;
        assert!(
            h.fits_the_window().await,
            "horizontal overflow at {width} px: {}",
            h.js("const w = document.documentElement.clientWidth; return Array.from(document.querySelectorAll('body *')).filter(e => e.getBoundingClientRect().right > w + 0.5).map(e => e.tagName + '#' + e.id + '.' + e.className + ':' + Math.round(e.getBoundingClientRect().right)).slice(0, 12).join(' ');").await
        );
    }
    h.screenshot("list-narrow.png").await;
    h.finish().await;
}

impl Harness {
    /// Whether the page is no wider than the window (no horizontal scrolling).
    async fn fits_the_window(&self) -> bool {
        self.js(
            "return document.documentElement.scrollWidth <= document.documentElement.clientWidth;",
        )
        .await
            == json!(true)
    }

    async fn source_contains(&self, needle: &str) -> bool {
        self.browser.source().await.unwrap().contains(needle)
    }
}

/// "Revoke and Delete" through the dialog: the warning is shown, Escape closes it and focus
/// returns, confirming removes the row, and the token is refused on the very next request.
#[tokio::test]
async fn revoke_and_delete_through_the_dialog() {
    let Some(h) = Harness::start("revoke_and_delete").await else {
        return;
    };
    let (id, token) = h.create_key("CI deploy").await;
    let (keep_id, keep_token) = h.create_key("Grafana agent").await;
    assert_eq!(h.metrics_status(&token).await, StatusCode::OK);
    h.open_page().await;

    let row = format!("tr[data-key-id=\"{id}\"]");
    let button = format!("{row} button.action-delete");
    h.css(&button).await.click().await.unwrap();
    h.wait_js("document.getElementById('confirm-dialog').open")
        .await;
    let warning = h.text("#confirm-warning").await;
    assert!(
        warning.contains("All integrations using this key will stop working immediately"),
        "{warning}"
    );
    assert!(
        warning.contains("create the replacement key first"),
        "{warning}"
    );
    assert_eq!(
        h.text("#confirm-title").await,
        "Revoke and delete “CI deploy”?"
    );
    assert_eq!(h.text("#confirm-ok").await, "Revoke and Delete");
    assert!(h.css("#roll-instead").await.is_displayed().await.unwrap());
    assert_eq!(
        h.js("return Array.from(document.querySelectorAll('#roll-overlap option')).map(o => o.textContent);")
            .await,
        json!(["1 hour", "1 day", "7 days"])
    );
    // Focus starts on the safe choice.
    assert_eq!(
        h.js("return document.activeElement.id;").await,
        json!("confirm-cancel")
    );
    h.screenshot("dialog.png").await;

    // Escape closes the dialog and focus returns to the button that opened it.
    h.browser
        .active_element()
        .await
        .unwrap()
        .send_keys(&Key::Escape)
        .await
        .unwrap();
    h.wait_js("!document.getElementById('confirm-dialog').open")
        .await;
    let sel = serde_json::to_string(&button).unwrap();
    h.wait_js(&format!(
        "document.activeElement === document.querySelector({sel})"
    ))
    .await;
    assert_eq!(
        h.metrics_status(&token).await,
        StatusCode::OK,
        "cancel changed nothing"
    );

    // Again, and confirm.
    h.css(&button).await.click().await.unwrap();
    h.wait_js("document.getElementById('confirm-dialog').open")
        .await;
    h.css("#confirm-ok").await.click().await.unwrap();
    h.wait_js(&format!(
        "!document.getElementById('confirm-dialog').open && \
         document.querySelector('{}') === null",
        row.replace('\'', "\\'")
    ))
    .await;
    // The very next request with the token is refused.
    assert_eq!(h.metrics_status(&token).await, StatusCode::UNAUTHORIZED);
    let r = h
        .call(
            Method::GET,
            &format!("/api/keys/{id}"),
            Some(&h.manager.clone()),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // The other key is untouched.
    assert_eq!(h.count(&format!("tr[data-key-id=\"{keep_id}\"]")).await, 1);
    assert_eq!(h.metrics_status(&keep_token).await, StatusCode::OK);
    let status = h.text("#status").await;
    assert!(
        status.contains("deleted") || status.is_empty(),
        "{status:?}"
    );
    assert_eq!(h.csp_violations().await, 0);
    h.finish().await;
}

/// "Revoke": the row stays, marked Revoked, and the token is refused.
#[tokio::test]
async fn revoke_keeps_the_row_as_revoked() {
    let Some(h) = Harness::start("revoke").await else {
        return;
    };
    let (id, token) = h.create_key("Nightly export").await;
    assert_eq!(h.metrics_status(&token).await, StatusCode::OK);
    h.open_page().await;
    assert_eq!(h.row_status(&id).await, "Active");

    h.css(&format!("tr[data-key-id=\"{id}\"] button.action-revoke"))
        .await
        .click()
        .await
        .unwrap();
    h.wait_js("document.getElementById('confirm-dialog').open")
        .await;
    assert_eq!(h.text("#confirm-ok").await, "Revoke");
    assert!(
        h.text("#confirm-warning")
            .await
            .contains("stop working immediately")
    );
    h.css("#confirm-ok").await.click().await.unwrap();
    h.wait_js(&format!(
        "(document.querySelector('tr[data-key-id=\"{id}\"] .badge') || {{}}).textContent === 'Revoked'"
    ))
    .await;
    assert_eq!(h.metrics_status(&token).await, StatusCode::UNAUTHORIZED);
    assert_eq!(h.count("#key-rows tr").await, 1, "the row stays");
    // A revoked row offers no Revoke any more, only Delete.
    assert_eq!(
        h.count(&format!("tr[data-key-id=\"{id}\"] button.action-revoke"))
            .await,
        0
    );
    assert_eq!(
        h.text(&format!("tr[data-key-id=\"{id}\"] button.action-delete"))
            .await,
        "Delete"
    );
    let r = h
        .call(
            Method::GET,
            &format!("/api/keys/{id}"),
            Some(&h.manager.clone()),
            None,
        )
        .await;
    assert_eq!(r.json["status"], "revoked");
    assert_eq!(
        h.text(&format!("tr[data-key-id=\"{id}\"] .reason")).await,
        "Revoked by a manager"
    );
    assert_eq!(h.csp_violations().await, 0);
    h.finish().await;
}

/// "Roll instead" from the dialog: a replacement is shown once and works; the old key keeps
/// working through the chosen overlap and is listed as expiring.
#[tokio::test]
async fn roll_instead_keeps_the_old_key_for_the_overlap() {
    let Some(h) = Harness::start("roll_instead").await else {
        return;
    };
    let (id, token) = h.create_key("SCIM connector").await;
    h.open_page().await;
    h.css(&format!("tr[data-key-id=\"{id}\"] button.action-delete"))
        .await
        .click()
        .await
        .unwrap();
    h.wait_js("document.getElementById('confirm-dialog').open")
        .await;
    h.css("#roll-overlap")
        .await
        .select_by_value("3600")
        .await
        .unwrap();
    let before = now_unix();
    h.css("#roll-instead").await.click().await.unwrap();
    h.wait_js(
        "!document.getElementById('confirm-dialog').open && \
         !document.getElementById('new-key-panel').hidden && \
         document.querySelectorAll('#key-rows tr').length === 2",
    )
    .await;
    let after = now_unix();
    let new_token = h.value("#new-key-token").await;
    assert_ne!(new_token, token);
    assert_eq!(h.metrics_status(&new_token).await, StatusCode::OK);
    assert_eq!(h.metrics_status(&token).await, StatusCode::OK, "overlap");
    let old_expiry: u64 = h
        .css(&format!("tr[data-key-id=\"{id}\"] .col-expires time"))
        .await
        .attr("data-unix")
        .await
        .unwrap()
        .unwrap()
        .parse()
        .unwrap();
    assert!((before + 3600..=after + 3600).contains(&old_expiry));
    // Under a day the status counts hours.
    assert_eq!(h.row_status(&id).await, "Expires in 1 hour");
    assert_lineage(&h, &id).await;
    h.finish().await;
}

/// After a roll the two rows (same name) say which replaced which, by the other's hint, and
/// the replaced key offers no second roll.
async fn assert_lineage(h: &Harness, old: &str) {
    let keys = h
        .call(Method::GET, "/api/keys", Some(&h.manager.clone()), None)
        .await
        .json;
    let keys = keys.as_array().unwrap();
    let old_key = keys.iter().find(|k| k["id"] == old).unwrap();
    let new_id = old_key["replaced_by"]
        .as_str()
        .expect("replaced_by")
        .to_owned();
    let new_key = keys.iter().find(|k| k["id"] == new_id.as_str()).unwrap();
    assert_eq!(new_key["replaces"], old);
    let hint = |k: &Value| k["hint"].as_str().unwrap().to_owned();
    assert_eq!(
        h.text(&format!("tr[data-key-id=\"{old}\"] .lineage")).await,
        format!("Replaced by {}", hint(new_key))
    );
    assert_eq!(
        h.text(&format!("tr[data-key-id=\"{new_id}\"] .lineage"))
            .await,
        format!("Replaces {}", hint(old_key))
    );
    assert_eq!(
        h.count(&format!("tr[data-key-id=\"{old}\"] button.action-roll"))
            .await,
        0
    );
    assert_eq!(
        h.count(&format!("tr[data-key-id=\"{new_id}\"] button.action-roll"))
            .await,
        1
    );
}

/// Roll is an action of its own on each active row: its dialog chooses the overlap and rolls,
/// without going through delete.
#[tokio::test]
async fn roll_is_an_action_of_each_active_row() {
    let Some(h) = Harness::start("roll_action").await else {
        return;
    };
    let (id, token) = h.create_key("Grafana").await;
    let (revoked, _) = h.create_key("Old exporter").await;
    let r = h
        .call(
            Method::POST,
            &format!("/api/keys/{revoked}/revoke"),
            Some(&h.manager.clone()),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    h.open_page().await;
    assert_eq!(
        h.count(&format!("tr[data-key-id=\"{revoked}\"] button.action-roll"))
            .await,
        0,
        "a revoked key cannot be rolled"
    );
    h.css(&format!("tr[data-key-id=\"{id}\"] button.action-roll"))
        .await
        .click()
        .await
        .unwrap();
    h.wait_js("document.getElementById('confirm-dialog').open")
        .await;
    assert_eq!(h.text("#confirm-title").await, "Roll “Grafana”?");
    assert_eq!(h.text("#confirm-ok").await, "Roll");
    assert!(h.css("#roll-overlap").await.is_displayed().await.unwrap());
    assert!(!h.css("#roll-instead").await.is_displayed().await.unwrap());
    h.css("#roll-overlap")
        .await
        .select_by_value("604800")
        .await
        .unwrap();
    h.css("#confirm-ok").await.click().await.unwrap();
    h.wait_js(
        "!document.getElementById('confirm-dialog').open && \
         !document.getElementById('new-key-panel').hidden && \
         document.querySelectorAll('#key-rows tr').length === 3",
    )
    .await;
    let new_token = h.value("#new-key-token").await;
    assert_eq!(h.metrics_status(&new_token).await, StatusCode::OK);
    assert_eq!(h.metrics_status(&token).await, StatusCode::OK, "overlap");
    assert_eq!(h.row_status(&id).await, "Expires in 7 days");
    assert_lineage(&h, &id).await;
    assert_eq!(h.csp_violations().await, 0);
    h.finish().await;
}

/// After a server restart (a new session-signing key) the page's sessions are dead: the first
/// 401 takes the buttons off, empties the picker and says to sign in again; the restarted
/// server's login link signs in, and the keys are still there.
#[tokio::test]
async fn after_a_server_restart_the_page_reloads_sessions_and_the_list() {
    let store = MemoryStore::new();
    let key = [7u8; 16];
    let state_over = |store: &MemoryStore| {
        app::AppState::new(
            AnyStore::new(store.clone()),
            Keyring::new(1, MasterKey::from_bytes(key)),
        )
        .expect("app state")
    };
    let Some(mut h) = Harness::start_with("restart", state_over(&store)).await else {
        return;
    };
    let (id, _) = h.create_key("Grafana").await;
    h.open_page().await;
    assert!(h.count("#key-rows button.action-revoke").await > 0);

    h.restart(state_over(&store)).await;
    h.css(&format!("tr[data-key-id=\"{id}\"] button.action-revoke"))
        .await
        .click()
        .await
        .unwrap();
    h.wait_js("document.getElementById('confirm-dialog').open")
        .await;
    h.css("#confirm-ok").await.click().await.unwrap();
    h.wait_js(
        "!document.getElementById('confirm-dialog').open && \
         document.querySelectorAll('#session option').length === 0",
    )
    .await;
    assert_eq!(h.count("#key-rows button").await, 0, "no buttons left");
    assert!(h.text("#error").await.contains("login link"));

    h.open_page().await;
    assert_eq!(h.count("#session option").await, 2);
    h.wait_js(&format!(
        "document.querySelector('tr[data-key-id=\"{id}\"] button.action-revoke') !== null"
    ))
    .await;
    h.finish().await;
}

/// When the sessions stop working (they expired, or the server restarted with a new signing
/// key), the first 401 takes the buttons off the rows, drops the dead sessions from the picker
/// and says how to sign in again; a new login link works.
#[tokio::test]
async fn a_401_reloads_the_sessions_and_the_list() {
    const TTL: u64 = 6;
    let state = demo_state().with_session_ttl(api_keys::time::Duration::seconds(TTL as i64));
    let Some(h) = Harness::start_with("session_ends", state).await else {
        return;
    };
    let (id, _) = h.create_key("Grafana").await;
    h.open_page().await;
    // The page's sessions were issued while it opened (when it redeemed its login link), so
    // they end at most TTL after this reading, however long opening took on a loaded machine.
    let opened = now_unix();
    assert_eq!(h.count("#session option").await, 2);
    assert!(h.count("#key-rows button").await > 0);
    // Wait until the page's sessions have ended.
    let wait = (opened + TTL + 3).saturating_sub(now_unix());
    tokio::time::sleep(Duration::from_secs(wait)).await;
    h.css(&format!("tr[data-key-id=\"{id}\"] button.action-revoke"))
        .await
        .click()
        .await
        .unwrap();
    h.wait_js("document.getElementById('confirm-dialog').open")
        .await;
    h.css("#confirm-ok").await.click().await.unwrap();
    h.wait_js(
        "!document.getElementById('confirm-dialog').open && \
         document.querySelectorAll('#session option').length === 0",
    )
    .await;
    h.screenshot("session-ended.png").await;
    assert_eq!(h.count("#key-rows button").await, 0, "no buttons left");
    assert!(
        h.css("#session")
            .await
            .prop("disabled")
            .await
            .unwrap()
            .is_some()
    );
    assert!(h.text("#error").await.contains("login link"));
    // The key was not revoked.
    let r = h
        .call(
            Method::GET,
            &format!("/api/keys/{id}"),
            Some(&h.state.session("acme", "alice", "manager").unwrap()),
            None,
        )
        .await;
    assert_eq!(r.json["status"], "active");
    // A new login link signs in again.
    h.open_page().await;
    assert_eq!(h.count("#session option").await, 2);
    assert!(h.count("#key-rows button.action-revoke").await > 0);
    h.finish().await;
}

/// "Key expiration" → "Custom date…": a date within the policy's maximum is accepted and the key
/// expires at 00:00 UTC that day; a date past the maximum is refused by the page.
#[tokio::test]
async fn generate_with_a_custom_date() {
    let Some(h) = Harness::start("custom_date").await else {
        return;
    };
    h.open_page().await;
    h.css("#open-generate").await.click().await.unwrap();
    h.wait_js("!document.getElementById('generate-panel').hidden")
        .await;
    assert!(
        !h.css("#key-expiry-date")
            .await
            .is_displayed()
            .await
            .unwrap()
    );
    h.css("#key-expiry")
        .await
        .select_by_value("custom")
        .await
        .unwrap();
    assert!(
        h.css("#key-expiry-date")
            .await
            .is_displayed()
            .await
            .unwrap()
    );
    h.css("#key-name")
        .await
        .send_keys("Quarterly audit")
        .await
        .unwrap();

    let midnight = now_unix() / DAY * DAY;
    let set_date = |unix: u64| {
        format!(
            "const d = document.getElementById('key-expiry-date'); d.value = '{}'; \
             d.dispatchEvent(new Event('input', {{bubbles: true}}));",
            utc_date(unix)
        )
    };
    // Past the policy's 365 days: the page refuses before asking the server.
    h.js(&set_date(midnight + 400 * DAY)).await;
    h.css("#generate-submit").await.click().await.unwrap();
    h.wait_js("!document.getElementById('generate-error').hidden")
        .await;
    assert!(
        h.text("#generate-error")
            .await
            .starts_with("Choose an expiration date")
    );
    let listed = h
        .call(Method::GET, "/api/keys", Some(&h.manager.clone()), None)
        .await;
    assert_eq!(listed.json, json!([]), "nothing was generated");

    let chosen = midnight + 45 * DAY;
    h.js(&set_date(chosen)).await;
    h.css("#generate-submit").await.click().await.unwrap();
    h.wait_js("!document.getElementById('new-key-panel').hidden")
        .await;
    let shown: u64 = h
        .css("#new-key-expires")
        .await
        .attr("data-unix")
        .await
        .unwrap()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(shown, chosen);
    let listed = h
        .call(Method::GET, "/api/keys", Some(&h.manager.clone()), None)
        .await;
    assert_eq!(listed.json[0]["expires_at"], json!(chosen));
    assert_eq!(h.csp_violations().await, 0);
    h.finish().await;
}

/// With `allow_reveal` on, a manager can reveal a key again from its row; the page says the
/// reveal is audited. (Off by default: then no row has a Reveal action.)
#[tokio::test]
async fn reveal_when_the_policy_allows_it() {
    let state = app::AppState::with_policy(
        AnyStore::new(MemoryStore::new()),
        Keyring::new(1, MasterKey::generate()),
        Policy::default().allow_reveal(true),
    )
    .expect("app state");
    let Some(h) = Harness::start_with("reveal", state).await else {
        return;
    };
    let (id, token) = h.create_key("Okta SCIM").await;
    h.open_page().await;
    h.css(&format!("tr[data-key-id=\"{id}\"] button.action-reveal"))
        .await
        .click()
        .await
        .unwrap();
    h.wait_js("!document.getElementById('new-key-panel').hidden")
        .await;
    assert_eq!(h.text("#new-key-title").await, "API key revealed");
    assert_eq!(h.value("#new-key-token").await, token);
    assert!(h.text("#new-key-meta").await.contains("audit log"));
    assert!(
        h.text("#new-key-warning")
            .await
            .contains("every reveal is audited")
    );
    h.css("#new-key-done").await.click().await.unwrap();
    assert_eq!(h.value("#new-key-token").await, "");
    assert_eq!(h.csp_violations().await, 0);
    h.finish().await;
}

/// A key named like markup is shown as text, and no script runs.
#[tokio::test]
async fn a_key_named_like_markup_is_shown_as_text() {
    let Some(h) = Harness::start("markup_name").await else {
        return;
    };
    let via_api = "\"><svg onload=\"window.__xss=1\"><script>window.__xss=2</script>";
    h.create_key(via_api).await;
    h.open_page().await;

    // And one through the form.
    let via_form = "<img src=x onerror=alert(1)>";
    h.css("#open-generate").await.click().await.unwrap();
    h.wait_js("!document.getElementById('generate-panel').hidden")
        .await;
    h.css("#key-name").await.send_keys(via_form).await.unwrap();
    h.css("#generate-submit").await.click().await.unwrap();
    h.wait_js(
        "!document.getElementById('new-key-panel').hidden && \
         document.querySelectorAll('#key-rows tr').length === 2",
    )
    .await;

    let names = h
        .js("return Array.from(document.querySelectorAll('#key-rows .key-name')).map(n => n.textContent).sort();")
        .await;
    let mut expected = vec![via_api, via_form];
    expected.sort();
    assert_eq!(names, json!(expected));
    assert!(h.text("#new-key-meta").await.contains(via_form));

    // Open the dialog too: its title carries the name.
    h.css("#key-rows tr button.action-delete")
        .await
        .click()
        .await
        .unwrap();
    h.wait_js("document.getElementById('confirm-dialog').open")
        .await;
    assert!(
        h.text("#confirm-title")
            .await
            .starts_with("Revoke and delete “")
    );

    assert_eq!(
        h.count("main img, main svg, main script, dialog img, dialog svg")
            .await,
        0,
        "markup from a key name became elements"
    );
    assert_eq!(
        h.js("return typeof window.__xss;").await,
        json!("undefined")
    );
    assert!(
        h.browser.get_alert_text().await.is_err(),
        "an alert is open"
    );
    assert_eq!(h.csp_violations().await, 0);
    h.finish().await;
}

/// A member sees the page read-only with a clear message; the server refuses forged calls.
#[tokio::test]
async fn a_member_cannot_manage_keys() {
    let Some(h) = Harness::start("member").await else {
        return;
    };
    let (id, token) = h.create_key("Prometheus").await;
    h.open_page().await;
    assert_eq!(
        h.count("#key-rows button").await,
        4,
        "the manager sees actions (roll, limits, revoke, revoke and delete)"
    );

    h.choose_session("member").await;
    h.wait_js("!document.getElementById('member-notice').hidden")
        .await;
    assert!(
        h.text("#member-notice")
            .await
            .contains("Only managers of this organization can manage API keys")
    );
    assert!(
        !h.css("#open-generate").await.is_displayed().await.unwrap(),
        "no Generate button"
    );
    let mut visible_buttons = 0;
    for b in h
        .browser
        .find_all(Locator::Css("main button"))
        .await
        .unwrap()
    {
        if b.is_displayed().await.unwrap() {
            visible_buttons += 1;
        }
    }
    assert_eq!(visible_buttons, 0, "a member sees no management controls");
    // The core lets only managers list keys, so the page says so instead of showing rows.
    assert_eq!(h.count("#key-rows tr").await, 0);
    assert_eq!(
        h.text("#list-empty").await,
        "The key list is shown to managers of this organization only."
    );
    h.screenshot("member.png").await;

    // The server enforces it: forged calls with the member's session get 403.
    let member = h.member.clone();
    let forged = [
        (Method::GET, "/api/keys".to_owned(), None),
        (Method::GET, format!("/api/keys/{id}"), None),
        (
            Method::POST,
            "/api/keys".to_owned(),
            Some(json!({"name": "mine", "scopes": ["prometheus"]})),
        ),
        (Method::POST, format!("/api/keys/{id}/revoke"), None),
        (
            Method::POST,
            format!("/api/keys/{id}/roll"),
            Some(json!({"overlap_seconds": 60})),
        ),
        (Method::POST, format!("/api/keys/{id}/reveal"), None),
        (Method::DELETE, format!("/api/keys/{id}"), None),
    ];
    for (method, path, body) in forged {
        let r = h.call(method.clone(), &path, Some(&member), body).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{method} {path}");
        assert_eq!(r.json["error"], "permission_denied");
    }
    assert_eq!(h.metrics_status(&token).await, StatusCode::OK);

    // Back to the manager: the controls return.
    h.choose_session("manager").await;
    h.wait_js(
        "!document.getElementById('manager-actions').hidden && \
         document.querySelectorAll('#key-rows button').length === 4",
    )
    .await;
    h.finish().await;
}

/// The page's files: served with the security headers, no inline script or style, no
/// `innerHTML`, no storage, no console.
#[tokio::test]
async fn page_is_served_with_a_strict_policy() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = app::router(demo_state());
    let server = tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    let http: HttpClient<HttpConnector, Full<Bytes>> =
        HttpClient::builder(TokioExecutor::new()).build_http();
    for (path, content_type) in [
        ("/settings/api-keys", "text/html; charset=utf-8"),
        (
            "/settings/api-keys/app.js",
            "text/javascript; charset=utf-8",
        ),
        ("/settings/api-keys/style.css", "text/css; charset=utf-8"),
    ] {
        let res = http
            .get(format!("http://{addr}{path}").parse().unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        let h = res.headers();
        assert_eq!(h["content-type"], content_type, "{path}");
        assert_eq!(
            h["content-security-policy"],
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            "{path}"
        );
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["referrer-policy"], "no-referrer", "{path}");
    }
    server.abort();

    let html = include_str!("../examples/server/app/assets/index.html");
    let js = include_str!("../examples/server/app/assets/app.js");
    for (i, piece) in html.split("<script").enumerate().skip(1) {
        let tag = piece.split('>').next().unwrap();
        assert!(tag.contains("src=\"/"), "inline script #{i}");
    }
    assert!(!html.contains("style="), "inline style attribute");
    assert!(!html.contains("<style"), "inline style element");
    assert!(!has_event_handler_attribute(html), "inline event handler");
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "external resource"
    );
    for banned in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "localStorage",
        "console.",
        "eval(",
        "new Function",
        "document.cookie",
    ] {
        let code: String = js
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(!code.contains(banned), "app.js uses {banned}");
    }
}

/// Whether some tag has an `on…=` attribute (an inline event handler).
fn has_event_handler_attribute(html: &str) -> bool {
    html.split('<').skip(1).any(|tag| {
        let tag = tag.split('>').next().unwrap_or("");
        tag.split_whitespace().skip(1).any(|attr| {
            let name = attr.split('=').next().unwrap_or("").to_ascii_lowercase();
            name.len() > 2 && name.starts_with("on") && attr.contains('=')
        })
    })
}

/// Every reason a key stopped working is shown on its row (manual, leaked with where it was
/// found, unused, departed user, rolled), a working key says how long it has been unused and
/// when the sweep will revoke it, and a banner lists the keys expiring within the policy's
/// first warning window. The keys are made in the past with a manual clock, which is then set
/// to now (the page reads the browser's clock).
#[tokio::test]
async fn revocation_reasons_idle_keys_and_the_expiry_banner() {
    use api_keys::time::{Duration as TimeDuration, OffsetDateTime};
    use api_keys::{Actor, Expiry, GenerateRequest, ManualClock, OrgId, Scope, UserId};

    let now = OffsetDateTime::from_unix_timestamp(now_unix() as i64).unwrap();
    let clock = ManualClock::new(now - TimeDuration::days(100));
    let policy = Policy::default().revoke_unused_after(TimeDuration::days(30));
    let state = app::AppState::with_integrations(
        AnyStore::new(MemoryStore::new()),
        Keyring::new(1, MasterKey::generate()),
        app::Integrations {
            policy,
            clock: Some(std::sync::Arc::new(clock.clone())),
            ..app::Integrations::default()
        },
    )
    .expect("app state");
    let m = &state.manager;
    let alice = Actor::manager(OrgId::new("acme"), UserId::new("alice"));
    let carol = Actor::manager(OrgId::new("acme"), UserId::new("carol"));
    let make = |actor: &Actor, name: &str, days: u16| {
        let req = GenerateRequest::new(name)
            .scope(Scope::Prometheus)
            .expiry(Expiry::Days(days));
        let (m, actor) = (m.clone(), actor.clone());
        async move {
            let (key, info) = m.generate(&actor, req).await.unwrap();
            (info.id.to_string(), key.expose_secret().to_string())
        }
    };
    // 100 days ago: a key nobody will use; the sweep 60 days later warns, the next revokes.
    let (stale, _) = make(&alice, "Stale exporter", 365).await;
    m.sweep().await.unwrap();
    clock.set(now - TimeDuration::days(40));
    m.sweep().await.unwrap();
    // 40 days ago: the rest.
    let (idle, _) = make(&alice, "Idle integration", 365).await;
    let (expiring, _) = make(&alice, "Expiring soon", 60).await;
    let (leaked, leaked_token) = make(&alice, "Leaked key", 365).await;
    let (manual, _) = make(&alice, "Manual revoke", 365).await;
    let (departed, _) = make(&carol, "Carol's key", 365).await;
    let (rolled, _) = make(&alice, "Rolled key", 365).await;
    // Now.
    clock.set(now);
    let source = "https://github.com/acme/app/blob/main/.env";
    assert_eq!(
        m.revoke_leaked(&leaked_token, source).await.unwrap(),
        api_keys::LeakVerdict::TruePositive
    );
    m.revoke(&alice, &api_keys::KeyId::parse(&manual).unwrap())
        .await
        .unwrap();
    assert_eq!(
        m.revoke_created_by(&alice, &UserId::new("carol"))
            .await
            .unwrap(),
        1
    );
    let report = m.sweep().await.unwrap();
    assert_eq!(report.revoked_unused, 1, "{report:?}");
    m.roll(
        &alice,
        &api_keys::KeyId::parse(&rolled).unwrap(),
        TimeDuration::ZERO,
    )
    .await
    .unwrap();

    let Some(h) = Harness::start_with("revocation_reasons", state).await else {
        return;
    };
    h.open_page().await;
    let reason = |id: &str| format!("tr[data-key-id=\"{id}\"] .reason");
    assert_eq!(h.text(&reason(&manual)).await, "Revoked by a manager");
    assert_eq!(
        h.text(&reason(&leaked)).await,
        format!("Leaked: found at {source}")
    );
    assert_eq!(
        h.text(&reason(&departed)).await,
        "Revoked: its creator left the organization"
    );
    assert_eq!(
        h.text(&reason(&stale)).await,
        "Revoked: unused for too long"
    );
    assert_eq!(h.text(&reason(&rolled)).await, "Replaced by a roll");
    assert_eq!(h.row_status(&rolled).await, "Expired");
    // Working keys carry no reason, and say how long they have been unused.
    assert_eq!(h.count(&reason(&idle)).await, 0);
    assert_eq!(
        h.text(&format!("tr[data-key-id=\"{idle}\"] .idle")).await,
        "unused for 40 days"
    );
    let notice = h
        .text(&format!("tr[data-key-id=\"{idle}\"] .unused-notice"))
        .await;
    assert_eq!(
        notice,
        format!(
            "Will be revoked as unused (warned {})",
            utc_date(now.unix_timestamp() as u64)
        )
    );
    assert_eq!(
        h.count(&format!("tr[data-key-id=\"{manual}\"] .idle"))
            .await,
        0,
        "a revoked key is not called unused"
    );
    // The banner: the policy's first window is 30 days; only "Expiring soon" (20 days left)
    // is in it.
    h.wait_js("!document.getElementById('expiry-banner').hidden")
        .await;
    assert_eq!(
        h.text("#expiry-banner-title").await,
        "1 key expires within 30 days. Roll it before the integrations using it stop working:"
    );
    assert_eq!(h.count("#expiry-banner-keys li").await, 1);
    let item = h
        .text(&format!(
            "#expiry-banner-keys li[data-key-id=\"{expiring}\"]"
        ))
        .await;
    assert!(
        item.starts_with("“Expiring soon” (") && item.contains(") expires in 20 days, on "),
        "{item}"
    );
    h.screenshot("revocation-reasons.png").await;
    assert_eq!(h.csp_violations().await, 0);
    h.finish().await;
}

/// Without keys inside the warning window there is no banner.
#[tokio::test]
async fn no_expiry_banner_without_keys_about_to_expire() {
    let Some(h) = Harness::start("no_expiry_banner").await else {
        return;
    };
    h.create_key("Ninety days").await;
    h.open_page().await;
    assert_eq!(h.count("#key-rows tr").await, 1);
    assert_eq!(
        h.js("return document.getElementById('expiry-banner').hidden;")
            .await,
        Value::Bool(true)
    );
    h.finish().await;
}

/// Usage limits on the page: the generate form's optional rate limit and credits reach the
/// key, its row shows them with the credits left (which go down as the key is used), and a
/// manager changes them from the row's Limits dialog; a bad number is refused on the page.
#[tokio::test]
async fn limits_are_shown_and_set_on_the_page() {
    let Some(h) = Harness::start("limits").await else {
        return;
    };
    h.open_page().await;
    h.css("#open-generate").await.click().await.unwrap();
    h.wait_js("!document.getElementById('generate-panel').hidden")
        .await;
    h.css("#key-name")
        .await
        .send_keys("Metered scraper")
        .await
        .unwrap();
    h.css("#key-rate").await.send_keys("100").await.unwrap();
    h.css("#key-rate-window")
        .await
        .select_by_value("60000")
        .await
        .unwrap();
    h.css("#key-credits").await.send_keys("3").await.unwrap();
    h.css("#key-credits-refill")
        .await
        .select_by_value("daily")
        .await
        .unwrap();
    h.css("#generate-submit").await.click().await.unwrap();
    h.wait_js("!document.getElementById('new-key-panel').hidden")
        .await;
    let token = h.value("#new-key-token").await;
    let listed = h
        .call(Method::GET, "/api/keys", Some(&h.manager.clone()), None)
        .await;
    let key = &listed.json[0];
    let id = key["id"].as_str().unwrap().to_owned();
    assert_eq!(key["rate_limits"][0]["limit"], json!(100));
    assert_eq!(key["rate_limits"][0]["window_ms"], json!(60_000));
    assert_eq!(
        key["credits"],
        json!({"initial": 3, "refill": {"every": "daily", "amount": 3}})
    );
    let cell = format!("tr[data-key-id=\"{id}\"] .col-limits");
    let cell_js = serde_json::to_string(&cell).unwrap();
    let cell_has = |needle: &str| {
        format!(
            "(document.querySelector({cell_js}) || {{textContent: ''}}).textContent.includes({needle:?})"
        )
    };
    h.wait_js(&cell_has("3 of 3 credits left")).await;
    assert!(
        h.text(&cell).await.contains("100 / minute"),
        "{}",
        h.text(&cell).await
    );

    // One use spends one credit; the page shows it after a reload.
    assert_eq!(h.metrics_status(&token).await, StatusCode::OK);
    h.open_page().await;
    h.wait_js(&cell_has("2 of 3 credits left")).await;

    // The Limits dialog: prefilled, and saving changes both.
    h.open_limits(&id).await;
    assert_eq!(h.value("#limits-rate").await, "100");
    assert_eq!(h.value("#limits-credits").await, "3");
    h.css("#limits-rate").await.clear().await.unwrap();
    h.css("#limits-rate").await.send_keys("5").await.unwrap();
    h.css("#limits-rate-window")
        .await
        .select_by_value("1000")
        .await
        .unwrap();
    h.css("#limits-credits").await.clear().await.unwrap();
    h.css("#limits-credits")
        .await
        .send_keys("10")
        .await
        .unwrap();
    h.save_limits().await;
    h.wait_js(&cell_has("10 of 10 credits left")).await;
    assert!(
        h.text(&cell).await.contains("5 / second"),
        "{}",
        h.text(&cell).await
    );
    let got = h
        .call(
            Method::GET,
            &format!("/api/keys/{id}"),
            Some(&h.manager.clone()),
            None,
        )
        .await;
    assert_eq!(got.json["rate_limits"][0]["limit"], json!(5));
    assert_eq!(got.json["rate_limits"][0]["window_ms"], json!(1000));
    assert_eq!(got.json["credits"]["initial"], json!(10));

    // A bad number is refused on the page; nothing changes.
    h.open_limits(&id).await;
    h.css("#limits-rate").await.clear().await.unwrap();
    h.css("#limits-rate").await.send_keys("0").await.unwrap();
    h.css("#limits-save").await.click().await.unwrap();
    h.wait_js("!document.getElementById('limits-error').hidden")
        .await;
    assert!(
        h.text("#limits-error")
            .await
            .starts_with("A rate limit is a whole number")
    );
    h.css("#limits-cancel").await.click().await.unwrap();
    let again = h
        .call(
            Method::GET,
            &format!("/api/keys/{id}"),
            Some(&h.manager.clone()),
            None,
        )
        .await;
    assert_eq!(again.json["rate_limits"], got.json["rate_limits"]);
    assert_eq!(h.csp_violations().await, 0);
    h.finish().await;
}

/// The Limits dialog offers one per-key rate limit; a key whose limit was set through the API
/// as an organization-wide one (README's `"scope":"org"` example) keeps it as it is when a
/// manager changes only its credits there: the rate fields were left as shown.
#[tokio::test]
async fn saving_only_credits_keeps_an_org_wide_rate_limit() {
    let Some(h) = Harness::start("limits-org").await else {
        return;
    };
    let (id, _) = h.create_key("Shared scraper").await;
    let daily =
        json!([{"name": "daily", "limit": 10_000, "window_ms": 86_400_000, "scope": "org"}]);
    let r = h
        .call(
            Method::PUT,
            &format!("/api/keys/{id}/limits"),
            Some(&h.manager.clone()),
            Some(json!({ "rate_limits": daily })),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json);
    h.open_page().await;
    h.open_limits(&id).await;
    assert_eq!(h.value("#limits-rate").await, "10000");
    h.css("#limits-credits")
        .await
        .send_keys("50")
        .await
        .unwrap();
    h.save_limits().await;
    let got = h
        .call(
            Method::GET,
            &format!("/api/keys/{id}"),
            Some(&h.manager.clone()),
            None,
        )
        .await;
    assert_eq!(got.json["credits"]["initial"], json!(50));
    assert_eq!(
        got.json["rate_limits"], daily,
        "the rate limit was left as shown"
    );
    h.finish().await;
}

/// Changing only a key's rate limit in the Limits dialog leaves its credits alone: a budget set
/// through the API with a refill the dialog cannot show (the 15th of the month) keeps it, and
/// the balance is not set back to the full budget.
#[tokio::test]
async fn saving_only_a_rate_limit_keeps_the_credits() {
    let Some(h) = Harness::start("limits-credits").await else {
        return;
    };
    let (id, token) = h.create_key("Metered").await;
    let credits = json!({"initial": 100, "refill": {"every": "monthly", "day": 15, "amount": 100}});
    let r = h
        .call(
            Method::PUT,
            &format!("/api/keys/{id}/credits"),
            Some(&h.manager.clone()),
            Some(json!({ "credits": credits })),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json);
    assert_eq!(h.metrics_status(&token).await, StatusCode::OK);
    h.open_page().await;
    h.open_limits(&id).await;
    assert_eq!(h.value("#limits-credits").await, "100");
    h.css("#limits-rate").await.send_keys("5").await.unwrap();
    h.save_limits().await;
    let manager = h.manager.clone();
    let got = h
        .call(
            Method::GET,
            &format!("/api/keys/{id}"),
            Some(&manager),
            None,
        )
        .await;
    assert_eq!(got.json["rate_limits"][0]["limit"], json!(5));
    assert_eq!(
        got.json["credits"], credits,
        "the credits were left as shown"
    );
    let left = h
        .call(
            Method::GET,
            &format!("/api/keys/{id}/credits"),
            Some(&manager),
            None,
        )
        .await;
    assert_eq!(
        left.json["remaining"],
        json!(99),
        "the balance is not reset"
    );
    h.finish().await;
}

/// Revoking the old half of a roll (its replacement is made: the usual next step) offers no
/// "Roll instead": a key is rolled once, so that action could only fail.
#[tokio::test]
async fn revoking_a_rolled_key_offers_no_second_roll() {
    let Some(h) = Harness::start("revoke-rolled").await else {
        return;
    };
    let (id, _) = h.create_key("Rolled").await;
    let r = h
        .call(
            Method::POST,
            &format!("/api/keys/{id}/roll"),
            Some(&h.manager.clone()),
            Some(json!({"overlap_seconds": 3600})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json);
    h.open_page().await;
    for action in ["action-revoke", "action-delete"] {
        h.css(&format!("tr[data-key-id=\"{id}\"] button.{action}"))
            .await
            .click()
            .await
            .unwrap();
        h.wait_js("document.getElementById('confirm-dialog').open")
            .await;
        assert_eq!(
            h.js("return document.getElementById('roll-section').hidden;")
                .await,
            Value::Bool(true),
            "{action}"
        );
        h.css("#confirm-cancel").await.click().await.unwrap();
        h.wait_js("!document.getElementById('confirm-dialog').open")
            .await;
    }
    h.finish().await;
}
