//! The user guide (docs/user-guide/*.md, rendered into the web UI's `docs/` pages at build time)
//! covers every provider of the catalog and the topics the product's users need.

use std::path::PathBuf;

use stockpulse_shared::domain::catalog::{Category, catalog};

const PAGES: [&str; 5] = ["index.md", "obtaining-keys.md", "managing-keys.md", "security.md", "troubleshooting.md"];

fn guide_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/user-guide"))
}

fn page(name: &str) -> String {
    let path = guide_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{} must exist: {e}", path.display()))
}

fn assert_mentions(name: &str, text: &str, needles: &[&str]) {
    let lower = text.to_lowercase();
    for needle in needles {
        assert!(lower.contains(&needle.to_lowercase()), "{name} should mention {needle:?}");
    }
}

/// The text of the `## <heading>` section (up to the next `## `).
fn section<'a>(text: &'a str, heading: &str) -> &'a str {
    let start = text.find(&format!("\n## {heading}\n")).unwrap_or_else(|| panic!("section {heading:?} missing"));
    let rest = &text[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    &rest[..end]
}

#[test]
fn obtaining_keys_covers_every_catalog_provider_under_its_category() {
    let text = page("obtaining-keys.md");
    let providers = &catalog().providers;
    assert!(!providers.is_empty());
    for provider in providers {
        let group = section(&text, provider.category.label());
        assert!(
            group.contains(&format!("### {}\n", provider.name)),
            "obtaining-keys.md: {} needs a section under {:?}",
            provider.name,
            provider.category.label()
        );
        assert!(text.contains(&provider.key_url), "obtaining-keys.md: {} key_url {} missing", provider.name, provider.key_url);
        assert!(text.contains(&provider.docs_url), "obtaining-keys.md: {} docs_url {} missing", provider.name, provider.docs_url);
    }
    // Every category the catalog has is a section, in the app's order.
    let mut last = 0;
    for category in Category::ALL {
        if providers.iter().any(|p| p.category == category) {
            let at = text.find(&format!("\n## {}\n", category.label())).unwrap_or_else(|| panic!("{} section missing", category.label()));
            assert!(at > last, "{} is out of order", category.label());
            last = at;
        }
    }
    assert_mentions("obtaining-keys.md", &text, &["paper", "live", "sandbox", "production", "development", "warning", "admin"]);
}

#[test]
fn every_page_exists_and_covers_its_topics() {
    for name in PAGES {
        let text = page(name);
        assert!(text.starts_with("# "), "{name} starts with a title");
    }

    let index = page("index.md");
    assert_mentions("index.md", &index, &["encrypted", "never shown again", "proxy"]);
    for linked in &PAGES[1..] {
        assert!(index.contains(&format!("({linked})")), "index.md links to {linked}");
    }

    let managing = page("managing-keys.md");
    assert_mentions(
        "managing-keys.md",
        &managing,
        &[
            "Test Connection",
            "Save and Add Another",
            "warning",
            "rotat",
            "grace",
            "24 hours",
            "roll back",
            "revoke",
            "reason",
            "delete",
            "rotate_every_days",
            "notify_before_days",
            "expires_at",
            "rotation_due",
            "expired",
            "80 %",
            "100 %",
            "notification",
            "audit",
            "Export CSV",
            "admin",
            "member",
            "viewer",
            "admin-only",
        ],
    );

    let security = page("security.md");
    assert_mentions(
        "security.md",
        &security,
        &[
            "least privilege",
            "read-only",
            "production",
            "development",
            "rotate",
            "revoke",
            "at the provider",
            "chat",
            "encrypt",
            "mask",
            "redact",
            "hash",
        ],
    );

    let troubleshooting = page("troubleshooting.md");
    assert_mentions(
        "troubleshooting.md",
        &troubleshooting,
        &["401", "403", "200", "Alpha Vantage", "429", "paper", "sandbox", "format warning", "422", "409", "already exists", "revoked"],
    );
}

#[test]
fn links_between_pages_point_at_existing_pages() {
    for name in PAGES {
        let text = page(name);
        for (at, _) in text.match_indices("](") {
            let target = &text[at + 2..];
            let target = &target[..target.find(')').unwrap()];
            if target.contains("://") || target.starts_with('/') || target.starts_with('#') {
                continue;
            }
            let file = target.split('#').next().unwrap();
            assert!(
                file.ends_with(".md") && guide_dir().join(file).is_file(),
                "{name}: link to {target} does not name a page of the guide"
            );
        }
    }
}
