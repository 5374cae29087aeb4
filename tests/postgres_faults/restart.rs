//! A real fast restart and a stop of the server: warm keys, the fallback bound, stale serving.

use super::*;

/// Warm keys keep verifying through a real fast restart; with the server stopped they keep
/// verifying until the fallback bound and are then refused (a store error); a manager that
/// opted into a maximum staleness keeps accepting them, audited, but never a key it knows was
/// revoked.
#[allow(clippy::await_holding_lock)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_keys_verify_through_a_restart_and_stop_at_the_bound() {
    let Some(server) = server("warm_keys_verify_through_a_restart_and_stop_at_the_bound") else {
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let org = OrgId::new(format!("faults-{:016x}", random_u64()));
    // A bound generous enough that a fast restart on a loaded machine fits in it.
    let bound = Duration::from_secs(5);
    let plain_audit = Recorder::default();
    let plain = manager(
        PostgresStore::connect_and_migrate(&with_app(&server.url, &app("restart")))
            .await
            .unwrap(),
        bound,
        Duration::ZERO,
        plain_audit.clone(),
    )
    .await;
    let stale_audit = Recorder::default();
    let stale = manager(
        PostgresStore::connect_and_migrate(&with_app(&server.url, &app("stale")))
            .await
            .unwrap(),
        bound,
        Duration::from_secs(120),
        stale_audit.clone(),
    )
    .await;
    // A third node with the default fallback TTL (1 s).
    let default_node = KeyManager::builder(
        PostgresStore::connect_and_migrate(&with_app(&server.url, &app("default")))
            .await
            .unwrap(),
        keyring(),
    )
    .build()
    .unwrap();
    let tokens = keys(&plain, &org, 4).await;
    let revoked = keys(&stale, &org, 1).await.remove(0);
    let actor = Actor::manager(org.clone(), UserId::new("alice"));
    // Let both feeds prove themselves, then warm every key on both nodes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for t in &tokens {
        plain.verify(t, &read()).await.unwrap();
        stale.verify(t, &read()).await.unwrap();
        default_node.verify(t, &read()).await.unwrap();
    }
    let revoked_id = stale
        .verify(&revoked, &read())
        .await
        .unwrap()
        .key_id()
        .to_owned();
    stale.revoke(&actor, &revoked_id).await.unwrap();
    assert!(matches!(
        stale.verify(&revoked, &read()).await,
        Err(Error::Revoked)
    ));

    // 1. A real fast restart while the warm keys verify: none fails.
    let restart = std::thread::spawn({
        let s = Server {
            url: server.url.clone(),
            pg_ctl: server.pg_ctl.clone(),
            start_args: server.start_args.clone(),
        };
        move || {
            let t = Instant::now();
            s.restart();
            t.elapsed()
        }
    });
    let mut verified = 0usize;
    let mut default_failed = 0usize;
    while !restart.is_finished() {
        for t in &tokens {
            if let Err(e) = plain.verify(t, &read()).await {
                panic!("a warm key failed during a fast restart: {e}");
            }
            default_failed += usize::from(default_node.verify(t, &read()).await.is_err());
            verified += 1;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = restart.join().unwrap();
    // With the server back, every verify works again at once, through the store where the
    // cache no longer answers (the pool's connections died with the old server).
    let after = Instant::now();
    let mut after_count = 0usize;
    while after.elapsed() < Duration::from_millis(1500) {
        for t in &tokens {
            if let Err(e) = default_node.verify(t, &read()).await {
                panic!("a verify failed after the restart completed: {e}");
            }
            after_count += 1;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    report(&format!(
        "postgres fast restart took {took:?}; {verified} warm verifies during it: 0 failed with a 5 s fallback TTL, {default_failed} with the default 1 s; {after_count} after it, 0 failed"
    ));

    // 2. The server stopped: warm keys verify at first, then stop at the bound.
    // An entry read before the restart may have missed a change while the feed reconnected,
    // so it is never served stale: past its fallback deadline, the verifies below read the
    // store again (as entries of the current feed connection).
    tokio::time::sleep(bound).await;
    for t in &tokens {
        plain.verify(t, &read()).await.unwrap();
        stale.verify(t, &read()).await.unwrap();
    }
    server.stop();
    let guard = Restart(&server, true);
    let stopped = Instant::now();
    plain.verify(&tokens[0], &read()).await.unwrap();
    let mut refused_after = None;
    while stopped.elapsed() < bound + Duration::from_secs(10) {
        match plain.verify(&tokens[0], &read()).await {
            Ok(_) => {}
            Err(Error::Store(_)) => {
                refused_after = Some(stopped.elapsed());
                break;
            }
            Err(e) => panic!("unexpected error with the store down: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused_after =
        refused_after.expect("warm keys were served past the bound with the store down");
    assert_eq!(plain_audit.count(&AuditAction::ServedStale), 0);
    // 3. With a maximum staleness, the other node still accepts them (audited) once its own
    // feed trust (proven up to one probe later than the first node's) has lapsed too ...
    let past = (bound + Duration::from_secs(1)).saturating_sub(stopped.elapsed());
    tokio::time::sleep(past).await;
    for t in &tokens {
        stale.verify(t, &read()).await.unwrap();
    }
    assert!(stale_audit.count(&AuditAction::ServedStale) >= tokens.len());
    // ... but never a key it knows was revoked, nor a wrong secret.
    assert!(matches!(
        stale.verify(&revoked, &read()).await,
        Err(Error::Revoked)
    ));
    let mut wrong = tokens[0].clone();
    let last = wrong.pop().unwrap();
    wrong.push(if last == 'A' { 'B' } else { 'A' });
    assert!(stale.verify(&wrong, &read()).await.is_err());
    report(&format!(
        "postgres server stopped: warm keys refused {refused_after:?} after the stop (bound {bound:?}); with serve_stale_while_store_unreachable they kept verifying"
    ));

    // 4. The server back: verification through the store works again.
    drop(guard);
    let mut ok = false;
    for _ in 0..100 {
        if plain.verify(&tokens[1], &read()).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        ok,
        "verification never recovered after the server came back"
    );
}
