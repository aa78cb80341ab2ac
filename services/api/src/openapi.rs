//! The OpenAPI 3.1 document, generated from the route table (routes.rs), the problem kinds
//! (problem.rs) and the permission matrix (auth.rs). Served at /v1/openapi.json; the committed
//! copy (docs/openapi.json) is checked against it by the unit tests, so it cannot drift.

use crate::auth::{Permission, Role};
use crate::problem::Problem;
use crate::routes::{OPENAPI_PATH, ROUTES};
use serde_json::{json, Map, Value};
use strum::IntoEnumIterator;

/// Every query parameter any route takes: (name, schema, description).
const PARAMS: &[(&str, &str, &str)] = &[
    (
        "from",
        "date-time",
        "Transaction time at or after (RFC 3339, UTC).",
    ),
    (
        "to",
        "date-time",
        "Transaction time before (RFC 3339, UTC); after `from`.",
    ),
    ("min_amount", "integer", "Amount in minor units, at least."),
    ("max_amount", "integer", "Amount in minor units, at most."),
    ("currency", "string", "ISO 4217 code, e.g. EUR."),
    ("terminal", "string", "Terminal id."),
    (
        "type",
        "string",
        "sale, refund, void, pre_authorisation or completion.",
    ),
    ("last4", "string", "The card's last four digits."),
    ("bin", "string", "The card's BIN (6 to 8 digits)."),
    (
        "response_code",
        "string",
        "The acquirer's response code, e.g. 00.",
    ),
    (
        "outcome",
        "string",
        "approved (response code 00) or declined (any other).",
    ),
    (
        "reason_code",
        "string",
        "A rejection reason code (docs/reason-codes.md).",
    ),
    ("limit", "integer", "Page size, 1-500 (default 50)."),
    (
        "cursor",
        "string",
        "The `next_cursor` of the previous page, with the same filters.",
    ),
    ("status", "string", "pending, delivered or failed."),
    (
        "event_type",
        "string",
        "transaction, refund, fraud_alert or digest.",
    ),
    ("channel", "string", "webhook or email."),
];

fn param(name: &str) -> Value {
    let (_, kind, doc) = PARAMS
        .iter()
        .find(|(n, _, _)| *n == name)
        .unwrap_or_else(|| panic!("query parameter {name} is not documented in openapi.rs"));
    let schema = match *kind {
        "date-time" => json!({"type": "string", "format": "date-time"}),
        "integer" => json!({"type": "integer", "minimum": 0}),
        _ => json!({"type": "string", "maxLength": 64}),
    };
    json!({"name": name, "in": "query", "required": false, "description": doc, "schema": schema})
}

fn s(t: &str) -> Value {
    json!({"type": t})
}

/// A nullable `t`.
fn ns(t: &str) -> Value {
    json!({"type": [t, "null"]})
}

fn time() -> Value {
    json!({"type": "string", "format": "date-time"})
}

/// A page of `item`s with the next page's cursor.
fn page(item: &str) -> Value {
    json!({
        "type": "object", "required": ["items", "next_cursor"],
        "properties": {"items": {"type": "array", "items": {"$ref": format!("#/components/schemas/{item}")}},
                       "next_cursor": ns("string")}
    })
}

fn components() -> Value {
    let mut schemas = record_schemas();
    for more in [settings_schemas(), delivery_schemas()] {
        schemas
            .as_object_mut()
            .expect("an object")
            .extend(more.as_object().expect("an object").clone());
    }
    json!({
        "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer", "description": "An API key, pk_<id>_<secret>."}},
        "schemas": schemas,
    })
}

