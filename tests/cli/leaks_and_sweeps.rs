//! Revoking leaked tokens read from standard input, and sweeps that warn and revoke unused keys.

use super::*;

/// `keys revoke-leaked`: tokens on standard input; genuine ones revoked with the source, the
/// rest false positives; the output names lines, never tokens.
#[tokio::test]
async fn keys_revoke_leaked_reads_tokens_from_standard_input() {
    let db = db();
    let m = manager(SqliteStore::open(&db.path).unwrap(), old_ring());
    let (leaked, _) = make(&m, &acme(), "leaked", 30).await;
    let (kept, _) = make(&m, &acme(), "kept", 30).await;
    let t = leaked.expose_secret();
    let wrong = format!("{}{}", &t[..20], if &t[20..21] == "a" { "b" } else { "a" });
    let input = format!("{t}\n\nnot-a-token\n{wrong}{}\n", &t[21..]);
    let out = cli_with(&db.path, 1, &OLD)
        .args([
            "keys",
            "revoke-leaked",
            "--source",
            "https://example.com/paste/9",
        ])
        .write_stdin(input)
        .assert()
        .success();
    let text = stdout(out.get_output());
    assert!(
        text.contains("1 genuine token(s) revoked (lines [1])"),
        "{text}"
    );
    assert!(
        text.contains("2 false positive(s) (lines [3, 4])"),
        "{text}"
    );
    for part in [t, &t[15..40]] {
        assert!(!text.contains(part) && !stderr(out.get_output()).contains(part));
    }
    assert!(matches!(m.verify(t, &read()).await, Err(Error::Revoked)));
    let rec = m.store().get(leaked.id()).await.unwrap().unwrap();
    assert_eq!(
        rec.revocation,
        Some(RevocationReason::Leaked {
            source: "https://example.com/paste/9".into()
        })
    );
    m.verify(kept.expose_secret(), &read()).await.unwrap();
}

/// A line that is not UTF-8 (a binary paste) is a false positive like any other non-token:
/// the leaked token after it is still revoked, and the report names both.
#[tokio::test]
async fn keys_revoke_leaked_goes_on_past_a_line_that_is_not_utf8() {
    let db = db();
    let m = manager(SqliteStore::open(&db.path).unwrap(), old_ring());
    let (first, _) = make(&m, &acme(), "first", 30).await;
    let (second, _) = make(&m, &acme(), "second", 30).await;
    let mut input = Vec::new();
    input.extend_from_slice(first.expose_secret().as_bytes());
    input.extend_from_slice(b"\n\xff\xfe garbage from a paste\n");
    input.extend_from_slice(second.expose_secret().as_bytes());
    input.push(b'\n');
    let out = cli_with(&db.path, 1, &OLD)
        .args(["keys", "revoke-leaked", "--source", "paste"])
        .write_stdin(input)
        .assert()
        .success();
    let text = stdout(out.get_output());
    assert!(
        text.contains("2 genuine token(s) revoked (lines [1, 3]); 1 false positive(s) (lines [2])"),
        "{text}"
    );
    for key in [&first, &second] {
        assert!(matches!(
            m.verify(key.expose_secret(), &read()).await,
            Err(Error::Revoked)
        ));
    }
}

/// An invalid `--source` is a usage error (exit 2) before anything is read, also when
/// standard input is empty.
#[tokio::test]
async fn keys_revoke_leaked_refuses_a_bad_source_as_usage() {
    let db = db();
    let m = manager(SqliteStore::open(&db.path).unwrap(), old_ring());
    let (key, _) = make(&m, &acme(), "k", 30).await;
    for (source, input) in [
        ("x".repeat(600), String::new()),
        (
            "line\nbreak".to_owned(),
            format!("{}\n", key.expose_secret()),
        ),
        (
            "https://x/\u{202e}gpj.exe".to_owned(),
            format!("{}\n", key.expose_secret()),
        ),
    ] {
        let out = cli_with(&db.path, 1, &OLD)
            .args(["keys", "revoke-leaked", "--source", &source])
            .write_stdin(input)
            .assert()
            .code(2);
        assert!(stderr(out.get_output()).contains("--source"));
    }
    m.verify(key.expose_secret(), &read()).await.unwrap();
}

