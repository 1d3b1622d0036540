//! What a proxied request may ask of the provider: its path below the provider's base URL and its
//! query. Anything that could change the host or leave the base URL's prefix is refused, never
//! "fixed": a request that needs repairing is a request someone crafted.
//!
//! The path is taken raw (still percent-encoded, as it arrived) and is never decoded, so what is
//! checked is exactly what is sent. Then the final URL is parsed again and must still have the
//! base URL's scheme, host, port and path prefix.

use url::Url;

/// Longest accepted path below the provider prefix.
pub const MAX_PATH_BYTES: usize = 2048;
/// Longest accepted query string.
pub const MAX_QUERY_BYTES: usize = 8192;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathRefusal {
    #[error("the path is longer than {MAX_PATH_BYTES} bytes")]
    TooLong,
    #[error("the path contains a character that is not allowed (control, space, backslash, `@`, quote or non-ASCII)")]
    ForbiddenCharacter,
    #[error("the path contains an encoded `/`, `\\`, `.`, `%`, `?`, `#` or control character; send path segments unencoded")]
    EncodedSeparator,
    #[error("the path has a malformed percent-encoding")]
    BadEncoding,
    #[error("`.` and `..` segments are not allowed")]
    DotSegment,
    #[error("empty path segments (`//`) are not allowed")]
    EmptySegment,
    #[error("the path looks like an absolute URL; send only the path below the provider's base URL")]
    AbsoluteUrl,
    #[error("the query string is malformed or too long")]
    BadQuery,
    #[error("the request would leave the provider's base URL")]
    LeavesBase,
}

/// Checks the raw path below the provider prefix (`/v1/models`, `` for the base itself) and
/// returns it unchanged when it is safe.
pub fn normalize_path(raw: &str) -> Result<String, PathRefusal> {
    if raw.len() > MAX_PATH_BYTES {
        return Err(PathRefusal::TooLong);
    }
    if raw.is_empty() {
        return Ok(String::new());
    }
    if !raw.starts_with('/') {
        return Err(PathRefusal::AbsoluteUrl);
    }
    let bytes = raw.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let hex = raw.get(i + 1..i + 3).ok_or(PathRefusal::BadEncoding)?;
                let value = u8::from_str_radix(hex, 16).map_err(|_| PathRefusal::BadEncoding)?;
                // Encoded separators, dots and `%` (double encoding) are how escapes hide from
                // checks that look at the decoded form; controls would split the request line.
                // `%40` stays allowed: it is never decoded here, and e-mail addresses are path
                // segments of some APIs (SendGrid); a raw `@` is refused.
                if matches!(value, b'/' | b'\\' | b'.' | b'%' | b'?' | b'#') || value < 0x20 || value == 0x7f {
                    return Err(PathRefusal::EncodedSeparator);
                }
                i += 3;
                continue;
            }
            b'\\' | b'@' | b'"' | b'<' | b'>' | b'`' | b'{' | b'}' | b'|' | b'^' | b'?' | b'#' => {
                return Err(PathRefusal::ForbiddenCharacter);
            }
            b if b <= 0x20 || b >= 0x7f => return Err(PathRefusal::ForbiddenCharacter),
            _ => {}
        }
        i += 1;
    }
    let segments: Vec<&str> = raw[1..].split('/').collect();
    let last = segments.len() - 1;
    for (index, segment) in segments.iter().enumerate() {
        // Servers that strip `;` parameters before resolving dots read `..;` as `..`.
        let before_parameters = segment.split(';').next().unwrap_or(segment);
        if before_parameters == "." || before_parameters == ".." {
            return Err(PathRefusal::DotSegment);
        }
        // A trailing slash is a real difference for some APIs; an empty segment elsewhere is not.
        if segment.is_empty() && index != last {
            return Err(PathRefusal::EmptySegment);
        }
        if index == 0 && segment.ends_with(':') {
            return Err(PathRefusal::AbsoluteUrl);
        }
    }
    Ok(raw.to_owned())
}

/// Parses the raw query into pairs, without the parameters named in `drop` (compared without
/// case: the provider's key parameters, so a client cannot send its own key or read ours back).
pub fn query_pairs(raw: Option<&str>, drop: &[&str]) -> Result<Vec<(String, String)>, PathRefusal> {
    let Some(raw) = raw.filter(|q| !q.is_empty()) else { return Ok(Vec::new()) };
    if raw.len() > MAX_QUERY_BYTES || raw.bytes().any(|b| b <= 0x20 || b >= 0x7f || b == b'#') {
        return Err(PathRefusal::BadQuery);
    }
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(raw.as_bytes()).into_owned().collect();
    if pairs.iter().any(|(k, v)| k.chars().chain(v.chars()).any(|c| c.is_control())) {
        return Err(PathRefusal::BadQuery);
    }
    Ok(pairs.into_iter().filter(|(name, _)| !drop.iter().any(|d| d.eq_ignore_ascii_case(name))).collect())
}

