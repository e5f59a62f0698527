//! The conformance suite every [`Store`] implementation must pass. Run by
//! the tests of [`super::sql`] on SQLite and on PostgreSQL.

use std::sync::Arc;

use super::*;

pub async fn run_all(store: Arc<dyn Store>) {
    logins_are_versioned_and_single_use(&*store).await;
    concurrent_login_updates_have_one_winner(store.clone()).await;
    login_by_callback_state(&*store).await;
    codes_are_single_use_and_record_the_grant(&*store).await;
    concurrent_redemptions_have_one_winner(store.clone()).await;
    inserts_never_resurrect(&*store).await;
    sessions_by_cookie_sid_and_user(&*store).await;
    revoked_tokens(&*store).await;
    refresh_rotation_and_families(&*store).await;
    concurrent_refresh_has_one_winner(store.clone()).await;
    accounts_by_username_and_email(&*store).await;
    // ---- rate limits (per-account throttles) ----
    throttles_count_block_and_clear(&*store).await;
    concurrent_throttle_failures_all_count(store.clone()).await;
    gc_removes_expired(&*store).await;
    keys_roundtrip(&*store).await;
    // ---- token lifecycle (refresh, revocation, introspection) ----
    refresh_status_reports_state(&*store).await;
    sessions_deleted_by_sid(&*store).await;
    key_rotation_schedule(&*store).await;
    logout_states_are_single_use(&*store).await;
    backchannel_queue_claims_once(store.clone()).await;
    // ---- metrics ----
    sessions_are_counted_while_unexpired(&*store).await;
    // ---- devices (sessions per device) ----
    sessions_per_device(&*store).await;
    // ---- operations (bounded garbage collection) ----
    gc_is_bounded_and_covers_every_table(&*store).await;
    // ---- mail (outbox and e-mail one-time codes) ----
    outbox_claims_once_and_retries(store.clone()).await;
    outbox_lists_newest_first(&*store).await;
    email_codes_count_attempts_and_are_single_use(&*store).await;
    concurrent_email_code_checks_have_one_winner(store.clone()).await;
    concurrent_wrong_guesses_never_pass_the_limit(store.clone()).await;
    // ---- passkeys (usernameless login) ----
    passkey_handles_name_one_account(&*store).await;
    // ---- the refresh grant in one call ----
    rotation_checks_consumes_and_inserts_at_once(&*store).await;
    concurrent_rotations_have_one_winner(store.clone()).await;
    // ---- a login's last steps in fewer calls ----
    a_session_replaces_the_one_of_its_device(&*store).await;
    a_code_is_stored_with_its_session_client(&*store).await;
    a_session_and_its_code_commit_together(&*store).await;
    // ---- the authorization-code grant in one call ----
    a_redemption_inserts_the_first_refresh_token_only_when_asked(&*store).await;
    concurrent_redemptions_issue_one_refresh_token(store.clone()).await;
    store.ping().await.unwrap();
}

fn found(l: Lookup<LoginRow>) -> LoginRow {
    match l {
        Lookup::Found(r) => r,
        other => panic!("expected a login, got {other:?}"),
    }
}

async fn logins_are_versioned_and_single_use(s: &dyn Store) {
    s.insert_login("l1", "d0", 100, None).await.unwrap();
    let row = found(s.login("l1", 10).await.unwrap());
    assert_eq!((row.version, row.data.as_str()), (0, "d0"));
    // A stale version loses; the current one wins and bumps the version.
    assert!(!s.update_login("l1", 5, "x", None, false, 10).await.unwrap());
    assert!(s
        .update_login("l1", 0, "d1", None, false, 10)
        .await
        .unwrap());
    let row = found(s.login("l1", 11).await.unwrap());
    assert_eq!((row.version, row.data.as_str()), (1, "d1"));
    assert!(!s
        .update_login("l1", 0, "d2", None, false, 11)
        .await
        .unwrap());
    // Finishing makes it single-use.
    assert!(s
        .update_login("l1", 1, "done", None, true, 12)
        .await
        .unwrap());
    assert_eq!(s.login("l1", 13).await.unwrap(), Lookup::Finished);
    assert!(!s
        .update_login("l1", 2, "again", None, false, 13)
        .await
        .unwrap());
    // Expiry: reported, and an expired login cannot be updated.
    s.insert_login("l2", "d", 100, None).await.unwrap();
    assert_eq!(s.login("l2", 100).await.unwrap(), Lookup::Expired);
    assert!(!s
        .update_login("l2", 0, "late", None, false, 100)
        .await
        .unwrap());
    assert_eq!(s.login("nope", 1).await.unwrap(), Lookup::Missing);
    // The id is unique.
    assert!(s.insert_login("l2", "dup", 100, None).await.is_err());
}

async fn concurrent_login_updates_have_one_winner(s: Arc<dyn Store>) {
    s.insert_login("race", "d", 1000, None).await.unwrap();
    let mut handles = Vec::new();
    for i in 0..8 {
        let s = s.clone();
        handles.push(tokio::spawn(async move {
            s.update_login("race", 0, &format!("w{i}"), None, i % 2 == 0, 1)
                .await
                .unwrap()
        }));
    }
    let mut wins = 0;
    for h in handles {
        wins += usize::from(h.await.unwrap());
    }
    assert_eq!(wins, 1, "exactly one concurrent step wins");
}

async fn login_by_callback_state(s: &dyn Store) {
    s.insert_login("l3", "d", 100, None).await.unwrap();
    assert_eq!(s.login_by_state("st3", 1).await.unwrap(), Lookup::Missing);
    assert!(s
        .update_login("l3", 0, "await", Some("st3"), false, 1)
        .await
        .unwrap());
    let row = found(s.login_by_state("st3", 2).await.unwrap());
    assert_eq!((row.id_hash.as_str(), row.version), ("l3", 1));
    // Finishing without a new state keeps the old one findable.
    assert!(s
        .update_login("l3", 1, "done", None, true, 3)
        .await
        .unwrap());
    assert_eq!(s.login_by_state("st3", 4).await.unwrap(), Lookup::Finished);
    assert_eq!(
        s.login_by_state("st3", 200).await.unwrap(),
        Lookup::Finished
    );
    // A login stored when it already waits for the upstream is found by
    // its state at once, at version 0; a second login cannot take the
    // same state.
    s.insert_login("l4", "await", 100, Some("st4"))
        .await
        .unwrap();
    let row = found(s.login_by_state("st4", 1).await.unwrap());
    assert_eq!((row.id_hash.as_str(), row.version), ("l4", 0));
    assert!(s.insert_login("l5", "x", 100, Some("st4")).await.is_err());
    assert!(s
        .update_login("l4", 0, "done", None, true, 2)
        .await
        .unwrap());
    assert_eq!(s.login_by_state("st4", 3).await.unwrap(), Lookup::Finished);
}

async fn codes_are_single_use_and_record_the_grant(s: &dyn Store) {
    s.insert_code("c1", "payload", 100).await.unwrap();
    assert_eq!(
        redeem(s, "c1", "jti-1", 10).await,
        Redeemed::Fresh {
            data: "payload".into(),
            expires_at: 100,
            refresh_issued: false
        }
    );
    assert_eq!(
        redeem(s, "c1", "jti-2", 11).await,
        Redeemed::Replayed {
            grant_id: Some("jti-1".into())
        }
    );
    assert_eq!(redeem(s, "nope", "j", 11).await, Redeemed::Missing);
}

async fn concurrent_redemptions_have_one_winner(s: Arc<dyn Store>) {
    s.insert_code("race", "x", 1000).await.unwrap();
    let mut handles = Vec::new();
    for i in 0..8 {
        let s = s.clone();
        handles.push(tokio::spawn(async move {
            (i, redeem(&*s, "race", &format!("g{i}"), 1).await)
        }));
    }
    let mut winner = None;
    let mut replays = Vec::new();
    for h in handles {
        match h.await.unwrap() {
            (i, Redeemed::Fresh { .. }) => {
                assert!(winner.replace(format!("g{i}")).is_none(), "two winners")
            }
            (_, Redeemed::Replayed { grant_id }) => replays.push(grant_id),
            (_, Redeemed::Missing) => panic!("code vanished"),
        }
    }
    let winner = winner.expect("one redemption wins");
    // Every loser already sees the winner's grant: nothing to wait for.
    assert!(replays
        .iter()
        .all(|g| g.as_deref() == Some(winner.as_str())));
}

