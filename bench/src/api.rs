//! The merchant API's transaction search over many stored rows, next to the same query run
//! directly in the same run: the same SQL (posflow_api::records), the same least-privilege
//! login and row-level security, every column of every row read, but no HTTPS, no key check,
//! no audit record and no JSON.
//! Latency at a fixed request rate (open loop: requests leave on schedule whether or not the
//! earlier ones are back), then throughput with a few clients in a closed loop.
//! Then the portal's Transactions page over the same rows (issue 19): a signed-in person's page
//! of 50 — session check, the same search, the HTML, the audit record — at a fixed rate.

use crate::bridge::Figures;
use crate::cpu::{Cpu, CpuPerUnit};
use posflow_api::auth::{Principal, Role};
use posflow_api::db::{AppFilter, Pool, Scope, Scoped};
use posflow_api::query::Params;
use posflow_api::records::{search_transactions, TransactionFilter, TRANSACTION_PARAMS};
use posflow_e2e::api::{make_key, owner_db, seed, Api};
use posflow_e2e::{with_login, Deployment};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What one run measures.
pub struct ApiBench {
    pub rows: usize,
    pub rate: f64,
    pub api_open: Figures,
    pub sql_open: Figures,
    pub api_closed: Figures,
    pub sql_closed: Figures,
    /// Refused requests (403) in the same closed loop: HTTPS, the key check and the audit
    /// record, no query. What every request costs before it searches anything.
    pub refused_closed: Figures,
    /// CPU ms per request of each closed loop (API, direct SQL, refused), by process.
    pub cpu: [CpuPerUnit; 3],
    /// The portal's Transactions page (50 rows) at `portal_rate` a second.
    pub portal_open: Figures,
    pub portal_rate: f64,
}

/// People browse: the portal's pages are asked for at a quarter of the API's rate.
const PORTAL_RATE_SHARE: f64 = 0.25;

/// [`closed_loop`], with the CPU each process spent on it per request.
async fn closed_loop_cpu<F, Fut>(
    api_pid: u32,
    clients: usize,
    secs: f64,
    one: F,
) -> (Figures, CpuPerUnit)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let before = Cpu::now(Some(api_pid));
    let f = closed_loop(clients, secs, one).await;
    let cpu = Cpu::now(Some(api_pid)).per_unit_since(&before, f.count as u64);
    (f, cpu)
}

/// A merchant's newest EUR transactions, 50 to a page: a merchant's commonest question.
const QUERY: &str = "currency=EUR&limit=50";

/// Runs `one(i)`, recording how long it took in µs.
async fn timed<F, Fut>(one: &F, i: usize, latencies: &Mutex<Vec<u64>>)
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = ()>,
{
    let t = Instant::now();
    one(i).await;
    latencies
        .lock()
        .unwrap()
        .push(t.elapsed().as_micros() as u64);
}

/// Runs `one(i)` at `rate` a second for `secs` (open loop); latencies in µs.
async fn open_loop<F, Fut>(rate: f64, secs: f64, one: F) -> Figures
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let one = Arc::new(one);
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let n = (rate * secs) as usize;
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let due = started + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let (one, latencies) = (one.clone(), latencies.clone());
        tasks.push(tokio::spawn(
            async move { timed(&*one, i, &latencies).await },
        ));
    }
    for t in tasks {
        t.await.expect("a request task");
    }
    let latency_us = std::mem::take(&mut *latencies.lock().unwrap());
    Figures {
        count: n,
        elapsed: started.elapsed(),
        latency_us,
    }
}

