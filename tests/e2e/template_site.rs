//! The CloudFront site of `template.yaml`: every API route reaches the API through the
//! distribution uncached with its Authorization header; the SPA fallback (a CloudFront Function,
//! run here in Node.js) rewrites app paths only, so neither the API's errors nor the user guide's
//! pages are shadowed; the response headers are the local gateway's, with the Cognito domain in
//! `connect-src`; the bucket is private and read only through this distribution.

use std::process::Command;

use serde_yaml::Value;
use stockpulse_shared::http::routes::ROUTES;

const TEMPLATE_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../template.yaml");
const CACHING_DISABLED: &str = "4135ea2d-6df8-44a3-9df3-4b5a84be39ad";
const ALL_VIEWER_EXCEPT_HOST_HEADER: &str = "b689b0a8-53d0-40ab-baf2-68738e2966ac";

fn template() -> Value {
    let text = std::fs::read_to_string(TEMPLATE_PATH).unwrap_or_else(|e| panic!("cannot read {TEMPLATE_PATH}: {e}"));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{TEMPLATE_PATH} is not plain YAML: {e}"))
}

fn resource<'a>(template: &'a Value, id: &str) -> &'a Value {
    template.get("Resources").and_then(|r| r.get(id)).unwrap_or_else(|| panic!("template.yaml has no resource {id}"))
}

fn at<'a>(value: &'a Value, path: &[&str]) -> &'a Value {
    path.iter().fold(value, |v, key| v.get(*key).unwrap_or_else(|| panic!("missing {key} in {path:?}")))
}

fn text<'a>(value: &'a Value, path: &[&str]) -> &'a str {
    at(value, path).as_str().unwrap_or_else(|| panic!("{path:?} is not a string"))
}

/// CloudFront path patterns: `*` matches any characters, `?` one, case-sensitive.
fn pattern_matches(pattern: &str, path: &str) -> bool {
    stockpulse_tests::wildcard_matches(pattern, path, false)
}

#[test]
fn every_api_route_goes_to_the_api_uncached_with_its_headers() {
    let template = template();
    let config = at(resource(&template, "Distribution"), &["Properties", "DistributionConfig"]);
    assert!(
        config.get("CustomErrorResponses").is_none(),
        "CustomErrorResponses apply to the whole distribution: they would turn the API's 403/404 into index.html"
    );
    let api_origin = config
        .get("Origins")
        .and_then(Value::as_sequence)
        .and_then(|o| o.iter().find(|o| o.get("Id").and_then(Value::as_str) == Some("api")))
        .expect("an origin with Id api");
    assert!(text(api_origin, &["DomainName", "Fn::Sub"]).starts_with("${HttpApi}.execute-api."), "the api origin is the HTTP API");
    assert_eq!(text(api_origin, &["CustomOriginConfig", "OriginProtocolPolicy"]), "https-only");

    let behaviours = config.get("CacheBehaviors").and_then(Value::as_sequence).expect("CacheBehaviors");
    for route in ROUTES.iter().filter(|r| r.function.is_some()) {
        let concrete = route.path.replace("{id}", "k_1").replace("{provider}", "openai").replace("{path+}", "v1/models");
        let behaviour = behaviours
            .iter()
            .find(|b| pattern_matches(text(b, &["PathPattern"]), &concrete))
            .unwrap_or_else(|| panic!("{} {} would be served from the bucket: no cache behaviour matches it", route.method, route.path));
        let what = format!("{} {} (behaviour {})", route.method, route.path, text(behaviour, &["PathPattern"]));
        assert_eq!(text(behaviour, &["TargetOriginId"]), "api", "{what}");
        assert_eq!(text(behaviour, &["CachePolicyId"]), CACHING_DISABLED, "{what}: answers are per caller, never cached");
        assert_eq!(text(behaviour, &["OriginRequestPolicyId"]), ALL_VIEWER_EXCEPT_HOST_HEADER, "{what}: Authorization must reach the API");
        let methods: Vec<&str> = at(behaviour, &["AllowedMethods"]).as_sequence().unwrap().iter().filter_map(Value::as_str).collect();
        let needed = if route.method == "ANY" { vec!["GET", "POST", "PUT", "PATCH", "DELETE"] } else { vec![route.method] };
        for method in needed {
            assert!(methods.contains(&method), "{what}: CloudFront does not forward {method}");
        }
        assert_eq!(text(behaviour, &["ViewerProtocolPolicy"]), "https-only", "{what}: a token must never travel over http");
    }
    assert_eq!(text(at(config, &["DefaultCacheBehavior"]), &["TargetOriginId"]), "site", "everything else is the site");
}