async fn inserts_never_resurrect(s: &dyn Store) {
    s.insert_code("c9", "x", 100).await.unwrap();
    redeem(s, "c9", "g", 1).await;
    assert!(s.insert_code("c9", "y", 100).await.is_err());
    assert!(matches!(
        redeem(s, "c9", "h", 2).await,
        Redeemed::Replayed { .. }
    ));
}

fn session(id: &str, sid: &str, subject: &str, created_at: i64) -> SessionRow {
    SessionRow {
        id_hash: id.into(),
        sid: sid.into(),
        connector_id: "up".into(),
        subject: subject.into(),
        auth_time: created_at,
        data: "{}".into(),
        created_at,
        expires_at: 1000,
        device_hash: None,
        device_label: None,
        ip: None,
        last_seen_at: None,
    }
}

async fn sessions_by_cookie_sid_and_user(s: &dyn Store) {
    let a = session("h-a", "sid-a", "alice", 1);
    let b = session("h-b", "sid-b", "alice", 2);
    let c = session("h-c", "sid-c", "bob", 3);
    for x in [&a, &b, &c] {
        s.insert_session(x).await.unwrap();
    }
    assert_eq!(s.session("h-a", 10).await.unwrap(), Some(a.clone()));
    assert_eq!(s.session("h-a", 1000).await.unwrap(), None, "expired");
    assert_eq!(
        s.session_by_sid("sid-b", 10).await.unwrap(),
        Some(b.clone())
    );
    assert_eq!(
        s.sessions_of_user("up", "alice", 10).await.unwrap(),
        vec![a.clone(), b.clone()]
    );
    assert!(s
        .sessions_of_user("other", "alice", 10)
        .await
        .unwrap()
        .is_empty());
    s.add_session_client("sid-a", "app2", 5, 1000)
        .await
        .unwrap();
    s.add_session_client("sid-a", "app1", 6, 1000)
        .await
        .unwrap();
    s.add_session_client("sid-a", "app2", 7, 1000)
        .await
        .unwrap();
    assert_eq!(
        s.session_clients("sid-a").await.unwrap(),
        vec!["app2".to_string(), "app1".to_string()]
    );
    assert_eq!(s.delete_session("h-a").await.unwrap(), Some("sid-a".into()));
    assert_eq!(s.session("h-a", 10).await.unwrap(), None);
    assert!(s.session_clients("sid-a").await.unwrap().is_empty());
    assert_eq!(s.delete_session("h-a").await.unwrap(), None);
    // sid is unique.
    assert!(s
        .insert_session(&session("h-d", "sid-b", "carol", 4))
        .await
        .is_err());
}

async fn revoked_tokens(s: &dyn Store) {
    assert!(!s.is_revoked("j1", 1).await.unwrap());
    s.revoke_token("j1", 100).await.unwrap();
    s.revoke_token("j1", 100).await.unwrap();
    assert!(s.is_revoked("j1", 99).await.unwrap());
    assert!(!s.is_revoked("j1", 100).await.unwrap(), "marker expired");
    // Several ids in one query: true when any one is revoked.
    assert!(s.any_revoked(&["nope", "j1"], 99).await.unwrap());
    assert!(!s.any_revoked(&["nope", "other"], 99).await.unwrap());
    assert!(!s.any_revoked(&[], 99).await.unwrap());
}

fn refresh(hash: &str, family: &str, sid: Option<&str>) -> RefreshRow {
    RefreshRow {
        token_hash: hash.into(),
        family_id: family.into(),
        client_id: "app".into(),
        sid: sid.map(String::from),
        data: "{}".into(),
        issued_at: 1,
        expires_at: 1000,
    }
}

async fn refresh_rotation_and_families(s: &dyn Store) {
    let r1 = refresh("r1", "f1", Some("sid-x"));
    s.insert_refresh(&r1).await.unwrap();
    assert_eq!(
        s.use_refresh("r1", 2).await.unwrap(),
        RefreshUse::Fresh(r1.clone())
    );
    assert_eq!(
        s.use_refresh("r1", 3).await.unwrap(),
        RefreshUse::Reused {
            family_id: "f1".into()
        }
    );
    s.insert_refresh(&refresh("r2", "f1", Some("sid-x")))
        .await
        .unwrap();
    s.insert_refresh(&refresh("r3", "f2", Some("sid-y")))
        .await
        .unwrap();
    assert_eq!(s.revoke_family("f1", 4).await.unwrap(), 2);
    assert_eq!(s.use_refresh("r2", 5).await.unwrap(), RefreshUse::Revoked);
    assert_eq!(s.revoke_refresh_of_session("sid-y", 6).await.unwrap(), 1);
    assert_eq!(s.use_refresh("r3", 7).await.unwrap(), RefreshUse::Revoked);
    assert_eq!(s.use_refresh("nope", 7).await.unwrap(), RefreshUse::Missing);
}

