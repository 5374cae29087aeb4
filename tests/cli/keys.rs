//! The keys commands: a fresh master key, list, show, expiring, revoke, escaped output, refused token arguments, closed pipes.

use super::*;

#[test]
fn master_key_new_prints_sixteen_fresh_bytes_as_hex() {
    let a = cli().args(["master-key", "new"]).assert().success();
    let b = cli().args(["master-key", "new"]).assert().success();
    let (a, b) = (stdout(a.get_output()), stdout(b.get_output()));
    for k in [&a, &b] {
        let k = k.trim();
        assert_eq!(k.len(), 32, "{k}");
        assert!(hex::decode(k).is_ok(), "{k}");
    }
    assert_ne!(a, b);
}

#[tokio::test]
async fn keys_list_shows_an_organizations_keys_for_people_and_scripts() {
    let db = db();
    let m = manager(SqliteStore::open(&db.path).unwrap(), old_ring());
    let (k1, _) = make(&m, &acme(), "deploy-bot", 30).await;
    let (_k2, _) = make(&m, &acme(), "grafana", 90).await;
    let (_k3, _) = make(&m, &globex(), "globex-only", 30).await;

    let out = cli_with(&db.path, 1, &OLD)
        .args(["keys", "list", "--org", "acme"])
        .assert()
        .success();
    let table = stdout(out.get_output());
    assert!(table.starts_with("ID "), "{table}");
    assert!(
        table.contains("deploy-bot") && table.contains("grafana"),
        "{table}"
    );
    assert!(table.contains("active"), "{table}");
    assert!(!table.contains("globex-only"), "{table}");
    assert!(!table.contains(k1.expose_secret()), "never a secret");

    let out = cli_with(&db.path, 1, &OLD)
        .args(["keys", "list", "--org", "acme", "--json"])
        .assert()
        .success();
    let v = json(out.get_output());
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert!(ids(&v).contains(&k1.id().to_string()));
    assert!(!stdout(out.get_output()).contains(k1.expose_secret()));
}

#[tokio::test]
async fn keys_show_names_the_key_and_says_when_there_is_none() {
    let db = db();
    let m = manager(SqliteStore::open(&db.path).unwrap(), old_ring());
    let (k, _) = make(&m, &acme(), "deploy-bot", 30).await;
    let id = k.id().to_string();

    let out = cli_with(&db.path, 1, &OLD)
        .args(["keys", "show", &id])
        .assert()
        .success();
    let text = stdout(out.get_output());
    assert!(
        text.contains("deploy-bot") && text.contains("acme") && text.contains(&id),
        "{text}"
    );

    let out = cli_with(&db.path, 1, &OLD)
        .args(["keys", "show", &id, "--json"])
        .assert()
        .success();
    assert_eq!(json(out.get_output())["name"], "deploy-bot");

    // An unknown id: exit 4 and a message; a whole token instead of an id: usage, exit 2.
    let out = cli_with(&db.path, 1, &OLD)
        .args(["keys", "show", "00000000001"])
        .assert()
        .code(4);
    assert!(stderr(out.get_output()).contains("no such key"));
    let out = cli_with(&db.path, 1, &OLD)
        .args(["keys", "show", k.expose_secret()])
        .assert()
        .code(2);
    let err = stderr(out.get_output());
    assert!(err.contains("not a key id"), "{err}");
    assert!(
        !err.contains(k.expose_secret()),
        "a pasted token is not echoed: {err}"
    );

    // The wrong master key: an integrity failure, exit 5, with what to do.
    let out = cli_with(&db.path, 1, &NEW)
        .args(["keys", "show", &id])
        .assert()
        .code(5);
    assert!(stderr(out.get_output()).contains("API_KEYS_PREVIOUS_KEYS"));
}