/// Joins the base URL and a checked path, and proves the result stayed on the base: same scheme,
/// host and port, and a path that is the base path or lies below it.
pub fn join(base: &str, path: &str) -> Result<Url, PathRefusal> {
    let base_url = Url::parse(base).map_err(|_| PathRefusal::LeavesBase)?;
    let joined = Url::parse(&format!("{}{path}", base.trim_end_matches('/'))).map_err(|_| PathRefusal::LeavesBase)?;
    let prefix = base_url.path().trim_end_matches('/');
    let stays_below = joined.path() == prefix
        || joined.path().strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/'))
        || (prefix.is_empty() && joined.path() == "/");
    let same_origin = joined.scheme() == base_url.scheme()
        && joined.host() == base_url.host()
        && joined.port_or_known_default() == base_url.port_or_known_default()
        && joined.username().is_empty()
        && joined.password().is_none();
    if !(stays_below && same_origin) || joined.query().is_some() || joined.fragment().is_some() {
        return Err(PathRefusal::LeavesBase);
    }
    Ok(joined)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_provider_paths_pass_unchanged() {
        for ok in [
            "",
            "/",
            "/v1/models",
            "/v1/chat/completions",
            "/v2/aggs/ticker/X:BTCUSD/range/1/day/2024-01-01/2024-02-01",
            "/v3/suppression/bounces/ana%40example.com",
            "/v1beta/models/gemini-2.5-flash:generateContent",
            "/stable/quote/",
            "/query",
            "/v1/models/gpt-4o-mini~1",
        ] {
            assert_eq!(normalize_path(ok).as_deref(), Ok(ok), "{ok}");
        }
    }

    #[test]
    fn escapes_are_refused() {
        for bad in [
            "/..",
            "/../admin",
            "/v1/../../x",
            "/./v1",
            "/..;/x",
            "/v1/.;jsessionid=1/x",
            "/%2e%2e/x",
            "/%2E%2E/x",
            "/.%2e/x",
            "/v1%2f..%2fx",
            "/v1%2F..",
            "/v1%5c..",
            "/v1\\..\\x",
            "//evil.test/x",
            "/v1//x",
            "/@evil.test",
            "/x@evil.test/",
            "/%40evil.test%2f",
            "http://evil.test/",
            "/http://evil.test/",
            "/https:/evil.test",
            "evil.test",
            "/v1/%0d%0aHost:%20evil.test",
            "/v1/\r\nHost: evil.test",
            "/v1/a b",
            "/v1/%00",
            "/v1/%252e%252e/x",
            "/v1/%zz",
            "/v1/%2",
            "/v1?x=1",
            "/v1#frag",
            "/v1/caf\u{e9}",
        ] {
            assert!(normalize_path(bad).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(normalize_path(&format!("/{}", "a".repeat(MAX_PATH_BYTES))), Err(PathRefusal::TooLong));
    }

    #[test]
    fn joined_urls_stay_on_the_base() {
        let url = join("https://api.openai.com/v1", "/models").unwrap();
        assert_eq!(url.as_str(), "https://api.openai.com/v1/models");
        assert_eq!(join("https://api.openai.com/v1", "").unwrap().as_str(), "https://api.openai.com/v1");
        assert_eq!(join("http://127.0.0.1:9000", "/x").unwrap().as_str(), "http://127.0.0.1:9000/x");
        assert_eq!(join("http://127.0.0.1:9000", "").unwrap().as_str(), "http://127.0.0.1:9000/");
        // Defence in depth: even paths the normalizer would refuse cannot leave the base here.
        assert!(join("https://api.openai.com/v1", "/../x").is_err());
        assert!(join("https://api.openai.com/v1", "@evil.test").is_err());
        assert!(join("https://api.openai.com/v1", "s/x").is_err());
        assert!(join("https://api.openai.com", ".evil.test/").is_err());
    }

    #[test]
    fn key_parameters_are_dropped_from_the_query_whatever_their_case() {
        let q = query_pairs(Some("symbol=AAPL&apikey=stolen&APIKEY=x&limit=5"), &["apikey"]).unwrap();
        assert_eq!(q, vec![("symbol".to_owned(), "AAPL".to_owned()), ("limit".to_owned(), "5".to_owned())]);
        assert!(query_pairs(Some("a=%0d%0aHost"), &[]).is_err());
        assert!(query_pairs(Some("a=1 2"), &[]).is_err());
        assert_eq!(query_pairs(None, &[]).unwrap(), vec![]);
    }
}

#[cfg(test)]
mod properties {
    use percent_encoding::percent_decode_str;
    use proptest::prelude::*;

    use super::*;
    use crate::domain::catalog::catalog;

    /// Every base URL of the catalog, plus the shapes an operator override takes (a port, a path).
    fn bases() -> Vec<String> {
        let mut bases: Vec<String> = catalog().providers.iter().flat_map(|p| p.environments.iter().map(|e| e.base_url.clone())).collect();
        bases.extend(["http://127.0.0.1:9000".to_owned(), "http://127.0.0.1:9000/mock/v1".to_owned()]);
        bases.sort();
        bases.dedup();
        bases
    }

    /// Pieces that escapes are made of, and ordinary segments for them to hide between.
    fn path_piece() -> impl Strategy<Value = String> {
        const PIECES: &[&str] = &[
            "/",
            "//",
            "..",
            ".",
            "..;",
            ".;x=1",
            "%2e",
            "%2E",
            "%2e%2e",
            ".%2e",
            "%2e.",
            "%252e",
            "%2f",
            "%2F",
            "%5c",
            "%5C",
            "\\",
            "@",
            "%40",
            ":",
            "?",
            "#",
            ";",
            "%",
            "%2",
            "%zz",
            "%25",
            "%00",
            "%0d%0a",
            "%20",
            " ",
            "\t",
            "\r\n",
            "//evil.com",
            "http://x",
            "https://evil.test/",
            "http:",
            "evil.com",
            "user:pass@",
            "[::1]",
            "127.0.0.1:22",
            "v1",
            "models",
            "X:BTCUSD",
            "..%2f",
            "%2e%2e%5c",
            "\u{ff0e}\u{ff0e}",
            "\u{2215}",
            "caf\u{e9}",
            "\u{0}",
            "~",
            "a",
        ];
        prop_oneof![
            4 => prop::sample::select(PIECES).prop_map(str::to_owned),
            1 => any::<u8>().prop_map(|b| format!("%{b:02X}")),
            1 => any::<u8>().prop_map(|b| format!("%{b:02x}")),
            1 => any::<char>().prop_map(String::from),
            2 => "[a-zA-Z0-9._~:-]{1,8}",
        ]
    }

    fn raw_path() -> impl Strategy<Value = String> {
        prop_oneof![
            // Mostly rooted, so that the checks past the leading `/` are reached.
            6 => (any::<bool>(), prop::collection::vec(path_piece(), 0..12)).prop_map(|(rooted, pieces)| {
                let body = pieces.concat();
                if rooted && !body.starts_with('/') { format!("/{body}") } else { body }
            }),
            1 => any::<String>(),
            1 => "(/[a-zA-Z0-9._~%:@;-]{0,6}){0,6}",
        ]
    }

    /// The segment-wise prefix test, independent of `join`'s own: `/v1x` does not lie below `/v1`.
    fn lies_below(path: &str, prefix: &str) -> bool {
        path == prefix || path.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/'))
    }

    fn assert_stays_on_base(base: &str, joined: &Url) -> Result<(), TestCaseError> {
        let base_url = Url::parse(base).unwrap();
        prop_assert_eq!(joined.scheme(), base_url.scheme());
        prop_assert_eq!(joined.host_str(), base_url.host_str());
        prop_assert_eq!(joined.port_or_known_default(), base_url.port_or_known_default());
        prop_assert!(joined.username().is_empty() && joined.password().is_none(), "credentials in {joined}");
        let prefix = base_url.path().trim_end_matches('/');
        prop_assert!(lies_below(joined.path(), prefix), "{} is not below {prefix:?}", joined.path());
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn a_checked_path_never_leaves_the_provider_prefix(base in prop::sample::select(bases()), raw in raw_path()) {
            let Ok(checked) = normalize_path(&raw) else { return Ok(()) };
            // Refused, never repaired: what was checked is what is sent.
            prop_assert_eq!(&checked, &raw);
            let Ok(joined) = join(&base, &checked) else { return Ok(()) };
            assert_stays_on_base(&base, &joined)?;
            let prefix = Url::parse(&base).unwrap().path().trim_end_matches('/').to_owned();
            let expected = if prefix.is_empty() && checked.is_empty() { "/".to_owned() } else { format!("{prefix}{checked}") };
            prop_assert_eq!(joined.path(), expected.as_str(), "the URL parser rewrote the path");
            // What an upstream sees after decoding once: no new separators, no dot segments, and
            // nothing left to decode a second time.
            for segment in joined.path()[prefix.len()..].split('/') {
                let decoded = percent_decode_str(segment).decode_utf8_lossy();
                prop_assert!(decoded != "." && decoded != "..", "dot segment {segment:?} in {joined}");
                prop_assert!(!decoded.contains(['/', '\\']), "separator hidden in {segment:?}");
                prop_assert_eq!(percent_decode_str(&decoded).decode_utf8_lossy(), decoded.clone(), "double encoding in {:?}", segment);
            }
        }

        #[test]
        fn join_alone_never_leaves_the_provider_prefix(base in prop::sample::select(bases()), raw in raw_path()) {
            // Defence in depth: even a path the normalizer never saw cannot change the host here.
            if let Ok(joined) = join(&base, &raw) {
                assert_stays_on_base(&base, &joined)?;
            }
        }

        #[test]
        fn ordinary_paths_are_accepted_unchanged(
            base in prop::sample::select(bases()),
            raw in "(/[a-zA-Z0-9_~-]([a-zA-Z0-9._~:-]{0,10}[a-zA-Z0-9_~-])?){1,6}/?",
        ) {
            // The property above would hold for a normalizer that refuses everything.
            prop_assert_eq!(normalize_path(&raw), Ok(raw.clone()));
            let joined = join(&base, &raw).unwrap();
            assert_stays_on_base(&base, &joined)?;
        }
    }
}
