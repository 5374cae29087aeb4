//! The "Settings → API Keys" page of the example server, driven in a real headless Chromium over
//! WebDriver (chromedriver), against the example app served on an ephemeral loopback port.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/chromium.sh` installs them). Without
//! them each test prints why it is skipped and returns, unless `API_KEYS_REQUIRE_BROWSER=1`, in
//! which case it fails. `CHROMEDRIVER` and `CHROME` override where the binaries are looked for.
//!
//! Screenshots land in `target/admin-page/`.

#[path = "../../examples/server/app.rs"]
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

mod access;
mod generate;
mod harness;
mod limits_page;
mod limits_round_trip;
mod odd_answers;
mod page_safety;
mod reasons_and_banners;
mod revoke_roll;

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