/// Values from the store or the host reach the operator's terminal escaped: a key name
/// rewritten in the database (it is not under the tag) and ids holding control or bidi
/// characters cannot move the cursor, rewrite lines or reorder `keys list` / `show` /
/// `expiring`; ordinary UTF-8 prints unchanged, and JSON keeps the values as they are.
#[tokio::test]
async fn text_output_escapes_terminal_and_bidi_controls_from_the_store() {
    let db = db();
    let m = manager(SqliteStore::open(&db.path).unwrap(), old_ring());
    let eve = Actor::manager(OrgId::new("acme"), UserId::new("eve\u{1b}[1A\u{202e}"));
    let (evil, _) = make(&m, &eve, "placeholder", 30).await;
    let (_plain, _) = make(&m, &acme(), "Zürich – 東京", 30).await;
    let other = Actor::manager(OrgId::new("glo\u{1b}]0;pwned\u{7}bex"), UserId::new("gina"));
    let _ = make(&m, &other, "other", 7).await;
    // Someone who can write to the table renames the key: the record still opens.
    let evil_name = "ok\u{1b}[1A\u{1b}[2K\u{202e}gro.evil";
    let raw = SqliteStore::open(&db.path).unwrap();
    let mut rec = raw.get(evil.id()).await.unwrap().unwrap();
    rec.name = evil_name.into();
    let revision = rec.revision;
    rec.revision = revision + 1;
    raw.update(rec, revision).await.unwrap();
    let raw_controls = |s: &str| s.contains(['\u{1b}', '\u{7}', '\u{202e}']);
    let id = evil.id().to_string();

    let out = cli_with(&db.path, 1, &OLD)
        .args(["keys", "list", "--org", "acme"])
        .assert()
        .success();
    let table = stdout(out.get_output());
    assert!(!raw_controls(&table), "{table:?}");
    assert!(
        table.contains("ok\\u{1b}[1A\\u{1b}[2K\\u{202e}gro.evil"),
        "{table:?}"
    );
    assert!(table.contains("Zürich – 東京"), "{table:?}");

    let out = cli_with(&db.path, 1, &OLD)
        .args(["keys", "show", &id])
        .assert()
        .success();
    let shown = stdout(out.get_output());
    assert!(!raw_controls(&shown), "{shown:?}");
    assert!(
        shown.contains("ok\\u{1b}[1A\\u{1b}[2K\\u{202e}gro.evil"),
        "{shown:?}"
    );
    assert!(shown.contains("by eve\\u{1b}[1A\\u{202e}\n"), "{shown:?}");

    let out = cli_with(&db.path, 1, &OLD)
        .args(["keys", "expiring", "--within", "10d"])
        .assert()
        .success();
    let expiring = stdout(out.get_output());
    assert!(!raw_controls(&expiring), "{expiring:?}");
    assert!(
        expiring.contains("glo\\u{1b}]0;pwned\\u{7}bex"),
        "{expiring:?}"
    );

    // Scripts get the stored values, escaped by JSON itself.
    let out = cli_with(&db.path, 1, &OLD)
        .args(["keys", "show", &id, "--json"])
        .assert()
        .success();
    assert_eq!(json(out.get_output())["name"], evil_name);
}

#[tokio::test]
async fn keys_expiring_lists_every_organization_soonest_first() {
    let db = db();
    let m = manager(SqliteStore::open(&db.path).unwrap(), old_ring());
    let (a, _) = make(&m, &acme(), "a-week", 7).await;
    let (g, _) = make(&m, &globex(), "g-week", 7).await;
    let (_, _) = make(&m, &acme(), "a-quarter", 90).await;
    let (r, info) = make(&m, &acme(), "revoked-week", 7).await;
    m.revoke(&acme(), &info.id).await.unwrap();

    let out = cli_with(&db.path, 1, &OLD)
        .args(["keys", "expiring", "--within", "14d", "--json"])
        .assert()
        .success();
    let got = ids(&json(out.get_output()));
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got.contains(&a.id().to_string()) && got.contains(&g.id().to_string()));
    assert!(
        !got.contains(&r.id().to_string()),
        "a revoked key is not expiring"
    );

    let out = cli_with(&db.path, 1, &OLD)
        .args(["keys", "expiring", "--within", "14d"])
        .assert()
        .success();
    let table = stdout(out.get_output());
    assert!(
        table.contains("ORG") && table.contains("globex") && table.contains("in 6d"),
        "{table}"
    );

    let out = cli_with(&db.path, 1, &OLD)
        .args(["keys", "expiring", "--within", "12h", "--json"])
        .assert()
        .success();
    assert!(ids(&json(out.get_output())).is_empty());

    // A duration without a unit is a usage error that shows the accepted forms.
    let out = cli_with(&db.path, 1, &OLD)
        .args(["keys", "expiring", "--within", "14"])
        .assert()
        .code(2);
    assert!(stderr(out.get_output()).contains("14d"));
}