/// Transactions, rejections, totals, the audit log and problems.
fn record_schemas() -> Value {
    let time = time();
    let transaction = json!({
        "type": "object",
        "properties": {
            "transaction_id": s("string"), "merchant_id": s("string"), "terminal_id": s("string"),
            "sequence": s("integer"), "transaction_time": time, "type": s("string"),
            "original_transaction_id": ns("string"), "amount_minor": s("integer"), "currency": s("string"),
            "payment_method": s("string"), "entry_mode": s("string"),
            "card": {"type": "object", "properties": {"bin": ns("string"), "last4": ns("string")}},
            "auth_code": ns("string"), "response_code": s("string"), "mcc": s("string"),
            "received_at": time, "validated_at": time, "stored_at": time,
            "offline": s("boolean"), "offline_since": {"type": ["string", "null"], "format": "date-time"}
        }
    });
    json!({
            "Transaction": transaction,
            "TransactionPage": page("Transaction"),
            "TransactionDetail": {"allOf": [{"$ref": "#/components/schemas/Transaction"}, {"type": "object", "properties": {
                "line_items": {"type": "array", "items": {"type": "object", "properties": {
                    "line_no": s("integer"), "sku": s("string"), "description": s("string"),
                    "unit_price_minor": s("integer"), "quantity": s("integer")}}},
                "fraud_alerts": {"type": "array", "items": {"$ref": "#/components/schemas/FraudAlert"}},
                "deliveries": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}}}}]},
            "Rejection": {"type": "object", "properties": {
                "transaction_id": s("string"), "merchant_id": s("string"), "terminal_id": s("string"),
                "transaction_time": time, "type": s("string"), "amount_minor": s("integer"), "currency": s("string"),
                "reason_codes": {"type": "array", "items": s("string")}, "reasons": {}, "received_at": time, "rejected_at": time}},
            "RejectionPage": page("Rejection"),
            "Totals": {"type": "object", "properties": {"from": time, "to": time, "totals": {"type": "array", "items": {
                "type": "object", "properties": {"currency": s("string"), "type": s("string"), "count": s("integer"), "amount_minor": s("integer")}}}}},
            "AuditRecord": {"type": "object", "properties": {
                "seq": s("integer"), "at": time, "actor": s("string"), "role": s("string"), "merchant_id": s("string"),
                "action": s("string"), "resource": s("string"), "filter": {}, "row_count": s("integer"),
                "status": s("integer"), "outcome": s("string"), "source": s("string"), "request_id": s("string"),
                "reason": s("string"), "before": {}, "after": {}, "hash": s("string")}},
            "AuditPage": page("AuditRecord"),
            "Problem": {"type": "object", "description": "RFC 9457 problem details.", "required": ["type", "title", "status", "request_id"],
                "properties": {"type": s("string"), "title": s("string"), "status": s("integer"), "detail": s("string"),
                    "request_id": s("string"), "errors": {"type": "array", "items": {"type": "object",
                        "properties": {"field": s("string"), "message": s("string")}}}}}
    })
}

/// Delivery settings and API keys.
fn settings_schemas() -> Value {
    let time = time();
    let settings_fields = json!({
        "mode": {"enum": ["per-event", "digest"]},
        "digest_every": {"type": ["string", "null"], "description": "With mode digest: 10s to 7days, e.g. \"1h\", \"1day\", \"7days\" (periods aligned to UTC, weeks from Monday)."},
        "format": {"enum": ["json", "csv"]},
        "events": {"type": "array", "items": {"enum": ["transactions", "refunds", "fraud-alerts"]}},
        "webhook_url": {"type": ["string", "null"], "description": "https only; internal addresses are refused."},
        "emails": {"type": "array", "items": s("string")},
        "risk_emails": {"type": "array", "items": s("string")}
    });
    let mut settings = settings_fields.clone();
    settings["merchant_id"] = s("string");
    settings["updated_at"] = time.clone();
    let mut settings_input = settings_fields;
    settings_input["webhook_secret"] = json!({"type": "string", "minLength": 16, "writeOnly": true,
        "description": "Leave out to keep the current secret."});
    let key = json!({
        "type": "object",
        "properties": {"id": s("string"), "name": s("string"), "role": s("string"),
            "merchants": {"type": "array", "items": s("string")}, "created_at": time, "created_by": s("string"),
            "expires_at": ns("string"), "revoked_at": ns("string"), "revoked_by": ns("string"), "last_used_at": ns("string")}
    });
    let mut created = key.clone();
    created["properties"]["key"] =
        json!({"type": "string", "description": "The key. Shown once: store it now."});
    json!({
            "Settings": {"type": "object", "properties": settings},
            "SettingsInput": {"type": "object", "additionalProperties": false, "properties": settings_input},
            "ApiKey": key,
            "ApiKeyList": {"type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/ApiKey"}}}},
            "ApiKeyInput": {"type": "object", "additionalProperties": false, "required": ["name", "role"], "properties": {
                "name": s("string"), "role": {"enum": ["owner", "finance", "developer", "auditor"]},
                "expires_at": {"type": "string", "format": "date-time"}}},
            "ApiKeyCreated": created
    })
}

