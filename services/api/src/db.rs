//! Connections and the tenancy boundary.
//!
//! Every query about a merchant's data runs in a [`Scoped`] transaction: made only from a
//! [`Scope`], which only authentication makes (the principal's merchants intersected with the
//! merchant a request names), it sets `posflow.merchant` for PostgreSQL's row-level security
//! and hands the same merchant to the query builders for their own `WHERE merchant_id = …`.
//! Two walls: a query that forgot its filter still sees one merchant; a policy dropped by
//! mistake still leaves the filter.

use crate::auth::Principal;
use crate::portal::people::Person;
use posflow_pg::DbError;
use std::sync::Mutex;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_postgres::{Client, Transaction};

/// The one merchant a request may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    merchant: String,
}

impl Scope {
    /// `None` if the principal does not reach `named`.
    pub fn of(principal: &Principal, named: &str) -> Option<Scope> {
        principal.reaches(named).then(|| Scope {
            merchant: named.to_string(),
        })
    }
    /// The scope of a person signed in to the portal: `named`, if it is one of theirs.
    pub fn of_person(person: &Person, named: &str) -> Option<Scope> {
        person.merchants.iter().any(|m| m == named).then(|| Scope {
            merchant: named.to_string(),
        })
    }
    /// The scope of background work a principal queued for `merchant` (a report it asked
    /// for): the runner acts for that merchant and no other.
    pub fn for_job(merchant: &str) -> Scope {
        Scope {
            merchant: merchant.to_string(),
        }
    }

    pub fn merchant(&self) -> &str {
        &self.merchant
    }
}

/// Whether the query builders add their own merchant filter. Always `Enforced` in the
/// service (nothing sets the other); the isolation tests use `BypassedForRlsTest` to show that
/// row-level security holds alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppFilter {
    Enforced,
    BypassedForRlsTest,
}

/// A transaction that sees one merchant.
pub struct Scoped<'a> {
    pub tx: Transaction<'a>,
    pub merchant: String,
    pub filter: AppFilter,
}

impl<'a> Scoped<'a> {
    pub async fn begin(
        client: &'a mut Client,
        scope: &Scope,
        filter: AppFilter,
    ) -> Result<Self, DbError> {
        let tx = client.transaction().await?;
        tx.execute(
            "SELECT set_config('posflow.merchant', $1, true)",
            &[&scope.merchant],
        )
        .await?;
        Ok(Scoped {
            tx,
            merchant: scope.merchant.clone(),
            filter,
        })
    }

    /// The merchant condition for a query builder (`None` only in the RLS test).
    pub fn merchant_filter(&self) -> Option<&str> {
        match self.filter {
            AppFilter::Enforced => Some(&self.merchant),
            AppFilter::BypassedForRlsTest => None,
        }
    }

    pub async fn commit(self) -> Result<(), DbError> {
        Ok(self.tx.commit().await?)
    }
}

/// A small connection pool: at most `size` connections, made on demand, dropped when broken.
pub struct Pool {
    url: String,
    idle: Mutex<Vec<Client>>,
    slots: Semaphore,
}

pub struct Conn<'a> {
    client: Option<Client>,
    pool: &'a Pool,
    _slot: SemaphorePermit<'a>,
}

impl Pool {
    pub fn new(url: &str, size: usize) -> Self {
        Pool {
            url: url.to_string(),
            idle: Mutex::new(Vec::new()),
            slots: Semaphore::new(size),
        }
    }

    pub async fn get(&self) -> Result<Conn<'_>, DbError> {
        let slot = self
            .slots
            .acquire()
            .await
            .expect("the pool's semaphore is never closed");
        let idle = self.idle.lock().expect("pool lock").pop();
        let client = match idle {
            Some(c) if !c.is_closed() => c,
            _ => posflow_pg::connect(&self.url).await?,
        };
        Ok(Conn {
            client: Some(client),
            pool: self,
            _slot: slot,
        })
    }
}

impl std::ops::Deref for Conn<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.client.as_ref().expect("present until drop")
    }
}
impl std::ops::DerefMut for Conn<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        self.client.as_mut().expect("present until drop")
    }
}
impl Drop for Conn<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            if !c.is_closed() {
                self.pool.idle.lock().expect("pool lock").push(c);
            }
        }
    }
}