async fn concurrent_refresh_has_one_winner(s: Arc<dyn Store>) {
    s.insert_refresh(&refresh("race", "f9", None))
        .await
        .unwrap();
    let mut handles = Vec::new();
    for _ in 0..8 {
        let s = s.clone();
        handles.push(tokio::spawn(async move {
            s.use_refresh("race", 2).await.unwrap()
        }));
    }
    let mut fresh = 0;
    for h in handles {
        match h.await.unwrap() {
            RefreshUse::Fresh(_) => fresh += 1,
            RefreshUse::Reused { family_id } => assert_eq!(family_id, "f9"),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(fresh, 1, "exactly one concurrent refresh wins");
}

async fn accounts_by_username_and_email(s: &dyn Store) {
    let alice = AccountRow {
        id: "a1".into(),
        username: "alice".into(),
        email: Some("alice@example.org".into()),
        version: 0,
        data: "{}".into(),
        created_at: 1,
    };
    assert!(s.insert_account(&alice).await.unwrap());
    let taken_name = AccountRow {
        id: "a2".into(),
        email: None,
        ..alice.clone()
    };
    assert!(!s.insert_account(&taken_name).await.unwrap());
    let taken_mail = AccountRow {
        id: "a3".into(),
        username: "alice2".into(),
        ..alice.clone()
    };
    assert!(!s.insert_account(&taken_mail).await.unwrap());
    assert_eq!(
        s.account_by_username("alice").await.unwrap(),
        Some(alice.clone())
    );
    assert_eq!(
        s.account_by_email("alice@example.org").await.unwrap(),
        Some(alice.clone())
    );
    assert_eq!(s.account_by_username("bob").await.unwrap(), None);
    let renamed = AccountRow {
        data: "{\"n\":1}".into(),
        ..alice.clone()
    };
    assert!(s.update_account(&renamed).await.unwrap());
    // The stored version moved on: a second writer of version 0 loses.
    assert!(!s.update_account(&renamed).await.unwrap());
    let now = s.account_by_username("alice").await.unwrap().unwrap();
    assert_eq!((now.version, now.data.as_str()), (1, "{\"n\":1}"));
    let zed = AccountRow {
        id: "a4".into(),
        username: "zed".into(),
        email: None,
        ..alice.clone()
    };
    assert!(s.insert_account(&zed).await.unwrap());
    let names: Vec<String> = s
        .list_accounts()
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.username)
        .collect();
    assert_eq!(names, ["alice", "zed"]);
}

async fn gc_removes_expired(s: &dyn Store) {
    s.insert_login("old", "x", 10, None).await.unwrap();
    s.insert_login("new", "x", 10_000, None).await.unwrap();
    s.insert_code("old-code", "x", 10).await.unwrap();
    assert!(s.delete_expired(20, 1000).await.unwrap() >= 2);
    assert_eq!(s.login("old", 5).await.unwrap(), Lookup::Missing);
    assert_eq!(redeem(s, "old-code", "g", 5).await, Redeemed::Missing);
    assert!(matches!(
        s.login("new", 20).await.unwrap(),
        Lookup::Found(_)
    ));
}

async fn keys_roundtrip(s: &dyn Store) {
    let k1 = KeyRecord {
        kid: "k1".into(),
        generation: 1,
        alg: "RS256".into(),
        private_pem: "pem1".into(),
        created_at: 5,
        activates_at: 6,
        retires_at: None,
    };
    let k0 = KeyRecord {
        kid: "k0".into(),
        generation: 0,
        alg: "ES256".into(),
        private_pem: "pem0".into(),
        created_at: 9,
        activates_at: 0,
        retires_at: Some(40),
    };
    assert!(s.insert_key(&k1).await.unwrap());
    assert!(s.insert_key(&k0).await.unwrap());
    // Same kid: ignored.
    let same_kid = KeyRecord {
        private_pem: "other".into(),
        generation: 7,
        ..k1.clone()
    };
    assert!(!s.insert_key(&same_kid).await.unwrap());
    // Same generation (a replica lost the race): ignored.
    let same_generation = KeyRecord {
        kid: "k-late".into(),
        ..k0.clone()
    };
    assert!(!s.insert_key(&same_generation).await.unwrap());
    assert_eq!(s.list_keys().await.unwrap(), vec![k0, k1]);
}

// ---- token lifecycle (refresh, revocation, introspection) -------------------

async fn refresh_status_reports_state(s: &dyn Store) {
    let row = refresh("st1", "fst", Some("sid-st"));
    s.insert_refresh(&row).await.unwrap();
    let fresh = s.refresh_status("st1").await.unwrap().unwrap();
    assert_eq!(
        (fresh.row, fresh.used_at, fresh.revoked_at),
        (row, None, None)
    );
    s.use_refresh("st1", 20).await.unwrap();
    let used = s.refresh_status("st1").await.unwrap().unwrap();
    assert_eq!((used.used_at, used.revoked_at), (Some(20), None));
    s.revoke_family("fst", 21).await.unwrap();
    let revoked = s.refresh_status("st1").await.unwrap().unwrap();
    assert_eq!(revoked.revoked_at, Some(21));
    assert_eq!(s.refresh_status("nope").await.unwrap(), None);
}

async fn sessions_deleted_by_sid(s: &dyn Store) {
    let row = SessionRow {
        id_hash: "cookie-bysid".into(),
        sid: "sid-bysid".into(),
        connector_id: "local".into(),
        subject: "u".into(),
        auth_time: 1,
        data: "{}".into(),
        created_at: 1,
        expires_at: 1000,
        device_hash: None,
        device_label: None,
        ip: None,
        last_seen_at: None,
    };
    s.insert_session(&row).await.unwrap();
    s.add_session_client("sid-bysid", "app", 1, 1000)
        .await
        .unwrap();
    assert!(s.delete_session_by_sid("sid-bysid").await.unwrap());
    assert_eq!(s.session_by_sid("sid-bysid", 2).await.unwrap(), None);
    assert_eq!(s.session("cookie-bysid", 2).await.unwrap(), None);
    assert!(s.session_clients("sid-bysid").await.unwrap().is_empty());
    assert!(!s.delete_session_by_sid("sid-bysid").await.unwrap());
}

/// The rotation schedule: a retirement is set once (the first replica's
/// wins), and only keys past their retirement are deleted.
async fn key_rotation_schedule(s: &dyn Store) {
    let before: Vec<KeyRecord> = s.list_keys().await.unwrap();
    let key = |kid: &str, generation: i64, retires_at: Option<i64>| KeyRecord {
        kid: kid.into(),
        generation,
        alg: "EdDSA".into(),
        private_pem: "pem".into(),
        created_at: 1000,
        activates_at: 1000 + generation,
        retires_at,
    };
    let old = key("rot-old", 100, None);
    let new = key("rot-new", 101, None);
    assert!(s.insert_key(&old).await.unwrap());
    assert!(s.insert_key(&new).await.unwrap());
    assert!(s.retire_key("rot-old", 2000).await.unwrap());
    // Already scheduled: a second (racing) schedule does not move it.
    assert!(!s.retire_key("rot-old", 5000).await.unwrap());
    assert!(!s.retire_key("missing", 5000).await.unwrap());
    let rows = s.list_keys().await.unwrap();
    let stored = |kid: &str| rows.iter().find(|r| r.kid == kid).unwrap().clone();
    assert_eq!(stored("rot-old").retires_at, Some(2000));
    assert_eq!(stored("rot-old").activates_at, 1100);
    assert_eq!(stored("rot-new").retires_at, None);
    // Before its retirement: kept (keys of earlier tests retired by then go).
    let earlier = before
        .iter()
        .filter(|r| r.retires_at.is_some_and(|t| t <= 1999))
        .count() as u64;
    assert_eq!(s.delete_retired_keys(1999).await.unwrap(), earlier);
    assert!(s
        .list_keys()
        .await
        .unwrap()
        .iter()
        .any(|r| r.kid == "rot-old"));
    // At its retirement: deleted; a key without a retirement time never is.
    assert_eq!(s.delete_retired_keys(2000).await.unwrap(), 1);
    let kids: Vec<String> = s
        .list_keys()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.kid)
        .collect();
    assert!(kids.contains(&"rot-new".to_string()), "{kids:?}");
    assert!(!kids.contains(&"rot-old".to_string()), "{kids:?}");
    assert_eq!(s.delete_retired_keys(i64::MAX).await.unwrap(), 0);
}

// ---- logout ------------------------------------------------------------------

async fn logout_states_are_single_use(s: &dyn Store) {
    s.insert_logout_state("ls1", "where-to", 100).await.unwrap();
    assert_eq!(
        s.take_logout_state("ls1", 10).await.unwrap().as_deref(),
        Some("where-to")
    );
    assert_eq!(s.take_logout_state("ls1", 10).await.unwrap(), None);
    assert_eq!(s.take_logout_state("never", 10).await.unwrap(), None);
    // Expired: gone, and not handed out.
    s.insert_logout_state("ls2", "late", 100).await.unwrap();
    assert_eq!(s.take_logout_state("ls2", 100).await.unwrap(), None);
    // An insert never overwrites.
    s.insert_logout_state("ls3", "first", 100).await.unwrap();
    assert!(s.insert_logout_state("ls3", "second", 100).await.is_err());
    s.insert_logout_state("ls4", "old", 50).await.unwrap();
    assert!(s.delete_expired(60, 1000).await.unwrap() >= 1);
    assert_eq!(s.take_logout_state("ls4", 0).await.unwrap(), None);
    assert_eq!(
        s.take_logout_state("ls3", 10).await.unwrap().as_deref(),
        Some("first")
    );
}

fn delivery(id: &str, sid: &str, client: &str, due: i64) -> BackchannelRow {
    BackchannelRow {
        id: id.into(),
        sid: sid.into(),
        client_id: client.into(),
        uri: "https://rp.example/bc".into(),
        token: "logout-token".into(),
        attempts: 0,
        next_attempt_at: due,
        created_at: due,
        expires_at: due + 1000,
        done_at: None,
        outcome: None,
    }
}

