//! The portal's people (issue 19) against the real PostgreSQL, as the API's own login: invite,
//! enrol (password rules, TOTP), sign in (codes good once, recovery codes, lockout), sessions
//! (timeouts, sign-out everywhere). The pages and the browser tests build on these.

use posflow_api::auth::Role;
use posflow_api::portal::people::{self, Refused};
use posflow_api::portal::{session, totp};
use posflow_e2e::browser::Browser;
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

/// An owner enrolled without the browser (the library's steps, as the pages run them): their
/// authenticator secret, at the step `now` was spent on enrolment.
async fn enrolled_owner(
    db: &mut tokio_postgres::Client,
    keys: &Keys,
    email: &str,
    merchant: &str,
    now: SystemTime,
) -> Vec<u8> {
    let (_, token) = ok(people::invite(
        db,
        email,
        Role::Owner,
        &[merchant.to_string()],
        "operator:e2e",
    )
    .await);
    let e = ok(people::set_password(db, keys, token.expose(), &Secret::new(GOOD)).await);
    let secret = totp::from_base32(e.secret_base32.expose()).unwrap();
    ok(people::confirm(
        db,
        keys,
        token.expose(),
        &totp::code_at(&secret, secs(now)),
        now,
    )
    .await);
    secret
}

/// Signs in through the sign-in page with `code`; waits for the overview.
async fn sign_in_page(b: &Browser, base: &str, email: &str, code: &str) {
    b.goto(&format!("{base}/portal/sign-in")).await;
    b.type_into("#email", email).await;
    b.type_into("#password", GOOD).await;
    b.type_into("#code", code).await;
    b.click("main form button").await;
    b.wait_title("Sales overview · posflow").await;
}

