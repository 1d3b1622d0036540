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
