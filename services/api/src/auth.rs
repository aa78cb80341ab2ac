//! Who is asking, and what they may do: API keys, roles and the permission matrix.
//!
//! A key reads `pk_<12 hex>_<43 base64url>`: the first part (`pk_…`, the key id) is visible in
//! lists and the audit log; the rest is 256 random bits, shown once and stored only as its
//! SHA-256. The matrix below is the one place a permission is decided; docs/api.md prints it.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// What a principal may be allowed to do. Each route needs exactly one.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, strum::EnumIter, strum::EnumCount, strum::IntoStaticStr,
)]
pub enum Permission {
    /// Transactions, rejections, totals, reports.
    #[strum(serialize = "records:read")]
    RecordsRead,
    /// Request and acknowledge reports.
    #[strum(serialize = "reports:run")]
    ReportsRun,
    /// Delivery settings, read.
    #[strum(serialize = "settings:read")]
    SettingsRead,
    /// Delivery settings, change.
    #[strum(serialize = "settings:write")]
    SettingsWrite,
    /// Notification events and their delivery attempts.
    #[strum(serialize = "events:read")]
    EventsRead,
    /// Ask for deliveries again.
    #[strum(serialize = "events:redeliver")]
    EventsRedeliver,
    /// The merchant's API keys, list.
    #[strum(serialize = "keys:read")]
    KeysRead,
    /// The merchant's API keys, create and revoke.
    #[strum(serialize = "keys:manage")]
    KeysManage,
    /// The merchant's audit log.
    #[strum(serialize = "audit:read")]
    AuditRead,
    /// The merchant's people in the portal: invite, change role, remove, reset MFA.
    #[strum(serialize = "team:manage")]
    TeamManage,
}

impl Permission {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    strum::EnumIter,
    strum::IntoStaticStr,
    strum::EnumString,
)]
#[strum(serialize_all = "lowercase")]
pub enum Role {
    /// Everything, for its merchants.
    Owner,
    /// Records and reports.
    Finance,
    /// Webhooks, events, settings.
    Developer,
    /// Read-only, including the audit log.
    Auditor,
    /// The platform's support staff: read-only, any merchant, every request states a reason.
    /// Operator keys are made with `posflow-admin api-keys create`, never through the API.
    Operator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
    pub fn parse(s: &str) -> Option<Self> {
        s.parse().ok()
    }

    /// The roles of the keys this role may create and revoke: those whose every permission it
    /// has itself (an owner: any; a developer: developer). Never operator.
    pub fn creatable(self) -> Vec<String> {
        use strum::IntoEnumIterator;
        Role::iter()
            .filter(|r| *r != Role::Operator && self.allows(Permission::KeysManage))
            .filter(|r| Permission::iter().all(|p| !r.allows(p) || self.allows(p)))
            .map(|r| r.as_str().to_string())
            .collect()
    }

    /// The permission matrix.
    pub fn allows(self, p: Permission) -> bool {
        use Permission::*;
        match self {
            Role::Owner => true,
            Role::Finance => matches!(p, RecordsRead | ReportsRun),
            // Keys: only developer keys (Role::creatable), for the systems they integrate.
            Role::Developer => matches!(
                p,
                SettingsRead | SettingsWrite | EventsRead | EventsRedeliver | KeysRead | KeysManage
            ),
            Role::Auditor => matches!(
                p,
                RecordsRead | SettingsRead | EventsRead | KeysRead | AuditRead
            ),
            // Support reads; it never changes a merchant's settings or keys through the API.
            Role::Operator => matches!(
                p,
                RecordsRead | SettingsRead | EventsRead | KeysRead | AuditRead
            ),
        }
    }
}

/// A key's parts as presented: its id (looked up) and its secret (hashed and compared).
#[derive(Debug, PartialEq, Eq)]
pub struct Presented<'a> {
    pub id: &'a str,
    pub secret: &'a str,
}

const ID_HEX: usize = 12;
const SECRET_CHARS: usize = 43; // 32 bytes, base64url without padding

