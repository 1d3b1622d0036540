//! Counts the AWS API calls of every API operation on the AWS backend (through the recording
//! proxy in front of moto) and renders `docs/aws-costs.md` from them: calls per operation and the
//! monthly cost of a workload, with the prices used. The committed file must equal what this
//! test produces; `STOCKPULSE_UPDATE_DOCS=1` rewrites it.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde_json::json;
use stockpulse_tests::fault_proxy::{AwsCall, FaultProxy};
use stockpulse_tests::{AwsBackend, ServerOptions, TestServer, canary, workspace_root};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

/// us-east-1 list prices as AWS publishes them (DynamoDB on-demand since its price cut of
/// 2024-11-01). Compared on 2026-11-25 with secondary sources only (no web access here): check
/// aws.amazon.com/pricing before budgeting.
const PRICES_AS_OF: &str = "2026-11-25 (compared with secondary sources; check AWS's pricing pages before budgeting)";
const DYNAMO_PER_MILLION_WRU: f64 = 0.625;
const DYNAMO_PER_MILLION_RRU: f64 = 0.125;
const DYNAMO_PER_GB_MONTH: f64 = 0.25;
const KMS_PER_KEY_MONTH: f64 = 1.0;
const KMS_PER_10K_REQUESTS: f64 = 0.03;
const SECRETS_PER_SECRET_MONTH: f64 = 0.40;
const SECRETS_PER_10K_CALLS: f64 = 0.05;

#[derive(Default, Clone, Copy)]
struct Counts {
    dynamo_reads: usize,
    /// Write requests (a transaction counts once).
    dynamo_writes: usize,
    /// Writes outside transactions (1 WRU each).
    plain_writes: usize,
    /// Items written inside transactions (each costs 2 WRU per KB).
    transact_items: usize,
    kms: usize,
    secrets: usize,
}

impl Counts {
    fn of(calls: &[AwsCall]) -> Counts {
        let mut c = Counts::default();
        for call in calls {
            let (service, operation) = call.target.split_once('.').unwrap_or((&call.target, ""));
            match service {
                s if s.starts_with("DynamoDB") => match operation {
                    "GetItem" | "Query" | "BatchGetItem" | "Scan" | "DescribeTable" => c.dynamo_reads += 1,
                    "TransactWriteItems" => {
                        c.dynamo_writes += 1;
                        c.transact_items += call.transact_items;
                    }
                    _ => {
                        c.dynamo_writes += 1;
                        c.plain_writes += 1;
                    }
                },
                s if s.starts_with("TrentService") => c.kms += 1,
                s if s.starts_with("secretsmanager") => c.secrets += 1,
                other => panic!("unexpected AWS call {other}.{operation}"),
            }
        }
        c
    }

    /// Request units with the assumption stated in the document: items up to 1 KB written, up to
    /// 4 KB read, strongly consistent reads (1 RRU), transactional writes 2 WRU per item.
    fn units(&self) -> (f64, f64) {
        (self.dynamo_reads as f64, self.plain_writes as f64 + 2.0 * self.transact_items as f64)
    }

