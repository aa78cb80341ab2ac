//! One transaction with everything the merchant's record holds about it: its line items, the
//! fraud alerts that name it, and its notification deliveries. What the API's
//! `GET …/transactions/{id}` answers and the portal's transaction page shows.

use crate::db::Scoped;
use crate::{events, records};
use posflow_pg::DbError;
use serde_json::{json, Value};

/// `None` if there is no such transaction for the scope's merchant.
pub async fn transaction(s: &Scoped<'_>, id: &str) -> Result<Option<Value>, DbError> {
    let Some(mut t) = records::transaction(s, id).await? else {
        return Ok(None);
    };
    t["fraud_alerts"] = json!(records::alerts_of(s, id).await?);
    t["deliveries"] = json!(events::of_event(s, id).await?);
    Ok(Some(t))
}
