//! The provider catalog: data, not code.
//!
//! `shared/catalog/providers.toml` is compiled in and parsed once. Everything provider-specific
//! (credential fields, soft format rules, injection, base URLs per environment, the
//! test-connection request and how to read its answer, default limits, cache rules) lives there.
//! This module only gives it types and checks that it is coherent; it never sees key material.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::environment::Environment;

static CATALOG_TOML: &str = include_str!("../../catalog/providers.toml");

static CATALOG: LazyLock<Catalog> = LazyLock::new(|| {
    Catalog::parse(CATALOG_TOML).unwrap_or_else(|problem| panic!("the compiled-in provider catalog is broken: {problem}"))
});

/// The compiled-in catalog (validated by a unit test, so this cannot fail at run time).
pub fn catalog() -> &'static Catalog {
    &CATALOG
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    #[serde(rename = "provider")]
    pub providers: Vec<Provider>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    FinancialData,
    Llm,
    Trading,
    Other,
}

impl Category {
    pub const ALL: [Category; 4] = [Category::FinancialData, Category::Llm, Category::Trading, Category::Other];

    pub fn label(self) -> &'static str {
        match self {
            Category::FinancialData => "Financial Data Providers",
            Category::Llm => "LLM Providers",
            Category::Trading => "Trading APIs",
            Category::Other => "Other Services",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Category::FinancialData => "financial_data",
            Category::Llm => "llm",
            Category::Trading => "trading",
            Category::Other => "other",
        }
    }

    pub fn parse(value: &str) -> Option<Category> {
        Category::ALL.into_iter().find(|c| c.as_str() == value)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Provider {
    /// Lowercase identifier used in URLs (`openai`, `alpaca`, ...).
    pub id: String,
    pub name: String,
    pub category: Category,
    pub description: String,
    /// The provider's API documentation.
    pub docs_url: String,
    /// Where a user obtains a key.
    pub key_url: String,
    /// Only workspace admins may add, change, test or use keys of this provider.
    #[serde(default)]
    pub admin_only: bool,
    /// Credential fields, in the order a form shows them.
    pub fields: Vec<CredentialField>,
    /// How credential fields are placed on an outgoing request.
    pub auth: Vec<Injection>,
    /// Headers every request to this provider carries (e.g. `anthropic-version`).
    #[serde(default)]
    pub static_headers: Vec<StaticHeader>,
    pub environments: Vec<EnvironmentSpec>,
    pub test: TestSpec,
    pub rate_limits: RateLimits,
    #[serde(default)]
    pub cache: Vec<CacheRule>,
    /// List prices per model, for estimated LLM costs in usage.
    #[serde(default)]
    pub pricing: Vec<ModelPrice>,
    /// Facts worth showing a user (free-tier limits, quirks), from the provider reference.
    #[serde(default)]
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CredentialField {
    /// Key of this field in `credentials` (`api_key`, `secret_key`, `organization_id`, ...).
    pub id: String,
    pub label: String,
    pub required: bool,
    /// Secret fields are rendered as password inputs; every field is stored encrypted and masked.
    pub secret: bool,
    #[serde(default)]
    pub help: Option<String>,
    #[serde(default)]
    pub format: FormatRules,
}

/// Soft rules: a mismatch is a warning, never a refusal (providers change their formats).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FormatRules {
    /// Known public prefixes; also what masking may reveal.
    #[serde(default)]
    pub prefixes: Vec<String>,
    /// A regular expression the whole value is expected to match.
    #[serde(default)]
    pub pattern: Option<String>,
    #[serde(default)]
    pub min_length: Option<usize>,
    #[serde(default)]
    pub max_length: Option<usize>,
    /// Human explanation shown with a warning ("Anthropic keys start with sk-ant-").
    #[serde(default)]
    pub hint: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InjectionKind {
    Header,
    Query,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Injection {
    /// The credential field whose value is injected; skipped when an optional field is absent.
    pub field: String,
    pub kind: InjectionKind,
    /// Header or query parameter name.
    pub name: String,
    /// `{value}` is replaced by the field's value (e.g. `Bearer {value}`).
    #[serde(default = "default_template")]
    pub template: String,
}

impl Injection {
    /// The template with the key in place of every `{value}`, in a buffer sized up front and
    /// zeroized on drop: `str::replace` grows its output and would leave pieces of the key behind.
    pub fn fill(&self, value: &str) -> zeroize::Zeroizing<String> {
        let capacity = self.template.len() + self.template.matches("{value}").count() * value.len();
        let mut filled = zeroize::Zeroizing::new(String::with_capacity(capacity));
        for (i, piece) in self.template.split("{value}").enumerate() {
            if i > 0 {
                filled.push_str(value);
            }
            filled.push_str(piece);
        }
        filled
    }
}

fn default_template() -> String {
    "{value}".to_owned()
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StaticHeader {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentSpec {
    pub id: Environment,
    /// What the provider calls it (Live, Paper, Sandbox, ...).
    pub label: String,
    /// Fixed upstream base URL; operators may override it, tenants never.
    pub base_url: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TestSpec {
    #[serde(default = "default_method")]
    pub method: String,
    /// Path appended to the environment's base URL.
    pub path: String,
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    /// Rules read in order; the first that matches decides. With none matching, the status code
    /// decides (2xx valid, 401/403 invalid, 429 rate limited, 5xx upstream error).
    #[serde(default)]
    pub rules: Vec<AnswerRule>,
    /// JSON pointers tried in order to find the provider's own message in an answer.
    #[serde(default)]
    pub message_pointers: Vec<String>,
    /// What spending one test costs the user, shown before testing (e.g. "1 of 25 daily calls").
    #[serde(default)]
    pub cost_note: Option<String>,
    /// The scheduled job verifies a key of this provider at most this often (hours); without it,
    /// `Provider::min_verify_interval` derives a floor from the rate limits.
    #[serde(default)]
    pub min_interval_hours: Option<u32>,
}

impl Provider {
    /// The shortest time between two scheduled verifications of one key: free tiers with a
    /// small daily allowance are tested once a day at most, so health checks never eat them.
    pub fn min_verify_interval(&self) -> chrono::Duration {
        if let Some(hours) = self.test.min_interval_hours {
            return chrono::Duration::hours(i64::from(hours));
        }
        let limits = &self.rate_limits;
        if limits.requests_per_day.is_some_and(|d| d <= 1000) {
            chrono::Duration::hours(24)
        } else if limits.requests_per_minute.is_some_and(|m| m <= 10) {
            chrono::Duration::hours(6)
        } else {
            chrono::Duration::hours(1)
        }
    }
}

fn default_method() -> String {
    "GET".to_owned()
}

/// One way to read a provider's answer. Every condition given must hold.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AnswerRule {
    /// HTTP statuses this rule applies to; empty means any.
    #[serde(default)]
    pub status: Vec<u16>,
    /// A JSON pointer that must exist in the body.
    #[serde(default)]
    pub json_pointer: Option<String>,
    /// With `json_pointer`: the string value it must equal.
    #[serde(default)]
    pub equals: Option<String>,
    /// A substring the raw body must contain.
    #[serde(default)]
    pub body_contains: Option<String>,
    pub outcome: TestOutcome,
}

impl AnswerRule {
    /// Whether the rule looks at answers with this HTTP status at all.
    pub fn applies_to_status(&self, status: u16) -> bool {
        self.status.is_empty() || self.status.contains(&status)
    }
}

/// The verdict of a test-connection call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TestOutcome {
    /// The provider accepted the key.
    Valid,
    /// The provider refused the key (unknown, revoked, wrong environment).
    Invalid,
    /// The key is known but lacks permission or plan for the test request.
    Forbidden,
    /// The provider throttled the call or the key's quota is spent.
    RateLimited,
    /// No answer: connection refused, DNS failure, TLS failure or timeout.
    Unreachable,
    /// The provider answered with a server error.
    UpstreamError,
    /// An answer the catalog does not explain.
    Unexpected,
}

impl TestOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            TestOutcome::Valid => "valid",
            TestOutcome::Invalid => "invalid",
            TestOutcome::Forbidden => "forbidden",
            TestOutcome::RateLimited => "rate_limited",
            TestOutcome::Unreachable => "unreachable",
            TestOutcome::UpstreamError => "upstream_error",
            TestOutcome::Unexpected => "unexpected",
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimits {
    #[serde(default)]
    pub requests_per_second: Option<u32>,
    #[serde(default)]
    pub requests_per_minute: Option<u32>,
    #[serde(default)]
    pub requests_per_day: Option<u32>,
    /// Where the numbers come from (plan name, provider page).
    #[serde(default)]
    pub note: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CacheRule {
    #[serde(default = "default_method")]
    pub method: String,
    /// Requests whose path starts with this prefix (relative to the base URL) may be cached.
    pub path_prefix: String,
    pub ttl_seconds: u32,
}

/// A model's list price in US dollars per million tokens (an estimate: discounts, caching and
/// batch prices are not modelled).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelPrice {
    /// Matches every model whose name starts with it; the longest match wins.
    pub model_prefix: String,
    pub input_usd_per_mtok: f64,
    pub output_usd_per_mtok: f64,
}

impl Catalog {
    pub fn parse(text: &str) -> Result<Catalog, String> {
        let catalog: Catalog = toml::from_str(text).map_err(|e| e.to_string())?;
        catalog.check()?;
        Ok(catalog)
    }

    pub fn provider(&self, id: &str) -> Option<&Provider> {
        self.providers.iter().find(|p| p.id == id)
    }

    /// Coherence rules that serde cannot express.
    fn check(&self) -> Result<(), String> {
        let mut seen = std::collections::BTreeSet::new();
        for p in &self.providers {
            let at = |what: &str| format!("provider `{}`: {what}", p.id);
            if !seen.insert(p.id.as_str()) {
                return Err(at("duplicate id"));
            }
            if p.id.is_empty() || !p.id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()) {
                return Err(at("id must be lowercase ASCII letters and digits"));
            }
            for url in [&p.docs_url, &p.key_url] {
                if !url.starts_with("https://") {
                    return Err(at(&format!("`{url}` is not an https URL")));
                }
            }
            if !p.fields.iter().any(|f| f.required && f.secret) {
                return Err(at("needs at least one required secret field"));
            }
            let mut field_ids = std::collections::BTreeSet::new();
            for f in &p.fields {
                if !field_ids.insert(f.id.as_str()) {
                    return Err(at(&format!("duplicate field `{}`", f.id)));
                }
                if let Some(pattern) = &f.format.pattern {
                    regex::Regex::new(pattern).map_err(|e| at(&format!("field `{}` pattern: {e}", f.id)))?;
                }
            }
            for injection in &p.auth {
                if !field_ids.contains(injection.field.as_str()) {
                    return Err(at(&format!("auth injects unknown field `{}`", injection.field)));
                }
                if !injection.template.contains("{value}") {
                    return Err(at("an auth template must contain {value}"));
                }
            }
            for f in p.fields.iter().filter(|f| f.required) {
                if !p.auth.iter().any(|i| i.field == f.id) {
                    return Err(at(&format!("required field `{}` is never injected", f.id)));
                }
            }
            for env in Environment::ALL {
                let Some(spec) = p.environments.iter().find(|e| e.id == env) else {
                    return Err(at(&format!("missing environment `{}`", env.as_str())));
                };
                if !spec.base_url.starts_with("https://") || spec.base_url.ends_with('/') {
                    return Err(at("base URLs are https and have no trailing slash"));
                }
            }
            if p.environments.len() != Environment::ALL.len() {
                return Err(at("each environment is listed exactly once"));
            }
            if !p.test.path.starts_with('/') {
                return Err(at("test path must start with /"));
            }
            for rule in &p.test.rules {
                if rule.equals.is_some() && rule.json_pointer.is_none() {
                    return Err(at("a test rule with `equals` needs `json_pointer`"));
                }
            }
            for rule in &p.cache {
                if !rule.path_prefix.starts_with('/') {
                    return Err(at("cache path prefixes start with /"));
                }
            }
        }
        Ok(())
    }
}

impl Provider {
    pub fn field(&self, id: &str) -> Option<&CredentialField> {
        self.fields.iter().find(|f| f.id == id)
    }

    pub fn environment(&self, env: Environment) -> &EnvironmentSpec {
        // `Catalog::check` guarantees every environment is present.
        self.environments.iter().find(|e| e.id == env).expect("catalog checked: every environment is present")
    }

    /// The field whose fingerprint identifies the key (the first required secret field).
    pub fn primary_field(&self) -> &CredentialField {
        self.fields.iter().find(|f| f.required && f.secret).expect("catalog checked: a required secret field exists")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_compiled_in_catalog_is_coherent_and_complete() {
        let c = Catalog::parse(CATALOG_TOML).unwrap();
        let required = [
            ("fmp", Category::FinancialData),
            ("taapi", Category::FinancialData),
            ("alphavantage", Category::FinancialData),
            ("polygon", Category::FinancialData),
            ("finnhub", Category::FinancialData),
            ("twelvedata", Category::FinancialData),
            ("openai", Category::Llm),
            ("anthropic", Category::Llm),
            ("gemini", Category::Llm),
            ("mistral", Category::Llm),
            ("groq", Category::Llm),
            ("alpaca", Category::Trading),
            ("tradier", Category::Trading),
            ("newsapi", Category::Other),
            ("sendgrid", Category::Other),
        ];
        for (id, category) in required {
            let p = c.provider(id).unwrap_or_else(|| panic!("{id} missing"));
            assert_eq!(p.category, category, "{id}");
        }
        assert!(c.providers.len() >= 16);
        for p in &c.providers {
            assert_eq!(p.admin_only, p.category == Category::Trading, "{}: trading APIs and only they are admin-only", p.id);
        }
        let alpaca = c.provider("alpaca").unwrap();
        assert_eq!(alpaca.environment(Environment::Development).base_url, "https://paper-api.alpaca.markets");
        assert_eq!(c.provider("tradier").unwrap().environment(Environment::Development).base_url, "https://sandbox.tradier.com/v1");
    }

    #[test]
    fn incoherent_catalogs_are_refused() {
        let good = CATALOG_TOML;
        assert!(Catalog::parse(&good.replacen("id = \"openai\"", "id = \"OpenAI\"", 1)).is_err());
        assert!(
            Catalog::parse(&good.replacen("base_url = \"https://api.openai.com/v1\"", "base_url = \"http://api.openai.com/v1\"", 1))
                .is_err()
        );
        assert!(Catalog::parse(&format!("{good}\nsurprise = 1\n")).is_err());
    }
}
