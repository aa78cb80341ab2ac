//! Every endpoint, once: the router matches against this table, the service checks each
//! route's permission from it, and the OpenAPI document is generated from it (openapi.rs), so
//! the three cannot disagree.

use crate::auth::Permission;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Put,
    Delete,
}

impl Method {
    pub fn parse(m: &hyper::Method) -> Option<Self> {
        match *m {
            hyper::Method::GET => Some(Method::Get),
            hyper::Method::POST => Some(Method::Post),
            hyper::Method::PUT => Some(Method::Put),
            hyper::Method::DELETE => Some(Method::Delete),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "get",
            Method::Post => "post",
            Method::Put => "put",
            Method::Delete => "delete",
        }
    }
}

/// What a route does; the service dispatches on it and the audit log records its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    SearchTransactions,
    GetTransaction,
    SearchRejections,
    Totals,
    FraudAlerts,
    GetSettings,
    PutSettings,
    RotateSecret,
    SearchEvents,
    GetEvent,
    RedeliverEvent,
    RedeliverRange,
    RequestReport,
    ListReports,
    GetReport,
    DownloadReport,
    AcknowledgeReport,
    ListKeys,
    CreateKey,
    RevokeKey,
    ReadAudit,
}

pub struct Route {
    pub method: Method,
    /// `{name}` segments are parameters.
    pub path: &'static str,
    pub action: Action,
    /// The audit log's name for it.
    pub name: &'static str,
    pub permission: Permission,
    pub summary: &'static str,
    /// Query parameters accepted (anything else is a 400).
    pub params: &'static [&'static str],
    /// The JSON body's schema (components/schemas), if it takes one.
    pub body: Option<&'static str>,
    /// The success response: status and schema.
    pub response: (u16, &'static str),
}

use crate::events::EVENT_PARAMS;
use crate::records::{ALERT_PARAMS, REJECTION_PARAMS, TOTALS_PARAMS, TRANSACTION_PARAMS};

pub const AUDIT_PARAMS: &[&str] = &["limit", "cursor"];

