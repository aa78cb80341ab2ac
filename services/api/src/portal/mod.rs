//! The merchant portal: the people at a merchant — signed in with a password and a TOTP code —
//! see their sales, find transactions and control how they are told, in server-rendered pages
//! of the same binary, under the API's roles, scope and audit trail (issue 19; docs/portal.md).
//!
//! Built so far, as rules apart from storage: [`password`] (what a new one must pass; argon2id),
//! [`totp`] (RFC 6238 codes, enrolment secrets) and [`session`] (cookies, CSRF tokens,
//! timeouts, lockout, page headers). The people's tables, the sign-in flow and the pages come
//! next.

pub mod password;
pub mod session;
pub mod totp;