/// The first must-show of issue 19, in a real Chromium: an owner invites a clerk on the Team
/// page; the email arrives on the local SMTP server; the clerk enrols from its link (password,
/// then the authenticator's code computed from the key shown on the page), signs in with
/// password and code, and sees totals equal to SQL sums over their merchant's rows. The clerk
/// (finance) cannot open Team (403) nor another merchant (404); the session cookie is
/// HttpOnly, Secure and Strict; a form posted without its CSRF token is refused; after "sign
/// out everywhere" a stolen copy of the cookie opens nothing. Every step is audited.
#[tokio::test]
async fn an_invited_clerk_enrols_signs_in_and_sees_their_sales_in_a_real_browser() {
    let d = Deployment::kafka_only().await.with_api_schema().await;
    let owner_db = posflow_e2e::api::owner_db(&d).await;
    let keys = Keys::parse(&Secret::new(SECRETS_KEYS)).expect("keys");
    let run = rand::random::<u32>();
    let m = format!("P{run}");
    // 3,000 transactions a minute apart back from 2026-11-30 12:00Z: 2026-11-28 to 11-30.
    posflow_e2e::api::seed(&owner_db, &m, 3_000).await;
    let other = format!("Q{run}");
    posflow_e2e::api::seed(&owner_db, &other, 500).await;
    let mut db = api_login(&d).await;
    let now = SystemTime::now();
    let owner_email = format!("owner-{run}@example.com");
    let owner_secret = enrolled_owner(&mut db, &keys, &owner_email, &m, now).await;
    let api = posflow_e2e::api::Api::start(&d, &[]).await;
    let b = Browser::start().await;
    let next = now + Duration::from_secs(totp::STEP_S);

    // The owner invites the clerk from the Team page; the email carries the link.
    sign_in_page(
        &b,
        &api.base,
        &owner_email,
        &totp::code_at(&owner_secret, secs(next)),
    )
    .await;
    b.click("header nav a[href='/portal/team']").await;
    b.wait_title("Team · posflow").await;
    let clerk = format!("clerk-{run}@example.com");
    b.type_into("#email", &clerk).await;
    b.click("#role option[value='finance']").await;
    b.click("main form button").await;
    assert_eq!(
        b.text(".notice.ok").await,
        format!("Invitation sent to {clerk}.")
    );
    assert!(b
        .text("table.team")
        .await
        .contains(&format!("{clerk} finance invited")));
    b.screenshot("portal-team").await;
    let mails =
        posflow_e2e::notify::wait_for_mail(&clerk, Duration::from_secs(30), |m| !m.is_empty())
            .await;
    assert_eq!(mails.len(), 1);
    let link = mails[0]
        .text
        .split_whitespace()
        .find(|w| w.starts_with(&format!("{}/portal/enrol/", api.base)))
        .unwrap_or_else(|| panic!("a link to this portal in {:?}", mails[0].text))
        .to_string();
    b.click("header form button").await; // sign out
    b.wait_title("Sign in · posflow").await;

    // The clerk enrols from the link.
    b.goto(&link).await;
    b.type_into("#password", "Password2024!").await;
    b.click("main form button").await;
    assert!(b.text(".notice.error").await.contains("common password"));
    b.type_into("#password", GOOD).await;
    b.click("main form button").await;
    let key = b.text("#totp-secret").await;
    let secret = totp::from_base32(&key).expect("the key shown is base32");
    b.screenshot("portal-enrol-authenticator").await;
    b.type_into("#code", &totp::code_at(&secret, secs(now)))
        .await;
    b.click("main form button").await;
    let codes = b.text("ol.codes").await;
    assert_eq!(codes.lines().count(), 10, "{codes}");

    // Sign in: password and the next code (the one that confirmed enrolment is spent).
    b.goto(&format!("{}/portal/sign-in", api.base)).await;
    b.screenshot("portal-sign-in").await;
    sign_in_page(
        &b,
        &api.base,
        &clerk.to_uppercase(),
        &totp::code_at(&secret, secs(next)),
    )
    .await;
    let cookie = b
        .cookies()
        .await
        .into_iter()
        .find(|c| c["name"] == session::COOKIE)
        .expect("the session cookie");
    assert_eq!(
        (&cookie["httpOnly"], &cookie["secure"], &cookie["sameSite"]),
        (
            &serde_json::json!(true),
            &serde_json::json!(true),
            &serde_json::json!("Strict")
        )
    );

    // The period's totals per currency equal the database's sums over this merchant's rows.
    b.goto(&format!(
        "{}/portal/?from=2026-11-28&to=2026-11-30",
        api.base
    ))
    .await;
    b.resize(1100, 1700).await;
    b.screenshot("portal-overview").await;
    for cur in ["EUR", "USD", "GBP"] {
        for kind in ["sale", "refund"] {
            let r = owner_db
                .query_one(
                    "SELECT count(*), coalesce(sum(amount_minor), 0)::bigint FROM transactions \
                     WHERE merchant_id = $1 AND currency = $2 AND type = $3 \
                       AND transaction_time >= '2026-11-28' AND transaction_time < '2026-12-01'",
                    &[&m, &cur, &kind],
                )
                .await
                .unwrap();
            let (n, sum): (i64, i64) = (r.get(0), r.get(1));
            assert!(n > 0, "the seed has {kind}s in {cur}");
            let card = format!(".card[data-currency='{cur}'] .{kind}s-");
            assert_eq!(
                b.text(&format!("{card}count")).await,
                n.to_string(),
                "{cur} {kind}s"
            );
            assert_eq!(
                b.text(&format!("{card}amount")).await,
                posflow_schema::currency::format_minor(sum, cur),
                "{cur} {kind}s"
            );
        }
    }
    // Three charts, one per currency, three days of bars each.
    assert_eq!(b.count("svg.chart").await, 3);
    assert_eq!(b.count("svg.chart rect.sales").await, 9);
    // Search by time and amount: exactly the database's rows, newest first; the CSV of the
    // search holds the same rows and amounts.
    let search = "from=2026-11-30T10:00&to=2026-11-30T11:00&min=10&max=30&currency=EUR";
    b.goto(&format!("{}/portal/transactions?{search}", api.base))
        .await;
    b.wait_title("Transactions · posflow").await;
    b.screenshot("portal-transactions").await;
    let expected: Vec<(String, i64)> = owner_db
        .query(
            "SELECT transaction_id, amount_minor FROM transactions WHERE merchant_id = $1 \
               AND transaction_time >= '2026-11-30T10:00Z' AND transaction_time < '2026-11-30T11:00Z' \
               AND amount_minor BETWEEN 1000 AND 3000 AND currency = 'EUR' \
             ORDER BY transaction_time DESC, transaction_id DESC",
            &[&m],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(
        !expected.is_empty() && expected.len() < 50,
        "{} rows: one page",
        expected.len()
    );
    assert_eq!(b.count("table.transactions tbody tr").await, expected.len());
    let first_row = b.text("table.transactions tbody tr").await;
    assert!(
        first_row.contains(&posflow_schema::currency::format_minor(
            expected[0].1,
            "EUR"
        )),
        "{first_row}"
    );
    let session_cookie = format!("{}={}", session::COOKIE, cookie["value"].as_str().unwrap());
    let (status, headers, csv) = api
        .raw(
            "GET",
            &format!("/portal/transactions.csv?{search}&merchant={m}"),
            &[("cookie", &session_cookie)],
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/csv; charset=utf-8");
    let csv = String::from_utf8(csv).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines[0].starts_with("transaction_id,terminal_id,transaction_time,type,amount_minor,"));
    let in_csv: Vec<(String, i64)> = lines[1..]
        .iter()
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[0].to_string(), f[4].parse().unwrap())
        })
        .collect();
    assert_eq!(in_csv, expected, "the CSV is the table is the database");
    // One transaction's page: its line items; another merchant's id is not found.
    b.click("table.transactions tbody tr a").await;
    b.wait_title("Transaction · posflow").await;
    assert_eq!(b.text("#transaction-id").await, expected[0].0);
    assert_eq!(
        b.count("table.line-items tr").await,
        3,
        "a header and two items"
    );
    b.goto(&format!("{}/portal/transactions/{other}-1", api.base))
        .await;
    b.wait_title("Not found · posflow").await;

    // A finance clerk has no Team link, and the page itself refuses them.
    assert_eq!(b.count("header nav a[href='/portal/team']").await, 0);
    b.goto(&format!("{}/portal/team", api.base)).await;
    b.wait_title("Not allowed · posflow").await;
    // Another merchant's overview is not found, whatever the URL says.
    b.goto(&format!("{}/portal/?merchant={other}", api.base))
        .await;
    b.wait_title("Not found · posflow").await;

    // A form without its CSRF token changes nothing.
    let stolen = session_cookie;
    let forged = api
        .call(
            "POST",
            "/portal/sign-out",
            None,
            None,
            &[("cookie", &stolen)],
        )
        .await;
    assert_eq!(forged.status, 403);
    assert_eq!(
        api.call("GET", "/portal/", None, None, &[("cookie", &stolen)])
            .await
            .status,
        200
    );
    // Sign out everywhere: the stolen copy opens nothing any more.
    b.goto(&format!("{}/portal/", api.base)).await;
    b.click("main form[action='/portal/sign-out-everywhere'] button")
        .await;
    b.wait_title("Sign in · posflow").await;
    let after = api
        .call("GET", "/portal/", None, None, &[("cookie", &stolen)])
        .await;
    assert_eq!(after.status, 303);
    assert_eq!(after.headers["location"], "/portal/sign-in");

    // Each step left its audit record.
    let actions: Vec<String> = owner_db
        .query(
            "SELECT action || ':' || outcome FROM api_audit WHERE action LIKE 'portal.%' ORDER BY seq",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for expected in [
        "portal.team.invite:ok",
        "portal.enrol.password:refused",
        "portal.enrol.password:ok",
        "portal.enrol.confirm:ok",
        "portal.sign_in:ok",
        "portal.overview:ok",
        "portal.team:forbidden",
        "portal.transactions:ok",
        "portal.transactions.csv:ok",
        "portal.transaction:ok",
        "portal.transaction:not_found",
        "portal.overview:not_found",
        "portal.sign_out:csrf",
        "portal.sign_out:ok",
        "portal.sign_out_everywhere:ok",
    ] {
        assert!(
            actions.iter().any(|a| a == expected),
            "{expected} in {actions:?}"
        );
    }
}