async fn backchannel_queue_claims_once(store: Arc<dyn Store>) {
    let s = &*store;
    s.enqueue_backchannel(&delivery("b1", "sid-b", "app", 10))
        .await
        .unwrap();
    s.enqueue_backchannel(&delivery("b2", "sid-b", "other", 20))
        .await
        .unwrap();
    let due: Vec<String> = s
        .due_backchannel(10, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(due, vec!["b1".to_string()]);
    assert_eq!(s.due_backchannel(20, 10).await.unwrap().len(), 2);
    assert_eq!(s.due_backchannel(20, 1).await.unwrap().len(), 1);
    // Concurrent claims of one attempt: one winner.
    let mut handles = Vec::new();
    for _ in 0..4 {
        let st = store.clone();
        handles.push(tokio::spawn(async move {
            st.claim_backchannel("b1", 0, 40).await.unwrap()
        }));
    }
    let mut wins = 0;
    for h in handles {
        wins += h.await.unwrap() as u32;
    }
    assert_eq!(wins, 1);
    let b1 = s.backchannel("b1").await.unwrap().unwrap();
    assert_eq!((b1.attempts, b1.next_attempt_at), (1, 40));
    // Not due again before retry_at.
    assert!(s
        .due_backchannel(39, 10)
        .await
        .unwrap()
        .iter()
        .all(|r| r.id != "b1"));
    s.finish_backchannel("b1", 41, "delivered").await.unwrap();
    // Finished: never due, never claimed, and the outcome is kept.
    assert!(s
        .due_backchannel(1000, 10)
        .await
        .unwrap()
        .iter()
        .all(|r| r.id != "b1"));
    assert!(!s.claim_backchannel("b1", 1, 50).await.unwrap());
    s.finish_backchannel("b1", 42, "failed").await.unwrap();
    let b1 = s.backchannel("b1").await.unwrap().unwrap();
    assert_eq!(
        (b1.done_at, b1.outcome.as_deref()),
        (Some(41), Some("delivered"))
    );
    let of_session: Vec<String> = s
        .backchannel_of_session("sid-b")
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.client_id)
        .collect();
    assert_eq!(of_session, vec!["app".to_string(), "other".to_string()]);
    assert!(s.backchannel("nope").await.unwrap().is_none());
    assert!(s.delete_expired(2000, 1000).await.unwrap() >= 2);
    assert!(s.backchannel_of_session("sid-b").await.unwrap().is_empty());
}

/// A [`SqlStore`] in a schema of its own on the project's PostgreSQL server
/// (127.0.0.1:5432, database `test`; `AUTH_ADAPTER_TEST_POSTGRES` overrides).
pub struct TestPostgres {
    pub store: SqlStore,
    /// The database URL whose connections use the schema.
    pub url: String,
    admin: sqlx::AnyPool,
    schema: String,
}

impl TestPostgres {
    pub async fn new() -> Self {
        let base = std::env::var("AUTH_ADAPTER_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let schema = format!(
            "store_test_{}",
            crate::secret::random_token()[..12].to_lowercase()
        )
        .replace('-', "_");
        sqlx::any::install_default_drivers();
        let admin = sqlx::AnyPool::connect(&base)
            .await
            .expect("PostgreSQL must run at 127.0.0.1:5432 (see scripts/install-test-deps.sh)");
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&admin)
            .await
            .unwrap();
        let url = format!("{base}?options=-c%20search_path%3D{schema}");
        let store = SqlStore::connect(&url, 8).await.unwrap();
        TestPostgres {
            store,
            url,
            admin,
            schema,
        }
    }

    pub async fn drop_schema(self) {
        self.store.pool().close().await;
        sqlx::query(&format!("DROP SCHEMA {} CASCADE", self.schema))
            .execute(&self.admin)
            .await
            .unwrap();
    }
}

// ---- metrics ----

async fn sessions_are_counted_while_unexpired(s: &dyn Store) {
    // Far in the future of every other test's sessions.
    let now = 1_000_000;
    let before = s.count_sessions(now).await.unwrap();
    let mut live = session("h-count-1", "sid-count-1", "dave", now);
    live.expires_at = now + 10;
    let mut expired = session("h-count-2", "sid-count-2", "dave", now);
    expired.expires_at = now;
    s.insert_session(&live).await.unwrap();
    s.insert_session(&expired).await.unwrap();
    assert_eq!(s.count_sessions(now).await.unwrap(), before + 1);
    assert_eq!(s.count_sessions(now + 10).await.unwrap(), 0);
    s.delete_session("h-count-1").await.unwrap();
    assert_eq!(s.count_sessions(now).await.unwrap(), before);
}

// ---- operations (bounded garbage collection) --------------------------------

/// `delete_expired` removes at most `limit` records per call, from every
/// table with an expiry, and never one that has not expired.
async fn gc_is_bounded_and_covers_every_table(s: &dyn Store) {
    const FAR: i64 = 1 << 50;
    // What the earlier cases left behind goes first.
    while s.delete_expired(FAR, 100).await.unwrap() > 0 {}
    let expiring = |prefix: &str, i: i64| (format!("gc-{prefix}-{i}"), 10 + i);
    for i in 0..2 {
        let (id, exp) = expiring("login", i);
        s.insert_login(&id, "x", exp, None).await.unwrap();
        let (id, exp) = expiring("code", i);
        s.insert_code(&id, "x", exp).await.unwrap();
        let (id, exp) = expiring("session", i);
        let mut row = session(&id, &format!("{id}-sid"), "gc", 1);
        row.expires_at = exp;
        s.insert_session(&row).await.unwrap();
        s.add_session_client(&format!("{id}-sid"), "app", 1, exp)
            .await
            .unwrap();
        let (id, exp) = expiring("jti", i);
        s.revoke_token(&id, exp).await.unwrap();
        let (id, exp) = expiring("refresh", i);
        let mut row = refresh(&id, &format!("{id}-family"), None);
        row.expires_at = exp;
        s.insert_refresh(&row).await.unwrap();
        let (id, exp) = expiring("logout", i);
        s.insert_logout_state(&id, "x", exp).await.unwrap();
        let (id, exp) = expiring("bcl", i);
        let mut row = delivery(&id, "gc-sid", &id, 1);
        row.expires_at = exp;
        s.enqueue_backchannel(&row).await.unwrap();
        let (id, exp) = expiring("mail", i);
        let mut row = outbox(&id, 1);
        row.expires_at = exp;
        s.enqueue_mail(&row).await.unwrap();
        let (id, exp) = expiring("email-code", i);
        s.put_email_code(&id, "x", exp).await.unwrap();
    }
    // One fresh record per table type that must survive.
    s.insert_login("gc-fresh", "x", FAR + 1, None)
        .await
        .unwrap();
    s.revoke_token("gc-fresh", FAR + 1).await.unwrap();

    // 10 tables x 2 expired records, in batches of 7: 7, 7, 6, 0.
    let mut batches = Vec::new();
    loop {
        let n = s.delete_expired(100, 7).await.unwrap();
        batches.push(n);
        if n == 0 {
            break;
        }
    }
    assert_eq!(batches, vec![7, 7, 6, 0]);
    assert_eq!(s.mail("gc-mail-1").await.unwrap(), None);
    assert_eq!(
        s.check_email_code("gc-email-code-1", "x", 5, 0)
            .await
            .unwrap(),
        CodeCheck::Missing
    );
    assert_eq!(s.login("gc-login-0", 0).await.unwrap(), Lookup::Missing);
    assert_eq!(s.take_logout_state("gc-logout-1", 0).await.unwrap(), None);
    assert_eq!(s.backchannel("gc-bcl-1").await.unwrap(), None);
    assert_eq!(s.refresh_status("gc-refresh-1").await.unwrap(), None);
    assert!(s
        .session_clients("gc-session-1-sid")
        .await
        .unwrap()
        .is_empty());
    assert!(matches!(
        s.login("gc-fresh", 0).await.unwrap(),
        Lookup::Found(_)
    ));
    assert!(s.is_revoked("gc-fresh", 0).await.unwrap());
    // A zero limit removes nothing.
    s.insert_code("gc-late", "x", 10).await.unwrap();
    assert_eq!(s.delete_expired(100, 0).await.unwrap(), 0);
    assert_eq!(s.delete_expired(100, 1).await.unwrap(), 1);
}

// ---- mail (outbox and e-mail one-time codes) --------------------------------

fn outbox(id: &str, due: i64) -> OutboxRow {
    OutboxRow {
        id: id.into(),
        recipient: "user@example.org".into(),
        subject: "Subject".into(),
        body: "Your code is 123456.".into(),
        created_at: due,
        attempts: 0,
        next_attempt_at: due,
        sent_at: None,
        failed_at: None,
        last_error: None,
        expires_at: due + 1000,
    }
}