pub const ROUTES: &[Route] = &[
    Route {
        method: Method::Get,
        path: "/v1/merchants/{merchant_id}/transactions",
        action: Action::SearchTransactions,
        name: "transactions.search",
        permission: Permission::RecordsRead,
        summary: "Search the merchant's accepted transactions, newest first",
        params: TRANSACTION_PARAMS,
        body: None,
        response: (200, "TransactionPage"),
    },
    Route {
        method: Method::Get,
        path: "/v1/merchants/{merchant_id}/transactions/{transaction_id}",
        action: Action::GetTransaction,
        name: "transactions.get",
        permission: Permission::RecordsRead,
        summary: "One transaction with its line items, its fraud alerts and its notification deliveries",
        params: &[],
        body: None,
        response: (200, "TransactionDetail"),
    },
    Route {
        method: Method::Get,
        path: "/v1/merchants/{merchant_id}/rejections",
        action: Action::SearchRejections,
        name: "rejections.search",
        permission: Permission::RecordsRead,
        summary: "Search the merchant's rejected transactions, with reason codes",
        params: REJECTION_PARAMS,
        body: None,
        response: (200, "RejectionPage"),
    },
    Route {
        method: Method::Get,
        path: "/v1/merchants/{merchant_id}/totals",
        action: Action::Totals,
        name: "totals.get",
        permission: Permission::RecordsRead,
        summary: "Count and amount per currency and type over [from, to)",
        params: TOTALS_PARAMS,
        body: None,
        response: (200, "Totals"),
    },
    Route {
        method: Method::Get,
        path: "/v1/merchants/{merchant_id}/fraud-alerts",
        action: Action::FraudAlerts,
        name: "fraud_alerts.search",
        permission: Permission::RecordsRead,
        summary: "The merchant's fraud alerts, newest first",
        params: ALERT_PARAMS,
        body: None,
        response: (200, "FraudAlertPage"),
    },
    Route {
        method: Method::Get,
        path: "/v1/merchants/{merchant_id}/settings",
        action: Action::GetSettings,
        name: "settings.get",
        permission: Permission::SettingsRead,
        summary: "The merchant's notification settings (never the webhook secret)",
        params: &[],
        body: None,
        response: (200, "Settings"),
    },
    Route {
        method: Method::Put,
        path: "/v1/merchants/{merchant_id}/settings",
        action: Action::PutSettings,
        name: "settings.update",
        permission: Permission::SettingsWrite,
        summary: "Replace the merchant's notification settings",
        params: &[],
        body: Some("SettingsInput"),
        response: (200, "Settings"),
    },
    Route {
        method: Method::Post,
        path: "/v1/merchants/{merchant_id}/settings/webhook-secret",
        action: Action::RotateSecret,
        name: "settings.rotate_secret",
        permission: Permission::SettingsWrite,
        summary: "Rotate the webhook signing secret; both sign every delivery during the overlap",
        params: &[],
        body: Some("SecretRotation"),
        response: (200, "Rotated"),
    },
    Route {
        method: Method::Get,
        path: "/v1/merchants/{merchant_id}/events",
        action: Action::SearchEvents,
        name: "events.search",
        permission: Permission::EventsRead,
        summary: "The merchant's notification deliveries (an event on a channel), newest first",
        params: EVENT_PARAMS,
        body: None,
        response: (200, "EventPage"),
    },
    Route {
        method: Method::Get,
        path: "/v1/merchants/{merchant_id}/events/{event}",
        action: Action::GetEvent,
        name: "events.get",
        permission: Permission::EventsRead,
        summary: "One delivery with every attempt (outcome, HTTP status, duration, error)",
        params: &[],
        body: None,
        response: (200, "EventDetail"),
    },
    Route {
        method: Method::Post,
        path: "/v1/merchants/{merchant_id}/events/{event}/redeliver",
        action: Action::RedeliverEvent,
        name: "events.redeliver",
        permission: Permission::EventsRedeliver,
        summary: "Deliver a finished event once more, under its original idempotency key",
        params: &[],
        body: None,
        response: (200, "Redelivered"),
    },
    Route {
        method: Method::Post,
        path: "/v1/merchants/{merchant_id}/events/redeliver",
        action: Action::RedeliverRange,
        name: "events.redeliver_failed",
        permission: Permission::EventsRedeliver,
        summary: "Deliver every failed event created in [from, to) once more (at most 10,000)",
        params: &[],
        body: Some("RedeliverRange"),
        response: (200, "Redelivered"),
    },
    Route {
        method: Method::Post,
        path: "/v1/merchants/{merchant_id}/reports",
        action: Action::RequestReport,
        name: "reports.request",
        permission: Permission::ReportsRun,
        summary: "Queue a report of the period's transactions (CSV or JSON); needs an Idempotency-Key header",
        params: &[],
        body: Some("ReportInput"),
        response: (202, "Report"),
    },
    Route {
        method: Method::Get,
        path: "/v1/merchants/{merchant_id}/reports",
        action: Action::ListReports,
        name: "reports.list",
        permission: Permission::RecordsRead,
        summary: "The merchant's reports, newest first (100 at most)",
        params: &[],
        body: None,
        response: (200, "ReportList"),
    },
    Route {
        method: Method::Get,
        path: "/v1/merchants/{merchant_id}/reports/{report}",
        action: Action::GetReport,
        name: "reports.get",
        permission: Permission::RecordsRead,
        summary: "One report: its status, size, checksum and totals",
        params: &[],
        body: None,
        response: (200, "Report"),
    },
    Route {
        method: Method::Get,
        path: "/v1/merchants/{merchant_id}/reports/{report}/download",
        action: Action::DownloadReport,
        name: "reports.download",
        permission: Permission::RecordsRead,
        summary: "The report's file (text/csv or application/json), streamed",
        params: &[],
        body: None,
        response: (200, "ReportFile"),
    },
    Route {
        method: Method::Post,
        path: "/v1/merchants/{merchant_id}/reports/{report}/acknowledge",
        action: Action::AcknowledgeReport,
        name: "reports.acknowledge",
        permission: Permission::ReportsRun,
        summary: "Confirm the report was received (the first confirmation is kept)",
        params: &[],
        body: None,
        response: (200, "Report"),
    },
    Route {
        method: Method::Get,
        path: "/v1/merchants/{merchant_id}/api-keys",
        action: Action::ListKeys,
        name: "api_keys.list",
        permission: Permission::KeysRead,
        summary: "The API keys acting for the merchant (never their secrets)",
        params: &[],
        body: None,
        response: (200, "ApiKeyList"),
    },
    Route {
        method: Method::Post,
        path: "/v1/merchants/{merchant_id}/api-keys",
        action: Action::CreateKey,
        name: "api_keys.create",
        permission: Permission::KeysManage,
        summary: "Create a key for the merchant; the response holds the key, shown this once",
        params: &[],
        body: Some("ApiKeyInput"),
        response: (201, "ApiKeyCreated"),
    },
    Route {
        method: Method::Delete,
        path: "/v1/merchants/{merchant_id}/api-keys/{key_id}",
        action: Action::RevokeKey,
        name: "api_keys.revoke",
        permission: Permission::KeysManage,
        summary: "Revoke a key at once",
        params: &[],
        body: None,
        response: (200, "ApiKey"),
    },
    Route {
        method: Method::Get,
        path: "/v1/merchants/{merchant_id}/audit",
        action: Action::ReadAudit,
        name: "audit.read",
        permission: Permission::AuditRead,
        summary: "The merchant's audit log, newest first",
        params: AUDIT_PARAMS,
        body: None,
        response: (200, "AuditPage"),
    },
];

