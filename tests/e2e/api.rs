//! The merchant API (posflow-api) over HTTPS against real PostgreSQL (row-level security, its
//! own least-privilege login), Kafka (pos.audit) and, for webhooks, the notifier and an HTTPS
//! receiver. Each test has its own PostgreSQL schema: its data and its audit chain are its own.

use posflow_api::auth::{Principal, Role};
use posflow_api::db::{AppFilter, Scope, Scoped};
use posflow_api::query::Params;
use posflow_api::records::{
    self, RejectionFilter, TransactionFilter, REJECTION_PARAMS, TRANSACTION_PARAMS,
};
use posflow_e2e::api::{make_key, owner_db, seed, Api, Resp};
use posflow_e2e::notify::{outcomes, validated, Behaviour, Receiver};
use posflow_e2e::{count, with_login, Deployment};
use posflow_schema::{AuditRecord, DeliveryStatus, TransactionType};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

fn tag(d: &Deployment) -> String {
    d.prefix.trim_end_matches('.').replace("e2e", "")
}

/// Every item of a page belongs to `merchant` (by its merchant id and its id's prefix).
fn assert_only(merchant: &str, items: &[Value], what: &str) {
    for it in items {
        assert_eq!(it["merchant_id"], merchant, "{what}: foreign item {it}");
        if let Some(id) = it["transaction_id"].as_str() {
            assert!(
                id.starts_with(&format!("{merchant}-")),
                "{what}: foreign id {id}"
            );
        }
    }
}

/// A random filter for a search: a few of the parameters, values that match some rows, some
/// none, some wrong (→ 400).
fn random_filter(
    rng: &mut StdRng,
    route: &str,
    own_ids: &[String],
) -> (Vec<(String, String)>, bool) {
    let mut q = Vec::new();
    let mut valid = true;
    let pick = |rng: &mut StdRng, xs: &[&str]| xs[rng.gen_range(0..xs.len())].to_string();
    if rng.gen_bool(0.3) {
        q.push(("currency".into(), pick(rng, &["EUR", "USD", "GBP", "JPY"])));
    }
    if rng.gen_bool(0.3) {
        q.push(("min_amount".into(), rng.gen_range(0..3000).to_string()));
    }
    if rng.gen_bool(0.2) {
        q.push(("max_amount".into(), rng.gen_range(1000..6000).to_string()));
    }
    if rng.gen_bool(0.3) {
        q.push((
            "from".into(),
            format!("2026-11-{:02}T00:00:00Z", rng.gen_range(28..30)),
        ));
    }
    if rng.gen_bool(0.2) {
        // Another merchant's terminal: matches nothing here, whatever the merchant.
        let owner = own_ids
            .get(rng.gen_range(0..own_ids.len().max(1)))
            .cloned()
            .unwrap_or_default();
        let merchant = owner
            .rsplit_once('-')
            .map(|(m, _)| m.to_string())
            .unwrap_or_default();
        q.push((
            "terminal".into(),
            format!("{merchant}-T{}", rng.gen_range(0..7)),
        ));
    }
    if route == "transactions" {
        if rng.gen_bool(0.2) {
            q.push(("type".into(), pick(rng, &["sale", "refund", "void"])));
        }
        if rng.gen_bool(0.2) {
            q.push(("bin".into(), pick(rng, &["411111", "550000", "340000"])));
        }
        if rng.gen_bool(0.15) {
            q.push(("last4".into(), format!("{:04}", rng.gen_range(0..200))));
        }
        if rng.gen_bool(0.2) {
            q.push(("response_code".into(), pick(rng, &["00", "05", "51"])));
        }
    }
    if route == "rejections" && rng.gen_bool(0.3) {
        q.push((
            "reason_code".into(),
            pick(rng, &["AMOUNT_OVER_LIMIT", "CURRENCY_UNKNOWN"]),
        ));
    }
    if rng.gen_bool(0.05) {
        q.push(("currency".into(), "eur' OR '1'='1".into()));
        valid = false;
    }
    q.push(("limit".into(), pick(rng, &["7", "50", "500"])));
    (q, valid)
}

fn query_string(q: &[(String, String)]) -> String {
    let mut s = String::new();
    for (k, v) in q {
        s += if s.is_empty() { "?" } else { "&" };
        s += k;
        s += "=";
        s += &v
            .replace('%', "%25")
            .replace(' ', "%20")
            .replace('\'', "%27")
            .replace('=', "%3D")
            .replace('+', "%2B");
    }
    s
}

struct TestKey {
    key: String,
    role: Role,
    merchants: Vec<String>,
}