fn ids(rows: Vec<OutboxRow>) -> Vec<String> {
    rows.into_iter().map(|r| r.id).collect()
}

/// The outbox: due mails oldest first, one claim per attempt, a failure
/// waits for its retry time, sent and given-up mails are never due again.
async fn outbox_claims_once_and_retries(store: Arc<dyn Store>) {
    let s = &*store;
    s.enqueue_mail(&outbox("m1", 10)).await.unwrap();
    s.enqueue_mail(&outbox("m2", 20)).await.unwrap();
    assert_eq!(ids(s.due_mail(10, 10).await.unwrap()), vec!["m1"]);
    assert_eq!(ids(s.due_mail(20, 10).await.unwrap()), vec!["m1", "m2"]);
    assert_eq!(ids(s.due_mail(20, 1).await.unwrap()), vec!["m1"]);
    // Concurrent claims of one attempt: one winner.
    let mut handles = Vec::new();
    for _ in 0..4 {
        let st = store.clone();
        handles.push(tokio::spawn(async move {
            st.claim_mail("m1", 0, 40).await.unwrap()
        }));
    }
    let mut wins = 0;
    for h in handles {
        wins += h.await.unwrap() as u32;
    }
    assert_eq!(wins, 1);
    let m1 = s.mail("m1").await.unwrap().unwrap();
    assert_eq!((m1.attempts, m1.next_attempt_at), (1, 40));
    // The attempt failed: recorded, and not due before its retry time.
    s.mail_failed("m1", "connection refused", None)
        .await
        .unwrap();
    assert_eq!(ids(s.due_mail(39, 10).await.unwrap()), vec!["m2"]);
    assert_eq!(ids(s.due_mail(40, 10).await.unwrap()), vec!["m2", "m1"]);
    let m1 = s.mail("m1").await.unwrap().unwrap();
    assert_eq!(m1.last_error.as_deref(), Some("connection refused"));
    assert_eq!((m1.sent_at, m1.failed_at), (None, None));
    // The retry succeeds: sent, body emptied, never due or claimed again.
    assert!(s.claim_mail("m1", 1, 80).await.unwrap());
    s.mail_sent("m1", 41).await.unwrap();
    let m1 = s.mail("m1").await.unwrap().unwrap();
    assert_eq!(
        (m1.attempts, m1.sent_at, m1.body.as_str(), m1.last_error),
        (2, Some(41), "", None)
    );
    assert_eq!(ids(s.due_mail(1000, 10).await.unwrap()), vec!["m2"]);
    assert!(!s.claim_mail("m1", 2, 90).await.unwrap());
    // A mail given up is never due again and keeps its last error.
    assert!(s.claim_mail("m2", 0, 60).await.unwrap());
    s.mail_failed("m2", "554 rejected", Some(21)).await.unwrap();
    assert!(s.due_mail(1000, 10).await.unwrap().is_empty());
    assert!(!s.claim_mail("m2", 1, 70).await.unwrap());
    let m2 = s.mail("m2").await.unwrap().unwrap();
    assert_eq!(
        (m2.failed_at, m2.last_error.as_deref(), m2.body.as_str()),
        (Some(21), Some("554 rejected"), "Your code is 123456.")
    );
    // A sent mail cannot be failed afterwards, nor a given-up one sent.
    s.mail_failed("m1", "late", Some(50)).await.unwrap();
    assert_eq!(s.mail("m1").await.unwrap().unwrap().failed_at, None);
    assert!(s.mail("nope").await.unwrap().is_none());
    // Ids are unique.
    assert!(s.enqueue_mail(&outbox("m1", 10)).await.is_err());
    assert!(s.delete_expired(2000, 1000).await.unwrap() >= 2);
    assert!(s.mail("m1").await.unwrap().is_none());
}

async fn outbox_lists_newest_first(s: &dyn Store) {
    for (id, at) in [("n-old", 100), ("n-new", 300), ("n-mid", 200)] {
        s.enqueue_mail(&outbox(id, at)).await.unwrap();
    }
    assert_eq!(
        ids(s.recent_mail(3).await.unwrap()),
        vec!["n-new", "n-mid", "n-old"]
    );
    assert_eq!(ids(s.recent_mail(1).await.unwrap()), vec!["n-new"]);
    while s.delete_expired(1 << 40, 100).await.unwrap() > 0 {}
}

/// E-mail codes: a wrong code counts one attempt, the limit kills the code
/// (even for the right one), expiry is exact, a match consumes the code, and
/// a new code replaces the old one with a fresh count.
async fn email_codes_count_attempts_and_are_single_use(s: &dyn Store) {
    s.put_email_code("k1", "right", 100).await.unwrap();
    for n in 1..=3 {
        assert_eq!(
            s.check_email_code("k1", "wrong", 3, 10).await.unwrap(),
            CodeCheck::Wrong { attempts: n }
        );
    }
    assert_eq!(
        s.check_email_code("k1", "right", 3, 10).await.unwrap(),
        CodeCheck::Exhausted
    );
    assert_eq!(
        s.check_email_code("k1", "wrong", 3, 10).await.unwrap(),
        CodeCheck::Exhausted
    );
    // Replaced: a fresh count, and the old code no longer matches.
    s.put_email_code("k1", "new", 100).await.unwrap();
    assert_eq!(
        s.check_email_code("k1", "right", 3, 10).await.unwrap(),
        CodeCheck::Wrong { attempts: 1 }
    );
    // Expiry: live before `expires_at`, expired at it, for any code.
    assert_eq!(
        s.check_email_code("k1", "new", 3, 100).await.unwrap(),
        CodeCheck::Expired
    );
    assert_eq!(
        s.check_email_code("k1", "other", 3, 100).await.unwrap(),
        CodeCheck::Expired
    );
    assert_eq!(
        s.check_email_code("k1", "new", 3, 99).await.unwrap(),
        CodeCheck::Accepted
    );
    // Single use.
    assert_eq!(
        s.check_email_code("k1", "new", 3, 99).await.unwrap(),
        CodeCheck::Missing
    );
    assert_eq!(
        s.check_email_code("never", "x", 3, 0).await.unwrap(),
        CodeCheck::Missing
    );
    // Keys are independent.
    s.put_email_code("k2", "a", 100).await.unwrap();
    s.put_email_code("k3", "a", 100).await.unwrap();
    assert_eq!(
        s.check_email_code("k2", "a", 3, 0).await.unwrap(),
        CodeCheck::Accepted
    );
    assert_eq!(
        s.check_email_code("k3", "a", 3, 0).await.unwrap(),
        CodeCheck::Accepted
    );
}

async fn concurrent_email_code_checks_have_one_winner(store: Arc<dyn Store>) {
    store.put_email_code("race", "right", 100).await.unwrap();
    let mut handles = Vec::new();
    for _ in 0..8 {
        let st = store.clone();
        handles.push(tokio::spawn(async move {
            st.check_email_code("race", "right", 5, 10).await.unwrap()
        }));
    }
    let mut outcomes = Vec::new();
    for h in handles {
        outcomes.push(h.await.unwrap());
    }
    let accepted = outcomes
        .iter()
        .filter(|o| **o == CodeCheck::Accepted)
        .count();
    assert_eq!(accepted, 1, "{outcomes:?}");
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, CodeCheck::Accepted | CodeCheck::Missing)),
        "{outcomes:?}"
    );
}

