//! The portal's people (issue 19) against the real PostgreSQL, as the API's own login: invite,
//! enrol (password rules, TOTP), sign in (codes good once, recovery codes, lockout), sessions
//! (timeouts, sign-out everywhere). The pages and the browser tests build on these.

use posflow_api::auth::Role;
use posflow_api::portal::people::{self, Refused};
use posflow_api::portal::{session, totp};
use posflow_e2e::api::{make_key, owner_db, Api};
use posflow_e2e::browser::Browser;
use posflow_e2e::notify::{validated, wait_for_mail};
use posflow_e2e::Deployment;
use posflow_notifier::sealed::Keys;
use posflow_runtime::Secret;
use posflow_schema::TransactionType;
use serde_json::json;
use std::time::{Duration, SystemTime};

use posflow_e2e::portal::{api_login, enrolled, ok, secs, PASSWORD as GOOD};

fn refused<T: std::fmt::Debug>(o: Result<Result<T, Refused>, posflow_pg::DbError>) -> Refused {
    o.expect("the database").expect_err("refused")
}

#[tokio::test]
async fn a_person_is_invited_enrols_signs_in_with_a_code_and_is_locked_out_after_five_failures() {
    let d = Deployment::kafka_only().await.with_api_schema().await;
    let mut db = api_login(&d).await;
    let owner = posflow_e2e::api::owner_db(&d).await;
    let keys = posflow_e2e::portal::keys();
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
    let keys = posflow_e2e::portal::keys();
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

/// A time whose TOTP code the server takes after the one of `used` (each step is good once,
/// and the server accepts one step either side of its clock): now if its step is later, else
/// the step after `used`'s — once the clock has reached `used`'s step (a wait on the clock
/// when `used` was a future code).
async fn fresh(used: SystemTime) -> SystemTime {
    let step = |t: SystemTime| secs(t) / totp::STEP_S;
    while step(SystemTime::now()) < step(used) {
        let into = secs(SystemTime::now()) % totp::STEP_S;
        tokio::time::sleep(Duration::from_secs(totp::STEP_S - into)).await;
    }
    if step(SystemTime::now()) > step(used) {
        SystemTime::now()
    } else {
        used + Duration::from_secs(totp::STEP_S)
    }
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
    let run = rand::random::<u32>();
    let m = format!("P{run}");
    // 3,000 transactions a minute apart back from 2026-11-30 12:00Z: 2026-11-28 to 11-30.
    posflow_e2e::api::seed(&owner_db, &m, 3_000).await;
    let other = format!("Q{run}");
    posflow_e2e::api::seed(&owner_db, &other, 500).await;
    let mut db = api_login(&d).await;
    let now = SystemTime::now();
    let owner_email = format!("owner-{run}@example.com");
    let owner_secret = enrolled(
        &mut db,
        (&owner_email, Role::Owner),
        std::slice::from_ref(&m),
        now,
    )
    .await;
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
    // This week (from Monday, UTC): the period says so, and its totals are the database's.
    b.click("#this-week").await;
    b.wait_title("Sales overview · posflow").await;
    let day =
        |t: SystemTime| posflow_schema::rfc3339_millis(secs(t) as i64 * 1000)[..10].to_string();
    let now = SystemTime::now();
    let monday = now - Duration::from_secs(86_400 * ((secs(now) / 86_400 + 3) % 7));
    let (monday, today) = (day(monday), day(now));
    assert!(b
        .text("main h2")
        .await
        .ends_with(&format!("{monday} to {today}")));
    let week: i64 = owner_db
        .query_one(
            "SELECT count(*) FROM transactions WHERE merchant_id = $1 AND currency = 'EUR' AND type = 'sale' \
               AND transaction_time >= $2::text::date AND transaction_time < $3::text::date + 1",
            &[&m, &monday, &today],
        )
        .await
        .unwrap()
        .get(0);
    if week > 0 {
        assert_eq!(
            b.text(".card[data-currency='EUR'] .sales-count").await,
            week.to_string()
        );
    } else {
        assert_eq!(b.count(".card[data-currency='EUR']").await, 0);
    }
    // Readable on a phone.
    b.resize(390, 1200).await;
    b.screenshot("portal-overview-phone").await;
    b.resize(1100, 1700).await;
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
    // The same search, declined only: the rows whose response code is not an approval.
    b.goto(&format!(
        "{}/portal/transactions?{search}&outcome=declined",
        api.base
    ))
    .await;
    let declined: i64 = owner_db
        .query_one(
            "SELECT count(*) FROM transactions WHERE merchant_id = $1 \
               AND transaction_time >= '2026-11-30T10:00Z' AND transaction_time < '2026-11-30T11:00Z' \
               AND amount_minor BETWEEN 1000 AND 3000 AND currency = 'EUR' AND response_code <> '00'",
            &[&m],
        )
        .await
        .unwrap()
        .get(0);
    assert!(declined > 0 && (declined as usize) < expected.len());
    assert_eq!(
        b.count("table.transactions tbody tr").await,
        declined as usize
    );
    // One transaction's page: its line items; another merchant's id is not found.
    b.goto(&format!("{}/portal/transactions?{search}", api.base))
        .await;
    b.click("table.transactions tbody tr a").await;
    b.wait_title("Transaction · posflow").await;
    b.screenshot("portal-transaction").await;
    assert_eq!(b.text("#transaction-id").await, expected[0].0);
    assert_eq!(
        b.count("table.line-items tr").await,
        3,
        "a header and two items"
    );
    b.goto(&format!("{}/portal/transactions/{other}-1", api.base))
        .await;
    b.wait_title("Not found · posflow").await;

    // Reports: the clerk requests the period the form offers, as CSV; once a runner has made
    // it, the download holds exactly the database's rows of those days, and the
    // acknowledgement shows.
    b.goto(&format!("{}/portal/reports", api.base)).await;
    b.wait_title("Reports · posflow").await;
    let (first, last) = (b.value("#from").await, b.value("#to").await);
    b.click("main form button").await;
    b.wait_text(".notice.ok", "requested").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while b.text("table.reports tbody tr .status").await != "ready" {
        assert!(
            std::time::Instant::now() < deadline,
            "the report was never made"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        b.goto(&format!("{}/portal/reports", api.base)).await;
    }
    let href = b.text("table.reports tbody tr").await;
    assert!(href.contains(&first), "{href}");
    let report_id = b.text("table.reports tbody tr code").await;
    let (status, headers, file) = api
        .raw(
            "GET",
            &format!("/portal/reports/{report_id}/download?merchant={m}"),
            &[("cookie", &session_cookie)],
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/csv");
    let in_file = String::from_utf8(file).unwrap().lines().count() as i64 - 1;
    let in_db: i64 = owner_db
        .query_one(
            "SELECT count(*) FROM transactions WHERE merchant_id = $1 \
               AND transaction_time >= $2::text::date AND transaction_time < $3::text::date + 1",
            &[&m, &first, &last],
        )
        .await
        .unwrap()
        .get(0);
    assert!(in_db > 0);
    assert_eq!(
        in_file, in_db,
        "the report's rows are the database's ({first} to {last})"
    );
    b.click("table.reports tbody tr button").await;
    // The post returns to a page of the same title: wait on the acknowledgement itself.
    b.wait_text("table.reports tbody tr .acknowledged", "20")
        .await;
    b.screenshot("portal-reports").await;

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

    // The owner manages the clerk: a new role (in force at once), a reset authenticator (a new
    // link by email), then removal. Their own row has no controls.
    sign_in_page(
        &b,
        &api.base,
        &owner_email,
        &totp::code_at(&owner_secret, secs(fresh(next).await)),
    )
    .await;
    b.goto(&format!("{}/portal/team", api.base)).await;
    b.wait_title("Team · posflow").await;
    let clerk_id: String = owner_db
        .query_one("SELECT id FROM portal_people WHERE email = $1", &[&clerk])
        .await
        .unwrap()
        .get(0);
    let row = format!("tr[data-person='{clerk_id}']");
    assert_eq!(
        b.count("td.controls:not(:has(form))").await,
        1,
        "the owner's own row"
    );
    b.click(&format!("{row} select option[value='auditor']"))
        .await;
    b.click(&format!("{row} button.change-role")).await;
    b.wait_text(".notice.ok", "finance → auditor").await;
    assert_eq!(b.text(&format!("{row} .role")).await, "auditor");
    b.resize(1100, 900).await;
    b.screenshot("portal-team-manage").await;
    b.click(&format!("{row} button.reset-mfa")).await;
    b.wait_text(".notice.ok", "new link").await;
    assert_eq!(b.text(&format!("{row} .status")).await, "invited");
    let links =
        posflow_e2e::notify::wait_for_mail(&clerk, Duration::from_secs(30), |m| m.len() >= 2).await;
    assert_eq!(links.len(), 2, "the invitation, then the reset's link");
    assert!(links[1]
        .text
        .contains(&format!("{}/portal/enrol/", api.base)));
    b.click(&format!("{row} button.remove")).await;
    b.wait_count(&row, 0).await; // removed
    let changes: Vec<(String, String, String)> = owner_db
        .query(
            "SELECT action, before, after FROM api_audit WHERE action LIKE 'portal.team.%' AND action <> 'portal.team.invite' ORDER BY seq",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let status = |j: &str| serde_json::from_str::<serde_json::Value>(j).unwrap();
    let summary: Vec<(String, serde_json::Value, serde_json::Value)> = changes
        .iter()
        .map(|(a, b, c)| {
            (
                a.clone(),
                status(b)["role"].clone(),
                status(c)["status"].clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                "portal.team.role".to_string(),
                serde_json::json!("finance"),
                serde_json::json!("active")
            ),
            (
                "portal.team.reset_mfa".to_string(),
                serde_json::json!("auditor"),
                serde_json::json!("invited")
            ),
            (
                "portal.team.remove".to_string(),
                serde_json::json!("auditor"),
                serde_json::json!("removed")
            ),
        ]
    );

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
        "portal.reports.request:ok",
        "portal.reports.download:ok",
        "portal.reports.acknowledge:ok",
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

/// The text of every record (its row and its change) of the audit page's table.
async fn audit_rows(b: &Browser, base: &str, query: &str) -> Vec<String> {
    b.goto(&format!("{base}/portal/audit?{query}")).await;
    b.wait_title("Audit log · posflow").await;
    let n = b.count("table.audit tbody").await;
    let mut rows = Vec::new();
    for i in 1..=n {
        rows.push(b.text(&format!("table.audit tbody:nth-of-type({i})")).await);
    }
    rows
}

/// The rest of issue 19's must-shows, in a real Chromium. The owner changes the notifications
/// from each event as JSON to an hourly CSV digest, and the real notifier's next digest for
/// the merchant is exactly that: one email whose CSV covers one clock hour. The audit page
/// shows the change with before and after. The owner creates an API key (shown once; it
/// works), then revokes it (it stops working). A finance clerk cannot open API keys, Team or
/// the audit log (403 pages, audited), and five wrong codes lock them out for 15 minutes —
/// the right code too, then. A developer's key cannot make or revoke an owner's key.
#[tokio::test]
async fn an_owner_sets_an_hourly_csv_digest_manages_keys_and_reads_the_audit_log() {
    let d = Deployment::kafka_only().await.with_api_schema().await;
    let owner = owner_db(&d).await;
    let run = rand::random::<u32>();
    let m = format!("N{run}");
    posflow_e2e::api::seed(&owner, &m, 200).await;
    let mut db = api_login(&d).await;
    let now = SystemTime::now();
    let owner_email = format!("owner-{run}@example.com");
    let clerk = format!("clerk-{run}@example.com");
    let owner_secret = enrolled(
        &mut db,
        (&owner_email, Role::Owner),
        std::slice::from_ref(&m),
        now,
    )
    .await;
    let clerk_secret = enrolled(
        &mut db,
        (&clerk, Role::Finance),
        std::slice::from_ref(&m),
        now,
    )
    .await;
    // Told by email about each event, as JSON, to begin with.
    let to = format!("ops-{run}@example.com");
    d.apply_merchants(&format!(
        "[merchants.{m}]\nemails = [\"{to}\"]\nformat = \"json\"\n"
    ));
    // The hour before this one, and a grace that closes it about 110 s from now (the time the
    // steps below take), so the test sees the next digest without waiting for the clock hour.
    let hour = 3_600;
    let mut t = secs(SystemTime::now());
    if t % hour > hour - 120 {
        tokio::time::sleep(Duration::from_secs(hour - t % hour + 1)).await;
        t = secs(SystemTime::now());
    }
    let this_hour = t - t % hour;
    let grace = (t - this_hour + 110).to_string();
    let notifier = d
        .start_notifier("portal", &["--digest-grace-secs", &grace])
        .await;
    let api = Api::start(&d, &[]).await;
    let b = Browser::start().await;
    let next = now + Duration::from_secs(totp::STEP_S);
    sign_in_page(
        &b,
        &api.base,
        &owner_email,
        &totp::code_at(&owner_secret, secs(next)),
    )
    .await;

    // Notifications: each event as JSON → an hourly CSV digest.
    b.click("header nav a[href='/portal/notifications']").await;
    b.wait_title("Notifications · posflow").await;
    assert_eq!(
        b.count("#frequency option[value='per-event'][selected]")
            .await,
        1
    );
    assert!(b.text("#last-change").await.contains("Not changed"));
    b.click("#frequency option[value='1h']").await;
    b.click("#format option[value='csv']").await;
    b.click("main form button").await;
    b.wait_title("Notifications · posflow").await;
    assert!(b.text(".notice.ok").await.starts_with("Saved."));
    assert_eq!(b.count("#frequency option[value='1h'][selected]").await, 1);
    assert_eq!(b.count("#format option[value='csv'][selected]").await, 1);
    assert!(b
        .text("#last-change")
        .await
        .ends_with(&format!("by {owner_email}.")));
    b.resize(1100, 1500).await;
    b.screenshot("portal-notifications").await;
    let saved = secs(SystemTime::now());
    // The notifier has read the preferences since the save: the change is in effect there.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let page = notifier.metrics().await;
        let loaded = posflow_e2e::metric(
            &page,
            "posflow_notifier_preferences_loaded_timestamp_seconds",
        );
        if loaded.is_some_and(|l| l as u64 > saved) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the notifier never reloaded: {loaded:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Three transactions the bridge received in the last clock hour reach the notifier now.
    let received_ms = (this_hour as i64 - 1_800) * 1000;
    let batch: Vec<_> = (0..3)
        .map(|i| {
            let mut v = validated(
                &format!("{m}-dig-{i}"),
                &m,
                TransactionType::Sale,
                1_000 + i,
                "EUR",
            );
            v.envelope.received_at = received_ms + i * 1000;
            v.transaction.transaction_time = received_ms + i * 1000 - 500;
            v
        })
        .collect();
    d.produce("pos.transactions.validated", &batch, |v| {
        v.transaction.transaction_id.clone()
    })
    .await;

    // The audit page shows the change, who made it, before and after.
    let rows = audit_rows(&b, &api.base, "action=portal.notifications.update").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let change = &rows[0];
    assert!(
        !change.contains("emails:"),
        "unchanged fields are not shown: {change}"
    );
    for shown in [
        owner_email.as_str(),
        "portal.notifications.update",
        "digest_every: — → 1h",
        "format: json → csv",
        "mode: per-event → digest",
    ] {
        assert!(change.contains(shown), "{shown:?} in {change}");
    }
    b.screenshot("portal-audit").await;

    // API keys: one made (shown once; it works), then revoked (it opens nothing).
    b.click("header nav a[href='/portal/api-keys']").await;
    b.wait_title("API keys · posflow").await;
    b.type_into("#name", "ERP export").await;
    b.click("#role option[value='finance']").await;
    b.click("main form button").await;
    let key = b.text("#new-key").await;
    assert!(key.starts_with("pk_"), "{key}");
    let key_id = &key[..15];
    let totals =
        format!("/v1/merchants/{m}/totals?from=2026-11-01T00:00:00Z&to=2026-12-01T00:00:00Z");
    assert_eq!(api.get(&totals, &key).await.status, 200);
    b.screenshot("portal-api-keys").await;
    b.goto(&format!("{}/portal/api-keys", api.base)).await;
    assert_eq!(b.count("#new-key").await, 0, "shown once");
    b.click(&format!("tr[data-key='{key_id}'] button")).await;
    b.wait_title("API keys · posflow").await;
    assert!(b.text(".notice.ok").await.contains("revoked"));
    assert!(b
        .text(&format!("tr[data-key='{key_id}'] .status"))
        .await
        .starts_with("revoked"));
    assert_eq!(api.get(&totals, &key).await.status, 401);
    // No escalation: a developer's key makes developer keys, not owner keys, and cannot
    // revoke an owner's.
    let dev = make_key(&d, Role::Developer, &[&m]).await;
    let own = make_key(&d, Role::Owner, &[&m]).await;
    let path = format!("/v1/merchants/{m}/api-keys");
    let r = api
        .call(
            "POST",
            &path,
            Some(&dev),
            Some(&json!({"name": "x", "role": "owner"})),
            &[],
        )
        .await;
    assert_eq!(
        (r.status, &r.json["errors"][0]["field"]),
        (400, &json!("role")),
        "{}",
        r.json
    );
    let r = api
        .call(
            "POST",
            &path,
            Some(&dev),
            Some(&json!({"name": "ci", "role": "developer"})),
            &[],
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.json);
    let r = api
        .call(
            "DELETE",
            &format!("{path}/{}", &own[..15]),
            Some(&dev),
            None,
            &[],
        )
        .await;
    assert_eq!(r.status, 404, "{}", r.json);
    assert_eq!(
        api.get(&totals, &own).await.status,
        200,
        "the owner's key still works"
    );
    b.click("header form button").await; // sign out
    b.wait_title("Sign in · posflow").await;

    // A finance clerk: no API keys, Team or audit log.
    sign_in_page(
        &b,
        &api.base,
        &clerk,
        &totp::code_at(&clerk_secret, secs(next)),
    )
    .await;
    for (page, link) in [
        ("api-keys", "API keys"),
        ("team", "Team"),
        ("audit", "Audit log"),
    ] {
        assert!(!b.text("header nav").await.contains(link), "{link}");
        b.goto(&format!("{}/portal/{page}", api.base)).await;
        b.wait_title("Not allowed · posflow").await;
    }
    b.click("header form button").await;
    b.wait_title("Sign in · posflow").await;
    // Five wrong codes lock the account for 15 minutes; then the right code is refused too.
    let good = totp::code_at(
        &clerk_secret,
        secs(next + Duration::from_secs(totp::STEP_S)),
    );
    let wrong = if good == "000000" { "111111" } else { "000000" };
    for attempt in 1..=6 {
        b.goto(&format!("{}/portal/sign-in", api.base)).await;
        b.type_into("#email", &clerk).await;
        b.type_into("#password", GOOD).await;
        b.type_into("#code", if attempt == 6 { &good } else { wrong })
            .await;
        b.click("main form button").await;
        let said = b.text(".notice.error").await;
        if attempt < 5 {
            assert!(!said.contains("locked"), "attempt {attempt}: {said}");
        } else {
            assert!(
                said.contains("locked for 15 more minute(s)"),
                "attempt {attempt}: {said}"
            );
        }
    }
    b.screenshot("portal-locked").await;

    // The notifier's next digest for the merchant: one clock hour, as CSV, the three
    // transactions — and no email per event.
    let mails = wait_for_mail(&to, Duration::from_secs(150), |m| !m.is_empty()).await;
    assert_eq!(mails.len(), 1, "{mails:?}");
    let (name, csv) = &mails[0].attachments[0];
    assert!(
        name.starts_with(&format!("posflow-digest-{m}-")) && name.ends_with(".csv"),
        "{name}"
    );
    let csv = String::from_utf8(csv.clone()).unwrap();
    let ids: Vec<&str> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap())
        .collect();
    assert_eq!(ids.len(), 3, "{csv}");
    for i in 0..3 {
        assert!(ids.contains(&format!("{m}-dig-{i}").as_str()), "{csv}");
    }
    let client = posflow_e2e::db(&d.stack).await;
    let period: f64 = client
        .query_one(
            "SELECT extract(epoch FROM period_end - period_start)::float8 FROM digests \
             WHERE merchant_id = $1 AND period_end = to_timestamp($2::float8)",
            &[&m, &(this_hour as f64)],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(period, 3_600.0, "an hour's digest");
    assert_eq!(
        posflow_e2e::notify::mails_to(&to).len(),
        1,
        "no email per event"
    );

    // Deliveries: the digest's email, delivered at the first attempt; redelivered from its
    // button, it arrives again under the same Message-ID (its idempotency key).
    let at = fresh(next).await;
    sign_in_page(
        &b,
        &api.base,
        &owner_email,
        &totp::code_at(&owner_secret, secs(at)),
    )
    .await;
    b.click("header nav a[href='/portal/deliveries']").await;
    b.wait_title("Deliveries · posflow").await;
    assert_eq!(b.count("table.deliveries tbody tr").await, 1);
    let row = b.text("table.deliveries tbody tr").await;
    for shown in ["digest", "email", "delivered"] {
        assert!(row.contains(shown), "{shown:?} in {row}");
    }
    assert_eq!(b.text("table.deliveries td.attempts").await, "1");
    b.screenshot("portal-deliveries").await;
    b.click("table.deliveries tbody tr button").await;
    b.wait_title("Deliveries · posflow").await;
    assert!(b.text(".notice.ok").await.contains("delivered again"));
    let again = wait_for_mail(&to, Duration::from_secs(60), |m| m.len() >= 2).await;
    assert_eq!(again.len(), 2);
    assert_eq!(
        again[0].headers["message-id"],
        again[1].headers["message-id"]
    );

    // Guessing across accounts from one source: after the per-source budget of failed
    // authentications (20 a minute, shared with API keys) the source is refused for a minute,
    // whoever it claims to be — the owner with the right password too.
    b.click("header form button").await;
    b.wait_title("Sign in · posflow").await;
    let mut attempts = 0;
    loop {
        attempts += 1;
        assert!(attempts <= 40, "the source was never refused");
        b.goto(&format!("{}/portal/sign-in", api.base)).await;
        b.type_into("#email", &format!("guess-{attempts}@example.com"))
            .await;
        b.type_into("#password", GOOD).await;
        b.type_into("#code", "123456").await;
        b.click("main form button").await;
        if b.text(".notice.error")
            .await
            .contains("Too many failed sign-ins")
        {
            break;
        }
    }
    assert!(attempts > 10, "refused after {attempts} attempts");
    b.goto(&format!("{}/portal/sign-in", api.base)).await;
    b.type_into("#email", &owner_email).await;
    b.type_into("#password", GOOD).await;
    b.type_into(
        "#code",
        &totp::code_at(&owner_secret, secs(fresh(at).await)),
    )
    .await;
    b.click("main form button").await;
    assert!(b
        .text(".notice.error")
        .await
        .contains("Too many failed sign-ins"));
    let limited = posflow_e2e::count(
        &owner,
        "SELECT count(*) FROM api_audit WHERE action = 'portal.sign_in' AND outcome = 'rate_limited' AND status = 429",
        &[],
    )
    .await;
    assert_eq!(limited, 2, "each refusal audited");

    let actions: Vec<String> = owner
        .query(
            "SELECT action || ':' || outcome FROM api_audit WHERE action LIKE 'portal.%' AND merchant_id = $1 ORDER BY seq",
            &[&m],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for expected in [
        "portal.notifications.read:ok",
        "portal.notifications.update:ok",
        "portal.audit:ok",
        "portal.api_keys.create:ok",
        "portal.api_keys.revoke:ok",
        "portal.api_keys.read:forbidden",
        "portal.team:forbidden",
        "portal.audit:forbidden",
        "portal.deliveries:ok",
        "portal.deliveries.redeliver:ok",
    ] {
        assert!(
            actions.iter().any(|a| a == expected),
            "{expected} in {actions:?}"
        );
    }
    let locked = posflow_e2e::count(
        &owner,
        "SELECT count(*) FROM api_audit WHERE action = 'portal.sign_in' AND outcome = 'locked' AND seq > 0",
        &[],
    )
    .await;
    assert!(locked >= 2, "{locked} locked sign-ins audited");
}

/// A merchant's first owner is invited by an operator (`posflow-admin portal invite`): the
/// email's link enrols them on the portal, the invitation is in the merchant's audit trail as
/// the operator's; a bad invocation lists every mistake and invites nobody.
#[tokio::test]
async fn an_operator_invites_a_merchants_first_owner() {
    let d = Deployment::kafka_only().await.with_api_schema().await;
    let run = rand::random::<u32>();
    let (m, email) = (format!("F{run}"), format!("first-{run}@example.com"));
    let base = "https://portal.example.com";
    let smtp = posflow_e2e::local_smtp_url();
    let invite = |extra: &[&str]| {
        let mut args = vec!["portal", "invite", "--operator", "ops-anna"];
        args.extend_from_slice(extra);
        d.cli("posflow-admin", &args)
    };
    let bad = invite(&["--email", "nobody", "--smtp-url", "mail.example.com"]);
    assert_eq!(bad.code, Some(2), "{}{}", bad.stdout, bad.stderr);
    for said in ["--portal-url", "--smtp-url", "--email", "--merchant"] {
        assert!(bad.stderr.contains(said), "{said} in {}", bad.stderr);
    }
    let done = invite(&[
        "--email",
        &email,
        "--merchant",
        &m,
        "--portal-url",
        base,
        "--smtp-url",
        &smtp,
    ]);
    done.expect_ok();
    assert!(
        done.stdout
            .contains(&format!("invited {email} as owner of {m}")),
        "{}",
        done.stdout
    );
    let mails =
        posflow_e2e::notify::wait_for_mail(&email, Duration::from_secs(30), |m| !m.is_empty())
            .await;
    let link = mails[0]
        .text
        .split_whitespace()
        .find(|w| w.starts_with(&format!("{base}/portal/enrol/")))
        .unwrap_or_else(|| panic!("a link in {:?}", mails[0].text));
    // The link enrols: the token is good for setting a password.
    let token = &link[format!("{base}/portal/enrol/").len()..];
    let db = api_login(&d).await;
    let e = ok(
        people::set_password(&db, &posflow_e2e::portal::keys(), token, &Secret::new(GOOD)).await,
    );
    assert!(!e.secret_base32.expose().is_empty());
    let owner = posflow_e2e::api::owner_db(&d).await;
    let row = owner
        .query_one(
            "SELECT actor, role, after FROM api_audit WHERE action = 'portal.team.invite' AND merchant_id = $1",
            &[&m],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "operator:ops-anna");
    let after: serde_json::Value = serde_json::from_str(row.get::<_, &str>(2)).unwrap();
    assert_eq!(
        (after["email"].as_str(), after["role"].as_str()),
        (Some(email.as_str()), Some("owner"))
    );
}

/// The Team page's changes, at the library: an owner changes the people of their merchants
/// only — not themselves, not another merchant's person, not a chain's person who also works
/// for merchants the owner does not own.
#[tokio::test]
async fn an_owner_changes_only_people_wholly_in_their_merchants() {
    let d = Deployment::kafka_only().await.with_api_schema().await;
    let mut db = api_login(&d).await;
    let run = rand::random::<u32>();
    let (a, b) = (format!("A{run}"), format!("B{run}"));
    let now = SystemTime::now();
    let person = |n: &str| format!("{n}-{run}@example.com");
    enrolled(
        &mut db,
        (&person("owner"), Role::Owner),
        std::slice::from_ref(&a),
        now,
    )
    .await;
    for (who, merchants) in [
        ("clerk", vec![a.clone()]),
        ("chain", vec![a.clone(), b.clone()]),
        ("other", vec![b.clone()]),
    ] {
        enrolled(&mut db, (&person(who), Role::Finance), &merchants, now).await;
    }
    let id = |who: &str| {
        let db = &db;
        let email = person(who);
        async move { people::id_of(db, &email).await.unwrap().unwrap() }
    };
    let owner = people::Person {
        id: id("owner").await,
        email: person("owner"),
        role: Role::Owner,
        merchants: vec![a.clone()],
    };
    let (clerk, chain, other) = (id("clerk").await, id("chain").await, id("other").await);
    let to_auditor = people::TeamChange::Role(Role::Auditor);
    for (target, why) in [
        (&owner.id, Refused::NotYourself),
        (&chain, Refused::NotInTeam),
        (&other, Refused::NotInTeam),
    ] {
        assert_eq!(
            refused(people::change(&mut db, &a, target, &owner, to_auditor).await),
            why
        );
    }
    let (before, after, token) = ok(people::change(&mut db, &a, &clerk, &owner, to_auditor).await);
    assert_eq!(
        (before.role.as_str(), after.role.as_str(), token.is_none()),
        ("finance", "auditor", true)
    );
    let (_, after, token) =
        ok(people::change(&mut db, &a, &clerk, &owner, people::TeamChange::ResetMfa).await);
    assert_eq!((after.status.as_str(), token.is_some()), ("invited", true));
    let (_, after, _) =
        ok(people::change(&mut db, &a, &clerk, &owner, people::TeamChange::Remove).await);
    assert_eq!(after.status, "removed");
    assert_eq!(
        refused(people::change(&mut db, &a, &clerk, &owner, to_auditor).await),
        Refused::NotInTeam,
        "a removed person is no one's to change"
    );
}
