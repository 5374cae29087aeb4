//! The page when the server answers late or oddly: an answer that is not JSON, and a person who
//! presses Escape while a change is on its way.

use super::*;

/// Holds every request of the page that is not a `GET` until the test answers it, with
/// `window.__held[i].resolve(new Response(...))` or with the server's own answer through
/// `window.__answer(i)`, which sets `window.__settled = i` once the page has handled it.
const HOLD_CHANGES: &str = "
  window.__held = [];
  const real = window.fetch;
  window.fetch = (path, init) => {
    if (init && init.method !== 'GET') {
      return new Promise((resolve) => { window.__held.push({ path, init, resolve }); });
    }
    return real(path, init);
  };
  window.__answer = async (i) => {
    const held = window.__held[i];
    const answer = await real(held.path, held.init);
    const body = await answer.text();
    const res = new Response(body, { status: answer.status, headers: answer.headers });
    // The page reads the body, then handles it in promise jobs only: a task queued when the
    // body is read runs after them.
    res.text = () => new Promise((resolve) => {
      resolve(body);
      setTimeout(() => { window.__settled = i; }, 0);
    });
    held.resolve(res);
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
    answer_held_with_503(&h, 0).await;
    limits_error_in_view_then_cancel(&h).await;

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

/// A key revealed or generated for one identity is not shown to another: when the person
/// switches the session picker while the request is on its way, the late answer is dropped
/// (as a key already shown is dismissed by the switch), not put on the other identity's page.
#[tokio::test]
async fn a_late_key_is_not_shown_after_switching_identity() {
    let state = app::AppState::with_policy(
        AnyStore::new(MemoryStore::new()),
        Keyring::new(1, MasterKey::generate()),
        Policy::default().allow_reveal(true),
    )
    .expect("app state");
    let Some(h) = Harness::start_with("odd-switch", state).await else {
        return;
    };
    let (id, _) = h.create_key("Okta SCIM").await;
    h.open_page().await;
    h.js(HOLD_CHANGES).await;
    let shown = "return [document.getElementById('new-key-panel').hidden, \
                 document.getElementById('new-key-token').value === ''];";

    // Reveal as alice (manager), then switch to bob (member) before the answer.
    h.css(&format!("tr[data-key-id=\"{id}\"] button.action-reveal"))
        .await
        .click()
        .await
        .unwrap();
    h.wait_js("window.__held.length === 1").await;
    h.choose_session("member").await;
    h.js("window.__answer(0);").await;
    h.wait_js("window.__settled === 0").await;
    assert_eq!(
        h.js(shown).await,
        json!([true, true]),
        "alice's revealed key is shown on bob's page"
    );

    // Generate as alice, then switch to bob before the answer.
    h.choose_session("manager").await;
    h.css("#open-generate").await.click().await.unwrap();
    h.wait_js("!document.getElementById('generate-panel').hidden")
        .await;
    h.css("#key-name").await.send_keys("Late").await.unwrap();
    h.css("#generate-submit").await.click().await.unwrap();
    h.wait_js("window.__held.length === 2").await;
    h.choose_session("member").await;
    h.js("window.__answer(1);").await;
    h.wait_js("window.__settled === 1").await;
    assert_eq!(
        h.js(shown).await,
        json!([true, true]),
        "alice's new key is shown on bob's page"
    );
    h.finish().await;
}

/// Escape pressed twice while a change is on its way closes neither the Limits dialog nor the
/// confirmation dialog:
/// Chromium lets a dialog refuse only one Escape per user activation and closes it on the next,
/// so the dialog must not depend on refusing it.
#[tokio::test]
async fn escape_twice_while_a_dialog_is_busy_keeps_its_error_in_view() {
    let Some(h) = Harness::start("odd-escape-twice").await else {
        return;
    };
    let (id, _) = h.create_key("Held").await;
    h.open_page().await;
    h.js(HOLD_CHANGES).await;
    h.open_limits(&id).await;
    h.css("#limits-rate").await.send_keys("7").await.unwrap();
    h.css("#limits-save").await.click().await.unwrap();
    h.wait_js("window.__held.length === 1").await;
    for _ in 0..2 {
        press_escape(&h).await;
    }
    answer_held_with_503(&h, 0).await;
    limits_error_in_view_then_cancel(&h).await;

    // The confirmation dialog (a revoke) likewise.
    h.css(&format!("tr[data-key-id=\"{id}\"] .action-revoke"))
        .await
        .click()
        .await
        .unwrap();
    h.wait_js("document.getElementById('confirm-dialog').open")
        .await;
    h.css("#confirm-ok").await.click().await.unwrap();
    h.wait_js("window.__held.length === 2").await;
    for _ in 0..2 {
        press_escape(&h).await;
    }
    answer_held_with_503(&h, 1).await;
    h.wait_js("!document.getElementById('confirm-ok').disabled")
        .await;
    assert_eq!(
        h.js("return document.getElementById('confirm-dialog').open;")
            .await,
        json!(true),
        "the confirmation dialog closed while revoking; its error is out of sight"
    );
    h.finish().await;
}

/// A session that ends while its Limits dialog is saving (a 401: expired, or the server
/// restarted) closes the dialog, as it closes the confirmation dialog: the page moves on to the
/// next identity still signed in, and a second Save must not send the first identity's change
/// as that other one.
#[tokio::test]
async fn a_session_ending_while_saving_limits_closes_the_dialog() {
    let Some(h) = Harness::start("odd-limits-401").await else {
        return;
    };
    let (id, _) = h.create_key("Held").await;
    h.open_page().await;
    let before = h.text("#whoami").await;
    // Held: the change only (the page's check of its other sessions is a plain fetch).
    h.js(&HOLD_CHANGES.replace(
        "init && init.method !== 'GET'",
        "init && init.method === 'PUT'",
    ))
    .await;
    h.open_limits(&id).await;
    h.css("#limits-rate").await.send_keys("7").await.unwrap();
    h.css("#limits-save").await.click().await.unwrap();
    h.wait_js("window.__held.length === 1").await;
    h.js("window.__held[0].resolve(new Response('{}', \
          { status: 401, headers: { 'content-type': 'application/json' } }));")
        .await;
    let before_js = serde_json::to_string(&before).unwrap();
    h.wait_js(&format!(
        "document.getElementById('whoami').textContent.replace(/\\s+/g, ' ').trim() !== {before_js} && \
         document.getElementById('whoami').textContent !== ''"
    ))
    .await;
    assert_eq!(
        h.js("return document.getElementById('limits-dialog').open;")
            .await,
        json!(false),
        "the Limits dialog of the ended session is still open under {}",
        h.text("#whoami").await
    );
    h.finish().await;
}

/// Presses Escape wherever the focus is (a disabled button, too: no element is typed into).
async fn press_escape(h: &Harness) {
    use fantoccini::actions::{InputSource, KeyAction, KeyActions};
    let escape = char::from(Key::Escape);
    let keys = KeyActions::new("keyboard".into())
        .then(KeyAction::Down { value: escape })
        .then(KeyAction::Up { value: escape });
    h.browser.perform_actions(keys).await.unwrap();
}

/// A key being generated (its request still on its way) does not hold up another key's Limits
/// dialog or confirmation dialog: Escape closes them, and their Save or Revoke is sent, not
/// silently ignored because "a request is in flight" somewhere else on the page.
#[tokio::test]
async fn a_key_being_generated_does_not_block_the_other_dialogs() {
    let Some(h) = Harness::start("odd-busy-elsewhere").await else {
        return;
    };
    let (id, _) = h.create_key("Other").await;
    h.open_page().await;
    h.js(HOLD_CHANGES).await;
    h.css("#open-generate").await.click().await.unwrap();
    h.wait_js("!document.getElementById('generate-panel').hidden")
        .await;
    h.css("#key-name").await.send_keys("Slow").await.unwrap();
    h.css("#generate-submit").await.click().await.unwrap();
    h.wait_js("window.__held.length === 1").await;

    // Escape closes the Limits dialog of another key.
    h.open_limits(&id).await;
    press_escape(&h).await;
    h.wait_js("!document.getElementById('limits-dialog').open")
        .await;
    // Its Save is sent.
    h.open_limits(&id).await;
    h.css("#limits-rate").await.send_keys("7").await.unwrap();
    h.css("#limits-save").await.click().await.unwrap();
    h.wait_js("window.__held.length === 2").await;
    h.js("window.__answer(1);").await;
    h.wait_js("window.__settled === 1").await;
    h.wait_js("!document.getElementById('limits-dialog').open")
        .await;

    // The confirmation dialog's Revoke is sent.
    h.wait_js(&format!(
        "document.querySelector('tr[data-key-id=\"{id}\"] .action-revoke') !== null"
    ))
    .await;
    h.css(&format!("tr[data-key-id=\"{id}\"] .action-revoke"))
        .await
        .click()
        .await
        .unwrap();
    h.wait_js("document.getElementById('confirm-dialog').open")
        .await;
    h.css("#confirm-ok").await.click().await.unwrap();
    h.wait_js("window.__held.length === 3").await;
    h.finish().await;
}

/// A change the server never answers (a stalled proxy, a lost connection) does not hold the
/// Limits dialog open for good, its Cancel disabled and Escape refused: the page gives up
/// after its request timeout (shortened here), says the outcome is unknown, and the dialog
/// can be closed again.
#[tokio::test]
async fn a_change_never_answered_does_not_lock_the_limits_dialog() {
    let Some(h) = Harness::start("odd-never-answered").await else {
        return;
    };
    let (id, _) = h.create_key("Stalled").await;
    h.open_page().await;
    // A `PUT` that is never answered, but gives up when its signal aborts, as fetch does.
    h.js("window.apiKeysPage.requestTimeoutMs = 200;
          const real = window.fetch;
          window.fetch = (path, init) => {
            if (!init || init.method !== 'PUT') return real(path, init);
            return new Promise((_, reject) => {
              if (init.signal) init.signal.addEventListener('abort', () =>
                reject(new DOMException('The user aborted a request.', 'AbortError')));
            });
          };")
        .await;
    h.open_limits(&id).await;
    h.css("#limits-rate").await.send_keys("7").await.unwrap();
    h.css("#limits-save").await.click().await.unwrap();
    h.wait_js("!document.getElementById('limits-cancel').disabled")
        .await;
    assert!(
        h.text("#limits-error")
            .await
            .contains("did not answer in time"),
        "{}",
        h.text("#limits-error").await
    );
    press_escape(&h).await;
    h.wait_js("!document.getElementById('limits-dialog').open")
        .await;
    h.finish().await;
}

/// Answers the `n`th change the page sent (held by `HOLD_CHANGES`) with a 503 whose body is
/// not JSON (a proxy in front of the server).
async fn answer_held_with_503(h: &Harness, n: usize) {
    h.js(&format!(
        "window.__held[{n}].resolve(new Response('upstream down', \
         {{ status: 503, headers: {{ 'content-type': 'text/plain' }} }}));"
    ))
    .await;
}

/// Once the Limits dialog's save has failed: the dialog is still open with its error in view;
/// then it is cancelled.
async fn limits_error_in_view_then_cancel(h: &Harness) {
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
}