/// Splits `pk_<id>_<secret>`; `None` for anything else (a wrong prefix, a truncated key).
pub fn parse_key(key: &str) -> Option<Presented<'_>> {
    let rest = key.strip_prefix("pk_")?;
    let (hex, secret) = rest.split_at_checked(ID_HEX)?;
    let secret = secret.strip_prefix('_')?;
    let ok = hex
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        && secret.len() == SECRET_CHARS
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    ok.then(|| Presented {
        id: &key[..3 + ID_HEX],
        secret,
    })
}

/// A new key: (id, the whole key to show once, the hash to store).
pub fn generate() -> (String, String, Vec<u8>) {
    let mut rng = rand::thread_rng();
    let mut id = [0u8; ID_HEX / 2];
    rng.fill_bytes(&mut id);
    let id = format!(
        "pk_{}",
        id.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    let mut secret = [0u8; 32];
    rng.fill_bytes(&mut secret);
    let secret = URL_SAFE_NO_PAD.encode(secret);
    let key = format!("{id}_{secret}");
    (id, key, hash(&secret))
}

pub fn hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// Compares two hashes without an early exit.
pub fn same_hash(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    pub key_id: String,
    pub role: Role,
    /// Empty for operators (any merchant).
    pub merchants: Vec<String>,
}

impl Principal {
    /// Whether this principal may act for `merchant` at all (the role decides what it may do).
    pub fn reaches(&self, merchant: &str) -> bool {
        self.role == Role::Operator || self.merchants.iter().any(|m| m == merchant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strum::{EnumCount, IntoEnumIterator};

    #[test]
    fn generated_keys_parse_and_their_hash_matches() {
        let (id, key, stored) = generate();
        let p = parse_key(&key).expect("a generated key parses");
        assert_eq!(p.id, id);
        assert!(same_hash(&hash(p.secret), &stored));
        assert!(!same_hash(&hash("x"), &stored));
    }

    #[test]
    fn malformed_keys_are_refused() {
        let (_, key, _) = generate();
        for bad in [
            "".to_string(),
            key.replacen("pk_", "sk_", 1),
            key[..key.len() - 1].to_string(),
            format!("{key}A"),
            key.replacen('_', "-", 2),
            key.to_uppercase(),
            format!("{}!{}", &key[..20], &key[21..]),
        ] {
            assert!(parse_key(&bad).is_none(), "{bad:?} parsed");
        }
    }

    #[test]
    fn the_matrix_as_documented() {
        use Permission::*;
        let allowed = |r: Role| -> Vec<&str> {
            Permission::iter()
                .filter(|p| r.allows(*p))
                .map(Permission::as_str)
                .collect()
        };
        assert_eq!(allowed(Role::Owner).len(), Permission::COUNT);
        assert_eq!(
            allowed(Role::Finance),
            [RecordsRead.as_str(), ReportsRun.as_str()]
        );
        assert_eq!(
            allowed(Role::Developer),
            [
                "settings:read",
                "settings:write",
                "events:read",
                "events:redeliver",
                "keys:read",
                "keys:manage"
            ]
        );
        assert_eq!(
            allowed(Role::Auditor),
            [
                "records:read",
                "settings:read",
                "events:read",
                "keys:read",
                "audit:read"
            ]
        );
        assert_eq!(allowed(Role::Operator), allowed(Role::Auditor));
    }

    #[test]
    fn no_role_gives_a_key_more_than_it_has() {
        assert_eq!(
            Role::Owner.creatable(),
            ["owner", "finance", "developer", "auditor"]
        );
        assert_eq!(Role::Developer.creatable(), ["developer"]);
        for r in [Role::Finance, Role::Auditor, Role::Operator] {
            assert!(r.creatable().is_empty(), "{r:?}");
        }
    }

    #[test]
    fn docs_api_md_prints_the_matrix() {
        let doc = include_str!("../../../docs/api.md");
        for p in Permission::iter() {
            let row = doc
                .lines()
                .find(|l| l.starts_with(&format!("| `{}`", p.as_str())))
                .unwrap_or_else(|| panic!("docs/api.md has no row for {}", p.as_str()));
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            // | permission | owner | finance | developer | auditor | operator |
            for (i, role) in Role::iter().enumerate() {
                let ticked = cells[2 + i] == "✓";
                assert_eq!(
                    ticked,
                    role.allows(p),
                    "docs/api.md: {} for {}",
                    p.as_str(),
                    role.as_str()
                );
            }
        }
    }
}