/// Concurrent wrong guesses are each counted: exactly `max_attempts` get
/// `Wrong`, the rest `Exhausted`.
async fn concurrent_wrong_guesses_never_pass_the_limit(store: Arc<dyn Store>) {
    store.put_email_code("guess", "right", 100).await.unwrap();
    let mut handles = Vec::new();
    for i in 0..12 {
        let st = store.clone();
        handles.push(tokio::spawn(async move {
            st.check_email_code("guess", &format!("wrong-{i}"), 5, 10)
                .await
                .unwrap()
        }));
    }
    let mut counted = Vec::new();
    let mut exhausted = 0;
    for h in handles {
        match h.await.unwrap() {
            CodeCheck::Wrong { attempts } => counted.push(attempts),
            CodeCheck::Exhausted => exhausted += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    counted.sort();
    assert_eq!(counted, vec![1, 2, 3, 4, 5]);
    assert_eq!(exhausted, 7);
    assert_eq!(
        store
            .check_email_code("guess", "right", 5, 10)
            .await
            .unwrap(),
        CodeCheck::Exhausted
    );
}

// ---- rate limits (per-account throttles) ----

async fn throttles_count_block_and_clear(s: &dyn Store) {
    const WINDOW: i64 = 900;
    assert_eq!(s.throttle_blocked_until("th-a").await.unwrap(), None);
    for expected in 1..=3 {
        assert_eq!(
            s.throttle_failure("th-a", 1000 + expected, WINDOW)
                .await
                .unwrap(),
            expected
        );
    }
    assert_eq!(s.throttle_blocked_until("th-a").await.unwrap(), Some(0));
    // Keys are separate.
    assert_eq!(s.throttle_failure("th-b", 1000, WINDOW).await.unwrap(), 1);
    // Blocks only ever lengthen.
    s.throttle_block("th-a", 1010).await.unwrap();
    s.throttle_block("th-a", 1005).await.unwrap();
    assert_eq!(s.throttle_blocked_until("th-a").await.unwrap(), Some(1010));
    // Blocking an unknown key creates nothing.
    s.throttle_block("th-none", 1010).await.unwrap();
    assert_eq!(s.throttle_blocked_until("th-none").await.unwrap(), None);
    // Still inside the window (started at 1001): counting goes on...
    assert_eq!(
        s.throttle_failure("th-a", 1001 + WINDOW - 1, WINDOW)
            .await
            .unwrap(),
        4
    );
    // ...and once the window is over, a new one starts at 1.
    assert_eq!(
        s.throttle_failure("th-a", 1001 + WINDOW, WINDOW)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        s.throttle_failure("th-a", 1001 + WINDOW, WINDOW)
            .await
            .unwrap(),
        2
    );
    // A success forgets the key, and only it.
    s.clear_throttle("th-a").await.unwrap();
    assert_eq!(s.throttle_blocked_until("th-a").await.unwrap(), None);
    assert_eq!(s.throttle_failure("th-a", 5000, WINDOW).await.unwrap(), 1);
    assert_eq!(s.throttle_blocked_until("th-b").await.unwrap(), Some(0));
    // Garbage collection: a row goes when both its window and its block
    // are over.
    s.throttle_failure("th-gc", 10_000, WINDOW).await.unwrap();
    s.throttle_block("th-gc", 10_000 + 2 * WINDOW)
        .await
        .unwrap();
    while s.delete_expired(10_000 + WINDOW + 1, 100).await.unwrap() > 0 {}
    assert_eq!(
        s.throttle_blocked_until("th-gc").await.unwrap(),
        Some(10_000 + 2 * WINDOW),
        "blocked rows outlive their window"
    );
    while s
        .delete_expired(10_000 + 2 * WINDOW + 1, 100)
        .await
        .unwrap()
        > 0
    {}
    assert_eq!(s.throttle_blocked_until("th-gc").await.unwrap(), None);
}

async fn concurrent_throttle_failures_all_count(s: Arc<dyn Store>) {
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { s.throttle_failure("th-race", 100, 900).await.unwrap() })
        })
        .collect();
    let mut counts = Vec::new();
    for t in tasks {
        counts.push(t.await.unwrap());
    }
    counts.sort_unstable();
    assert_eq!(counts, (1..=16).collect::<Vec<i64>>(), "no failure is lost");
    s.clear_throttle("th-race").await.unwrap();
}

// ---- devices (sessions per device) ------------------------------------------

/// The device columns round-trip; a device's sessions of one user (and one
/// connector) are deleted together, with their client index, and nobody
/// else's; the last-seen time is written only when stale.
async fn sessions_per_device(s: &dyn Store) {
    let on = |id: &str, subject: &str, device: &str| {
        let mut row = session(id, &format!("{id}-sid"), subject, 5);
        row.device_hash = Some(device.into());
        row.device_label = Some("Firefox on Linux".into());
        row.ip = Some("192.0.2.1".into());
        row.last_seen_at = Some(5);
        row
    };
    let a1 = on("dev-a1", "erin", "device-1");
    let a2 = on("dev-a2", "erin", "device-1");
    let b = on("dev-b", "erin", "device-2");
    let frank = on("dev-f", "frank", "device-1");
    let mut local = on("dev-l", "erin", "device-1");
    local.connector_id = "local".into();
    for row in [&a1, &a2, &b, &frank, &local] {
        s.insert_session(row).await.unwrap();
    }
    assert_eq!(s.session("dev-a1", 10).await.unwrap(), Some(a1.clone()));
    s.add_session_client("dev-a1-sid", "app", 5, 1000)
        .await
        .unwrap();
    let mut sids = s
        .delete_device_sessions("up", "erin", "device-1")
        .await
        .unwrap();
    sids.sort();
    assert_eq!(sids, vec!["dev-a1-sid".to_string(), "dev-a2-sid".into()]);
    assert_eq!(s.session("dev-a1", 10).await.unwrap(), None);
    assert_eq!(s.session("dev-a2", 10).await.unwrap(), None);
    assert!(s.session_clients("dev-a1-sid").await.unwrap().is_empty());
    assert_eq!(s.session("dev-b", 10).await.unwrap(), Some(b.clone()));
    assert_eq!(s.session("dev-f", 10).await.unwrap(), Some(frank));
    assert_eq!(s.session("dev-l", 10).await.unwrap(), Some(local));
    assert!(s
        .delete_device_sessions("up", "erin", "device-1")
        .await
        .unwrap()
        .is_empty());

    let seen = |row: Option<SessionRow>| row.unwrap().last_seen_at;
    // Stale (5 is before 11): written.
    assert!(s.touch_session("dev-b", 70, 11).await.unwrap());
    assert_eq!(seen(s.session("dev-b", 71).await.unwrap()), Some(70));
    // Fresh (70 is not before 41): left alone.
    assert!(!s.touch_session("dev-b", 100, 41).await.unwrap());
    assert_eq!(seen(s.session("dev-b", 101).await.unwrap()), Some(70));
    // A session from before devices gets its first time.
    s.insert_session(&session("dev-old", "dev-old-sid", "erin", 5))
        .await
        .unwrap();
    assert!(s.touch_session("dev-old", 50, 0).await.unwrap());
    assert_eq!(seen(s.session("dev-old", 51).await.unwrap()), Some(50));
    assert!(!s.touch_session("dev-missing", 50, 60).await.unwrap());

    // Fresh claims replace a session's data, nothing else.
    let before = s.session("dev-b", 101).await.unwrap().unwrap();
    assert!(s
        .set_session_data(&before.sid, "{\"fresh\":true}")
        .await
        .unwrap());
    let after = s.session("dev-b", 101).await.unwrap().unwrap();
    assert_eq!(after.data, "{\"fresh\":true}");
    assert_eq!(
        SessionRow {
            data: before.data.clone(),
            ..after
        },
        before
    );
    assert!(!s.set_session_data("no-such-sid", "{}").await.unwrap());
}

async fn passkey_handles_name_one_account(s: &dyn Store) {
    let row = AccountRow {
        id: "acct-pk".into(),
        username: "pk-user".into(),
        email: None,
        version: 0,
        data: "{}".into(),
        created_at: 1,
    };
    assert!(s.insert_account(&row).await.unwrap());
    assert!(s.account_by_passkey_handle("h-1").await.unwrap().is_none());
    assert!(s.insert_passkey_handle("h-1", "acct-pk").await.unwrap());
    assert_eq!(
        s.account_by_passkey_handle("h-1")
            .await
            .unwrap()
            .map(|a| a.username),
        Some("pk-user".to_string())
    );
    // A handle names one account, an account has one handle.
    assert!(!s.insert_passkey_handle("h-1", "other").await.unwrap());
    assert!(!s.insert_passkey_handle("h-2", "acct-pk").await.unwrap());
    assert!(s.account_by_passkey_handle("h-2").await.unwrap().is_none());
}

