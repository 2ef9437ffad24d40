//! What a resource token may do: `RESOURCE_TYPE:RESOURCE_NAMES:ACTIONS`, as InfluxDB 3's
//! `create token --permission` writes it (`db:sensors,fleet:read,write`, `db:*:read`,
//! `system:*:read`).

use std::{fmt, str::FromStr};

/// What kind of thing a permission covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceType {
    /// Databases: read is querying, write is writing line protocol.
    Db,
    /// Server information: `metrics` (`/metrics`); `health` and `ping` are open to all.
    System,
}

/// An action on a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Query data, read metrics.
    Read,
    /// Write data.
    Write,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Read => "read",
            Self::Write => "write",
        })
    }
}

/// The system resources a `system` permission can name.
pub const SYSTEM_RESOURCES: [&str; 3] = ["health", "metrics", "ping"];

/// One permission of a resource token.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Permission {
    /// The resource type.
    pub resource: ResourceType,
    /// The names covered; `None` is `*` (every one, present and future).
    pub names: Option<Vec<String>>,
    /// Read allowed.
    pub read: bool,
    /// Write allowed.
    pub write: bool,
}

impl Permission {
    /// Whether this permission allows `action` on the resource `name` of type `resource`.
    pub fn allows(&self, resource: ResourceType, name: &str, action: Action) -> bool {
        self.resource == resource
            && self.names.as_ref().is_none_or(|n| n.iter().any(|n| n == name))
            && match action {
                Action::Read => self.read,
                Action::Write => self.write,
            }
    }

    /// Whether this permission allows anything on the resource `name` of type `resource`.
    pub fn covers(&self, resource: ResourceType, name: &str) -> bool {
        self.resource == resource && self.names.as_ref().is_none_or(|n| n.iter().any(|n| n == name))
    }
}

impl FromStr for Permission {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!(
                "invalid permission {s:?}: {why}; expected RESOURCE_TYPE:RESOURCE_NAMES:ACTIONS, \
                 e.g. db:sensors,fleet:read,write or db:*:read or system:metrics:read"
            )
        };
        let mut parts = s.split(':');
        let (Some(kind), Some(names), Some(actions), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("it needs exactly three parts separated by ':'"));
        };
        let resource = match kind.trim() {
            "db" => ResourceType::Db,
            "system" => ResourceType::System,
            other => return Err(bad(&format!("unknown resource type {other:?} (use db or system)"))),
        };
        let names: Vec<String> = names.split(',').map(|n| n.trim().to_string()).collect();
        let names = if names.len() == 1 && names[0] == "*" {
            None
        } else {
            if let Some(empty) = names.iter().position(|n| n.is_empty() || n == "*") {
                return Err(bad(&format!(
                    "resource name {} is {}: list names separated by ',' or give '*' alone",
                    empty + 1,
                    if names[empty].is_empty() { "empty" } else { "'*' among others" }
                )));
            }
            if resource == ResourceType::System
                && let Some(unknown) = names.iter().find(|n| !SYSTEM_RESOURCES.contains(&n.as_str()))
            {
                return Err(bad(&format!(
                    "unknown system resource {unknown:?} (known: {})",
                    SYSTEM_RESOURCES.join(", ")
                )));
            }
            Some(names)
        };
        let (mut read, mut write) = (false, false);
        for a in actions.split(',') {
            match a.trim() {
                "read" => read = true,
                "write" => write = true,
                "*" => (read, write) = (true, true),
                other => return Err(bad(&format!("unknown action {other:?} (use read, write or both)"))),
            }
        }
        if resource == ResourceType::System && write {
            return Err(bad("system resources can only be read"));
        }
        Ok(Self { resource, names, read, write })
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.resource {
            ResourceType::Db => "db",
            ResourceType::System => "system",
        };
        let names = self.names.as_ref().map_or_else(|| "*".to_string(), |n| n.join(","));
        let actions = match (self.read, self.write) {
            (true, true) => "read,write",
            (true, false) => "read",
            (false, true) => "write",
            (false, false) => "none",
        };
        write!(f, "{kind}:{names}:{actions}")
    }
}

impl TryFrom<String> for Permission {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Permission> for String {
    fn from(p: Permission) -> Self {
        p.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_print_round_trip() {
        for (text, canonical) in [
            ("db:sensors,fleet:read,write", "db:sensors,fleet:read,write"),
            ("db:*:read", "db:*:read"),
            ("db:a:write", "db:a:write"),
            ("db:a:write,read", "db:a:read,write"),
            ("db:*:*", "db:*:read,write"),
            ("system:*:read", "system:*:read"),
            ("system:metrics:read", "system:metrics:read"),
        ] {
            let p: Permission = text.parse().unwrap();
            assert_eq!(p.to_string(), canonical);
            assert_eq!(canonical.parse::<Permission>().unwrap(), p);
        }
    }

    #[test]
    fn bad_permissions_say_what_is_wrong() {
        for (text, says) in [
            ("db:a", "three parts"),
            ("db:a:read:x", "three parts"),
            ("table:a:read", "unknown resource type \"table\""),
            ("db::read", "resource name 1 is empty"),
            ("db:a,*:read", "'*' among others"),
            ("db:a:delete", "unknown action \"delete\""),
            ("system:*:write", "only be read"),
            ("system:metric:read", "unknown system resource \"metric\""),
        ] {
            let e = text.parse::<Permission>().unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
            assert!(e.contains("RESOURCE_TYPE:RESOURCE_NAMES:ACTIONS"), "{e}");
        }
    }

    #[test]
    fn allows_exactly_what_it_names() {
        let p: Permission = "db:a,b:read".parse().unwrap();
        assert!(p.allows(ResourceType::Db, "a", Action::Read));
        assert!(p.allows(ResourceType::Db, "b", Action::Read));
        assert!(!p.allows(ResourceType::Db, "a", Action::Write));
        assert!(!p.allows(ResourceType::Db, "c", Action::Read));
        assert!(!p.allows(ResourceType::System, "a", Action::Read));
        let all: Permission = "db:*:write".parse().unwrap();
        assert!(all.allows(ResourceType::Db, "anything", Action::Write));
        assert!(!all.allows(ResourceType::Db, "anything", Action::Read));
        assert!(all.covers(ResourceType::Db, "x"));
    }
}
