//! The two environments every key slot exists in.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `production` is the live API; `development` is the provider's sandbox or paper host where it
/// has one, otherwise the same host used with a separate key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Environment {
    Production,
    Development,
}

impl Environment {
    pub const ALL: [Environment; 2] = [Environment::Production, Environment::Development];

    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Production => "production",
            Environment::Development => "development",
        }
    }

    pub fn parse(value: &str) -> Option<Environment> {
        Environment::ALL.into_iter().find(|e| e.as_str() == value)
    }
}
