//! PostgreSQL: a connection to the deployment's schema and waiting on a count.

use crate::*;
use std::time::{Duration, Instant};

/// A connection as the stages make it (TLS as the URL's sslmode says: verify-full locally).
pub async fn db(stack: &Stack) -> tokio_postgres::Client {
    posflow_pg::connect(&stack.database_url)
        .await
        .unwrap_or_else(|e| panic!("database: {e}"))
}

/// The text values of a one-column query with one text parameter (e.g. a `LIKE` pattern).
pub async fn texts(client: &tokio_postgres::Client, query: &str, param: &str) -> Vec<String> {
    client
        .query(query, &[&param])
        .await
        .unwrap_or_else(|e| panic!("{query}: {e}"))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The one bigint `query` returns (a `count(*)`).
pub async fn count(
    client: &tokio_postgres::Client,
    query: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> i64 {
    client
        .query_one(query, params)
        .await
        .unwrap_or_else(|e| panic!("{query}: {e}"))
        .get(0)
}

/// Waits until `query` (returning one bigint) returns `expected`; returns the last value.
pub async fn wait_for_count(
    client: &tokio_postgres::Client,
    query: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    expected: i64,
    within: Duration,
) -> i64 {
    let deadline = Instant::now() + within;
    loop {
        let n: i64 = client.query_one(query, params).await.unwrap().get(0);
        if n == expected || Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The transaction ids stored under `like` (a `LIKE` pattern) once `expected` rows are there
/// (waiting up to 180 s, then 2 s more for anything extra to arrive), asserting none is stored
/// twice. A shortfall is left to the caller's comparison with what it expected.
pub async fn stored_once(
    client: &tokio_postgres::Client,
    like: &str,
    expected: usize,
) -> std::collections::HashSet<String> {
    let query = "SELECT transaction_id FROM transactions WHERE transaction_id LIKE $1";
    let counted = "SELECT count(*) FROM transactions WHERE transaction_id LIKE $1";
    wait_for_count(
        client,
        counted,
        &[&like],
        expected as i64,
        Duration::from_secs(180),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ids = texts(client, query, like).await;
    let distinct: std::collections::HashSet<String> = ids.iter().cloned().collect();
    assert_eq!(ids.len(), distinct.len(), "duplicate rows under {like}");
    distinct
}