/// `sweep`: the automations once, with the flags' policy, counts at the end — and a second
/// sweep sends no warning twice.
#[tokio::test]
async fn sweep_warns_once_and_revokes_unused_keys_when_asked() {
    let db = db();
    // Keys created 25 days ago: a 30-day key expires in 5 days (its 7-day warning is due),
    // a 365-day key much later (none due).
    let m = manager_25_days_back(&db.path);
    make(&m, &acme(), "soon", 30).await;
    make(&m, &acme(), "later", 365).await;
    let out = cli_with(&db.path, 1, &OLD)
        .args(["sweep", "--json", "--warn-before", "30d,7d,1d"])
        .assert()
        .success();
    let v = json(out.get_output());
    assert_eq!(v["scanned"], 2);
    assert_eq!(v["expiry_warnings"], 1, "{v}");
    let out = cli_with(&db.path, 1, &OLD)
        .args(["sweep", "--json"])
        .assert()
        .success();
    assert_eq!(json(out.get_output())["expiry_warnings"], 0);
    cli_with(&db.path, 1, &OLD)
        .args(["sweep", "--warn-before", "soon"])
        .assert()
        .code(2);
}

/// A genuine leaked token whose record cannot be opened with the keyring given (the wrong
/// master key, or a previous key missing mid-rotation) was not judged: it must not be
/// reported as a false positive with exit 0 — the key still works. Its line is named apart
/// and the exit code is 5 (a record failed its integrity check).
#[tokio::test]
async fn keys_revoke_leaked_with_the_wrong_master_key_is_not_a_false_positive() {
    let db = db();
    let m = manager(SqliteStore::open(&db.path).unwrap(), old_ring());
    let (leaked, _) = make(&m, &acme(), "leaked", 30).await;
    let input = format!("not-a-token\n{}\n", leaked.expose_secret());
    let out = cli_with(&db.path, 2, &NEW)
        .args(["keys", "revoke-leaked", "--json"])
        .write_stdin(input)
        .assert()
        .code(5);
    let v = json(out.get_output());
    assert_eq!(v["false_positive_lines"], serde_json::json!([1]), "{v}");
    assert_eq!(v["integrity_failed_lines"], serde_json::json!([2]), "{v}");
    let err = stderr(out.get_output());
    assert!(err.contains("integrity check"), "{err}");
    assert!(!err.contains(leaked.expose_secret()), "{err}");
    // Not revoked: the operator must run it again with the right keyring.
    m.verify(leaked.expose_secret(), &read()).await.unwrap();
}

/// The tool has no notifier of the host's to hand a claimed notice to, and a claimed notice is
/// never announced again: so `sweep` shows each one it claims — a line per notice, or the
/// `notices` array of its JSON answer — instead of marking warnings sent that nobody saw.
#[tokio::test]
async fn sweep_shows_every_notice_it_claims() {
    let db = db();
    let m = manager_25_days_back(&db.path);
    let (_, soon) = make(&m, &acme(), "soon", 30).await;
    let (_, other) = make(&m, &acme(), "other soon", 30).await;
    make(&m, &acme(), "later", 365).await;
    let out = cli_with(&db.path, 1, &OLD)
        .args(["sweep", "--warn-before", "7d"])
        .assert()
        .success();
    // Text: one line for each claimed notice, naming the key, its organization and creator.
    let text = stdout(out.get_output());
    let notices: Vec<&str> = text.lines().filter(|l| l.starts_with("notice ")).collect();
    assert_eq!(notices.len(), 2, "{text}");
    for id in [soon.id, other.id] {
        let line = notices
            .iter()
            .find(|l| l.contains(&id.to_string()))
            .unwrap_or_else(|| panic!("no notice for {id}: {text}"));
        assert!(line.starts_with("notice expiry_warning: "), "{line}");
        assert!(line.contains("of acme, created by alice"), "{line}");
    }
    // JSON: the keys warned at 7 days get nothing more.
    let out = cli_with(&db.path, 1, &OLD)
        .args(["sweep", "--json", "--warn-before", "30d,7d"])
        .assert()
        .success();
    let v = json(out.get_output());
    // The 7-day warnings were sent: a longer lead is never sent after a shorter one.
    assert_eq!(v["notices"], serde_json::json!([]), "{v}");
    // A key made 35 days ago for 60 days: its 30-day warning is due, its 7-day one not yet.
    let made = api_keys::time::OffsetDateTime::now_utc() - api_keys::time::Duration::days(35);
    let m2 = KeyManager::builder(SqliteStore::open(&db.path).unwrap(), old_ring())
        .clock(api_keys::ManualClock::new(made))
        .build()
        .unwrap();
    let (_, fresh) = make(&m2, &acme(), "fresh", 60).await;
    let out = cli_with(&db.path, 1, &OLD)
        .args(["sweep", "--json", "--warn-before", "30d,7d"])
        .assert()
        .success();
    let v = json(out.get_output());
    let notices = v["notices"].as_array().unwrap_or_else(|| panic!("{v}"));
    assert_eq!(notices.len(), 1, "{v}");
    assert_eq!(notices[0]["event"], "expiry_warning");
    assert_eq!(notices[0]["lead_seconds"], 30 * 86_400);
    assert_eq!(notices[0]["key"]["id"], fresh.id.to_string());
    assert_eq!(v["expiry_warnings"], 1);
}

