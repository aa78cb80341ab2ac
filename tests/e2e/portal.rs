//! The portal's people (issue 19) against the real PostgreSQL, as the API's own login: invite,
//! enrol (password rules, TOTP), sign in (codes good once, recovery codes, lockout), sessions
//! (timeouts, sign-out everywhere). The pages and the browser tests build on these.

use posflow_api::auth::Role;
use posflow_api::portal::people::{self, Refused};
use posflow_api::portal::{session, totp};
use posflow_e2e::{with_login, Deployment, SECRETS_KEYS};
use posflow_notifier::sealed::Keys;
use posflow_runtime::Secret;
use std::time::{Duration, SystemTime};

const GOOD: &str = "lantern quietly over the harbour";

async fn api_login(d: &Deployment) -> tokio_postgres::Client {
    posflow_pg::connect(&with_login(
        &d.stack.database_url,
        "posflow_api_app",
        "api-local",
    ))
    .await
    .expect("connecting as the API")
}

fn ok<T: std::fmt::Debug>(o: Result<Result<T, Refused>, posflow_pg::DbError>) -> T {
    o.expect("the database").expect("not refused")
}

fn refused<T: std::fmt::Debug>(o: Result<Result<T, Refused>, posflow_pg::DbError>) -> Refused {
    o.expect("the database").expect_err("refused")
}

