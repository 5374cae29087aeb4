//! The page when the server answers late or oddly: an answer that is not JSON, and a person who
//! presses Escape while a change is on its way.

use super::*;

/// Holds every request of the page that is not a `GET` until the test answers it with
/// `window.__held[i].resolve(new Response(...))`.
const HOLD_CHANGES: &str = "
  window.__held = [];
  const real = window.fetch;
  window.fetch = (path, init) => {
    if (init && init.method !== 'GET') {
      return new Promise((resolve) => { window.__held.push({ path, resolve }); });
    }
    return real(path, init);
  };";

/// Escape pressed while a change is on its way does not close the Limits dialog or the generate
/// form: when the change then fails (here a proxy's 503 or 502 that is not JSON), the error is
/// shown where the person is looking, not written into a closed dialog or a hidden form.
#[tokio::test]
async fn escape_while_a_change_is_sent_keeps_its_error_in_view() {
    let Some(h) = Harness::start("odd-escape").await else {
        return;
    };
    let (id, _) = h.create_key("Held").await;
    h.open_page().await;
    h.js(HOLD_CHANGES).await;

    // The Limits dialog.
    h.open_limits(&id).await;
    h.css("#limits-rate").await.send_keys("7").await.unwrap();
    h.css("#limits-save").await.click().await.unwrap();
    h.wait_js("window.__held.length === 1").await;
    h.css("#limits-rate")
        .await
        .send_keys(&Key::Escape.to_string())
        .await
        .unwrap();
    h.js("window.__held[0].resolve(new Response('upstream down', \
          { status: 503, headers: { 'content-type': 'text/plain' } }));")
        .await;
    h.wait_js("!document.getElementById('limits-save').disabled")
        .await;
    assert_eq!(
        h.js("return document.getElementById('limits-dialog').open;")
            .await,
        json!(true),
        "the Limits dialog closed while saving; its error is out of sight"
    );
    assert_eq!(
        h.text("#limits-error").await,
        "Something went wrong (HTTP 503). Try again."
    );
    h.css("#limits-cancel").await.click().await.unwrap();
    h.wait_js("!document.getElementById('limits-dialog').open")
        .await;

    // The generate form.
    h.css("#open-generate").await.click().await.unwrap();
    h.wait_js("!document.getElementById('generate-panel').hidden")
        .await;
    h.css("#key-name").await.send_keys("Late").await.unwrap();
    h.css("#generate-submit").await.click().await.unwrap();
    h.wait_js("window.__held.length === 2").await;
    h.css("#key-name")
        .await
        .send_keys(&Key::Escape.to_string())
        .await
        .unwrap();
    h.js(
        "window.__held[1].resolve(new Response('<html>Bad Gateway</html>', \
          { status: 502, headers: { 'content-type': 'text/html' } }));",
    )
    .await;
    h.wait_js("!document.getElementById('generate-submit').disabled")
        .await;
    assert_eq!(
        h.js("return document.getElementById('generate-panel').hidden;")
            .await,
        json!(false),
        "the generate form closed while sending; its error is out of sight"
    );
    assert_eq!(
        h.text("#generate-error").await,
        "Something went wrong (HTTP 502). Try again."
    );
    h.finish().await;
}