// ---- the refresh grant in one call ------------------------------------------

/// A [`NextRefresh`] that makes `next` (a successor of the used token's
/// family) and counts its calls.
fn successor(next: &str, calls: Arc<std::sync::atomic::AtomicUsize>) -> NextRefresh {
    let next = next.to_string();
    Box::new(move |used: &RefreshRow| {
        calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(Some(RefreshRow {
            token_hash: next,
            issued_at: 3,
            ..used.clone()
        }))
    })
}

async fn rotation_checks_consumes_and_inserts_at_once(s: &dyn Store) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let calls = Arc::new(AtomicUsize::new(0));
    s.insert_session(&session("h-rot", "sid-rot", "rita", 1))
        .await
        .unwrap();
    let r1 = refresh("rot1", "frot", Some("sid-rot"));
    s.insert_refresh(&r1).await.unwrap();

    // Live: consumed, its successor inserted, the session seen alive.
    assert_eq!(
        s.rotate_refresh("rot1", "app", 2, successor("rot2", calls.clone()))
            .await
            .unwrap(),
        Rotation::Rotated {
            used: r1.clone(),
            session_alive: true
        }
    );
    assert_eq!(
        s.refresh_status("rot1").await.unwrap().unwrap().used_at,
        Some(2)
    );
    let r2 = s.refresh_status("rot2").await.unwrap().unwrap();
    assert_eq!(
        (r2.row.family_id.as_str(), r2.row.issued_at, r2.used_at),
        ("frot", 3, None)
    );

    // Replayed: reuse, nothing built or inserted.
    assert_eq!(
        s.rotate_refresh("rot1", "app", 4, successor("rot-x", calls.clone()))
            .await
            .unwrap(),
        Rotation::Reused(r1.clone())
    );
    assert_eq!(s.refresh_status("rot-x").await.unwrap(), None);
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // Another client's: reported before anything else, nothing consumed.
    assert_eq!(
        s.rotate_refresh("rot2", "thief", 4, successor("rot-x", calls.clone()))
            .await
            .unwrap(),
        Rotation::OtherClient(r2.row.clone())
    );
    // Refused by the caller's check: nothing consumed.
    let refuse: NextRefresh = Box::new(|_| Ok(None));
    assert_eq!(
        s.rotate_refresh("rot2", "app", 4, refuse).await.unwrap(),
        Rotation::Refused(r2.row.clone())
    );
    assert_eq!(
        s.refresh_status("rot2").await.unwrap().unwrap().used_at,
        None
    );
    // Expired at its expiry.
    assert_eq!(
        s.rotate_refresh("rot2", "app", 1000, successor("rot-x", calls.clone()))
            .await
            .unwrap(),
        Rotation::Expired
    );
    // Its session ended: refused, not consumed.
    s.delete_session_by_sid("sid-rot").await.unwrap();
    assert_eq!(
        s.rotate_refresh("rot2", "app", 5, successor("rot-x", calls.clone()))
            .await
            .unwrap(),
        Rotation::SessionEnded
    );
    assert_eq!(
        s.refresh_status("rot2").await.unwrap().unwrap().used_at,
        None
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "built, then the session check"
    );

    // A token of no session (offline) rotates without one.
    let off = refresh("rot-off", "foff", None);
    s.insert_refresh(&off).await.unwrap();
    assert_eq!(
        s.rotate_refresh("rot-off", "app", 5, successor("rot-off2", calls.clone()))
            .await
            .unwrap(),
        Rotation::Rotated {
            used: off,
            session_alive: false
        }
    );
    // The family's marker revokes every member, also one inserted later.
    s.revoke_token(&format!("{FAMILY_MARKER_PREFIX}foff"), 100)
        .await
        .unwrap();
    assert_eq!(
        s.rotate_refresh("rot-off2", "app", 6, successor("rot-x", calls.clone()))
            .await
            .unwrap(),
        Rotation::Revoked
    );
    // Once the marker expired, the row's own state counts again.
    s.revoke_family("foff", 7).await.unwrap();
    assert_eq!(
        s.rotate_refresh("rot-off2", "app", 100, successor("rot-x", calls.clone()))
            .await
            .unwrap(),
        Rotation::Revoked
    );
    assert_eq!(
        s.rotate_refresh("nope", "app", 6, successor("rot-x", calls.clone()))
            .await
            .unwrap(),
        Rotation::Missing
    );
    assert_eq!(s.refresh_status("rot-x").await.unwrap(), None);
}