#[tokio::test]
async fn a_person_is_invited_enrols_signs_in_with_a_code_and_is_locked_out_after_five_failures() {
    let d = Deployment::kafka_only().await.with_api_schema().await;
    let mut db = api_login(&d).await;
    let owner = posflow_e2e::api::owner_db(&d).await;
    let keys = Keys::parse(&Secret::new(SECRETS_KEYS)).expect("keys");
    let m = vec![format!("P{}", rand::random::<u32>())];

    // Invited: one person per email, whatever its case.
    let (id, token) = ok(people::invite(
        &mut db,
        "Ana.Lima@Example.com",
        Role::Owner,
        &m,
        "operator:e2e",
    )
    .await);
    assert_eq!(
        refused(
            people::invite(
                &mut db,
                "ana.lima@example.com",
                Role::Finance,
                &m,
                "operator:e2e"
            )
            .await
        ),
        Refused::AlreadyMember
    );
    let stored: Vec<u8> = owner
        .query_one(
            "SELECT token_hash FROM portal_invitations WHERE person_id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        stored,
        session::id_hash(token.expose()),
        "the token's hash, never the token"
    );

    // Enrolment: the password's rules, then the authenticator.
    let weak = refused(
        people::set_password(&db, &keys, token.expose(), &Secret::new("Password2024!")).await,
    );
    assert!(
        matches!(&weak, Refused::Password(why) if why.contains("common")),
        "{weak:?}"
    );
    assert_eq!(
        refused(people::set_password(&db, &keys, "not-a-token", &Secret::new(GOOD)).await),
        Refused::Invitation
    );
    let e = ok(people::set_password(&db, &keys, token.expose(), &Secret::new(GOOD)).await);
    assert_eq!(e.person_id, id);
    assert!(
        e.otpauth_uri.expose().contains(e.secret_base32.expose())
            && e.otpauth_uri.expose().contains("ana.lima%40example.com")
    );
    let secret = totp::from_base32(e.secret_base32.expose()).unwrap();
    let row = owner
        .query_one(
            "SELECT status, password_hash, totp_secret FROM portal_people WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, &str>(0),
        "invited",
        "not active before a code proves the app"
    );
    assert!(row.get::<_, &str>(1).starts_with("$argon2id$"));
    assert!(
        !row.get::<_, &str>(2).contains(e.secret_base32.expose()),
        "the secret is sealed"
    );

    let now = SystemTime::now();
    let wrong = format!(
        "{:06}",
        (totp::code_at(&secret, secs(now)).parse::<u32>().unwrap() + 1) % 1_000_000
    );
    assert_eq!(
        refused(people::confirm(&mut db, &keys, token.expose(), &wrong, now).await),
        Refused::Code
    );
    let codes = ok(people::confirm(
        &mut db,
        &keys,
        token.expose(),
        &totp::code_at(&secret, secs(now)),
        now,
    )
    .await);
    assert_eq!(codes.len(), 10);
    let kept: i64 = owner
        .query_one(
            "SELECT count(*) FROM portal_recovery_codes WHERE person_id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, 10);
    assert_eq!(
        refused(
            people::confirm(
                &mut db,
                &keys,
                token.expose(),
                &totp::code_at(&secret, secs(now)),
                now
            )
            .await
        ),
        Refused::Invitation,
        "an invitation enrols once"
    );

    // Signing in: the code that confirmed enrolment is spent; the next one works, once.
    let pass = Secret::new(GOOD);
    assert_eq!(
        refused(ana(&mut db, &keys, totp::code_at(&secret, secs(now)), now).await),
        Refused::SignIn,
        "replayed"
    );
    let later = now + Duration::from_secs(totp::STEP_S);
    let s1 = ok(ana(&mut db, &keys, totp::code_at(&secret, secs(later)), later).await);
    assert_eq!(s1.person.id, id);
    assert_eq!(
        (s1.person.role, s1.person.merchants.clone()),
        (Role::Owner, m.clone())
    );
    assert_eq!(
        refused(ana(&mut db, &keys, totp::code_at(&secret, secs(later)), later).await),
        Refused::SignIn,
        "a code is good once"
    );
    // A recovery code instead of the app's: once.
    let s2 = ok(ana(&mut db, &keys, codes[3].expose().to_lowercase(), later).await);
    assert_eq!(
        refused(ana(&mut db, &keys, codes[3].expose().to_string(), later).await),
        Refused::SignIn
    );
    // The wrong password with a right code is the same refusal as anything else wrong.
    let wrong_pass = people::sign_in(
        &mut db,
        &keys,
        "ana.lima@example.com",
        &Secret::new("not the password at all"),
        codes[4].expose(),
        "127.0.0.1",
        later,
    )
    .await;
    assert_eq!(refused(wrong_pass), Refused::SignIn);
    let unknown = people::sign_in(
        &mut db,
        &keys,
        "nobody@example.com",
        &pass,
        "123456",
        "127.0.0.1",
        later,
    )
    .await;
    assert_eq!(
        refused(unknown),
        Refused::SignIn,
        "an unknown email is not told apart"
    );

    // Sessions: the person behind each cookie; sign out everywhere ends them all.
    for s in [&s1, &s2] {
        assert_eq!(
            ok(people::session_person(&db, s.session_id.expose()).await).id,
            id
        );
    }
    assert_eq!(people::sign_out_everywhere(&db, &id).await.unwrap(), 2);
    for s in [&s1, &s2] {
        assert_eq!(
            refused(people::session_person(&db, s.session_id.expose()).await),
            Refused::SessionEnded
        );
    }
    // An idle session ends at its next use.
    let even_later = later + Duration::from_secs(2 * totp::STEP_S);
    let s3 = ok(ana(
        &mut db,
        &keys,
        totp::code_at(&secret, secs(even_later)),
        even_later,
    )
    .await);
    owner
        .execute(
            "UPDATE portal_sessions SET last_seen_at = now() - interval '16 minutes' WHERE person_id = $1 AND ended_at IS NULL",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(
        refused(people::session_person(&db, s3.session_id.expose()).await),
        Refused::SessionEnded
    );

    // Lockout (the last sign-in reset the count): four failures are refused plainly; the fifth
    // locks for 15 minutes, and then even the right code is refused.
    for _ in 0..4 {
        assert_eq!(
            refused(ana(&mut db, &keys, "000000".into(), even_later).await),
            Refused::SignIn
        );
    }
    match refused(ana(&mut db, &keys, "000000".into(), even_later).await) {
        Refused::Locked(d) => assert!(
            d > Duration::from_secs(14 * 60) && d <= Duration::from_secs(15 * 60),
            "{d:?}"
        ),
        other => panic!("the fifth failure locks: {other:?}"),
    }
    let right = totp::code_at(&secret, secs(even_later) + totp::STEP_S);
    assert!(matches!(
        refused(ana(&mut db, &keys, right, even_later).await),
        Refused::Locked(_)
    ));

    // Least privilege: the API's login cannot delete people or rewrite their history away.
    let err = db
        .execute("DELETE FROM portal_people WHERE id = $1", &[&id])
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_expired_invitation_enrols_nobody() {
    let d = Deployment::kafka_only().await.with_api_schema().await;
    let mut db = api_login(&d).await;
    let owner = posflow_e2e::api::owner_db(&d).await;
    let keys = Keys::parse(&Secret::new(SECRETS_KEYS)).expect("keys");
    let m = vec!["PX1".to_string()];
    let (id, token) =
        ok(people::invite(&mut db, "late@example.com", Role::Finance, &m, "u_owner").await);
    owner
        .execute(
            "UPDATE portal_invitations SET expires_at = now() - interval '1 second' WHERE person_id = $1",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(
        refused(people::set_password(&db, &keys, token.expose(), &Secret::new(GOOD)).await),
        Refused::InvitationExpired
    );
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs()
}

/// Ana signs in with her password and `code` at `at`.
async fn ana(
    db: &mut tokio_postgres::Client,
    keys: &Keys,
    code: String,
    at: SystemTime,
) -> Result<Result<people::SignedIn, Refused>, posflow_pg::DbError> {
    let pass = Secret::new(GOOD);
    people::sign_in(
        db,
        keys,
        "ANA.LIMA@example.com",
        &pass,
        &code,
        "127.0.0.1",
        at,
    )
    .await
}