/// The public, unauthenticated document.
pub const OPENAPI_PATH: &str = "/v1/openapi.json";

/// A matched route and its path parameters, in order.
pub struct Matched<'a> {
    pub route: &'static Route,
    pub args: Vec<&'a str>,
}

/// What the path and method hit.
pub enum Found<'a> {
    Route(Matched<'a>),
    /// The path exists with other methods.
    WrongMethod,
    None,
}

pub fn find<'a>(method: Option<Method>, path: &'a str) -> Found<'a> {
    let given: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let mut path_exists = false;
    for route in ROUTES {
        let pattern: Vec<&str> = route.path.split('/').collect();
        if pattern.len() != given.len() {
            continue;
        }
        let mut args = Vec::new();
        let fits = pattern.iter().zip(&given).all(|(p, g)| {
            if p.starts_with('{') {
                args.push(*g);
                !g.is_empty()
            } else {
                p == g
            }
        });
        if !fits {
            continue;
        }
        if Some(route.method) == method {
            return Found::Route(Matched { route, args });
        }
        path_exists = true;
    }
    if path_exists {
        Found::WrongMethod
    } else {
        Found::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_match_with_their_parameters() {
        let Found::Route(m) = find(Some(Method::Get), "/v1/merchants/M001/transactions/tx-9")
        else {
            panic!("no match")
        };
        assert_eq!(m.route.action, Action::GetTransaction);
        assert_eq!(m.args, ["M001", "tx-9"]);
        assert!(matches!(
            find(Some(Method::Post), "/v1/merchants/M001/totals"),
            Found::WrongMethod
        ));
        assert!(matches!(
            find(Some(Method::Get), "/v1/merchants//totals"),
            Found::None
        ));
        assert!(matches!(find(Some(Method::Get), "/v2/x"), Found::None));
    }

    #[test]
    fn every_route_is_unique() {
        for (i, a) in ROUTES.iter().enumerate() {
            for b in &ROUTES[i + 1..] {
                assert!(!(a.path == b.path && a.method == b.method), "{}", a.path);
                assert_ne!(a.name, b.name);
            }
        }
    }
}