/// A replay racing the legitimate rotation (RFC 9700 §4.14.2): exactly one
/// rotation wins and inserts its successor; every other sees reuse.
async fn concurrent_rotations_have_one_winner(s: Arc<dyn Store>) {
    use std::sync::atomic::AtomicUsize;
    s.insert_refresh(&refresh("rot-race", "frace", None))
        .await
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for i in 0..16 {
        let (s, calls) = (s.clone(), calls.clone());
        handles.push(tokio::spawn(async move {
            s.rotate_refresh(
                "rot-race",
                "app",
                2,
                successor(&format!("rot-race-{i}"), calls),
            )
            .await
            .unwrap()
        }));
    }
    let mut rotated = 0;
    for h in handles {
        match h.await.unwrap() {
            Rotation::Rotated { .. } => rotated += 1,
            Rotation::Reused(row) => assert_eq!(row.family_id, "frace"),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(rotated, 1, "exactly one concurrent rotation wins");
    let mut successors = 0;
    for i in 0..16 {
        if s.refresh_status(&format!("rot-race-{i}"))
            .await
            .unwrap()
            .is_some()
        {
            successors += 1;
        }
    }
    assert_eq!(successors, 1, "exactly one successor inserted");
}

// ---- a login's last steps in fewer calls -------------------------------------

async fn a_session_replaces_the_one_of_its_device(s: &dyn Store) {
    let on = |id: &str, sid: &str, subject: &str, device: &str| SessionRow {
        device_hash: Some(device.into()),
        device_label: Some("Firefox on Linux".into()),
        ip: Some("192.0.2.7".into()),
        last_seen_at: Some(5),
        ..session(id, sid, subject, 5)
    };
    let first = on("h-dev1", "sid-dev1", "dora", "dev-a");
    let other_device = on("h-dev2", "sid-dev2", "dora", "dev-b");
    let other_user = on("h-dev3", "sid-dev3", "dirk", "dev-a");
    for row in [&first, &other_device, &other_user] {
        assert!(s
            .replace_device_sessions(row, None)
            .await
            .unwrap()
            .is_empty());
    }
    s.add_session_client("sid-dev1", "app", 5, 1000)
        .await
        .unwrap();
    assert_eq!(s.session("h-dev1", 10).await.unwrap(), Some(first.clone()));

    // Same user, same device: the earlier session and its client index go.
    let again = on("h-dev4", "sid-dev4", "dora", "dev-a");
    assert_eq!(
        s.replace_device_sessions(&again, None).await.unwrap(),
        vec!["sid-dev1".to_string()]
    );
    assert_eq!(s.session("h-dev1", 10).await.unwrap(), None);
    assert!(s.session_clients("sid-dev1").await.unwrap().is_empty());
    assert_eq!(s.session("h-dev4", 10).await.unwrap(), Some(again));
    assert_eq!(s.session("h-dev2", 10).await.unwrap(), Some(other_device));
    assert_eq!(s.session("h-dev3", 10).await.unwrap(), Some(other_user));
    // The whole call is one transaction: a clash on the new row's sid
    // keeps the session it would have replaced.
    let clash = on("h-dev5", "sid-dev2", "dora", "dev-a");
    assert!(s.replace_device_sessions(&clash, None).await.is_err());
    assert!(s.session("h-dev4", 10).await.unwrap().is_some());
}

/// A login's session and its client's code in one call: both or neither.
async fn a_session_and_its_code_commit_together(s: &dyn Store) {
    let on = |id: &str, sid: &str| SessionRow {
        device_hash: Some("dev-c".into()),
        ..session(id, sid, "cora", 5)
    };
    let code = |hash: &str, sid: &str| CodeInsert {
        code_hash: hash.into(),
        data: "code payload".into(),
        expires_at: 600,
        sid: sid.into(),
        client_id: "app9".into(),
        now: 5,
        session_expires_at: 1000,
    };
    let first = on("h-sc1", "sid-sc1");
    assert!(s
        .replace_device_sessions(&first, Some(&code("c-sc1", "sid-sc1")))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(s.session("h-sc1", 10).await.unwrap(), Some(first));
    assert_eq!(
        s.session_clients("sid-sc1").await.unwrap(),
        vec!["app9".to_string()]
    );
    assert_eq!(
        redeem(s, "c-sc1", "g-sc1", 6).await,
        Redeemed::Fresh {
            data: "code payload".into(),
            expires_at: 600,
            refresh_issued: false
        }
    );
    // A code hash that exists fails the whole call: no new session, and
    // the device's earlier session and its client index are kept.
    let second = on("h-sc2", "sid-sc2");
    assert!(s
        .replace_device_sessions(&second, Some(&code("c-sc1", "sid-sc2")))
        .await
        .is_err());
    assert_eq!(s.session("h-sc2", 10).await.unwrap(), None);
    assert!(s.session("h-sc1", 10).await.unwrap().is_some());
    assert_eq!(
        s.session_clients("sid-sc1").await.unwrap(),
        vec!["app9".to_string()]
    );
    assert!(s.session_clients("sid-sc2").await.unwrap().is_empty());
}

async fn a_code_is_stored_with_its_session_client(s: &dyn Store) {
    let code = CodeInsert {
        code_hash: "c-sess".into(),
        data: "payload".into(),
        expires_at: 600,
        sid: "sid-code".into(),
        client_id: "app7".into(),
        now: 5,
        session_expires_at: 1000,
    };
    s.insert_code_for_session(&code).await.unwrap();
    assert_eq!(
        s.session_clients("sid-code").await.unwrap(),
        vec!["app7".to_string()]
    );
    assert_eq!(
        redeem(s, "c-sess", "g-sess", 6).await,
        Redeemed::Fresh {
            data: "payload".into(),
            expires_at: 600,
            refresh_issued: false
        }
    );
    // A second code of the same client and session: the index stays one row.
    s.insert_code_for_session(&CodeInsert {
        code_hash: "c-sess2".into(),
        ..code.clone()
    })
    .await
    .unwrap();
    assert_eq!(s.session_clients("sid-code").await.unwrap().len(), 1);
    // A code hash that exists fails the whole call.
    assert!(s
        .insert_code_for_session(&CodeInsert {
            client_id: "app8".into(),
            ..code
        })
        .await
        .is_err());
    assert_eq!(
        s.session_clients("sid-code").await.unwrap(),
        vec!["app7".to_string()]
    );
}

// ---- the authorization-code grant in one call ----------------------------------

/// Redeems without issuing a refresh token.
async fn redeem(s: &dyn Store, code_hash: &str, grant_id: &str, now: i64) -> Redeemed {
    s.redeem_code_and_issue(code_hash, grant_id, now, Box::new(|_, _| Ok(None)))
        .await
        .unwrap()
}

/// A [`FirstRefresh`] that records what it was called with and answers
/// `answer`.
fn first_refresh(
    answer: Result<Option<RefreshRow>, StoreError>,
    seen: Arc<std::sync::Mutex<Vec<(String, i64)>>>,
) -> FirstRefresh {
    Box::new(move |data: &str, expires_at: i64| {
        seen.lock().unwrap().push((data.to_string(), expires_at));
        answer
    })
}

async fn a_redemption_inserts_the_first_refresh_token_only_when_asked(s: &dyn Store) {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let status = |h: &'static str| async move { s.refresh_status(h).await.unwrap() };

    // Asked: the code is consumed and the family's first token is there.
    s.insert_code("ci-1", "payload-1", 100).await.unwrap();
    let first = refresh("rt-first", "g-first", Some("sid-first"));
    assert_eq!(
        s.redeem_code_and_issue(
            "ci-1",
            "g-first",
            10,
            first_refresh(Ok(Some(first.clone())), seen.clone())
        )
        .await
        .unwrap(),
        Redeemed::Fresh {
            data: "payload-1".into(),
            expires_at: 100,
            refresh_issued: true
        }
    );
    assert_eq!(*seen.lock().unwrap(), [("payload-1".to_string(), 100)]);
    let stored = status("rt-first").await.expect("the first refresh token");
    assert_eq!((stored.row, stored.used_at), (first, None));

    // Refused (a failed check): the code is burnt all the same, and
    // nothing is inserted.
    s.insert_code("ci-2", "payload-2", 100).await.unwrap();
    assert_eq!(
        s.redeem_code_and_issue("ci-2", "g-2", 10, first_refresh(Ok(None), seen.clone()))
            .await
            .unwrap(),
        Redeemed::Fresh {
            data: "payload-2".into(),
            expires_at: 100,
            refresh_issued: false
        }
    );
    assert_eq!(
        redeem(s, "ci-2", "g-again", 11).await,
        Redeemed::Replayed {
            grant_id: Some("g-2".into())
        }
    );

    // A replay or an unknown code never reaches the caller's closure, so
    // it never inserts a token.
    seen.lock().unwrap().clear();
    let row = refresh("rt-replay", "g-replay", None);
    assert_eq!(
        s.redeem_code_and_issue(
            "ci-1",
            "g-replay",
            12,
            first_refresh(Ok(Some(row.clone())), seen.clone())
        )
        .await
        .unwrap(),
        Redeemed::Replayed {
            grant_id: Some("g-first".into())
        }
    );
    assert_eq!(
        s.redeem_code_and_issue(
            "ci-none",
            "g-replay",
            12,
            first_refresh(Ok(Some(row)), seen.clone())
        )
        .await
        .unwrap(),
        Redeemed::Missing
    );
    assert!(seen.lock().unwrap().is_empty());
    assert_eq!(status("rt-replay").await, None);

    // An error of the closure rolls the whole transaction back: nothing
    // issued, so the code is still unused.
    s.insert_code("ci-3", "payload-3", 100).await.unwrap();
    assert!(s
        .redeem_code_and_issue(
            "ci-3",
            "g-3",
            10,
            first_refresh(Err(StoreError::Url("refused".into())), seen.clone())
        )
        .await
        .is_err());
    assert!(matches!(
        redeem(s, "ci-3", "g-3b", 11).await,
        Redeemed::Fresh { .. }
    ));
}

async fn concurrent_redemptions_issue_one_refresh_token(s: Arc<dyn Store>) {
    s.insert_code("ci-race", "x", 1000).await.unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut handles = Vec::new();
    for i in 0..2 {
        let (s, seen) = (s.clone(), seen.clone());
        handles.push(tokio::spawn(async move {
            let row = refresh(&format!("rt-race-{i}"), &format!("g-race-{i}"), None);
            let first = first_refresh(Ok(Some(row)), seen);
            let out = s
                .redeem_code_and_issue("ci-race", &format!("g-race-{i}"), 1, first)
                .await
                .unwrap();
            (i, out)
        }));
    }
    let mut winner = None;
    let mut replays = Vec::new();
    for h in handles {
        match h.await.unwrap() {
            (i, Redeemed::Fresh { refresh_issued, .. }) => {
                assert!(refresh_issued);
                assert!(winner.replace(i).is_none(), "two winners");
            }
            (_, Redeemed::Replayed { grant_id }) => replays.push(grant_id),
            (_, Redeemed::Missing) => panic!("code vanished"),
        }
    }
    let winner = winner.expect("one redemption wins");
    assert_eq!(replays, [Some(format!("g-race-{winner}"))]);
    assert_eq!(seen.lock().unwrap().len(), 1, "one closure ran");
    for i in 0..2 {
        let row = s.refresh_status(&format!("rt-race-{i}")).await.unwrap();
        assert_eq!(row.is_some(), i == winner, "rt-race-{i}");
    }
}