/// Runs the CloudFront Function's code in Node.js on a viewer request for `uri`.
fn rewritten(code: &str, uri: &str) -> String {
    let script = format!(
        "{code}\nconst out = handler({{ request: {{ uri: {uri:?}, method: 'GET', headers: {{}} }} }});\nprocess.stdout.write(out.uri);\n"
    );
    let output =
        Command::new("node").arg("-e").arg(&script).output().expect("node runs (the test command installs the web UI's Node.js tools)");
    assert!(output.status.success(), "the function failed on {uri}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn the_spa_fallback_rewrites_app_paths_and_nothing_else() {
    let template = template();
    let function = resource(&template, "SpaFallbackFunction");
    assert_eq!(text(function, &["Properties", "FunctionConfig", "Runtime"]), "cloudfront-js-2.0");
    let code = text(function, &["Properties", "FunctionCode"]);
    for (uri, expected) in [
        ("/", "/index.html"),
        ("/keys", "/index.html"),
        ("/usage/openai", "/index.html"),
        ("/index.html", "/index.html"),
        ("/config.json", "/config.json"),
        ("/assets/index-3f2a1c.js", "/assets/index-3f2a1c.js"),
        ("/docs", "/docs/index.html"),
        ("/docs/", "/docs/index.html"),
        ("/docs/index.html", "/docs/index.html"),
        ("/docs/troubleshooting.html", "/docs/troubleshooting.html"),
        ("/docs/missing.html", "/docs/missing.html"),
        ("/favicon.svg", "/favicon.svg"),
    ] {
        assert_eq!(rewritten(code, uri), expected, "viewer request for {uri}");
    }
    // It is attached to the site's behaviour, never to the API's.
    let config = at(resource(&template, "Distribution"), &["Properties", "DistributionConfig"]);
    let attached = |behaviour: &Value| {
        behaviour.get("FunctionAssociations").and_then(Value::as_sequence).is_some_and(|f| {
            f.iter().any(|a| {
                a.get("FunctionARN")
                    .and_then(|v| v.get("Fn::GetAtt"))
                    .and_then(Value::as_sequence)
                    .and_then(|s| s.first())
                    .and_then(Value::as_str)
                    == Some("SpaFallbackFunction")
            })
        })
    };
    assert!(attached(at(config, &["DefaultCacheBehavior"])), "the default (site) behaviour runs the fallback");
    for behaviour in at(config, &["CacheBehaviors"]).as_sequence().unwrap() {
        assert!(!attached(behaviour), "{} must not run the SPA fallback", text(behaviour, &["PathPattern"]));
    }
}

#[test]
fn the_site_sends_the_local_gateways_security_headers_and_its_bucket_is_private() {
    let template = template();
    let headers = at(resource(&template, "SiteSecurityHeaders"), &["Properties", "ResponseHeadersPolicyConfig", "SecurityHeadersConfig"]);
    let cognito = "https://${UserPoolDomain}.auth.${AWS::Region}.amazoncognito.com";
    let local = stockpulse_local::content_security_policy(&[cognito.to_owned()]);
    assert_eq!(
        text(headers, &["ContentSecurityPolicy", "ContentSecurityPolicy", "Fn::Sub"]),
        local.to_str().unwrap(),
        "CloudFront's CSP must be the local gateway's (infra/local/src/static_files.rs) with the Cognito domain"
    );
    assert_eq!(text(headers, &["FrameOptions", "FrameOption"]), "DENY");
    assert_eq!(text(headers, &["ReferrerPolicy", "ReferrerPolicy"]), "no-referrer");
    assert!(at(headers, &["ContentTypeOptions"]).get("Override").is_some());
    let hsts_seconds = at(headers, &["StrictTransportSecurity", "AccessControlMaxAgeSec"]).as_u64().unwrap();
    assert!(hsts_seconds >= 31_536_000, "HSTS for at least a year");

    let bucket = at(resource(&template, "SiteBucket"), &["Properties"]);
    let block = at(bucket, &["PublicAccessBlockConfiguration"]);
    for flag in ["BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"] {
        assert_eq!(block.get(flag).and_then(Value::as_bool), Some(true), "{flag}");
    }
    let rules = at(bucket, &["OwnershipControls", "Rules"]).as_sequence().unwrap();
    assert_eq!(text(&rules[0], &["ObjectOwnership"]), "BucketOwnerEnforced");
    assert_eq!(text(bucket, &["VersioningConfiguration", "Status"]), "Enabled");
    assert!(bucket.get("BucketEncryption").is_some());

    // Only this distribution reads the bucket (Origin Access Control, source ARN condition).
    let statements = at(resource(&template, "SiteBucketPolicy"), &["Properties", "PolicyDocument", "Statement"]).as_sequence().unwrap();
    let reads = statements.iter().find(|s| s.get("Sid").and_then(Value::as_str) == Some("CloudFrontReads")).expect("CloudFrontReads");
    assert_eq!(text(reads, &["Principal", "Service"]), "cloudfront.amazonaws.com");
    assert!(text(reads, &["Condition", "StringEquals", "AWS:SourceArn", "Fn::Sub"]).ends_with(":distribution/${Distribution}"));
    let origins = at(resource(&template, "Distribution"), &["Properties", "DistributionConfig", "Origins"]).as_sequence().unwrap();
    let site = origins.iter().find(|o| o.get("Id").and_then(Value::as_str) == Some("site")).unwrap();
    assert!(site.get("OriginAccessControlId").is_some(), "the site origin signs with Origin Access Control");
}