#[tokio::test]
async fn keys_revoke_stops_the_key_and_records_the_operator() {
    let db = db();
    let m = manager(SqliteStore::open(&db.path).unwrap(), old_ring());
    let (k, _) = make(&m, &acme(), "leaky", 30).await;
    m.verify(k.expose_secret(), &read()).await.unwrap();
    let id = k.id().to_string();

    let out = cli_with(&db.path, 1, &OLD)
        .args(["keys", "revoke", &id, "--operator", "oncall-olga"])
        .assert()
        .success();
    assert!(stdout(out.get_output()).contains("revoked"));

    assert!(matches!(
        m.verify(k.expose_secret(), &read()).await,
        Err(Error::Revoked)
    ));
    let rec = m.store().get(k.id()).await.unwrap().unwrap();
    assert_eq!(rec.revoked_by, Some(UserId::new("oncall-olga")));
    assert_eq!(rec.revocation, Some(RevocationReason::Manual));

    // Again: a no-op that says so.
    let out = cli_with(&db.path, 1, &OLD)
        .args(["keys", "revoke", &id])
        .assert()
        .success();
    assert!(stdout(out.get_output()).contains("already revoked"));

    cli_with(&db.path, 1, &OLD)
        .args(["keys", "revoke", "00000000001"])
        .assert()
        .code(4);
}

/// A token typed as an argument (rather than on standard input, or where an id belongs) is a
/// usage error that never repeats it: standard error may be logged, and the token is secret.
#[test]
fn a_token_given_as_an_argument_is_refused_without_echoing_it() {
    let token = format!("sak_{}x", "A1b2C3d4E5".repeat(6));
    let with_source = [
        "keys",
        "revoke-leaked",
        "--source",
        "https://x.example/a",
        &token,
    ];
    for args in [
        &["keys", "revoke-leaked", &token][..],
        &with_source[..],
        &["keys", "revoke", "00000000001", &token][..],
        &[&token, "keys", "list"][..],
        // An option's value that does not parse (the parser's own reason quoted it too).
        &["keys", "expiring", "--within", &token][..],
        &["keys", "expiring", &format!("--within={token}")][..],
    ] {
        let out = cli()
            .env("API_KEYS_MASTER_KEY", hex_of(&OLD))
            .args(args)
            .assert()
            .code(2);
        let (out, err) = (stdout(out.get_output()), stderr(out.get_output()));
        assert!(
            !err.contains(&token) && !out.contains(&token),
            "{args:?}: {err}{out}"
        );
        assert!(!err.contains("A1b2C3d4E5"), "{args:?}: {err}");
    }
}

/// A reader that stops early (`api-keys keys list --org acme | head -1`) ends the output, not
/// the tool: no panic, and the exit code is still the command's own (a documented one) —
/// for `master-key new`, whose output is the whole point, 3 (the key did not reach anyone).
#[tokio::test]
async fn a_reader_that_stops_early_is_not_a_panic() {
    let db = db();
    let m = manager(SqliteStore::open(&db.path).unwrap(), old_ring());
    let _ = make(&m, &acme(), "deploy-bot", 30).await;
    let db_arg = db.path.to_str().unwrap();
    for (args, code) in [
        (&["master-key", "new"][..], 3),
        (
            &["--sqlite", db_arg, "keys", "list", "--org", "acme"][..],
            0,
        ),
        (
            &[
                "--sqlite", db_arg, "keys", "list", "--org", "acme", "--json",
            ][..],
            0,
        ),
    ] {
        // The reader is gone before the tool starts.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_api-keys"))
            .env_clear()
            .env("API_KEYS_MASTER_KEY", hex_of(&OLD))
            .args(args)
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
    }
}

