//! Every error the API returns: `application/problem+json` (RFC 9457), with a stable `type`
//! per kind of problem, field-level `errors` for bad input, and the request id. docs/api.md
//! lists them all; `Problem::KINDS` is that list.

use serde::Serialize;
use serde_json::json;

/// One field's problem: `{"field": "limit", "message": "must be 1..=500"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// 400: parameters or body wrong; every field's problem listed.
    Invalid(Vec<FieldError>),
    /// 401: no key, a malformed, unknown, revoked or expired key (which one is not said).
    Unauthenticated,
    /// 403: the key may not do this, or not for this merchant.
    Forbidden(String),
    /// 404: no such resource (for this merchant).
    NotFound,
    /// 405: the path exists, the method does not.
    MethodNotAllowed,
    /// 409: the resource is not in a state for this (a report not ready), or an
    /// Idempotency-Key reused for another request.
    Conflict(String),
    /// 413: the body is larger than the API accepts.
    TooLarge,
    /// 415: the body is not JSON.
    UnsupportedMediaType,
    /// 429: too many requests for this key, or failed authentications from this source.
    RateLimited { retry_after_secs: u64 },
    /// 503: the database cannot be reached; retry.
    Unavailable,
}

impl Problem {
    /// (status, slug, title) of every kind, for the docs and the OpenAPI document.
    pub const KINDS: [(u16, &'static str, &'static str); 10] = [
        (400, "invalid-request", "The request has invalid parameters"),
        (401, "unauthenticated", "A valid API key is required"),
        (403, "forbidden", "The key may not do this"),
        (404, "not-found", "No such resource"),
        (405, "method-not-allowed", "Method not allowed on this path"),
        (409, "conflict", "Conflicts with the resource's state"),
        (413, "too-large", "The request body is too large"),
        (
            415,
            "unsupported-media-type",
            "The body must be application/json",
        ),
        (429, "rate-limited", "Too many requests"),
        (503, "unavailable", "Temporarily unavailable; retry"),
    ];

    /// What a person reads of it: each field's `field: message`, or the kind.
    pub fn reasons(self) -> Vec<String> {
        match self {
            Problem::Invalid(errors) => errors
                .into_iter()
                .map(|e| format!("{}: {}", e.field, e.message))
                .collect(),
            other => vec![other.slug().to_string()],
        }
    }

    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Problem::Invalid(vec![FieldError {
            field: field.into(),
            message: message.into(),
        }])
    }

    fn index(&self) -> usize {
        match self {
            Problem::Invalid(_) => 0,
            Problem::Unauthenticated => 1,
            Problem::Forbidden(_) => 2,
            Problem::NotFound => 3,
            Problem::MethodNotAllowed => 4,
            Problem::Conflict(_) => 5,
            Problem::TooLarge => 6,
            Problem::UnsupportedMediaType => 7,
            Problem::RateLimited { .. } => 8,
            Problem::Unavailable => 9,
        }
    }

    pub fn status(&self) -> u16 {
        Self::KINDS[self.index()].0
    }

    /// The audit log's outcome for a refused request.
    pub fn slug(&self) -> &'static str {
        Self::KINDS[self.index()].1
    }

    /// The problem document.
    pub fn body(&self, request_id: &str) -> serde_json::Value {
        let (status, slug, title) = Self::KINDS[self.index()];
        let mut doc = json!({
            "type": format!("https://posflow.dev/problems/{slug}"),
            "title": title,
            "status": status,
            "request_id": request_id,
        });
        match self {
            Problem::Invalid(errors) => {
                doc["detail"] = json!(format!("{} invalid field(s)", errors.len()));
                doc["errors"] = json!(errors);
            }
            Problem::Forbidden(why) | Problem::Conflict(why) => doc["detail"] = json!(why),
            Problem::RateLimited { retry_after_secs } => {
                doc["detail"] = json!(format!("retry after {retry_after_secs} s"))
            }
            _ => {}
        }
        doc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalid_request_lists_its_fields() {
        let p = Problem::Invalid(vec![
            FieldError {
                field: "limit".into(),
                message: "must be 1..=500".into(),
            },
            FieldError {
                field: "from".into(),
                message: "not RFC 3339".into(),
            },
        ]);
        let body = p.body("r1");
        assert_eq!(p.status(), 400);
        assert_eq!(body["type"], "https://posflow.dev/problems/invalid-request");
        assert_eq!(body["errors"][1]["field"], "from");
        assert_eq!(body["request_id"], "r1");
    }

    #[test]
    fn docs_api_md_lists_every_problem() {
        let doc = include_str!("../../../docs/api.md");
        for (status, slug, _) in Problem::KINDS {
            assert!(
                doc.contains(&format!("| {status} | `{slug}` |")),
                "docs/api.md lists no {status} {slug}"
            );
        }
    }
}