/// `clients` loops of `one` for `secs` (closed loop).
async fn closed_loop<F, Fut>(clients: usize, secs: f64, one: F) -> Figures
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let one = Arc::new(one);
    let count = Arc::new(AtomicUsize::new(0));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let end = started + Duration::from_secs_f64(secs);
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (one, count, latencies) = (one.clone(), count.clone(), latencies.clone());
            tokio::spawn(async move {
                let mut i = c;
                while Instant::now() < end {
                    timed(&*one, i, &latencies).await;
                    count.fetch_add(1, Ordering::Relaxed);
                    i += clients;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("a client");
    }
    let latency_us = std::mem::take(&mut *latencies.lock().unwrap());
    Figures {
        count: count.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
        latency_us,
    }
}

pub async fn run(
    rows: usize,
    merchants: usize,
    rate: f64,
    secs: f64,
    clients: usize,
) -> anyhow::Result<ApiBench> {
    let d = Deployment::kafka_only().await.with_api_schema().await;
    let names: Vec<String> = (0..merchants).map(|i| format!("B{i:03}")).collect();
    eprintln!("[bench] api: storing {rows} transactions for {merchants} merchants ...");
    let owner = owner_db(&d).await;
    for m in &names {
        seed(&owner, m, (rows / merchants) as i32).await;
    }
    // The seeding's million rows written out now, not by a checkpoint in the middle of the
    // measurement (its writes stall the audit's fsyncs: a p99 of 46 ms in one run).
    owner.batch_execute("ANALYZE").await?; // alone: in one message it would be one transaction
    owner.batch_execute("CHECKPOINT").await?;
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let key = Arc::new(make_key(&d, Role::Finance, &refs).await);
    let api = Arc::new(Api::start(&d, &["--rate-per-key", "100000"]).await);
    let names = Arc::new(names);

    let api_one = {
        let (api, key, names) = (api.clone(), key.clone(), names.clone());
        move |i: usize| {
            let (api, key, names) = (api.clone(), key.clone(), names.clone());
            async move {
                let m = &names[i % names.len()];
                // The body is checked, not parsed: the load generator shares the 2 cores, and
                // its JSON parsing is no part of the API's cost.
                let body = api
                    .raw_get(&format!("/v1/merchants/{m}/transactions?{QUERY}"), &key)
                    .await;
                let items = body
                    .windows(17)
                    .filter(|w| w == b"\"transaction_id\":")
                    .count();
                assert_eq!(items, 50, "a full page");
            }
        }
    };
    let pool = Arc::new(Pool::new(
        &with_login(&d.stack.database_url, "posflow_api_app", "api-local"),
        16,
    ));
    let sql_one = {
        let (pool, names) = (pool.clone(), names.clone());
        move |i: usize| {
            let (pool, names) = (pool.clone(), names.clone());
            async move {
                let m = &names[i % names.len()];
                let p = Principal {
                    key_id: "bench".into(),
                    role: Role::Finance,
                    merchants: vec![m.clone()],
                };
                let mut c = pool.get().await.expect("a connection");
                let s = Scoped::begin(
                    &mut c,
                    &Scope::of(&p, m).expect("in scope"),
                    AppFilter::Enforced,
                )
                .await
                .expect("a transaction");
                let mut q = Params::parse(Some(QUERY), TRANSACTION_PARAMS);
                let page = search_transactions(&s, TransactionFilter::parse(&mut q, None))
                    .await
                    .expect("the query");
                assert_eq!(page.items.len(), 50, "a full page");
                // What any client of the query does: read every column of every row.
                for t in &page.items {
                    std::hint::black_box(t.view());
                }
                s.commit().await.expect("commit");
            }
        }
    };
    let refused_one = {
        let (api, key, names) = (api.clone(), key.clone(), names.clone());
        move |i: usize| {
            let (api, key, names) = (api.clone(), key.clone(), names.clone());
            async move {
                let m = &names[i % names.len()];
                // A finance key may not read settings: refused after the key check, audited.
                let (status, _) = api
                    .raw_status_get(&format!("/v1/merchants/{m}/settings"), &key)
                    .await;
                assert_eq!(status, 403);
            }
        }
    };
    // Warm both (connections, caches), then measure.
    closed_loop(clients, 1.0, api_one.clone()).await;
    closed_loop(clients, 1.0, sql_one.clone()).await;
    eprintln!("[bench] api: {rate} req/s for {secs} s, API then direct SQL ...");
    let api_open = open_loop(rate, secs, api_one.clone()).await;
    let sql_open = open_loop(rate, secs, sql_one.clone()).await;
    eprintln!(
        "[bench] api: {clients} clients in a closed loop for {secs} s, API, direct SQL, refused requests ..."
    );
    let pid = api.service.child.id();
    let (api_closed, api_cpu) = closed_loop_cpu(pid, clients, secs, api_one).await;
    let (sql_closed, sql_cpu) = closed_loop_cpu(pid, clients, secs, sql_one).await;
    let (refused_closed, refused_cpu) = closed_loop_cpu(pid, clients, secs, refused_one).await;

    // A finance clerk of every merchant, signed in through the portal's own steps.
    let mut db = posflow_e2e::portal::api_login(&d).await;
    let clerk = ("bench-clerk@example.com", Role::Finance);
    let cookie = Arc::new(posflow_e2e::portal::signed_in(&mut db, clerk, &names).await);
    let portal_one = {
        let (api, cookie, names) = (api.clone(), cookie.clone(), names.clone());
        move |i: usize| {
            let (api, cookie, names) = (api.clone(), cookie.clone(), names.clone());
            async move {
                let m = &names[i % names.len()];
                let (status, _, body) = api
                    .raw(
                        "GET",
                        &format!("/portal/transactions?merchant={m}&currency=EUR"),
                        &[("cookie", &cookie)],
                    )
                    .await;
                assert_eq!(status, 200);
                let rows = body.windows(12).filter(|w| w == b"<tr data-id=").count();
                assert_eq!(rows, 50, "a full page");
            }
        }
    };
    let portal_rate = rate * PORTAL_RATE_SHARE;
    closed_loop(1, 1.0, portal_one.clone()).await;
    eprintln!(
        "[bench] api: the portal's Transactions page at {portal_rate} pages/s for {secs} s ..."
    );
    let portal_open = open_loop(portal_rate, secs, portal_one).await;
    Ok(ApiBench {
        portal_open,
        portal_rate,
        rows,
        rate,
        api_open,
        sql_open,
        api_closed,
        sql_closed,
        refused_closed,
        cpu: [api_cpu, sql_cpu, refused_cpu],
    })
}
