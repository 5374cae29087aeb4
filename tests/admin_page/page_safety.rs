//! The page's own safety: key names shown as text, a strict content policy, no inline handlers.

use super::*;

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
    let mut files = vec![("/settings/api-keys", "text/html; charset=utf-8")];
    for (path, _) in app::page::STYLESHEETS {
        files.push((path, "text/css; charset=utf-8"));
    }
    for (path, _) in app::page::SCRIPTS {
        files.push((path, "text/javascript; charset=utf-8"));
    }
    let mut page_headers = None;
    for (path, content_type) in files {
        let res = http
            .get(format!("http://{addr}{path}").parse().unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        let h = res.headers();
        // Every file carries the page's own headers, but for its type and length.
        let mut same = h.clone();
        for name in ["content-type", "content-length", "date"] {
            same.remove(name);
        }
        assert_eq!(
            page_headers.get_or_insert_with(|| same.clone()),
            &same,
            "{path}"
        );
        assert_eq!(h["cache-control"], "no-cache", "{path}");
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

    let html = include_str!("../../examples/server/app/assets/index.html");
    for (i, piece) in html.split("<script").enumerate().skip(1) {
        let tag = piece.split('>').next().unwrap();
        assert!(tag.contains("src=\"/"), "inline script #{i}");
    }
    // The page loads every script served, in order, each deferred, and nothing else.
    let loaded: Vec<String> = html
        .split("<script")
        .skip(1)
        .map(|piece| piece.split('>').next().unwrap().trim().to_owned())
        .collect();
    let served: Vec<String> = app::page::SCRIPTS
        .iter()
        .map(|(path, _)| format!("src=\"{path}\" defer"))
        .collect();
    assert_eq!(loaded, served);
    // Likewise every stylesheet, in order.
    let linked: Vec<&str> = html
        .split("<link rel=\"stylesheet\" href=\"")
        .skip(1)
        .map(|piece| piece.split('"').next().unwrap())
        .collect();
    let styles: Vec<&str> = app::page::STYLESHEETS.iter().map(|(p, _)| *p).collect();
    assert_eq!(linked, styles);
    assert_eq!(html.matches("stylesheet").count(), styles.len());
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
        for (path, js) in app::page::SCRIPTS {
            let code: String = js
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n");
            assert!(!code.contains(banned), "{path} uses {banned}");
        }
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