/// A claimed notice is never announced again, so when standard output fails (a full disk)
/// the sweep must still name, on standard error, each key whose notice it claimed but could
/// not show, and finish the run it reports as done: it exited at the first notice instead,
/// saying the work was done, with that key's notice marked sent and shown nowhere and the
/// rest of the sweep not run.
#[tokio::test]
async fn sweep_with_a_failing_output_names_the_notices_it_could_not_show() {
    let db = db();
    let ids = two_due_keys(&db.path).await;
    let Some(full) = failing_output("full") else {
        eprintln!("skipped: no /dev/full");
        return;
    };
    let out = run_into(&db.path, &["sweep", "--warn-before", "7d"], full);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    for id in ids {
        assert!(err.contains(&id.to_string()), "{id} not named: {err}");
    }
}

/// A claimed notice is never announced again, so a sweep whose reader went away (`api-keys
/// sweep | head -1`, a pager quit early) must still name on standard error each key whose
/// notice it claimed but could not show, as it does for a full disk: the closed pipe was
/// taken for a delivered notice, and the notices were marked sent with no trace anywhere.
#[tokio::test]
async fn sweep_into_a_closed_pipe_names_the_notices_it_could_not_show() {
    let db = db();
    let ids = two_due_keys(&db.path).await;
    // The reader is gone before the tool starts.
    let closed = failing_output("closed pipe").unwrap();
    let out = run_into(&db.path, &["sweep", "--warn-before", "7d"], closed);
    let err = stderr(&out);
    assert!(!err.contains("panicked"), "{err}");
    // Not a success: the notices it claimed were delivered nowhere.
    assert_eq!(out.status.code(), Some(3), "{err}");
    for id in ids {
        assert!(err.contains(&id.to_string()), "{id} not named: {err}");
    }
}

/// `sweep --json` keeps the notices it claims for its answer at the end. When the sweep
/// stopped on a store failure (a page that could not be read), the tool exited 3 without that
/// answer: every notice claimed before the failure was marked sent and shown nowhere, and a
/// claimed notice is never announced again. The fault is real: a page of the SQLite file
/// holding the records of the sweep's second scan page is damaged.
#[tokio::test]
async fn sweep_json_that_stops_on_a_store_failure_still_shows_the_notices_it_claimed() {
    let made = db();
    {
        let m = manager_25_days_back(&made.path);
        // More than one scan page (256) of keys whose 7-day warning is due.
        for i in 0..300 {
            let org = OrgId::new(format!("org{}", i / 50));
            let actor = Actor::manager(org, UserId::new("alice"));
            make(&m, &actor, "due", 30).await;
        }
    }
    // The same records in a fresh file in id order (so rowid order is scan order), then the
    // table page holding the last records damaged: the first scan page reads well, the
    // second one fails.
    let db = db();
    {
        let c = rusqlite::Connection::open(&db.path).unwrap();
        c.execute_batch("PRAGMA journal_mode=DELETE;").unwrap();
        c.execute("ATTACH DATABASE ?1 AS o", [made.path.to_str().unwrap()])
            .unwrap();
        let schema: Vec<(String, String)> = c
            .prepare("SELECT type, sql FROM o.sqlite_master WHERE sql IS NOT NULL")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        for (_, sql) in schema.iter().filter(|(t, _)| t == "table") {
            c.execute_batch(sql).unwrap();
        }
        c.execute_batch(
            "INSERT INTO api_keys_schema SELECT * FROM o.api_keys_schema;
             INSERT INTO api_keys SELECT * FROM o.api_keys ORDER BY id;",
        )
        .unwrap();
        for (_, sql) in schema.iter().filter(|(t, _)| t == "index") {
            c.execute_batch(sql).unwrap();
        }
        c.execute_batch("DETACH DATABASE o;").unwrap();
    }
    damage_the_leaf_page_of_the_last_rows(&db.path, 280);
    let out = cli_with(&db.path, 1, &OLD)
        .args(["sweep", "--json", "--warn-before", "7d"])
        .output()
        .unwrap();
    let (text, err) = (stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(3), "{err}");
    // Each notice the failed run claimed is in its answer.
    let claimed: Vec<String> = {
        let c = rusqlite::Connection::open(&db.path).unwrap();
        let mut stmt = c
            .prepare("SELECT id, record FROM api_keys WHERE rowid <= 256")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .filter(|(_, record)| !record.contains("\"expiry_warned\":[]"))
            .map(|(id, _)| id)
            .collect()
    };
    assert!(!claimed.is_empty(), "no notice was claimed: {err}");
    for id in &claimed {
        assert!(
            text.contains(id.as_str()),
            "claimed notice of {id} not shown: {text}{err}"
        );
    }
}

