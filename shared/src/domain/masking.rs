//! Masked display of credential values (DESIGN.md §3).
//!
//! A mask is a known public prefix, a fixed run of asterisks (so the mask does not leak the
//! length) and the last four characters — and never more than a quarter of the value in total.
//! Short values show less: the suffix shrinks, then the prefix is dropped, down to nothing.

const STARS: &str = "********";

/// Masks `value`, revealing at most `len / 4` of its characters.
pub fn mask(value: &str, known_prefixes: &[String]) -> String {
    let chars: Vec<char> = value.chars().collect();
    let budget = chars.len() / 4;
    let prefix = known_prefixes
        .iter()
        .filter(|p| !p.is_empty() && value.starts_with(p.as_str()))
        .max_by_key(|p| p.chars().count())
        .map(|p| p.chars().count())
        .unwrap_or(0);
    let suffix = budget.min(4);
    let shown_prefix = if prefix + suffix <= budget && prefix + suffix < chars.len() { prefix } else { 0 };
    let head: String = chars[..shown_prefix].iter().collect();
    let tail: String = chars[chars.len() - suffix..].iter().collect();
    format!("{head}{STARS}{tail}")
}

/// How many characters of `value` a mask reveals (for tests and assertions).
pub fn revealed(mask: &str) -> usize {
    mask.chars().count() - STARS.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefixes(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn long_prefixed_key_shows_prefix_and_last_four() {
        let key = format!("sk-proj-{}WXYZ", "a".repeat(120));
        assert_eq!(mask(&key, &prefixes(&["sk-", "sk-proj-"])), "sk-proj-********WXYZ");
    }

    #[test]
    fn anthropic_key_keeps_its_long_prefix() {
        let key = format!("sk-ant-api03-{}AA", "b".repeat(93));
        let m = mask(&key, &prefixes(&["sk-ant-api03-", "sk-ant-"]));
        assert_eq!(m, "sk-ant-api03-********bbAA");
        assert!(revealed(&m) <= key.len() / 4);
    }

    #[test]
    fn unprefixed_key_shows_only_last_four() {
        assert_eq!(mask("ABCDEFGHIJKLMNOP", &[]), "********MNOP");
    }

    #[test]
    fn prefix_is_dropped_when_it_would_exceed_a_quarter() {
        // 20 chars: budget 5, prefix "sk-" (3) + 4 = 7 > 5, so only the suffix shows.
        assert_eq!(mask("sk-abcdefghijklmnopq", &prefixes(&["sk-"])), "********nopq");
    }

    #[test]
    fn short_keys_show_less_and_tiny_keys_nothing() {
        assert_eq!(mask("abcdefgh", &[]), "********gh");
        assert_eq!(mask("abcdefghijkl", &[]), "********jkl");
        assert_eq!(mask("abc", &[]), "********");
        assert_eq!(mask("", &[]), "********");
    }

    #[test]
    fn never_more_than_a_quarter_for_any_length() {
        let p = prefixes(&["sk-", "sk-proj-", "SG.", "gsk_"]);
        for len in 0..200 {
            for base in ["sk-proj-", "sk-", "SG.", "gsk_", "x"] {
                let key: String = base.chars().chain(std::iter::repeat('k')).take(len).collect();
                let m = mask(&key, &p);
                assert!(revealed(&m) <= key.chars().count() / 4, "{key:?} -> {m:?}");
            }
        }
    }

    #[test]
    fn multibyte_values_do_not_panic() {
        let m = mask("ééééééééééééééééé", &[]);
        assert!(m.starts_with(STARS));
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;
    use crate::domain::catalog::catalog;

    fn catalog_prefixes() -> Vec<String> {
        let mut all: Vec<String> =
            catalog().providers.iter().flat_map(|p| p.fields.iter().flat_map(|f| f.format.prefixes.iter().cloned())).collect();
        all.sort();
        all.dedup();
        all
    }

    /// A secret and the prefixes to mask it with. Often the secret starts with one of them, and
    /// sometimes a prefix is cut from the secret itself, so that every prefix length meets every
    /// secret length (including prefixes longer than the budget, and the whole secret).
    fn secret_and_prefixes() -> impl Strategy<Value = (String, Vec<String>)> {
        let prefixes = prop_oneof![Just(catalog_prefixes()), prop::collection::vec(".{0,12}", 0..5)];
        let body = prop_oneof![3 => "[A-Za-z0-9_-]{0,120}", 1 => any::<String>(), 1 => "[*a]{0,24}"];
        (prefixes, body, any::<prop::sample::Index>(), any::<bool>(), 0usize..24).prop_map(|(mut prefixes, body, pick, prefixed, own)| {
            let secret = if prefixed && !prefixes.is_empty() { format!("{}{body}", prefixes[pick.index(prefixes.len())]) } else { body };
            if own > 0 {
                prefixes.push(secret.chars().take(own).collect());
            }
            (secret, prefixes)
        })
    }

    /// Splits a mask into (shown prefix, shown suffix) such that the prefix is a known one the
    /// secret starts with and the suffix ends the secret; `None` if no split explains the mask.
    fn explain(mask: &str, secret: &str, prefixes: &[String]) -> Option<(String, String)> {
        let chars: Vec<char> = mask.chars().collect();
        let shown = chars.len().checked_sub(STARS.len())?;
        (0..=shown).find_map(|head_len| {
            let head: String = chars[..head_len].iter().collect();
            let stars: String = chars[head_len..head_len + STARS.len()].iter().collect();
            let tail: String = chars[head_len + STARS.len()..].iter().collect();
            let head_ok = head.is_empty() || (prefixes.contains(&head) && secret.starts_with(&head));
            let tail_ok = tail.chars().count() <= 4 && secret.ends_with(&tail);
            (stars == STARS && head_ok && tail_ok).then_some((head, tail))
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn a_mask_reveals_at_most_a_quarter_and_only_a_known_prefix_and_the_last_four((secret, prefixes) in secret_and_prefixes()) {
            let masked = mask(&secret, &prefixes);
            let length = secret.chars().count();
            prop_assert!(revealed(&masked) <= length / 4, "{masked:?} reveals {} of {length}", revealed(&masked));
            let explained = explain(&masked, &secret, &prefixes);
            prop_assert!(explained.is_some(), "{masked:?} is not a known prefix, asterisks and a suffix of the secret");
            let (head, tail) = explained.unwrap();
            prop_assert_eq!(revealed(&masked), head.chars().count() + tail.chars().count());
            // Without `*` in the secret no part of the run of asterisks can match it; a longer
            // secret than the mask cannot be inside it either way.
            if length > 0 && (!secret.contains('*') || length > STARS.len() + length / 4) {
                prop_assert!(!masked.contains(&secret), "{masked:?} contains the secret");
            }
        }

        #[test]
        fn long_secrets_show_their_last_four((secret, prefixes) in secret_and_prefixes()) {
            // The bound above would hold for a mask that shows nothing at all.
            let chars: Vec<char> = secret.chars().collect();
            prop_assume!(chars.len() >= 16);
            let last_four: String = chars[chars.len() - 4..].iter().collect();
            let masked = mask(&secret, &prefixes);
            prop_assert!(masked.ends_with(&format!("{STARS}{last_four}")), "{masked:?} does not end with the last four");
        }
    }
}
