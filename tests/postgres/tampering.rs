//! Rows edited with plain SQL by someone with write access but not the master key: every
//! field under the tag fails closed on a fresh node and, through the change feed, on a warm
//! one; the unauthenticated ones grant nothing.

use super::*;

use api_keys::{AuditAction, AuditEvent, AuditSink, BoxError, Credits, FailureClass, RateLimit};

#[derive(Clone, Default)]
struct Events(Arc<Mutex<Vec<AuditEvent>>>);

impl AuditSink for Events {
    fn record(&self, event: &AuditEvent) -> Result<(), BoxError> {
        self.0.lock().unwrap().push(event.clone());
        Ok(())
    }
}

impl Events {
    fn verify_integrity_failures(&self, id: KeyId) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|e| {
                e.key_id == Some(id)
                    && matches!(
                        e.action,
                        AuditAction::VerificationFailed(FailureClass::Integrity)
                    )
            })
            .count()
    }
}

fn full(name: &str) -> GenerateRequest {
    GenerateRequest::new(name)
        .scope(Scope::Prometheus)
        .rate_limit(RateLimit::new("burst", 10, Duration::from_secs(1)))
        .credits(Credits::new(100))
        .owner("team-a")
        .meta("env", "prod")
}

const EDITS: &[(&str, &str)] = &[
    (
        "move to another org",
        "UPDATE api_keys SET org = org || '-evil', record = jsonb_set(record, '{org}', to_jsonb(org || '-evil')) WHERE id = $1",
    ),
    (
        "extend expiry",
        "UPDATE api_keys SET expires_at = expires_at + 86400000, record = jsonb_set(record, '{expires_at}', to_jsonb((record->>'expires_at')::bigint + 86400000)) WHERE id = $1",
    ),
    (
        "add a scope",
        "UPDATE api_keys SET record = jsonb_set(record, '{scopes}', '[\"prometheus\",\"scim\"]') WHERE id = $1",
    ),
    (
        "raise a limit",
        "UPDATE api_keys SET record = jsonb_set(record, '{rate_limits,0,limit}', '1000000') WHERE id = $1",
    ),
    (
        "remove the credits",
        "UPDATE api_keys SET record = jsonb_set(record, '{credits}', 'null') WHERE id = $1",
    ),
    (
        "change the owner",
        "UPDATE api_keys SET record = jsonb_set(record, '{owner}', '\"team-b\"') WHERE id = $1",
    ),
    (
        "change the metadata",
        "UPDATE api_keys SET record = jsonb_set(record, '{meta,env}', '\"dev\"') WHERE id = $1",
    ),
    (
        "change the creator",
        "UPDATE api_keys SET record = jsonb_set(record, '{created_by}', '\"bob\"') WHERE id = $1",
    ),
    (
        "another class",
        "UPDATE api_keys SET record = jsonb_set(record, '{class}', '\"sap\"') WHERE id = $1",
    ),
    (
        "format 1",
        "UPDATE api_keys SET record = jsonb_set(record, '{format}', '1') WHERE id = $1",
    ),
    (
        "unknown key version",
        "UPDATE api_keys SET record = jsonb_set(record, '{sealed,key_version}', '2') WHERE id = $1",
    ),
    (
        "another IV",
        "UPDATE api_keys SET record = jsonb_set(record, '{sealed,iv}', '\"00000000000000000000000000000000\"') WHERE id = $1",
    ),
    (
        "another tag",
        "UPDATE api_keys SET record = jsonb_set(record, '{sealed,tag}', '\"00000000000000000000000000000000\"') WHERE id = $1",
    ),
    (
        "another details tag",
        "UPDATE api_keys SET record = jsonb_set(record, '{sealed,details_tag}', '\"00000000000000000000000000000000\"') WHERE id = $1",
    ),
    (
        "the other key's seal",
        "UPDATE api_keys SET record = jsonb_set(record, '{sealed}', (SELECT record->'sealed' FROM api_keys WHERE id = $2)) WHERE id = $1",
    ),
    (
        "the other key's record with this id inside",
        "UPDATE api_keys a SET record = jsonb_set(jsonb_set((SELECT record FROM api_keys WHERE id = $2), '{id}', to_jsonb(a.id)), '{revision}', a.record->'revision') WHERE id = $1",
    ),
    (
        "the other key's record as it is",
        "UPDATE api_keys SET record = (SELECT record FROM api_keys WHERE id = $2) WHERE id = $1",
    ),
    (
        "un-revoke the other key's copy",
        "UPDATE api_keys a SET record = jsonb_set(jsonb_set(jsonb_set((SELECT record FROM api_keys WHERE id = $2), '{id}', to_jsonb(a.id)), '{revision}', a.record->'revision'), '{revoked_at}', 'null') WHERE id = $1",
    ),
];