/// Sets the page type of the SQLite table leaf pages whose every row has a rowid above
/// `above` to an invalid one: reading those rows fails as a damaged file does.
fn damage_the_leaf_page_of_the_last_rows(path: &Path, above: u64) {
    fn varint(b: &[u8]) -> (u64, usize) {
        let mut v = 0u64;
        for (i, &c) in b.iter().enumerate().take(9) {
            if i == 8 {
                return ((v << 8) | u64::from(c), 9);
            }
            v = (v << 7) | u64::from(c & 0x7f);
            if c & 0x80 == 0 {
                return (v, i + 1);
            }
        }
        (v, 9)
    }
    let mut bytes = std::fs::read(path).unwrap();
    let size = match u16::from_be_bytes([bytes[16], bytes[17]]) {
        1 => 65_536,
        n => usize::from(n),
    };
    let mut damaged = 0;
    for start in (size..bytes.len()).step_by(size) {
        let page = &bytes[start..start + size];
        let cells = usize::from(u16::from_be_bytes([page[3], page[4]]));
        if page[0] != 0x0d || cells == 0 {
            continue;
        }
        let lowest = (0..cells)
            .map(|i| {
                let at = usize::from(u16::from_be_bytes([page[8 + 2 * i], page[9 + 2 * i]]));
                let (_, n) = varint(&page[at..]);
                varint(&page[at + n..]).0
            })
            .min()
            .unwrap();
        if lowest > above {
            bytes[start] = 0xff;
            damaged += 1;
        }
    }
    assert!(damaged > 0, "no leaf page holds only rows above {above}");
    std::fs::write(path, bytes).unwrap();
}

