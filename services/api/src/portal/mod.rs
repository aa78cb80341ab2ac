//! The merchant portal: the people at a merchant — signed in with a password and a TOTP code —
//! see their sales, find transactions and control how they are told, in server-rendered pages
//! of the same binary, under the API's roles, scope and audit trail (issue 19; docs/portal.md).
//!
//! Built so far: the rules — [`password`] (what a new one must pass; argon2id), [`totp`]
//! (RFC 6238 codes, enrolment secrets), [`session`] (cookies, CSRF tokens, timeouts, lockout,
//! page headers) — and [`people`], where they meet the tables (invite, enrol, sign in,
//! sessions) — and the first pages over them ([`pages`]: sign-in, enrolment, the sales overview
//! with its [`chart`], sign-out; [`html`] for escaping and the frame). Each step is audited.

pub mod api_keys;
pub mod audit_log;
pub mod chart;
pub mod deliveries;
pub mod html;
pub mod invite;
pub mod notifications;
pub mod pages;
pub mod password;
pub mod people;
pub mod reports_page;
pub mod sales;
pub mod session;
pub mod team;
pub mod totp;
pub mod transactions;