/// Exit code 5 is "a record failed its integrity check (… sealed under a master key the
/// keyring lacks)". `keys list` and `keys expiring` leave such records out: with the wrong
/// master key (or a retired one still needed) they must not answer "nothing here" with exit
/// 0 — a script reading `--json` would take the empty list for the truth. What did verify is
/// still printed.
#[tokio::test]
async fn keys_left_out_for_failing_their_integrity_check_exit_5() {
    let db = db();
    let m = manager(SqliteStore::open(&db.path).unwrap(), old_ring());
    make(&m, &acme(), "a-week", 7).await;
    let wrong_key = || cli_with(&db.path, 2, &NEW);
    for args in [
        &["keys", "list", "--org", "acme", "--json"][..],
        &["keys", "expiring", "--within", "14d", "--json"],
        &["keys", "list", "--org", "acme"],
        &["keys", "expiring", "--within", "14d"],
    ] {
        let out = wrong_key().args(args).assert().code(5);
        let err = stderr(out.get_output());
        assert!(err.contains("integrity check"), "{args:?}: {err}");
        if args.contains(&"--json") {
            assert!(ids(&json(out.get_output())).is_empty(), "{args:?}");
        }
    }
    // With the right key nothing failed: exit 0.
    cli_with(&db.path, 1, &OLD)
        .args(["keys", "expiring", "--within", "14d", "--json"])
        .assert()
        .success();
}

/// A token pasted after a flag's `=` (`--json=sak_...`, a flag that takes no value) is an
/// argument clap does not expect like any other: refused as usage, never repeated on
/// standard error (which may be logged).
#[test]
fn a_token_given_as_a_flags_value_is_refused_without_echoing_it() {
    let token = format!("sak_{}x", "A1b2C3d4E5".repeat(6));
    for args in [
        &["keys", "list", "--org", "acme", &format!("--json={token}")][..],
        &["rewrap", &format!("--verbose={token}")][..],
    ] {
        let out = cli()
            .env("API_KEYS_MASTER_KEY", hex_of(&OLD))
            .args(args)
            .assert()
            .code(2);
        let (out, err) = (stdout(out.get_output()), stderr(out.get_output()));
        assert!(!err.contains("A1b2C3d4E5"), "{args:?}: {err}");
        assert!(!out.contains("A1b2C3d4E5"), "{args:?}: {out}");
        assert!(err.contains("--help"), "{args:?}: {err}");
    }
}

/// Standard output that fails (a full disk: `/dev/full`) is reported as a failure to write the
/// answer, exit 3 — not a panic (exit 101, an undocumented code, with a backtrace hint).
#[tokio::test]
async fn an_answer_that_cannot_be_written_is_exit_3_not_a_panic() {
    let db = db();
    let m = KeyManager::builder(SqliteStore::open(&db.path).unwrap(), old_ring())
        .build()
        .unwrap();
    make(&m, &acme(), "ci", 30).await;
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_api-keys"))
        .env_clear()
        .arg("--sqlite")
        .arg(&db.path)
        .env("API_KEYS_MASTER_KEY", hex_of(&OLD))
        .env("API_KEYS_MASTER_KEY_VERSION", "1")
        .args(["keys", "list", "--org", "acme"])
        .stdout(full)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("cannot write the output"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// An empty `API_KEYS_OPERATOR=` (a deployment's template left blank) was taken as the
/// operator's name and refused, with a message about `--operator`, although the README says
/// the operator defaults to `$USER`: it is unset now, and `$USER` is recorded.
#[tokio::test]
async fn an_empty_operator_variable_falls_back_to_user() {
    let db = db();
    let m = manager(SqliteStore::open(&db.path).unwrap(), old_ring());
    let (k, _) = make(&m, &acme(), "leaky", 30).await;
    cli_with(&db.path, 1, &OLD)
        .env("API_KEYS_OPERATOR", "")
        .env("USER", "oncall-olga")
        .args(["keys", "revoke", &k.id().to_string()])
        .assert()
        .success();
    let rec = m.store().get(k.id()).await.unwrap().unwrap();
    assert_eq!(rec.revoked_by, Some(UserId::new("oncall-olga")));
}
