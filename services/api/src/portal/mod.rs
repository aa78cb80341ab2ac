//! The merchant portal: the people at a merchant — signed in with a password and a TOTP code —
//! see their sales, find transactions and control how they are told, in server-rendered pages
//! of the same binary, under the API's roles, scope and audit trail (issue 19; docs/portal.md).
//!
//! Built so far: the rules — [`password`] (what a new one must pass; argon2id), [`totp`]
//! (RFC 6238 codes, enrolment secrets), [`session`] (cookies, CSRF tokens, timeouts, lockout,
//! page headers) — and [`people`], where they meet the tables (invite, enrol, sign in,
//! sessions). The pages, with an audit record for each event, come next.

pub mod password;
pub mod people;
pub mod session;
pub mod totp;