/// `keys revoke-leaked` held a whole line in memory however long it was: a file without line
/// breaks piped in by mistake (a binary dump, a minified bundle) grew the process until the
/// allocator gave up and it aborted, the genuine tokens after it never revoked. A line longer
/// than any token is a false positive, read past without being kept. The fault is real: the
/// tool runs with its address space limited to 512 MiB, and the line is 768 MiB.
#[tokio::test]
async fn keys_revoke_leaked_reads_past_a_line_longer_than_any_token() {
    let db = db();
    let m = manager(SqliteStore::open(&db.path).unwrap(), old_ring());
    let (leaked, _) = make(&m, &acme(), "leaked", 30).await;
    let mut child = std::process::Command::new("sh")
        .args(["-c", "ulimit -v 524288 && exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_api-keys"))
        .arg("--sqlite")
        .arg(&db.path)
        .args(["keys", "revoke-leaked", "--json"])
        .env_clear()
        .env("API_KEYS_MASTER_KEY", hex_of(&OLD))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let token = leaked.expose_secret().to_string();
    let writer = std::thread::spawn(move || {
        use std::io::Write as _;
        let chunk = vec![b'a'; 1 << 20];
        for _ in 0..768 {
            if stdin.write_all(&chunk).is_err() {
                return;
            }
        }
        let _ = writeln!(stdin);
        let _ = writeln!(stdin, "{token}");
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let v = json(&out);
    assert_eq!(v["false_positive_lines"], serde_json::json!([1]), "{v}");
    assert_eq!(v["true_positive_lines"], serde_json::json!([2]), "{v}");
    m.verify(leaked.expose_secret(), &read()).await.unwrap_err();
}

/// `sweep --json` writes the notices it claimed in its answer at the end. When that answer
/// could not be written (a full disk, a reader gone away), the claimed notices were lost
/// without a word of which keys they were about — as the text output names them on standard
/// error, the JSON one must too.
#[tokio::test]
async fn sweep_json_whose_answer_cannot_be_written_names_the_notices_it_claimed() {
    for output in ["full", "closed pipe"] {
        let db = db();
        let ids = two_due_keys(&db.path).await;
        let Some(stdout) = failing_output(output) else {
            eprintln!("skipped: no /dev/full");
            continue;
        };
        let out = run_into(
            &db.path,
            &["sweep", "--json", "--warn-before", "7d"],
            stdout,
        );
        let err = stderr(&out);
        assert!(!err.contains("panicked"), "{output}: {err}");
        assert_eq!(out.status.code(), Some(3), "{output}: {err}");
        for id in ids {
            assert!(
                err.contains(&id.to_string()),
                "{output}: {id} not named: {err}"
            );
        }
    }
}

/// When standard output fails (a full disk), a line `keys revoke-leaked` could not judge
/// must still be reported on standard error with exit 5: the key still works. The tool
/// exited 3 at its first line of output instead, saying what it did was done, and the
/// message that those keys were not revoked was never written.
#[tokio::test]
async fn keys_revoke_leaked_with_a_failing_output_still_reports_unrevoked_lines() {
    let db = db();
    let m = manager(SqliteStore::open(&db.path).unwrap(), old_ring());
    let (leaked, _) = make(&m, &acme(), "leaked", 30).await;
    let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") else {
        eprintln!("skipped: no /dev/full");
        return;
    };
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_api-keys"))
        .env_clear()
        .arg("--sqlite")
        .arg(&db.path)
        .env("API_KEYS_MASTER_KEY", hex_of(&NEW))
        .env("API_KEYS_MASTER_KEY_VERSION", "2")
        .args(["keys", "revoke-leaked"])
        .stdin(std::process::Stdio::piped())
        .stdout(full)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "{}", leaked.expose_secret()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(err.contains("were not revoked"), "{err}");
    assert!(err.contains("cannot write the output"), "{err}");
    m.verify(leaked.expose_secret(), &read()).await.unwrap();
}

/// A mistyped `--warn-before` is a usage error (exit 2) found with the other arguments,
/// before the master key or the store is read: with neither configured, the answer is still
/// exit 2 naming the flag, not exit 3 about the missing master key.
#[test]
fn a_bad_warn_before_is_a_usage_error_before_the_store_is_touched() {
    let out = cli()
        .args(["sweep", "--warn-before", "30d,soon"])
        .assert()
        .code(2);
    let err = stderr(out.get_output());
    assert!(err.contains("--warn-before"), "{err}");
    assert!(!err.contains("master key"), "{err}");
}

/// A manager on `db` whose clock stands 25 days back: a 30-day key it makes expires in 5 days
/// (its 7-day warning is due), a 365-day key much later.
fn manager_25_days_back(db: &Path) -> KeyManager<SqliteStore> {
    let past = api_keys::time::OffsetDateTime::now_utc() - api_keys::time::Duration::days(25);
    KeyManager::builder(SqliteStore::open(db).unwrap(), old_ring())
        .clock(api_keys::ManualClock::new(past))
        .build()
        .unwrap()
}

/// Two keys of acme whose 7-day warning is due, made in `db`.
async fn two_due_keys(db: &Path) -> [api_keys::KeyId; 2] {
    let m = manager_25_days_back(db);
    let (_, first) = make(&m, &acme(), "first", 30).await;
    let (_, second) = make(&m, &acme(), "second", 30).await;
    [first.id, second.id]
}

/// A standard output that fails: `/dev/full` ("full"; `None` where the machine has none) or
/// a pipe whose reader is gone ("closed pipe").
fn failing_output(kind: &str) -> Option<std::process::Stdio> {
    if kind == "full" {
        let full = std::fs::OpenOptions::new().write(true).open("/dev/full");
        return full.ok().map(Into::into);
    }
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    Some(writer.into())
}

/// The tool over `db` with the old master key, `args`, its standard output into `stdout`,
/// its standard error kept.
fn run_into(db: &Path, args: &[&str], stdout: std::process::Stdio) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_api-keys"))
        .env_clear()
        .arg("--sqlite")
        .arg(db)
        .env("API_KEYS_MASTER_KEY", hex_of(&OLD))
        .env("API_KEYS_MASTER_KEY_VERSION", "1")
        .args(args)
        .stdout(stdout)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap()
}