    fn monthly_dollars(&self, times: f64) -> f64 {
        let (rru, wru) = self.units();
        times * (rru * DYNAMO_PER_MILLION_RRU / 1e6 + wru * DYNAMO_PER_MILLION_WRU / 1e6 + self.kms as f64 * KMS_PER_10K_REQUESTS / 1e4)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_per_operation_and_the_cost_table_are_measured() {
    let upstream = MockServer::start().await;
    Mock::given(method("GET")).respond_with(ResponseTemplate::new(200).set_body_json(json!({"data": []}))).mount(&upstream).await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"model": "gpt-4o-mini", "usage": {"prompt_tokens": 5, "completion_tokens": 7}})),
        )
        .mount(&upstream)
        .await;
    let mut backend = AwsBackend::fresh().await;
    let proxy = FaultProxy::start(&backend.moto_url).await;
    backend.via = Some(proxy.url.clone());
    let server =
        TestServer::start_with(ServerOptions { aws: Some(backend), ..Default::default() }.upstream("openai", &upstream.uri())).await;
    let token = server.token("admin", "ws-aws-costs").await;
    let c = &server.client;
    // Warm the chain head and the workspace (the first entry of a workspace differs slightly).
    c.post_json("/api/keys", Some(&token), &json!({"provider": "groq", "credentials": {"api_key": canary("gsk_")}})).await;
    proxy.take_calls();

    let mut rows: Vec<(&str, Counts)> = Vec::new();
    let created = c.post_json("/api/keys", Some(&token), &json!({"provider": "openai", "credentials": {"api_key": canary("sk-")}})).await;
    assert_eq!(created.status, 201);
    rows.push(("create a key", Counts::of(&proxy.take_calls())));
    let id = created.json["id"].as_str().unwrap().to_owned();
    let path = format!("/api/keys/{id}");
    assert_eq!(c.get(&path, Some(&token)).await.status, 200);
    rows.push(("read a key", Counts::of(&proxy.take_calls())));
    assert_eq!(c.get("/api/keys", Some(&token)).await.status, 200);
    rows.push(("list keys (one page)", Counts::of(&proxy.take_calls())));
    assert_eq!(c.post_json(&format!("{path}/test"), Some(&token), &json!({})).await.status, 200);
    rows.push(("test a stored key", Counts::of(&proxy.take_calls())));
    assert_eq!(
        c.post_json("/api/keys/test", Some(&token), &json!({"provider": "openai", "credentials": {"api_key": canary("sk-")}})).await.status,
        200
    );
    rows.push(("test a candidate key", Counts::of(&proxy.take_calls())));
    assert_eq!(c.patch_json(&path, Some(&token), None, &json!({"label": "renamed"})).await.status, 200);
    rows.push(("edit the label", Counts::of(&proxy.take_calls())));
    assert_eq!(c.patch_json(&path, Some(&token), None, &json!({"credentials": {"api_key": canary("sk-")}})).await.status, 200);
    rows.push(("replace the credentials", Counts::of(&proxy.take_calls())));
    assert_eq!(c.get("/api/audit", Some(&token)).await.status, 200);
    rows.push(("list the audit trail (one page)", Counts::of(&proxy.take_calls())));
    assert_eq!(c.get("/api/audit/verify", Some(&token)).await.status, 200);
    rows.push(("verify the audit chain (< 500 entries)", Counts::of(&proxy.take_calls())));
    assert_eq!(c.get("/api/providers", Some(&token)).await.status, 200);
    rows.push(("list providers", Counts::of(&proxy.take_calls())));
    let (body_1, body_2) = (json!({"model": "gpt-4o-mini", "n": 1}), json!({"model": "gpt-4o-mini", "n": 2}));
    let chat = |body| c.post_json("/proxy/openai/chat/completions", Some(&token), body);
    assert_eq!(chat(&body_1).await.status, 200);
    rows.push(("proxied request, key not yet in memory", Counts::of(&proxy.take_calls())));
    assert_eq!(chat(&body_2).await.status, 200);
    rows.push(("proxied request, warm (not cacheable)", Counts::of(&proxy.take_calls())));
    assert_eq!(c.get("/proxy/openai/models", Some(&token)).await.header("x-stockpulse-cache"), Some("MISS"));
    rows.push(("proxied request, warm, cacheable MISS", Counts::of(&proxy.take_calls())));
    assert_eq!(c.get("/proxy/openai/models", Some(&token)).await.header("x-stockpulse-cache"), Some("HIT"));
    rows.push(("proxied request, warm, cache HIT", Counts::of(&proxy.take_calls())));
    assert_eq!(c.delete(&path, Some(&token), None).await.status, 204);
    rows.push(("delete a key (and purge its cached answers)", Counts::of(&proxy.take_calls())));

    let get = |name: &str| rows.iter().find(|r| r.0 == name).unwrap().1;
    // The budgets this design promises; a change that breaks one fails here.
    assert_eq!(get("read a key").kms + get("read a key").dynamo_writes, 0, "reads never touch KMS or write");
    assert_eq!(get("list providers").dynamo_reads + get("list providers").kms, 0, "the catalog is compiled in");
    assert_eq!(get("edit the label").kms, 0, "editing metadata needs no KMS call");
    assert_eq!(get("create a key").kms, 1, "one GenerateDataKey per stored key");
    assert_eq!(get("test a stored key").kms, 1, "one Decrypt per test");
    // The warm-path budget of DESIGN.md §4: no vault call, one write for limit + quota + usage.
    for name in ["proxied request, warm (not cacheable)", "proxied request, warm, cache HIT"] {
        let warm = get(name);
        assert_eq!(warm.kms + warm.secrets, 0, "{name}: a warm proxied request never calls KMS");
        assert_eq!(warm.dynamo_writes, 1, "{name}: one write decides the limits and records usage");
    }
    assert_eq!(get("proxied request, key not yet in memory").kms, 1, "one Decrypt when the key is not in memory");
    for (name, counts) in rows.iter().filter(|(n, _)| !n.ends_with("cacheable MISS") && !n.starts_with("delete")) {
        assert!(counts.dynamo_writes <= 1, "{name}: every operation writes in at most one request (one transaction)");
    }
    assert_eq!(get("proxied request, warm, cacheable MISS").dynamo_writes, 2, "the admission write and the cache entry");
    assert_eq!(get("delete a key (and purge its cached answers)").dynamo_writes, 2, "the delete's transaction, then the purge");

    let mut doc = String::new();
    writeln!(doc, "# AWS calls and cost of StockPulse Keys\n").unwrap();
    writeln!(doc, "Generated by `tests/e2e/aws_costs.rs` from the calls the API makes against the AWS backend").unwrap();
    writeln!(doc, "(DynamoDB single table + KMS envelope vault, counted at the network by a proxy in front of moto).").unwrap();
    writeln!(doc, "Do not edit by hand: `STOCKPULSE_UPDATE_DOCS=1 cargo test -p stockpulse-tests --test e2e aws_costs` rewrites it.\n")
        .unwrap();
    writeln!(doc, "## Calls per operation (KMS vault)\n").unwrap();
    writeln!(doc, "| operation | DynamoDB reads | DynamoDB write requests | items in the transaction | KMS calls |").unwrap();
    writeln!(doc, "|---|---:|---:|---:|---:|").unwrap();
    for (name, c) in &rows {
        writeln!(doc, "| {name} | {} | {} | {} | {} |", c.dynamo_reads, c.dynamo_writes, c.transact_items, c.kms).unwrap();
    }
    writeln!(doc, "\nEvery change and its audit entry (plus the chain head) are one `TransactWriteItems`; reads are").unwrap();
    writeln!(doc, "strongly consistent `GetItem`/`Query` calls. A proxied request makes one `TransactWriteItems` (key still").unwrap();
    writeln!(doc, "current + rate-limit and quota counters + usage, including the outcomes of this process's earlier requests)").unwrap();
    writeln!(doc, "and reads the counters back; a cacheable miss also writes the cache entry. A warm request never calls KMS.").unwrap();
    writeln!(doc, "At start a process makes one more KMS call (unwrapping").unwrap();
    writeln!(doc, "the fingerprint key) and, the very first time, one `GenerateDataKeyWithoutPlaintext` and one `PutItem`.\n").unwrap();

    let keys = 10_000.0;
    let tests_per_key = 30.0;
    let edits_per_key = 1.0;
    let lists = 100_000.0;
    let workload = get("test a stored key").monthly_dollars(keys * tests_per_key)
        + get("replace the credentials").monthly_dollars(keys * edits_per_key)
        + get("list keys (one page)").monthly_dollars(lists)
        + get("read a key").monthly_dollars(lists);
    // Per key: record, slot and material, plus the month's audit entries, about 1 KB each.
    let items_per_key = 3.0 + tests_per_key + edits_per_key;
    let storage_gb = keys * items_per_key * 1024.0 / (1024.0 * 1024.0 * 1024.0);
    let dynamo_storage = storage_gb * DYNAMO_PER_GB_MONTH;
    let kms_total = KMS_PER_KEY_MONTH + workload + dynamo_storage;
    let secrets_storage = keys * SECRETS_PER_SECRET_MONTH;
    let secrets_calls = keys * (tests_per_key + edits_per_key) * SECRETS_PER_10K_CALLS / 1e4;
    let secrets_total = secrets_storage + secrets_calls + workload + dynamo_storage;

    writeln!(doc, "## Monthly cost for 10,000 stored keys\n").unwrap();
    writeln!(doc, "Workload: 10,000 keys, each tested once a day ({tests_per_key} tests) and its credentials replaced once a").unwrap();
    writeln!(
        doc,
        "month; 100,000 key reads and 100,000 list pages a month; a month of audit entries kept. Request units assume items of at most 1 KB"
    )
    .unwrap();
    writeln!(doc, "written and 4 KB read, 2 WRU per item written in a transaction, 1 RRU per strongly consistent read.\n").unwrap();
    writeln!(doc, "| vault | key storage | requests (DynamoDB + KMS) | DynamoDB storage | total per month |").unwrap();
    writeln!(doc, "|---|---:|---:|---:|---:|").unwrap();
    writeln!(
        doc,
        "| KMS envelope (default) | ${KMS_PER_KEY_MONTH:.2} (one KMS key) | ${workload:.2} | ${dynamo_storage:.2} | **${kms_total:.2}** |"
    )
    .unwrap();
    writeln!(
        doc,
        "| Secrets Manager (one secret per key) | ${secrets_storage:.2} | ${:.2} | ${dynamo_storage:.2} | **${secrets_total:.2}** |",
        workload + secrets_calls
    )
    .unwrap();
    writeln!(doc, "\nThe Secrets Manager row prices its secrets and its calls (one per test or edit) from the list").unwrap();
    writeln!(doc, "prices; its calls are not measured here yet.\n").unwrap();
    let proxied = 1_000_000.0;
    let warm = get("proxied request, warm (not cacheable)").monthly_dollars(proxied);
    let hit = get("proxied request, warm, cache HIT").monthly_dollars(proxied);
    writeln!(doc, "## Proxied requests\n").unwrap();
    writeln!(doc, "One million warm proxied requests a month cost ${warm:.2} in DynamoDB requests when none is cacheable, ${hit:.2}")
        .unwrap();
    writeln!(doc, "when all are cache hits (same assumptions as above; the provider's own charges are not included).\n").unwrap();
    writeln!(doc, "Prices used (us-east-1, as of {PRICES_AS_OF}): DynamoDB on-demand ${DYNAMO_PER_MILLION_WRU} per million write").unwrap();
    writeln!(doc, "request units, ${DYNAMO_PER_MILLION_RRU} per million read request units, ${DYNAMO_PER_GB_MONTH} per GB-month; KMS")
        .unwrap();
    writeln!(doc, "${KMS_PER_KEY_MONTH:.2} per key-month and ${KMS_PER_10K_REQUESTS} per 10,000 requests; Secrets Manager ${SECRETS_PER_SECRET_MONTH:.2} per").unwrap();
    writeln!(doc, "secret-month and ${SECRETS_PER_10K_CALLS} per 10,000 API calls.").unwrap();

    let committed_path = workspace_root().join("docs/aws-costs.md");
    if std::env::var_os("STOCKPULSE_UPDATE_DOCS").is_some() {
        std::fs::write(&committed_path, &doc).unwrap();
    }
    let committed = std::fs::read_to_string(&committed_path).unwrap_or_default();
    let summary: BTreeMap<&str, (usize, usize, usize)> = rows.iter().map(|(n, c)| (*n, (c.dynamo_reads, c.dynamo_writes, c.kms))).collect();
    assert_eq!(committed, doc, "docs/aws-costs.md is out of date (measured: {summary:?}); rerun with STOCKPULSE_UPDATE_DOCS=1");
}