/// Every edit of a field under the tag, on a fresh node and on a warm node whose cache holds
/// the genuine record (the change feed reports the edit): `Integrity`, audited; never the
/// edited values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_field_under_the_tag_fails_closed_when_edited() {
    let Some(cfg) = database_url("every_field_under_the_tag_fails_closed_when_edited") else {
        return;
    };
    let admin = admin(&cfg, None).await;
    let warm_events = Events::default();
    let warm_store = Arc::new(Observed::new(connect(&cfg, &app("tamper-warm")).await));
    let warm = KeyManager::builder(warm_store.clone(), keyring())
        .cache_ttl(Duration::from_secs(600))
        .cache_fallback_ttl(Duration::from_secs(600))
        .audit(warm_events.clone())
        .build()
        .unwrap();
    wait_until(Duration::from_secs(10), || {
        warm_store.feed.count(&FeedEvent::Connected) == 1
    })
    .await
    .expect("the warm node's change feed never connected");
    for (what, sql) in EDITS {
        let org = org();
        let actor = manager_of(&org);
        let (key, info) = warm.generate(&actor, full("live")).await.unwrap();
        let (_, other) = warm.generate(&actor, full("other")).await.unwrap();
        warm.revoke(&actor, &other.id).await.unwrap();
        warm.verify(key.expose_secret(), &Scope::Prometheus)
            .await
            .unwrap();
        let (id, other_id) = (info.id.to_string(), other.id.to_string());
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = if sql.contains("$2") {
            vec![&id, &other_id]
        } else {
            vec![&id]
        };
        let n = admin
            .execute(*sql, &params)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(n, 1, "{what}");
        // A fresh node.
        let events = Events::default();
        let fresh = KeyManager::builder(connect(&cfg, &app("tamper-fresh")).await, keyring())
            .audit(events.clone())
            .build()
            .unwrap();
        for scope in [Scope::Prometheus, Scope::Scim] {
            let got = fresh.verify(key.expose_secret(), &scope).await;
            assert!(
                matches!(got, Err(Error::Integrity)),
                "{what}: fresh {got:?}"
            );
        }
        assert_eq!(events.verify_integrity_failures(info.id), 2, "{what}");
        // The warm node hears of the edit and reads the row again.
        let seen = wait_until(Duration::from_secs(10), || {
            warm_events.verify_integrity_failures(info.id) > 0
        });
        let mut last = None;
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            let got = warm.verify(key.expose_secret(), &Scope::Prometheus).await;
            let done = matches!(got, Err(Error::Integrity));
            last = Some(got.map(|v| *v.key_id()));
            if done {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        seen.await
            .unwrap_or_else(|| panic!("{what}: warm node still says {last:?}"));
        // Management calls, for the organization the row names now.
        let row_org: String = admin
            .query_one(
                "SELECT org FROM api_keys WHERE id = $1",
                &[&info.id.to_string()],
            )
            .await
            .unwrap()
            .get(0);
        let owner = manager_of(&OrgId::new(row_org));
        let got = fresh.get(&owner, &info.id).await;
        let expected_absent = *what == "another class";
        assert!(
            if expected_absent {
                matches!(got, Err(Error::NotFound))
            } else {
                matches!(got, Err(Error::Integrity))
            },
            "{what}: get {got:?}"
        );
        let listed: Vec<KeyId> = fresh
            .list(&owner)
            .await
            .unwrap()
            .iter()
            .map(|k| k.id)
            .collect();
        assert!(!listed.contains(&info.id), "{what}: listed");
        let got = fresh.revoke(&owner, &info.id).await;
        assert!(
            matches!(got, Err(Error::Integrity | Error::NotFound)),
            "{what}: revoke {got:?}"
        );
        if !expected_absent {
            fresh.delete(&owner, &info.id).await.unwrap();
        }
    }
}