/// Generated merchants, keys, roles and filters — 400 cases over 3,900 stored rows: no
/// response, page, total, audit entry or key listing ever holds another merchant's data. Then
/// the same queries with the application's merchant filter bypassed (the test build's switch):
/// row-level security alone still returns nothing foreign.
#[tokio::test]
async fn isolation_holds_for_generated_merchants_keys_roles_and_filters() {
    let d = Deployment::kafka_only().await.with_api_schema().await;
    let t = tag(&d);
    let merchants: Vec<String> = (0..6).map(|i| format!("M{t}x{i}")).collect();
    let owner = owner_db(&d).await;
    let sizes = [900, 700, 800, 500, 600, 400];
    for (m, n) in merchants.iter().zip(sizes) {
        seed(&owner, m, n).await;
    }
    for m in &merchants[..3] {
        owner
            .execute(
                "INSERT INTO merchant_preferences (merchant_id, mode, format, events, emails) VALUES ($1, 'per-event', 'json', '{transactions}', $2)",
                &[m, &vec![format!("ops@{m}.example")]],
            )
            .await
            .unwrap();
    }
    let mut keys = Vec::new();
    for m in &merchants {
        for role in [Role::Owner, Role::Finance, Role::Developer, Role::Auditor] {
            keys.push(TestKey {
                key: make_key(&d, role, &[m]).await,
                role,
                merchants: vec![m.clone()],
            });
        }
    }
    // Chains: one key over two merchants.
    for (role, pair) in [(Role::Finance, [0, 1]), (Role::Owner, [2, 3])] {
        let ms: Vec<&str> = pair.iter().map(|i| merchants[*i].as_str()).collect();
        keys.push(TestKey {
            key: make_key(&d, role, &ms).await,
            role,
            merchants: ms.iter().map(|m| m.to_string()).collect(),
        });
    }
    keys.push(TestKey {
        key: make_key(&d, Role::Operator, &[]).await,
        role: Role::Operator,
        merchants: vec![],
    });
    let api = Api::start(&d, &["--rate-per-key", "100000"]).await;

    let seed_value: u64 = std::env::var("POSFLOW_E2E_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("isolation: seed {seed_value} (POSFLOW_E2E_SEED to replay)");
    let mut rng = StdRng::seed_from_u64(seed_value);
    let all_ids: Vec<String> = merchants.iter().map(|m| format!("{m}-5")).collect();
    let mut by_status: BTreeMap<u16, usize> = BTreeMap::new();
    let mut rows_seen = 0usize;
    for case in 0..400 {
        let k = &keys[rng.gen_range(0..keys.len())];
        let target = if !k.merchants.is_empty() && rng.gen_bool(0.7) {
            k.merchants[rng.gen_range(0..k.merchants.len())].clone()
        } else {
            merchants[rng.gen_range(0..merchants.len())].clone()
        };
        let endpoint = [
            "transactions",
            "rejections",
            "totals",
            "audit",
            "settings",
            "api-keys",
            "detail",
        ][rng.gen_range(0..7)];
        let (filter, valid) = random_filter(&mut rng, endpoint, &all_ids);
        let path = match endpoint {
            "totals" => format!(
                "/v1/merchants/{target}/totals?from=2026-11-01T00:00:00Z&to=2026-12-01T00:00:00Z"
            ),
            "settings" | "api-keys" => format!("/v1/merchants/{target}/{endpoint}"),
            "audit" => format!("/v1/merchants/{target}/audit?limit=20"),
            "detail" => format!(
                "/v1/merchants/{target}/transactions/{}",
                all_ids[rng.gen_range(0..all_ids.len())]
            ),
            _ => format!("/v1/merchants/{target}/{endpoint}{}", query_string(&filter)),
        };
        let reason = [("posflow-reason", "ticket e2e-isolation")];
        let headers: &[(&str, &str)] = if k.role == Role::Operator {
            &reason
        } else {
            &[]
        };
        let r = api.call("GET", &path, Some(&k.key), None, headers).await;
        *by_status.entry(r.status).or_default() += 1;
        let reaches = k.role == Role::Operator || k.merchants.contains(&target);
        let permission = match endpoint {
            "settings" => posflow_api::auth::Permission::SettingsRead,
            "api-keys" => posflow_api::auth::Permission::KeysRead,
            "audit" => posflow_api::auth::Permission::AuditRead,
            _ => posflow_api::auth::Permission::RecordsRead,
        };
        let ctx = format!(
            "case {case}: {:?} over {:?} GET {path} → {} {}",
            k.role, k.merchants, r.status, r.json
        );
        if !reaches || !k.role.allows(permission) {
            assert_eq!(r.status, 403, "{ctx}");
            continue;
        }
        if matches!(endpoint, "transactions" | "rejections") && !valid {
            assert_eq!(r.status, 400, "{ctx}");
            continue;
        }
        match endpoint {
            "transactions" | "rejections" => {
                assert_eq!(r.status, 200, "{ctx}");
                let mut page = r;
                let mut seen = HashSet::new();
                for _ in 0..3 {
                    let items = page.json["items"].as_array().cloned().unwrap_or_default();
                    assert_only(&target, &items, &ctx);
                    rows_seen += items.len();
                    for it in &items {
                        assert!(
                            seen.insert(it["transaction_id"].as_str().unwrap().to_string()),
                            "{ctx}: a row on two pages"
                        );
                    }
                    let Some(next) = page.json["next_cursor"].as_str().map(str::to_string) else {
                        break;
                    };
                    let mut q = filter.clone();
                    q.push(("cursor".into(), next));
                    page = api
                        .call(
                            "GET",
                            &format!("/v1/merchants/{target}/{endpoint}{}", query_string(&q)),
                            Some(&k.key),
                            None,
                            headers,
                        )
                        .await;
                    assert_eq!(page.status, 200, "{ctx}: next page {}", page.json);
                }
            }
            "totals" => {
                assert_eq!(r.status, 200, "{ctx}");
                let want = owner
                    .query(
                        "SELECT currency, type, count(*), sum(amount_minor)::bigint FROM transactions WHERE merchant_id = $1 \
                         AND transaction_time >= '2026-11-01Z' AND transaction_time < '2026-12-01Z' GROUP BY 1, 2 ORDER BY 1, 2",
                        &[&target],
                    )
                    .await
                    .unwrap();
                let want: Vec<Value> = want.iter().map(|w| json!({"currency": w.get::<_, String>(0), "type": w.get::<_, String>(1), "count": w.get::<_, i64>(2), "amount_minor": w.get::<_, i64>(3)})).collect();
                assert_eq!(r.json["totals"], json!(want), "{ctx}");
            }
            "audit" => {
                assert_eq!(r.status, 200, "{ctx}");
                let items = r.json["items"].as_array().cloned().unwrap_or_default();
                for it in &items {
                    assert_eq!(it["merchant_id"], target.as_str(), "{ctx}");
                }
            }
            "settings" => {
                let configured = merchants[..3].contains(&target);
                assert_eq!(r.status, if configured { 200 } else { 404 }, "{ctx}");
                if configured {
                    assert_eq!(r.json["merchant_id"], target.as_str(), "{ctx}");
                    assert_eq!(
                        r.json["emails"],
                        json!([format!("ops@{target}.example")]),
                        "{ctx}"
                    );
                }
            }
            "api-keys" => {
                assert_eq!(r.status, 200, "{ctx}");
                let items = r.json["items"].as_array().cloned().unwrap_or_default();
                assert!(!items.is_empty(), "{ctx}");
                for it in &items {
                    assert!(
                        it["merchants"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .any(|m| m == target.as_str()),
                        "{ctx}"
                    );
                    assert!(
                        it.get("secret_hash").is_none() && it.get("key").is_none(),
                        "{ctx}"
                    );
                }
            }
            _ => {
                let own = path.ends_with(&format!("/{target}-5"));
                assert_eq!(r.status, if own { 200 } else { 404 }, "{ctx}");
                if own {
                    assert_eq!(r.json["merchant_id"], target.as_str(), "{ctx}");
                    assert_eq!(r.json["line_items"].as_array().unwrap().len(), 2, "{ctx}");
                }
            }
        }
    }
    eprintln!("isolation: statuses {by_status:?}, {rows_seen} rows checked");
    assert!(
        by_status[&200] >= 100 && by_status[&403] >= 30,
        "the generator covered both sides: {by_status:?}"
    );
    assert!(rows_seen >= 1_000, "{rows_seen} rows checked");

    // Row-level security alone: the API's own login, the application's filter switched off.
    let api_url = with_login(&d.stack.database_url, "posflow_api_app", "api-local");
    let mut c = posflow_pg::connect(&api_url).await.unwrap();
    let unscoped = count(&c, "SELECT count(*) FROM transactions", &[]).await;
    assert_eq!(
        unscoped, 0,
        "without a scope the API's login sees no transaction"
    );
    for (m, n) in merchants.iter().zip(sizes) {
        let p = Principal {
            key_id: "pk_rls".into(),
            role: Role::Auditor,
            merchants: vec![m.clone()],
        };
        let scope = Scope::of(&p, m).unwrap();
        let s = Scoped::begin(&mut c, &scope, AppFilter::BypassedForRlsTest)
            .await
            .unwrap();
        let mut q = Params::parse(Some("limit=500"), TRANSACTION_PARAMS);
        let page = records::search_transactions(&s, TransactionFilter::parse(&mut q, None))
            .await
            .unwrap();
        assert_eq!(page.items.len(), 500.min(n as usize), "{m}");
        let items: Vec<Value> = page.items.iter().map(|t| json!(t)).collect();
        assert_only(m, &items, "RLS alone: transactions");
        let mut q = Params::parse(Some("limit=500"), REJECTION_PARAMS);
        let page = records::search_rejections(&s, RejectionFilter::parse(&mut q, None))
            .await
            .unwrap();
        assert_eq!(page.items.len(), (n / 5) as usize, "{m}");
        assert_only(m, &page.items, "RLS alone: rejections");
        let totals = records::totals(&s, std::time::UNIX_EPOCH, std::time::SystemTime::now())
            .await
            .unwrap();
        let count: i64 = totals.iter().map(|t| t["count"].as_i64().unwrap()).sum();
        assert_eq!(
            count, n as i64,
            "{m}: RLS alone: totals count only its rows"
        );
        let audit = posflow_api::audit::page(&s, 500, None, &Default::default())
            .await
            .unwrap();
        assert_only(m, &audit.items, "RLS alone: audit");
        let listed = posflow_api::keys::list(&s.tx, None).await.unwrap();
        assert!(!listed.is_empty());
        for k in &listed {
            assert!(
                k["merchants"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|x| x == m.as_str()),
                "RLS alone: keys {k}"
            );
        }
        let detail = records::transaction(
            &s,
            &format!(
                "{}-5",
                merchants[(merchants.iter().position(|x| x == m).unwrap() + 1) % 6]
            ),
        )
        .await
        .unwrap();
        assert!(
            detail.is_none(),
            "RLS alone: another merchant's transaction"
        );
        s.commit().await.unwrap();
    }
}

fn req_id(n: usize) -> String {
    format!("req-{n:04}")
}

/// Revoked, expired, malformed, wrong-prefix and wrong-secret keys → 401; a role without the
/// permission → 403; bad cursors, ranges, unknown parameters, oversize limits → 400 naming each
/// field; injection attempts in every text filter are inert; per-key 429 with Retry-After and a
/// source that keeps failing authentication refused. Every request audited.
#[tokio::test]
async fn bad_keys_roles_and_input_are_refused_clearly_and_audited() {
    let d = Deployment::kafka_only().await.with_api_schema().await;
    let m = format!("M{}", tag(&d));
    let owner = owner_db(&d).await;
    seed(&owner, &m, 120).await;
    let api = Api::start(&d, &["--rate-per-key", "5"]).await;
    let keys: Vec<String> = futures_keys(&d, &m).await;
    let (own, finance, developer, revoked, expired) =
        (&keys[0], &keys[1], &keys[2], &keys[3], &keys[4]);
    owner
        .execute(
            "UPDATE api_keys SET revoked_at = now() WHERE id = $1",
            &[&&revoked[..15]],
        )
        .await
        .unwrap();
    owner
        .execute(
            "UPDATE api_keys SET expires_at = now() - interval '1 minute' WHERE id = $1",
            &[&&expired[..15]],
        )
        .await
        .unwrap();
    let wrong_secret = format!("{}{}", &own[..16], "A".repeat(43));
    let wrong_prefix = own.replacen("pk_", "sk_", 1);
    let mut expected: Vec<(String, u16, &str)> = Vec::new();
    let mut n = 0;
    let base = format!("/v1/merchants/{m}/transactions");
    // Pace the per-key limiter (5/s) where a test is not about it.
    let pace = || tokio::time::sleep(Duration::from_millis(210));

    let cases_401: Vec<(&str, Option<&str>)> = vec![
        ("no key", None),
        ("revoked", Some(revoked)),
        ("expired", Some(expired)),
        ("malformed", Some("pk_nothex!!!!_x")),
        ("wrong prefix", Some(&wrong_prefix)),
        ("wrong secret", Some(&wrong_secret)),
        ("empty", Some("")),
    ];
    for (what, key) in cases_401 {
        n += 1;
        let r = api.with_id("GET", &base, key, None, &req_id(n)).await;
        assert_eq!(r.status, 401, "{what}: {}", r.json);
        assert_eq!(
            r.json["type"], "https://posflow.dev/problems/unauthenticated",
            "{what}"
        );
        assert_eq!(r.headers["content-type"], "application/problem+json");
        assert_eq!(r.json["request_id"], req_id(n));
        expected.push((req_id(n), 401, "unauthenticated"));
    }
    for (what, key, method, path) in [
        (
            "finance changes settings",
            finance,
            "PUT",
            format!("/v1/merchants/{m}/settings"),
        ),
        ("developer reads records", developer, "GET", base.clone()),
        (
            "finance makes keys",
            finance,
            "POST",
            format!("/v1/merchants/{m}/api-keys"),
        ),
        (
            "owner of another merchant",
            own,
            "GET",
            "/v1/merchants/SOMEONE-ELSE/transactions".to_string(),
        ),
    ] {
        n += 1;
        pace().await;
        let body = json!({"name": "x", "role": "owner"});
        let r = api
            .with_id(
                method,
                &path,
                Some(key),
                (method != "GET").then_some(&body),
                &req_id(n),
            )
            .await;
        assert_eq!(r.status, 403, "{what}: {}", r.json);
        assert!(
            r.json["detail"].as_str().unwrap().len() > 10,
            "{what}: says why"
        );
        expected.push((req_id(n), 403, "forbidden"));
    }
    // A cursor from a real page, then tampered with.
    pace().await;
    let page = api.get(&format!("{base}?limit=10&currency=EUR"), own).await;
    let cursor = page.json["next_cursor"].as_str().unwrap().to_string();
    let mut tampered = cursor.clone().into_bytes();
    tampered[3] = if tampered[3] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let bad: Vec<(String, Vec<&str>)> = vec![
        (format!("?currency=EUR&cursor={tampered}"), vec!["cursor"]),
        (format!("?currency=USD&cursor={cursor}"), vec!["cursor"]),
        (
            "?from=yesterday&to=2026-01-01T00:00:00Z".into(),
            vec!["from"],
        ),
        (
            "?from=2026-11-02T00:00:00Z&to=2026-11-01T00:00:00Z".into(),
            vec!["to"],
        ),
        ("?limit=501&colour=red".into(), vec!["colour", "limit"]),
        ("?limit=0&min_amount=-5".into(), vec!["min_amount", "limit"]),
        (
            "?currency=EUR%27%20OR%20%271%27%3D%271".into(),
            vec!["currency"],
        ),
        (
            "?terminal=x%27%3B%20DROP%20TABLE%20transactions%3B--".into(),
            vec!["terminal"],
        ),
        (
            "?last4=1%27--&bin=4%25&response_code=00%27%20OR%201%3D1".into(),
            vec!["last4", "bin", "response_code"],
        ),
        ("?type=SALE%27%20UNION%20SELECT%201".into(), vec!["type"]),
    ];
    for (q, fields) in bad {
        n += 1;
        pace().await;
        let r = api
            .with_id("GET", &format!("{base}{q}"), Some(own), None, &req_id(n))
            .await;
        assert_eq!(r.status, 400, "{q}: {}", r.json);
        let mut got: Vec<&str> = r.json["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap())
            .collect();
        got.sort();
        let mut want = fields.clone();
        want.sort();
        assert_eq!(got, want, "{q}: {}", r.json);
        expected.push((req_id(n), 400, "invalid-request"));
    }
    // Text that passes the checks reaches SQL only as a bind parameter: no row, no error.
    n += 1;
    pace().await;
    let r = api
        .with_id(
            "GET",
            &format!("/v1/merchants/{m}/transactions/x-OR-1.1"),
            Some(own),
            None,
            &req_id(n),
        )
        .await;
    assert_eq!(r.status, 404, "{}", r.json);
    expected.push((req_id(n), 404, "not-found"));
    let still = count(
        &owner,
        "SELECT count(*) FROM transactions WHERE merchant_id = $1",
        &[&m],
    )
    .await;
    assert_eq!(still, 120, "the table is intact");

    // Every one of those is in the audit trail, as it happened.
    let rows = owner
        .query("SELECT request_id, status, outcome, merchant_id FROM api_audit WHERE request_id LIKE 'req-%' ORDER BY seq", &[])
        .await
        .unwrap();
    let got: Vec<(String, u16, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get::<_, i32>(1) as u16, r.get(2)))
        .collect();
    let want: Vec<(String, u16, String)> = expected
        .iter()
        .map(|(a, b, c)| (a.clone(), *b, c.to_string()))
        .collect();
    assert_eq!(got, want);
    assert!(
        rows.iter().all(|r| !r.get::<_, String>(3).is_empty()),
        "each names the merchant it tried"
    );

    // Per key: 5 a second, then 429 with Retry-After.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut limited = None;
    for _ in 0..8 {
        let r = api
            .get(
                &format!(
                    "/v1/merchants/{m}/totals?from=2026-11-01T00:00:00Z&to=2026-12-01T00:00:00Z"
                ),
                own,
            )
            .await;
        if r.status == 429 {
            limited = Some(r);
            break;
        }
        assert_eq!(r.status, 200, "{}", r.json);
    }
    let limited = limited.expect("the sixth request in a second is limited");
    assert!(
        limited.headers["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    assert_eq!(
        limited.json["type"],
        "https://posflow.dev/problems/rate-limited"
    );

    // A source that keeps failing authentication is refused, even with a good key after.
    let mut refused_at = None;
    for i in 0..40 {
        let r = api.get(&base, &wrong_secret).await;
        if r.status == 429 {
            refused_at = Some(i);
            break;
        }
        assert_eq!(r.status, 401);
    }
    assert!(
        refused_at.is_some(),
        "failed authentications are limited per source"
    );
    let r = api.get(&base, finance).await;
    assert_eq!(r.status, 429, "the source stays refused for a minute");
}

/// owner, finance, developer, to-be-revoked, to-be-expired keys of `m`.
async fn futures_keys(d: &Deployment, m: &str) -> Vec<String> {
    let mut out = Vec::new();
    for role in [
        Role::Owner,
        Role::Finance,
        Role::Developer,
        Role::Owner,
        Role::Owner,
    ] {
        out.push(make_key(d, role, &[m]).await);
    }
    out
}

/// A scripted session → exactly the expected audit records, changes with before and after and
/// no secret; `posflow-admin audit verify` passes, then fails at the row altered and at the row
/// deleted; pos.audit carries the same records, chained the same.
#[tokio::test]
async fn the_audit_trail_is_exact_chained_and_relayed() {
    let d = Deployment::kafka_only().await.with_api_schema().await;
    let m = format!("M{}", tag(&d));
    let owner = owner_db(&d).await;
    seed(&owner, &m, 30).await;
    let own = make_key(&d, Role::Owner, &[&m]).await;
    let finance = make_key(&d, Role::Finance, &[&m]).await;
    let auditor = make_key(&d, Role::Auditor, &[&m]).await;
    let api = Api::start(&d, &[]).await;
    let secret = "whsec-audit-test-0123456789abcdef";
    let settings = json!({"webhook_url": "https://93.184.216.34/hooks/pos", "webhook_secret": secret, "emails": ["ops@example.com"], "format": "csv"});
    let r1 = api
        .with_id(
            "GET",
            &format!("/v1/merchants/{m}/transactions?limit=10"),
            Some(&own),
            None,
            "req-0001",
        )
        .await;
    assert_eq!(r1.status, 200);
    // The newest as stored, every field (the times storage stamped aside, checked for form).
    let mut newest = r1.json["items"][0].clone();
    for stamped in ["received_at", "validated_at", "stored_at"] {
        let t = newest[stamped].as_str().unwrap_or_default();
        assert!(t.len() == 24 && t.ends_with('Z'), "{stamped}: {t:?}");
        newest.as_object_mut().unwrap().remove(stamped);
    }
    assert_eq!(
        newest,
        json!({
            "transaction_id": format!("{m}-1"), "merchant_id": m, "terminal_id": format!("{m}-T1"),
            "sequence": 1, "transaction_time": "2026-11-30T11:59:00.000Z", "type": "refund",
            "original_transaction_id": null, "amount_minor": 137, "currency": "USD",
            "payment_method": "card", "entry_mode": "contactless",
            "card": {"bin": "550000", "last4": "0001"}, "auth_code": "A1", "response_code": "05",
            "mcc": "5814", "offline": false, "offline_since": null,
        })
    );
    let r2 = api
        .with_id(
            "GET",
            &format!("/v1/merchants/{m}/transactions"),
            None,
            None,
            "req-0002",
        )
        .await;
    assert_eq!(r2.status, 401);
    let r3 = api
        .with_id(
            "GET",
            &format!("/v1/merchants/{m}/settings"),
            Some(&finance),
            None,
            "req-0003",
        )
        .await;
    assert_eq!(r3.status, 403);
    let r4 = api
        .with_id(
            "PUT",
            &format!("/v1/merchants/{m}/settings"),
            Some(&own),
            Some(&settings),
            "req-0004",
        )
        .await;
    assert_eq!(r4.status, 200, "{}", r4.json);
    assert!(r4.json.get("webhook_secret").is_none(), "{}", r4.json);
    let r5 = api
        .with_id(
            "POST",
            &format!("/v1/merchants/{m}/api-keys"),
            Some(&own),
            Some(&json!({"name": "ERP", "role": "finance"})),
            "req-0005",
        )
        .await;
    assert_eq!(r5.status, 201, "{}", r5.json);
    let new_key = r5.json["key"].as_str().unwrap().to_string();
    let new_id = r5.json["id"].as_str().unwrap().to_string();
    assert_eq!(
        api.get(
            &format!("/v1/merchants/{m}/totals?from=2026-11-01T00:00:00Z&to=2026-12-01T00:00:00Z"),
            &new_key
        )
        .await
        .status,
        200
    );
    let r7 = api
        .with_id(
            "DELETE",
            &format!("/v1/merchants/{m}/api-keys/{new_id}"),
            Some(&own),
            None,
            "req-0007",
        )
        .await;
    assert_eq!(r7.status, 200, "{}", r7.json);
    assert_eq!(
        api.get(&format!("/v1/merchants/{m}/transactions"), &new_key)
            .await
            .status,
        401,
        "revoked at once"
    );
    let r9 = api
        .with_id(
            "GET",
            &format!("/v1/merchants/{m}/audit"),
            Some(&auditor),
            None,
            "req-0009",
        )
        .await;
    assert_eq!(r9.status, 200);
    assert_eq!(
        r9.json["items"].as_array().unwrap().len(),
        8,
        "the auditor sees the 8 records before its own: {}",
        r9.json
    );

    let rows = owner
        .query("SELECT seq, actor, role, merchant_id, action, status, outcome, row_count, before, after FROM api_audit ORDER BY seq", &[])
        .await
        .unwrap();
    let got: Vec<(i64, String, String, String, i32, String, i32)> = rows
        .iter()
        .map(|r| {
            (
                r.get(0),
                r.get::<_, String>(1),
                r.get::<_, String>(2),
                r.get::<_, String>(4),
                r.get(5),
                r.get::<_, String>(6),
                r.get(7),
            )
        })
        .collect();
    let id = |k: &str| k[..15].to_string();
    let want = vec![
        (
            1,
            id(&own),
            "owner".into(),
            "transactions.search".into(),
            200,
            "ok".into(),
            10,
        ),
        (
            2,
            String::new(),
            String::new(),
            "transactions.search".into(),
            401,
            "unauthenticated".into(),
            0,
        ),
        (
            3,
            id(&finance),
            "finance".into(),
            "settings.get".into(),
            403,
            "forbidden".into(),
            0,
        ),
        (
            4,
            id(&own),
            "owner".into(),
            "settings.update".into(),
            200,
            "ok".into(),
            1,
        ),
        (
            5,
            id(&own),
            "owner".into(),
            "api_keys.create".into(),
            201,
            "ok".into(),
            1,
        ),
        // 30 rows: 3 currencies x 3 types.
        (
            6,
            new_id.clone(),
            "finance".into(),
            "totals.get".into(),
            200,
            "ok".into(),
            9,
        ),
        (
            7,
            id(&own),
            "owner".into(),
            "api_keys.revoke".into(),
            200,
            "ok".into(),
            1,
        ),
        (
            8,
            new_id.clone(),
            String::new(),
            "transactions.search".into(),
            401,
            "unauthenticated".into(),
            0,
        ),
        (
            9,
            id(&auditor),
            "auditor".into(),
            "audit.read".into(),
            200,
            "ok".into(),
            8,
        ),
    ];
    assert_eq!(got, want);
    assert!(rows.iter().all(|r| r.get::<_, String>(3) == m));
    let change: (Option<String>, Option<String>) = (rows[3].get(8), rows[3].get(9));
    assert_eq!(change.0, None, "no settings before");
    let after = change.1.unwrap();
    assert!(
        after.contains("\"webhook_url\":\"https://93.184.216.34/hooks/pos\"")
            && after.contains("\"webhook_secret_changed\":true"),
        "{after}"
    );
    let all_text: String = rows
        .iter()
        .map(|r| {
            format!(
                "{:?}{:?}",
                r.get::<_, Option<String>>(8),
                r.get::<_, Option<String>>(9)
            )
        })
        .collect();
    assert!(
        !all_text.contains(secret) && !all_text.contains(&new_key[16..]),
        "no secret in the audit trail"
    );

    // pos.audit: the same records (seq, action, hash), in order.
    let records: Vec<AuditRecord> = d
        .read_avro(
            "pos.audit",
            9,
            Duration::from_secs(60),
            Duration::from_secs(2),
        )
        .await;
    let mut relayed: BTreeMap<i64, AuditRecord> = BTreeMap::new();
    for a in records {
        relayed.insert(a.seq, a);
    }
    assert_eq!(
        relayed.keys().copied().collect::<Vec<_>>(),
        (1..=9).collect::<Vec<i64>>()
    );
    let hashes = owner.query("SELECT seq, encode(hash, 'hex'), encode(prev_hash, 'hex'), action FROM api_audit ORDER BY seq", &[]).await.unwrap();
    for h in hashes {
        let a = &relayed[&h.get::<_, i64>(0)];
        assert_eq!(
            (&a.hash, &a.prev_hash, &a.action),
            (
                &h.get::<_, String>(1),
                &h.get::<_, String>(2),
                &h.get::<_, String>(3)
            )
        );
    }
    // The chain verifies; an altered row and a deleted row are each found.
    let verify = || d.cli("posflow-admin", &["audit", "verify"]);
    let ok = verify();
    assert_eq!(ok.code, Some(0), "{} {}", ok.stdout, ok.stderr);
    assert_eq!(ok.stdout.trim(), "audit chain intact: 9 records");
    owner
        .execute("UPDATE api_audit SET row_count = 99 WHERE seq = 6", &[])
        .await
        .unwrap();
    let broken = verify();
    assert_eq!(broken.code, Some(1));
    assert_eq!(
        broken.stdout.trim(),
        "audit chain BROKEN at seq 6: its fields do not match its hash (the row was altered)"
    );
    owner
        .execute("UPDATE api_audit SET row_count = 9 WHERE seq = 6", &[])
        .await
        .unwrap();
    assert_eq!(verify().code, Some(0));
    owner
        .execute("DELETE FROM api_audit WHERE seq = 4", &[])
        .await
        .unwrap();
    let broken = verify();
    assert_eq!(broken.code, Some(1));
    assert_eq!(
        broken.stdout.trim(),
        "audit chain BROKEN at seq 5: the row with seq 4 is missing"
    );
}

/// Webhook URLs inside the platform: refused when saved through the API (every internal
/// range, a name that resolves inside) and audited; refused again at delivery by the
/// notifier's resolver (an IP literal, an inside-resolving name), without retry and without a
/// request; a redirect is not followed.
#[tokio::test]
async fn webhooks_inside_the_platform_are_refused_on_save_and_on_delivery() {
    let d = Deployment::kafka_only().await.with_api_schema().await;
    let m = format!("M{}", tag(&d));
    let own = make_key(&d, Role::Owner, &[&m]).await;
    let api = Api::start(&d, &["--webhook-allow-networks="]).await;
    let inside = [
        ("https://127.0.0.1/h", "loopback"),
        ("https://10.1.2.3/h", "private"),
        ("https://172.20.0.1/h", "private"),
        ("https://192.168.0.10/h", "private"),
        ("https://169.254.169.254/latest/meta-data", "cloud metadata"),
        ("https://169.254.10.10/h", "link-local"),
        ("https://100.64.1.1/h", "shared address space"),
        ("https://0.0.0.0/h", "unspecified"),
        ("https://[::1]/h", "loopback"),
        ("https://[fd00::1]/h", "unique-local"),
        ("https://[fe80::1]/h", "link-local"),
        ("https://[::ffff:10.0.0.1]/h", "private"),
        ("https://localhost:8443/h", "loopback"),
    ];
    for (url, range) in inside {
        let r = api
            .put_settings(
                &m,
                &own,
                &json!({"webhook_url": url, "webhook_secret": "0123456789abcdef0123"}),
            )
            .await;
        assert_eq!(r.status, 400, "{url}: {}", r.json);
        let e = &r.json["errors"][0];
        assert_eq!(e["field"], "webhook_url", "{url}");
        assert!(e["message"].as_str().unwrap().contains(range), "{url}: {e}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let r = api.put_settings(&m, &own, &json!({"webhook_url": "https://93.184.216.34/h", "webhook_secret": "0123456789abcdef0123"}))
        .await;
    assert_eq!(r.status, 200, "a public address is accepted: {}", r.json);
    let owner = owner_db(&d).await;
    let refused = count(&owner, "SELECT count(*) FROM api_audit WHERE action = 'settings.update' AND status = 400 AND merchant_id = $1", &[&m]).await;
    assert_eq!(refused, inside.len() as i64, "each refusal audited");

    // At delivery: preferences written behind the API's back (as if DNS changed after the
    // check), a notifier with no allow-list.
    let rx = Receiver::start().await;
    let secret = "whsec-ssrf-0123456789abcdef";
    let loop_url = rx.merchant("LOOP", secret, Behaviour::Accept);
    let name_url = rx
        .merchant("NAME", secret, Behaviour::Accept)
        .replace("127.0.0.1", "localhost");
    let prefs = format!(
        "[merchants.LOOP]\nwebhook_url = \"{loop_url}\"\nwebhook_secret = \"{secret}\"\n\
         [merchants.NAME]\nwebhook_url = \"{name_url}\"\nwebhook_secret = \"{secret}\"\n"
    );
    d.apply_merchants(&prefs);
    let mut notifier = d
        .start_notifier(
            "n1",
            &[
                "--webhook-allow-networks=",
                "--retry-base-ms",
                "100",
                "--max-attempts",
                "3",
            ],
        )
        .await;
    let events = [
        validated("ssrf-loop", "LOOP", TransactionType::Sale, 100, "EUR"),
        validated("ssrf-name", "NAME", TransactionType::Sale, 100, "EUR"),
    ];
    d.produce("pos.transactions.validated", &events, |v| {
        v.transaction.transaction_id.clone()
    })
    .await;
    let got = outcomes(&d, 2, Duration::from_secs(60), Duration::from_secs(3)).await;
    assert_eq!(got.len(), 2, "{got:?}");
    for o in &got {
        assert_eq!(o.status, DeliveryStatus::Failed, "{o:?}");
        assert_eq!(o.attempts, 1, "refused, not retried: {o:?}");
        let e = o.error.as_deref().unwrap_or("");
        assert!(
            e.contains("egress refused") && e.contains("loopback"),
            "{e}"
        );
    }
    assert_eq!(rx.received().len(), 0, "no request left the notifier");
    notifier.terminate();

    // A redirect is not followed: allowed receiver answering 302 → failed, one request.
    let redirect = rx.merchant("REDIR", secret, Behaviour::Status(302));
    d.apply_merchants(&format!(
        "[merchants.REDIR]\nwebhook_url = \"{redirect}\"\nwebhook_secret = \"{secret}\"\n"
    ));
    let _n2 = d
        .start_notifier("n2", &["--retry-base-ms", "100", "--max-attempts", "3"])
        .await;
    d.produce(
        "pos.transactions.validated",
        &[validated(
            "ssrf-redir",
            "REDIR",
            TransactionType::Sale,
            100,
            "EUR",
        )],
        |v| v.transaction.transaction_id.clone(),
    )
    .await;
    let got = outcomes(&d, 3, Duration::from_secs(60), Duration::from_secs(3)).await;
    let redir: Vec<_> = got.iter().filter(|o| o.merchant_id == "REDIR").collect();
    assert_eq!(redir.len(), 1, "{got:?}");
    assert_eq!(
        (
            redir[0].status,
            redir[0].attempts,
            redir[0].error.as_deref()
        ),
        (DeliveryStatus::Failed, 1, Some("HTTP 302"))
    );
    assert_eq!(
        rx.received_by("REDIR").len(),
        1,
        "exactly one request, no follow"
    );
}

/// Every `sh` example in docs/api.md, run as written (curl over HTTPS) against a real API:
/// each succeeds and prints JSON.
#[tokio::test]
async fn the_examples_in_docs_api_md_work() {
    let d = Deployment::kafka_only().await.with_api_schema().await;
    let m = format!("M{}", tag(&d));
    let owner = owner_db(&d).await;
    seed(&owner, &m, 50).await;
    let key = make_key(&d, Role::Owner, &[&m]).await;
    let api = Api::start(&d, &[]).await;
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/api.md")).unwrap();
    let examples: Vec<&str> = doc
        .split("```sh\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .collect();
    assert_eq!(examples.len(), 14, "docs/api.md's examples");
    for ex in examples {
        let out = std::process::Command::new("bash")
            .args(["-c", ex])
            .env("POSFLOW_API", &api.base)
            .env("KEY", &key)
            .env("MERCHANT", &m)
            .env("TRANSACTION", format!("{m}-3"))
            .env("CA", posflow_e2e::local_tls_dir().join("ca.crt"))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{ex}\n→ {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("{ex}\n→ not JSON ({e}): {stdout}"));
        assert!(v.is_object(), "{ex}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Webhook secret rotation through the API: during the overlap every delivery carries both
/// signatures — a receiver that knows only the old secret and one that knows only the new both
/// verify each; after it, only the new signs and the old fails.
#[tokio::test]
async fn a_rotated_secret_signs_alongside_the_old_one_during_the_overlap() {
    use posflow_e2e::notify::verify_signature;
    let d = Deployment::kafka_only().await.with_api_schema().await;
    let m = format!("R{}", tag(&d));
    let own = make_key(&d, Role::Owner, &[&m]).await;
    let api = Api::start(&d, &[]).await;
    let rx = Receiver::start().await;
    let (old, new) = (
        "whsec-rotation-old-0123456789",
        "whsec-rotation-new-0123456789",
    );
    let url = rx.merchant(&m, old, Behaviour::Accept);
    api.set_webhook(&m, &own, &url, old).await;
    let _notifier = d.start_notifier("rot", &["--max-attempts", "1"]).await;
    let produce = |ids: Vec<String>| {
        let d = d.clone();
        let m = m.clone();
        async move {
            let events: Vec<_> = ids
                .iter()
                .map(|i| validated(i, &m, TransactionType::Sale, 100, "EUR"))
                .collect();
            d.produce("pos.transactions.validated", &events, |v| {
                v.transaction.transaction_id.clone()
            })
            .await;
        }
    };
    produce(vec!["rot-before".into()]).await;
    rx.wait_delivered(&m, 1, Duration::from_secs(60)).await;

    let r = api
        .call(
            "POST",
            &format!("/v1/merchants/{m}/settings/webhook-secret"),
            Some(&own),
            Some(&json!({"webhook_secret": new, "overlap": "12s"})),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.json);
    let until =
        posflow_api::query::parse_time(r.json["previous_signs_until"].as_str().unwrap()).unwrap();
    // The notifier reloads preferences every second.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    produce((0..5).map(|i| format!("rot-overlap-{i}")).collect()).await;
    rx.wait_delivered(&m, 6, Duration::from_secs(30)).await;
    assert!(
        std::time::SystemTime::now() < until,
        "the deliveries came within the overlap"
    );
    let during: Vec<_> = rx
        .received_by(&m)
        .into_iter()
        .filter(|r| String::from_utf8_lossy(&r.body).contains("rot-overlap-"))
        .collect();
    assert_eq!(during.len(), 5);
    for r in &during {
        let now = std::time::SystemTime::now();
        assert_eq!(r.signature.matches("v1=").count(), 2, "{}", r.signature);
        assert!(
            verify_signature(old.as_bytes(), &r.signature, &r.body, now),
            "a receiver with the old secret verifies"
        );
        assert!(
            verify_signature(new.as_bytes(), &r.signature, &r.body, now),
            "a receiver with the new secret verifies"
        );
    }

    // After the overlap: the new secret alone.
    while std::time::SystemTime::now() < until + Duration::from_millis(2500) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    produce((0..3).map(|i| format!("rot-after-{i}")).collect()).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let after = loop {
        let after: Vec<_> = rx
            .received_by(&m)
            .into_iter()
            .filter(|r| String::from_utf8_lossy(&r.body).contains("rot-after-"))
            .collect();
        if after.len() >= 3 || std::time::Instant::now() > deadline {
            break after;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(after.len(), 3);
    for r in &after {
        let now = std::time::SystemTime::now();
        assert_eq!(r.signature.matches("v1=").count(), 1, "{}", r.signature);
        assert!(verify_signature(new.as_bytes(), &r.signature, &r.body, now));
        assert!(
            !verify_signature(old.as_bytes(), &r.signature, &r.body, now),
            "the old secret no longer verifies"
        );
        assert_eq!(
            r.status, 401,
            "the receiver still on the old secret refuses it"
        );
    }
    let owner = owner_db(&d).await;
    let audited = count(&owner, "SELECT count(*) FROM api_audit WHERE action = 'settings.rotate_secret' AND status = 200 AND after NOT LIKE '%whsec%'", &[]).await;
    assert_eq!(audited, 1, "the rotation is audited, without the secret");
}

/// Redelivery of a failed time range: every failed event created in the range is delivered
/// once more under its original idempotency key, none outside it; each attempt is in the
/// event's history; one event can be redelivered alone.
#[tokio::test]
async fn a_failed_range_is_redelivered_once_under_the_original_keys() {
    let d = Deployment::kafka_only().await.with_api_schema().await;
    let m = format!("F{}", tag(&d));
    let own = make_key(&d, Role::Owner, &[&m]).await;
    let dev = make_key(&d, Role::Developer, &[&m]).await;
    let api = Api::start(&d, &[]).await;
    let rx = Receiver::start().await;
    let secret = "whsec-redeliver-0123456789";
    // 500 to the first request of each key, 200 after; one attempt allowed: every event fails once.
    let url = rx.merchant(&m, secret, Behaviour::FailFirst(1));
    api.set_webhook(&m, &own, &url, secret).await;
    // No circuit breaking: seven failures in a row are the point here.
    let notifier = d
        .start_notifier(
            "redeliver",
            &["--max-attempts", "1", "--breaker-threshold", "1000"],
        )
        .await;
    let events = |prefix: &str, n: usize| -> Vec<_> {
        (0..n)
            .map(|i| {
                validated(
                    &format!("{prefix}-{i}"),
                    &m,
                    TransactionType::Sale,
                    100,
                    "EUR",
                )
            })
            .collect()
    };
    let failed_count = |status: &'static str| {
        let api = &api;
        let (m, own) = (m.clone(), own.clone());
        async move {
            api.get(
                &format!("/v1/merchants/{m}/events?status={status}&limit=500"),
                &own,
            )
            .await
            .json["items"]
                .as_array()
                .unwrap()
                .len()
        }
    };
    let wait_failed = |n: usize| async move {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while failed_count("failed").await < n {
            assert!(
                std::time::Instant::now() < deadline,
                "{n} failed deliveries"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    d.produce("pos.transactions.validated", &events("early", 3), |v| {
        v.transaction.transaction_id.clone()
    })
    .await;
    wait_failed(3).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let from = posflow_schema::rfc3339_millis(posflow_schema::now_millis());
    d.produce("pos.transactions.validated", &events("late", 4), |v| {
        v.transaction.transaction_id.clone()
    })
    .await;
    wait_failed(7).await;
    let to = posflow_schema::rfc3339_millis(posflow_schema::now_millis() + 1000);
    let original: BTreeMap<String, String> = rx
        .received_by(&m)
        .iter()
        .map(|r| {
            (
                r.idempotency_key.clone(),
                String::from_utf8_lossy(&r.body).to_string(),
            )
        })
        .collect();
    assert_eq!(original.len(), 7);

    let r = api
        .with_id(
            "POST",
            &format!("/v1/merchants/{m}/events/redeliver"),
            Some(&dev),
            Some(&json!({"from": from, "to": to})),
            "req-range",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(
        r.json["redelivered"].as_array().unwrap().len(),
        4,
        "the four late ones, not the early three"
    );
    // Each late key is delivered once more, under the same key with the same body.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while failed_count("delivered").await < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "redelivered: {}\n{}",
            api.get(&format!("/v1/merchants/{m}/events"), &own)
                .await
                .json,
            notifier.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await; // nothing more may arrive
    let mut per_key: BTreeMap<String, Vec<u16>> = BTreeMap::new();
    for r in rx.received_by(&m) {
        assert_eq!(
            original[&r.idempotency_key],
            String::from_utf8_lossy(&r.body),
            "the same body under the same key"
        );
        per_key
            .entry(r.idempotency_key.clone())
            .or_default()
            .push(r.status);
    }
    let twice = per_key.values().filter(|v| **v == [500, 200]).count();
    let once = per_key.values().filter(|v| **v == [500]).count();
    assert_eq!((twice, once), (4, 3), "{per_key:?}");
    assert_eq!(failed_count("failed").await, 3);

    // One event alone, with its attempt history.
    let listed = api
        .get(&format!("/v1/merchants/{m}/events?status=failed"), &own)
        .await;
    let id = listed.json["items"][0]["id"].as_i64().unwrap();
    let r = api
        .call(
            "POST",
            &format!("/v1/merchants/{m}/events/{id}/redeliver"),
            Some(&dev),
            None,
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.json);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let detail = loop {
        let e = api
            .get(&format!("/v1/merchants/{m}/events/{id}"), &own)
            .await;
        if e.json["status"] == "delivered" {
            break e;
        }
        assert!(std::time::Instant::now() < deadline, "{}", e.json);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let history: Vec<(String, Option<i64>)> = detail.json["attempt_history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["outcome"].as_str().unwrap().to_string(),
                a["status_code"].as_i64(),
            )
        })
        .collect();
    assert_eq!(
        history,
        [
            ("failed".to_string(), Some(500)),
            ("delivered".to_string(), None)
        ]
    );
    assert!(detail.json["redelivered_at"].is_string());
    // Finance may not redeliver; a pending event cannot be redelivered twice at once.
    let fin = make_key(&d, Role::Finance, &[&m]).await;
    assert_eq!(
        api.call(
            "POST",
            &format!("/v1/merchants/{m}/events/{id}/redeliver"),
            Some(&fin),
            None,
            &[]
        )
        .await
        .status,
        403
    );

    let owner = owner_db(&d).await;
    let row = owner
        .query_one(
            "SELECT row_count, actor FROM api_audit WHERE request_id = 'req-range'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, i32>(0), row.get::<_, String>(1)),
        (4, dev[..15].to_string())
    );
}

/// `POST …/reports` for `period` under `idempotency_key`.
async fn post_report(api: &Api, m: &str, key: &str, period: &Value, idempotency_key: &str) -> Resp {
    let path = format!("/v1/merchants/{m}/reports");
    api.call(
        "POST",
        &path,
        Some(key),
        Some(period),
        &[("idempotency-key", idempotency_key)],
    )
    .await
}

/// A new report (`202`): its id.
async fn new_report(
    api: &Api,
    m: &str,
    key: &str,
    period: &Value,
    idempotency_key: &str,
) -> String {
    let r = post_report(api, m, key, period, idempotency_key).await;
    assert_eq!(r.status, 202, "{}", r.json);
    r.json["id"].as_str().unwrap().to_string()
}

/// Polls report `id` until its status is `want` (a failure or `within` ends the test), calling
/// `each` at every poll; the report.
async fn wait_report(
    api: &Api,
    m: &str,
    id: &str,
    key: &str,
    want: &str,
    within: Duration,
    mut each: impl FnMut(),
) -> Value {
    let deadline = std::time::Instant::now() + within;
    loop {
        each();
        let r = api
            .get(&format!("/v1/merchants/{m}/reports/{id}"), key)
            .await;
        if r.json["status"] == want {
            return r.json;
        }
        assert_ne!(r.json["status"], "failed", "{}", r.json);
        assert!(
            std::time::Instant::now() < deadline,
            "waiting for {want}: {}",
            r.json
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// SQL's totals of `m`'s transactions in [from, to), in the report's shape and order.
async fn sql_totals(owner: &tokio_postgres::Client, m: &str, from: &str, to: &str) -> Value {
    let rows = owner
        .query(
            "SELECT currency, type, count(*), sum(amount_minor)::bigint FROM transactions WHERE merchant_id = $1
              AND transaction_time >= $2::text::timestamptz AND transaction_time < $3::text::timestamptz
              GROUP BY 1, 2 ORDER BY 1, 2",
            &[&m, &from, &to],
        )
        .await
        .unwrap();
    Value::Array(rows.iter().map(|w| json!({"currency": w.get::<_, String>(0), "type": w.get::<_, String>(1), "count": w.get::<_, i64>(2), "amount_minor": w.get::<_, i64>(3)})).collect())
}

/// A report over 100,000 transactions: queued once per Idempotency-Key, made with the API's
/// memory flat, its totals equal to SQL's sum over the same rows, downloadable byte for byte
/// (checksum), announced by a report.ready webhook that verifies, and acknowledged — support
/// sees it as unacknowledged until then.
#[tokio::test]
async fn a_report_over_100k_transactions_is_exact_bounded_announced_and_acknowledged() {
    let d = Deployment::kafka_only().await.with_api_schema().await;
    let m = format!("P{}", tag(&d));
    let owner = owner_db(&d).await;
    seed(&owner, &m, 100_000).await;
    seed(&owner, &format!("{m}x"), 500).await; // another merchant's rows, never in the report
                                               // A terminal's auth code that a spreadsheet would run as a formula.
    let planted = owner
        .execute(
            "UPDATE transactions SET auth_code = '=HYPERLINK(\"http://x\")' WHERE transaction_id = (
               SELECT transaction_id FROM transactions WHERE merchant_id = $1
                  AND transaction_time >= '2026-09-01Z' ORDER BY transaction_id LIMIT 1)",
            &[&m],
        )
        .await
        .unwrap();
    assert_eq!(planted, 1);
    let own = make_key(&d, Role::Owner, &[&m]).await;
    let fin = make_key(&d, Role::Finance, &[&m]).await;
    let api = Api::start(&d, &[]).await;
    let rx = Receiver::start().await;
    let secret = "whsec-reports-0123456789";
    let url = rx.merchant(&m, secret, Behaviour::Accept);
    let r = api
        .call(
            "PUT",
            &format!("/v1/merchants/{m}/settings"),
            Some(&own),
            Some(
                &json!({"webhook_url": url, "webhook_secret": secret, "events": ["fraud-alerts"]}),
            ),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.json);
    let _notifier = d.start_notifier("reports", &[]).await;

    let period =
        json!({"from": "2026-09-01T00:00:00Z", "to": "2026-12-01T00:00:00Z", "format": "csv"});
    let path = format!("/v1/merchants/{m}/reports");
    let no_key = api
        .call("POST", &path, Some(&fin), Some(&period), &[])
        .await;
    assert_eq!(
        (no_key.status, no_key.json["errors"][0]["field"].as_str()),
        (400, Some("Idempotency-Key"))
    );
    let rss_before = posflow_e2e::rss_kib(api.service.child.id());
    let id = new_report(&api, &m, &fin, &period, "month-end-1").await;
    let again = post_report(&api, &m, &fin, &period, "month-end-1").await;
    assert_eq!(
        (again.status, again.json["id"].as_str()),
        (200, Some(id.as_str())),
        "the same key, the same report"
    );
    let mut other = period.clone();
    other["format"] = json!("json");
    let clash = post_report(&api, &m, &fin, &other, "month-end-1").await;
    assert_eq!(clash.status, 409, "{}", clash.json);

    // Wait for it, sampling the API's memory.
    let mut rss_max = rss_before;
    let pid = api.service.child.id();
    let report = wait_report(
        &api,
        &m,
        &id,
        &fin,
        "ready",
        Duration::from_secs(300),
        || rss_max = rss_max.max(posflow_e2e::rss_kib(pid)),
    )
    .await;
    assert_eq!(report["rows"], 100_000);
    assert_eq!(
        report["totals"],
        sql_totals(&owner, &m, "2026-09-01Z", "2026-12-01Z").await,
        "the report's totals are SQL's sum"
    );

    // Unacknowledged: support sees it.
    let listed = d
        .cli("posflow-admin", &["reports", "unacknowledged"])
        .expect_ok()
        .stdout
        .clone();
    assert!(listed.contains(&id), "{listed}");

    // The file, streamed: every row once, the checksum the report states.
    let file = api
        .call(
            "GET",
            &format!("{path}/{id}/download"),
            Some(&fin),
            None,
            &[],
        )
        .await;
    assert_eq!(file.status, 200);
    assert_eq!(file.headers["content-type"], "text/csv");
    rss_max = rss_max.max(posflow_e2e::rss_kib(api.service.child.id()));
    let bytes = api.raw_get(&format!("{path}/{id}/download"), &fin).await;
    assert_eq!(bytes.len() as i64, report["bytes"].as_i64().unwrap());
    use sha2::Digest;
    let digest: String = sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(digest, report["sha256"].as_str().unwrap());
    let text = String::from_utf8(bytes).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 100_001, "a header and every row");
    let formulas: Vec<&&str> = lines.iter().filter(|l| l.contains("HYPERLINK")).collect();
    assert_eq!(formulas.len(), 1);
    assert!(
        formulas[0].contains(",\"'=HYPERLINK(\"\"http://x\"\")\","),
        "neutralised and quoted: {}",
        formulas[0]
    );
    assert!(lines[0].starts_with("transaction_id,terminal_id,transaction_time"));
    let ids: HashSet<&str> = lines[1..]
        .iter()
        .map(|l| l.split(',').next().unwrap())
        .collect();
    assert_eq!(ids.len(), 100_000);
    assert!(
        ids.iter().all(|i| i.starts_with(&format!("{m}-"))),
        "only the merchant's rows"
    );
    let growth_mib = (rss_max.saturating_sub(rss_before)) / 1024;
    eprintln!(
        "reports: API RSS {} MiB before, {} MiB at most while making and serving a {} MiB report",
        rss_before / 1024,
        rss_max / 1024,
        text.len() >> 20
    );
    assert!(
        growth_mib < 64,
        "the API's memory grew {growth_mib} MiB for a {} MiB report",
        text.len() >> 20
    );

    // report.ready: a signed webhook (the receiver verifies it) naming the report.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let ready = loop {
        if let Some(r) = rx
            .received_by(&m)
            .into_iter()
            .find(|r| r.event_type == "report.ready")
        {
            break r;
        }
        assert!(std::time::Instant::now() < deadline, "no report.ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(ready.signature_ok, "report.ready verifies");
    let body: Value = serde_json::from_slice(&ready.body).unwrap();
    assert_eq!(
        (
            body["report"]["id"].as_str(),
            body["report"]["sha256"].as_str()
        ),
        (Some(id.as_str()), report["sha256"].as_str())
    );

    // Acknowledged: recorded once, audited, no longer on support's list.
    let ack = api
        .call(
            "POST",
            &format!("{path}/{id}/acknowledge"),
            Some(&fin),
            None,
            &[],
        )
        .await;
    assert_eq!(ack.status, 200, "{}", ack.json);
    assert_eq!(ack.json["acknowledged_by"], fin[..15]);
    let listed = d
        .cli("posflow-admin", &["reports", "unacknowledged"])
        .expect_ok()
        .stdout
        .clone();
    assert!(!listed.contains(&id), "{listed}");
    let audited = count(&owner, "SELECT count(*) FROM api_audit WHERE action = 'reports.acknowledge' AND status = 200 AND merchant_id = $1", &[&m]).await;
    assert_eq!(audited, 1);

    // The same in JSON, over a shorter period: an array of exactly its rows.
    let week =
        json!({"from": "2026-11-23T12:00:00Z", "to": "2026-11-30T12:00:00Z", "format": "json"});
    let wid = new_report(&api, &m, &own, &week, "week-48").await;
    wait_report(
        &api,
        &m,
        &wid,
        &own,
        "ready",
        Duration::from_secs(120),
        || {},
    )
    .await;
    let rows: Vec<Value> =
        serde_json::from_slice(&api.raw_get(&format!("{path}/{wid}/download"), &own).await)
            .unwrap();
    let n = count(&owner, "SELECT count(*) FROM transactions WHERE merchant_id = $1 AND transaction_time >= '2026-11-23 12:00Z' AND transaction_time < '2026-11-30 12:00Z'", &[&m]).await;
    assert_eq!(rows.len() as i64, n);
}

/// Fraud alerts are part of the merchant's record: kept once each by the notifier (whether or
/// not the merchant asked to be told), listed through the API and shown with the transactions
/// they name — another merchant's never.
#[tokio::test]
async fn fraud_alerts_are_kept_with_the_merchants_record() {
    use posflow_schema::{FraudAlert, Severity};
    let d = Deployment::kafka_only().await.with_api_schema().await;
    let m = format!("A{}", tag(&d));
    let other = format!("{m}o");
    let owner = owner_db(&d).await;
    seed(&owner, &m, 20).await;
    seed(&owner, &other, 20).await;
    let own = make_key(&d, Role::Finance, &[&m]).await;
    let api = Api::start(&d, &[]).await;
    let _notifier = d.start_notifier("alerts", &[]).await;
    let alert = |id: &str, merchant: &str, evidence: &[&str]| FraudAlert {
        alert_id: format!("{id}-{m}"),
        rule_id: "VELOCITY_CARD".into(),
        severity: Severity::High,
        score: 0.9,
        evidence_transaction_ids: evidence.iter().map(|e| e.to_string()).collect(),
        card_token: Some("tok-never-shown".into()),
        merchant_id: merchant.into(),
        terminal_id: format!("{merchant}-T1"),
        detected_at: posflow_schema::now_millis(),
    };
    let (e5, e6, e7, o5) = (
        format!("{m}-5"),
        format!("{m}-6"),
        format!("{m}-7"),
        format!("{other}-5"),
    );
    let a1 = alert("a1", &m, &[&e5, &e6]);
    let alerts = [
        a1.clone(),
        alert("a2", &m, &[&e7]),
        alert("a3", &other, &[&o5]),
        a1,
    ];
    d.produce("pos.fraud.alerts", &alerts, |a| a.alert_id.clone())
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let listed = loop {
        let r = api
            .get(&format!("/v1/merchants/{m}/fraud-alerts"), &own)
            .await;
        assert_eq!(r.status, 200, "{}", r.json);
        let items = r.json["items"].as_array().unwrap().clone();
        if items.len() >= 2 || std::time::Instant::now() > deadline {
            break items;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let ids: HashSet<&str> = listed
        .iter()
        .map(|a| a["alert_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        HashSet::from([format!("a1-{m}").as_str(), format!("a2-{m}").as_str()])
    );
    assert!(listed
        .iter()
        .all(|a| a["merchant_id"] == m.as_str() && a["severity"] == "high"));
    assert!(
        !serde_json::to_string(&listed)
            .unwrap()
            .contains("tok-never-shown"),
        "no card token"
    );
    let detail = api
        .get(&format!("/v1/merchants/{m}/transactions/{e5}"), &own)
        .await;
    let named: Vec<&str> = detail.json["fraud_alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["alert_id"].as_str().unwrap())
        .collect();
    assert_eq!(named, [format!("a1-{m}")]);
    let none = api
        .get(&format!("/v1/merchants/{m}/transactions/{m}-8"), &own)
        .await;
    assert_eq!(none.json["fraud_alerts"], json!([]));
    let stored = count(
        &owner,
        "SELECT count(*) FROM fraud_alerts WHERE alert_id LIKE '%-' || $1",
        &[&m],
    )
    .await;
    assert_eq!(stored, 3, "each alert once, the repeated one too");
}

/// An API replica killed (SIGKILL) while it makes a report: nothing of its work survives (one
/// transaction), another replica takes the report over when the lease runs out, and the report
/// comes out whole — every row, SQL's totals, one report.ready.
#[tokio::test]
async fn a_report_whose_runner_is_killed_is_finished_by_another_replica() {
    let d = Deployment::kafka_only().await.with_api_schema().await;
    let m = format!("K{}", tag(&d));
    let owner = owner_db(&d).await;
    seed(&owner, &m, 200_000).await;
    let fin = make_key(&d, Role::Finance, &[&m]).await;
    let own = make_key(&d, Role::Owner, &[&m]).await;
    let lease = ["--report-lease-secs", "5"];
    let mut first = Api::start(&d, &lease).await;
    first
        .set_webhook(
            &m,
            &own,
            "https://93.184.216.34/hooks/never-called",
            "whsec-kill-0123456789",
        )
        .await;
    let path = format!("/v1/merchants/{m}/reports");
    let period =
        json!({"from": "2026-01-01T00:00:00Z", "to": "2026-12-01T00:00:00Z", "format": "json"});
    let id = new_report(&first, &m, &fin, &period, "killed").await;
    wait_report(
        &first,
        &m,
        &id,
        &fin,
        "running",
        Duration::from_secs(30),
        || {},
    )
    .await;
    first.service.kill();
    let chunks = count(
        &owner,
        "SELECT count(*) FROM api_report_chunks WHERE report_id = $1",
        &[&id],
    )
    .await;
    assert_eq!(chunks, 0, "the killed runner's work is not visible");

    let second = Api::start(&d, &lease).await;
    let report = wait_report(
        &second,
        &m,
        &id,
        &fin,
        "ready",
        Duration::from_secs(120),
        || {},
    )
    .await;
    assert_eq!(report["rows"], 200_000);
    assert_eq!(
        report["totals"],
        sql_totals(&owner, &m, "2026-01-01Z", "2026-12-01Z").await,
        "the report's totals are SQL's sum"
    );
    let rows: Vec<Value> =
        serde_json::from_slice(&second.raw_get(&format!("{path}/{id}/download"), &fin).await)
            .unwrap();
    assert_eq!(rows.len(), 200_000);
    let announced = count(&owner, "SELECT count(*) FROM notification_outbox WHERE event_id = $1 AND event_type = 'report.ready'", &[&id]).await;
    assert_eq!(announced, 1, "one report.ready, however many runners tried");
}
