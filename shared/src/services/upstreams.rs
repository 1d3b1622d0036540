//! Where each provider's requests go: the catalog's base URL, unless an operator overrode it
//! (`STOCKPULSE_UPSTREAM_<PROVIDER>` or `STOCKPULSE_UPSTREAM_<PROVIDER>_<ENVIRONMENT>`).
//! Tenants can never change a destination.

use std::collections::BTreeMap;

use crate::domain::catalog::Provider;
use crate::domain::environment::Environment;

/// `STOCKPULSE_UPSTREAM_*` variables that configure the client (see `config`), not a provider.
const NOT_OVERRIDES: [&str; 2] = ["TIMEOUT_MS", "CONNECT_TIMEOUT_MS"];

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Upstreams {
    overrides: BTreeMap<(String, Option<Environment>), url::Url>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{variable}: {problem}")]
pub struct OverrideError {
    pub variable: String,
    pub problem: String,
}

impl Upstreams {
    /// Reads overrides from environment-style pairs; unknown providers and bad URLs are errors so
    /// that a typo cannot silently send traffic to the real provider.
    pub fn from_vars<'a>(
        vars: impl IntoIterator<Item = (&'a str, &'a str)>,
        known: impl Fn(&str) -> bool,
    ) -> Result<Upstreams, OverrideError> {
        let mut overrides = BTreeMap::new();
        for (name, value) in vars {
            let Some(rest) = name.strip_prefix("STOCKPULSE_UPSTREAM_") else { continue };
            // Settings of the upstream client share the prefix; they are not overrides.
            if NOT_OVERRIDES.contains(&rest) {
                continue;
            }
            let lower = rest.to_ascii_lowercase();
            let fail = |problem: String| OverrideError { variable: name.to_owned(), problem };
            let (provider, environment) = match lower.rsplit_once('_') {
                Some((p, e)) if Environment::parse(e).is_some() => (p.to_owned(), Environment::parse(e)),
                _ => (lower.clone(), None),
            };
            if !known(&provider) {
                return Err(fail(format!("`{provider}` is not a provider in the catalog")));
            }
            let url = url::Url::parse(value.trim_end_matches('/')).map_err(|e| fail(format!("not a URL: {e}")))?;
            if !matches!(url.scheme(), "http" | "https") || url.host().is_none() || !url.username().is_empty() || url.query().is_some() {
                return Err(fail("must be an http(s) URL with a host and no credentials or query".into()));
            }
            overrides.insert((provider, environment), url);
        }
        Ok(Upstreams { overrides })
    }

    /// The base URL (no trailing slash) for a provider's environment.
    pub fn base_url(&self, provider: &Provider, environment: Environment) -> String {
        self.overrides
            .get(&(provider.id.clone(), Some(environment)))
            .or_else(|| self.overrides.get(&(provider.id.clone(), None)))
            .map(|u| u.as_str().trim_end_matches('/').to_owned())
            .unwrap_or_else(|| provider.environment(environment).base_url.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::catalog::catalog;

    fn known(id: &str) -> bool {
        catalog().provider(id).is_some()
    }

    #[test]
    fn overrides_apply_per_provider_and_environment() {
        let u = Upstreams::from_vars(
            [("STOCKPULSE_UPSTREAM_OPENAI", "http://127.0.0.1:9999/"), ("STOCKPULSE_UPSTREAM_ALPACA_DEVELOPMENT", "http://127.0.0.1:9998")],
            known,
        )
        .unwrap();
        let c = catalog();
        assert_eq!(u.base_url(c.provider("openai").unwrap(), Environment::Production), "http://127.0.0.1:9999");
        assert_eq!(u.base_url(c.provider("alpaca").unwrap(), Environment::Development), "http://127.0.0.1:9998");
        assert_eq!(u.base_url(c.provider("alpaca").unwrap(), Environment::Production), "https://api.alpaca.markets");
    }

    #[test]
    fn the_client_settings_are_not_taken_for_overrides() {
        let u = Upstreams::from_vars([("STOCKPULSE_UPSTREAM_TIMEOUT_MS", "300"), ("STOCKPULSE_UPSTREAM_CONNECT_TIMEOUT_MS", "100")], known);
        assert_eq!(u, Ok(Upstreams::default()));
    }

    #[test]
    fn typos_and_odd_urls_are_refused() {
        assert!(Upstreams::from_vars([("STOCKPULSE_UPSTREAM_OPENIA", "http://127.0.0.1:1")], known).is_err());
        assert!(Upstreams::from_vars([("STOCKPULSE_UPSTREAM_OPENAI", "ftp://x")], known).is_err());
        assert!(Upstreams::from_vars([("STOCKPULSE_UPSTREAM_OPENAI", "http://u:p@host")], known).is_err());
    }
}