/// Events, deliveries, redelivery, secret rotation, reports and fraud alerts.
fn delivery_schemas() -> Value {
    let time = time();
    let event = json!({
        "type": "object",
        "properties": {"id": s("integer"), "merchant_id": s("string"), "event_id": ns("string"),
            "event_type": s("string"), "channel": {"enum": ["webhook", "email"]},
            "status": {"enum": ["pending", "delivered", "failed"]}, "attempts": s("integer"),
            "last_error": ns("string"), "idempotency_key": s("string"), "created_at": time,
            "finished_at": ns("string"), "redelivered_at": ns("string")}
    });
    json!({
            "Event": event,
            "EventPage": page("Event"),
            "EventDetail": {"allOf": [{"$ref": "#/components/schemas/Event"}, {"type": "object", "properties": {
                "attempt_history": {"type": "array", "items": {"type": "object", "properties": {
                    "attempt": s("integer"), "at": time, "outcome": {"enum": ["delivered", "retry", "failed"]},
                    "status_code": ns("integer"), "duration_ms": s("integer"), "error": ns("string")}}}}}]},
            "Redelivered": {"type": "object", "properties": {"redelivered": {"type": "array", "items": s("integer")}}},
            "RedeliverRange": {"type": "object", "additionalProperties": false, "required": ["from", "to"], "properties": {
                "from": {"type": "string", "format": "date-time"}, "to": {"type": "string", "format": "date-time"}}},
            "SecretRotation": {"type": "object", "additionalProperties": false, "required": ["webhook_secret"], "properties": {
                "webhook_secret": {"type": "string", "minLength": 16, "writeOnly": true},
                "overlap": {"type": "string", "description": "How long the previous secret signs too (default 24h, at most 7days)."}}},
            "Rotated": {"type": "object", "properties": {"webhook_secret": s("string"), "previous_signs_until": time}},
            "ReportInput": {"type": "object", "additionalProperties": false, "required": ["from", "to", "format"], "properties": {
                "from": {"type": "string", "format": "date-time"}, "to": {"type": "string", "format": "date-time"},
                "format": {"enum": ["csv", "json"]}}},
            "Report": {"type": "object", "properties": {
                "id": s("string"), "merchant_id": s("string"), "period_from": time, "period_to": time,
                "format": {"enum": ["csv", "json"]}, "status": {"enum": ["queued", "running", "ready", "failed"]},
                "rows": ns("integer"), "bytes": ns("integer"), "sha256": ns("string"), "totals": {},
                "error": ns("string"), "requested_by": s("string"), "created_at": time, "ready_at": ns("string"),
                "acknowledged_at": ns("string"), "acknowledged_by": ns("string"), "download": s("string")}},
            "ReportList": {"type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/Report"}}}},
            "ReportFile": {"type": "string", "description": "The file: text/csv or application/json (an array of transactions)."},
            "FraudAlert": {"type": "object", "properties": {
                "alert_id": s("string"), "merchant_id": s("string"), "terminal_id": s("string"), "rule_id": s("string"),
                "severity": s("string"), "score": s("number"),
                "evidence_transaction_ids": {"type": "array", "items": s("string")}, "detected_at": time}},
            "FraudAlertPage": page("FraudAlert")
    })
}

/// The document, pretty-printed with a final newline (as committed).
pub fn document() -> String {
    let mut paths = Map::new();
    for r in ROUTES {
        let mut parameters: Vec<Value> = r
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string", "maxLength": 64}}))
            .collect();
        parameters.extend(r.params.iter().map(|p| param(p)));
        if r.action == crate::routes::Action::RequestReport {
            parameters.push(json!({"name": "Idempotency-Key", "in": "header", "required": true,
                "description": "The same key returns the same report (1-128 letters, digits, '-', '_', '.').",
                "schema": {"type": "string", "maxLength": 128}}));
        }
        let roles: Vec<&str> = Role::iter()
            .filter(|role| role.allows(r.permission))
            .map(Role::as_str)
            .collect();
        let mut responses = Map::new();
        responses.insert(
            r.response.0.to_string(),
            json!({"description": "OK", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{}", r.response.1)}}}}),
        );
        for (status, slug, title) in Problem::KINDS {
            if status == 415 && r.body.is_none() {
                continue;
            }
            responses.insert(
                status.to_string(),
                json!({"description": format!("{title} (https://posflow.dev/problems/{slug})"),
                       "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}),
            );
        }
        let mut op = json!({
            "operationId": r.name,
            "summary": r.summary,
            "description": format!("Needs `{}` (roles: {}). Operators send a `Posflow-Reason` header.", r.permission.as_str(), roles.join(", ")),
            "security": [{"apiKey": []}],
            "parameters": parameters,
            "responses": responses,
        });
        if let Some(body) = r.body {
            op["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{body}")}}}});
        }
        paths
            .entry(r.path)
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("an object")
            .insert(r.method.as_str().into(), op);
    }
    paths.insert(
        OPENAPI_PATH.into(),
        json!({"get": {"operationId": "openapi", "summary": "This document (no key needed)", "security": [],
                       "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {}}}}}}),
    );
    let permissions: Vec<Value> = Permission::iter()
        .map(|p| json!({"permission": p.as_str(), "roles": Role::iter().filter(|r| r.allows(p)).map(|r| r.as_str()).collect::<Vec<_>>()}))
        .collect();
    let doc = json!({
        "openapi": "3.1.0",
        "info": {
            "title": "posflow merchant API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Merchants' records, delivery settings, API keys and audit log. docs/api.md is the guide.",
            "x-permissions": permissions,
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": components(),
    });
    serde_json::to_string_pretty(&doc).expect("a JSON value serialises") + "\n"
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_committed_document_is_what_the_code_generates() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        let generated = super::document();
        if committed != generated {
            if std::env::var_os("POSFLOW_WRITE_OPENAPI").is_some() {
                std::fs::write(path, &generated).expect("writing docs/openapi.json");
                return;
            }
            panic!("docs/openapi.json is stale: run `POSFLOW_WRITE_OPENAPI=1 cargo test -p posflow-api openapi` and commit it");
        }
    }
}
