//! The harness's methods: starting the example server and the browser, calling it over
//! HTTP, and driving the page.

use super::*;

impl Harness {
    pub(crate) async fn start(test: &str) -> Option<Harness> {
        Harness::start_with(test, demo_state()).await
    }

    pub(crate) async fn start_with(test: &str, state: app::AppState) -> Option<Harness> {
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
    pub(crate) async fn restart(&mut self, state: app::AppState) {
        let (task, stop) = self.server.take().unwrap();
        let _ = stop.send(());
        task.await.unwrap();
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.server = Some(serve_on(listener, state.clone()));
        self.manager = state.session("acme", "alice", "manager").unwrap();
        self.member = state.session("acme", "bob", "member").unwrap();
        self.state = state;
    }

    pub(crate) async fn finish(self) {
        self.browser.close().await.unwrap();
    }

    // -- HTTP, from the test's own client --

    pub(crate) async fn call(
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
    pub(crate) async fn metrics_status(&self, token: &str) -> StatusCode {
        let req = Request::builder()
            .uri(format!("{}/metrics", self.base))
            .header("authorization", format!("Bearer {token}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        self.http.request(req).await.unwrap().status()
    }

    /// A key made through the JSON API as the manager: (id, token).
    pub(crate) async fn create_key(&self, name: &str) -> (String, String) {
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
    pub(crate) async fn open_page(&self) {
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

    pub(crate) async fn js(&self, body: &str) -> Value {
        self.browser.execute(body, vec![]).await.unwrap()
    }

    /// Waits (bounded: 15 s) until a JavaScript expression is true.
    pub(crate) async fn wait_js(&self, expr: &str) {
        let script = format!("return !!({expr});");
        for _ in 0..300 {
            if self.js(&script).await == Value::Bool(true) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("timed out waiting for: {expr}");
    }

    pub(crate) async fn css(&self, selector: &str) -> Element {
        self.browser.find(Locator::Css(selector)).await.unwrap()
    }

    pub(crate) async fn count(&self, selector: &str) -> usize {
        self.browser
            .find_all(Locator::Css(selector))
            .await
            .unwrap()
            .len()
    }

    pub(crate) async fn value(&self, selector: &str) -> String {
        self.css(selector)
            .await
            .prop("value")
            .await
            .unwrap()
            .unwrap_or_default()
    }

    /// An element's text, with runs of white space collapsed to one space.
    pub(crate) async fn text(&self, selector: &str) -> String {
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
    pub(crate) async fn open_limits(&self, id: &str) {
        self.css(&format!("tr[data-key-id=\"{id}\"] .action-limits"))
            .await
            .click()
            .await
            .unwrap();
        self.wait_js("document.getElementById('limits-dialog').open")
            .await;
    }

    /// Saves the open Limits dialog and waits for it to close.
    pub(crate) async fn save_limits(&self) {
        self.css("#limits-save").await.click().await.unwrap();
        self.wait_js("!document.getElementById('limits-dialog').open")
            .await;
    }

    pub(crate) async fn row_status(&self, id: &str) -> String {
        self.text(&format!("tr[data-key-id=\"{id}\"] .badge")).await
    }

    pub(crate) async fn csp_violations(&self) -> i64 {
        self.js("return window.__cspViolations;")
            .await
            .as_i64()
            .unwrap()
    }

    /// Picks the session of `who` ("manager" or "member") in the page's picker.
    pub(crate) async fn choose_session(&self, who: &str) {
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

    pub(crate) async fn screenshot(&self, name: &str) -> PathBuf {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/admin-page");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, self.browser.screenshot().await.unwrap()).unwrap();
        path
    }
}
