//! Who is calling: roles and the verified caller identity.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Workspace roles, ordered: every role can do what the roles before it can.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Sees masked keys, usage and audit; uses the proxy.
    Viewer,
    /// Adds, edits, tests and rotates keys of providers that are not admin-only.
    Member,
    /// Everything, including admin-only providers, deletion and quota policy.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Member, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Member => "member",
            Role::Admin => "admin",
        }
    }

    pub fn parse(value: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == value)
    }

    /// The strongest role among Cognito groups. API Gateway flattens a `cognito:groups` array to
    /// a string such as `[admin member]`; a JSON array or a single name are accepted too.
    pub fn from_groups(groups: &str) -> Option<Role> {
        let trimmed = groups.trim();
        let names: Vec<String> = if trimmed.starts_with("[\"") {
            serde_json::from_str::<Vec<String>>(trimmed).unwrap_or_default()
        } else {
            trimmed.trim_start_matches('[').trim_end_matches(']').split([' ', ',']).filter(|s| !s.is_empty()).map(str::to_owned).collect()
        };
        names.iter().filter_map(|n| Role::parse(n)).max()
    }
}

/// The verified identity of a request, built from the authorizer's claims, never from the URL or
/// the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub sub: String,
    pub email: String,
    pub role: Role,
    pub workspace: String,
}

/// Where a request came from, for the audit trail.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestMeta {
    pub request_id: String,
    pub source_ip: String,
    pub user_agent: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_in_every_shape_api_gateway_sends() {
        assert_eq!(Role::from_groups("[admin member]"), Some(Role::Admin));
        assert_eq!(Role::from_groups("[viewer]"), Some(Role::Viewer));
        assert_eq!(Role::from_groups("member"), Some(Role::Member));
        assert_eq!(Role::from_groups("[\"viewer\",\"member\"]"), Some(Role::Member));
        assert_eq!(Role::from_groups("[owners]"), None);
        assert_eq!(Role::from_groups(""), None);
    }
}
