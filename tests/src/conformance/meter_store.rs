//! The `MeterStore` contract: the proxy's one conditional write per request (key check, limits,
//! counters, usage), what analytics read back, and quota policies.
//!
//! Admissions use fixed instants (`base_time`), so minute, day and month steps are deterministic.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};
use stockpulse_shared::domain::audit::{ChainVerifier, action};
use stockpulse_shared::domain::environment::Environment;
use stockpulse_shared::domain::keys::{KeyRecord, KeyStatus};
use stockpulse_shared::domain::metering::{Counters, LATENCY_BUCKETS, LimitKind, Limits, MeterKey, UsageCounts, UsageDay, UsageRecord};
use stockpulse_shared::ports::{Admission, MaterialChange, Verdict};

use super::key_store::{draft, record, sealed};
use super::{ProxyStores, workspace};

/// Runs every check of the suite as its own `#[tokio::test]`, against the `ProxyStores` that
/// `$make` (an async expression) builds.
#[macro_export]
macro_rules! meter_store_conformance {
    ($make:expr) => {
        $crate::meter_store_conformance!(@tests $make;
            admit_counts_shows_usage_and_marks_the_key_used,
            record_writes_keep_last_used_at,
            minute_limit_refuses_and_writes_nothing,
            a_new_minute_starts_from_zero_while_the_day_keeps_counting,
            day_limit_refuses_until_the_next_day,
            month_limit_refuses_until_the_next_month,
            a_zero_limit_refuses_the_first_request,
            concurrent_admits_never_overshoot,
            key_changed_when_deleted,
            key_changed_when_the_material_version_differs,
            key_changed_when_revoked,
            uncounted_admissions_pass_a_reached_limit_and_move_no_counter,
            tokens_count_against_the_month_token_limit,
            usage_of_other_meters_and_days_is_applied,
            latency_buckets_add_up,
            latest_provider_limits_are_kept,
            record_usage_outside_an_admission,
            usage_filters_by_provider_and_range_and_sorts,
            policy_round_trip_with_audit,
            workspaces_are_isolated,
        );
    };
    (@tests $make:expr; $($name:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let stores = $make.await;
                $crate::conformance::meter_store::$name(&stores).await;
            }
        )+
    };
}

/// 12:00:15 UTC on the 10th of the current month: a few minutes, days and a month either side
/// stay clear of window boundaries.
fn base_time() -> DateTime<Utc> {
    let today = Utc::now();
    Utc.with_ymd_and_hms(today.year(), today.month(), 10, 12, 0, 15).single().expect("a valid instant")
}

fn first_of_next_month(now: DateTime<Utc>) -> DateTime<Utc> {
    let (year, month) = if now.month() == 12 { (now.year() + 1, 1) } else { (now.year(), now.month() + 1) };
    Utc.with_ymd_and_hms(year, month, 1, 12, 0, 15).single().expect("a valid instant")
}

fn counters(minute: u64, today: u64, month: u64, tokens: u64) -> Counters {
    Counters { requests_this_minute: minute, requests_today: today, requests_this_month: month, llm_tokens_this_month: tokens }
}

/// A workspace with one stored key and its meter.
struct Fixture {
    ws: String,
    key: KeyRecord,
    meter: MeterKey,
}

async fn fixture(stores: &ProxyStores, tag: &str) -> Fixture {
    let ws = workspace(tag);
    let key = record(&ws, "openai", Environment::Production);
    stores.keys.insert(&key, &sealed(1), draft(&ws, action::KEY_CREATE, "openai", Some(&key.id))).await.expect("insert key");
    let meter = MeterKey { workspace: ws.clone(), provider: "openai".into(), environment: Environment::Production };
    Fixture { ws, key, meter }
}

impl Fixture {
    fn admission(&self, now: DateTime<Utc>, limits: Limits) -> Admission {
        Admission {
            meter: self.meter.clone(),
            key_id: self.key.id.clone(),
            key_version: self.key.key_version,
            now,
            limits,
            counted: true,
            usage: vec![],
        }
    }

    fn other_meter(&self, environment: Environment) -> MeterKey {
        MeterKey { environment, ..self.meter.clone() }
    }
}

fn usage_record(meter: &MeterKey, day: NaiveDate, counts: UsageCounts) -> UsageRecord {
    UsageRecord { meter: meter.clone(), day, counts, provider_limits: BTreeMap::new(), observed_at: base_time() }
}

fn tokens(input: u64, output: u64) -> UsageCounts {
    UsageCounts { input_tokens: input, output_tokens: output, ..UsageCounts::default() }
}

fn cache_hits(n: u64) -> UsageCounts {
    UsageCounts { cache_hits: n, ..UsageCounts::default() }
}

async fn admit(stores: &ProxyStores, admission: &Admission) -> Verdict {
    stores.meter.admit(admission).await.expect("admit")
}

async fn admitted(stores: &ProxyStores, admission: &Admission) -> Counters {
    match admit(stores, admission).await {
        Verdict::Admitted(c) => c,
        other => panic!("expected Admitted, got {other:?}"),
    }
}

async fn limited(stores: &ProxyStores, admission: &Admission) -> (LimitKind, Counters) {
    match admit(stores, admission).await {
        Verdict::Limited { limit, counters } => (limit, counters),
        other => panic!("expected Limited, got {other:?}"),
    }
}

async fn current(stores: &ProxyStores, meter: &MeterKey, now: DateTime<Utc>) -> Counters {
    stores.meter.counters(meter, now).await.expect("counters")
}

async fn days(stores: &ProxyStores, ws: &str, from: NaiveDate, to: NaiveDate) -> Vec<UsageDay> {
    stores.meter.usage(ws, None, from, to).await.expect("usage")
}

async fn one_day(stores: &ProxyStores, meter: &MeterKey, day: NaiveDate) -> Option<UsageDay> {
    let all = stores.meter.usage(&meter.workspace, Some(&meter.provider), day, day).await.expect("usage");
    all.into_iter().find(|d| d.environment == meter.environment)
}

async fn last_used(stores: &ProxyStores, f: &Fixture) -> Option<DateTime<Utc>> {
    stores.keys.get(&f.ws, &f.key.id).await.expect("get").expect("the key exists").last_used_at
}

pub async fn admit_counts_shows_usage_and_marks_the_key_used(stores: &ProxyStores) {
    let f = fixture(stores, "meter-admit").await;
    let now = base_time();
    assert_eq!(last_used(stores, &f).await, None);
    assert_eq!(admitted(stores, &f.admission(now, Limits::default())).await, counters(1, 1, 1, 0));
    assert_eq!(admitted(stores, &f.admission(now, Limits::default())).await, counters(2, 2, 2, 0));
    assert_eq!(current(stores, &f.meter, now).await, counters(2, 2, 2, 0));
    let day = one_day(stores, &f.meter, now.date_naive()).await.expect("a usage day");
    assert_eq!((day.provider.as_str(), day.environment, day.day), ("openai", Environment::Production, now.date_naive()));
    assert_eq!(day.counts.requests, 2);
    assert_eq!(last_used(stores, &f).await, Some(now));
    let listed = stores.keys.list(&f.ws, None, 10).await.unwrap().items;
    assert_eq!(listed[0].last_used_at, Some(now), "lists show it too");
    let slot = stores.keys.find_slot(&f.ws, "openai", Environment::Production).await.unwrap().unwrap();
    assert_eq!(slot.last_used_at, Some(now), "and the slot lookup");
}

pub async fn record_writes_keep_last_used_at(stores: &ProxyStores) {
    let f = fixture(stores, "meter-last-used").await;
    let now = base_time();
    admitted(stores, &f.admission(now, Limits::default())).await;
    // An edit based on a read from before the request must not erase the use.
    let mut edited = f.key.clone();
    edited.label = "renamed".into();
    edited.version = 2;
    stores.keys.update(&edited, 1, MaterialChange::Keep, draft(&f.ws, action::KEY_UPDATE, "openai", Some(&f.key.id))).await.unwrap();
    let got = stores.keys.get(&f.ws, &f.key.id).await.unwrap().unwrap();
    assert_eq!((got.label.as_str(), got.last_used_at), ("renamed", Some(now)));
}

pub async fn minute_limit_refuses_and_writes_nothing(stores: &ProxyStores) {
    let f = fixture(stores, "meter-minute").await;
    let now = base_time();
    let limits = Limits { requests_per_minute: Some(3), ..Limits::default() };
    for n in 1..=3 {
        assert_eq!(admitted(stores, &f.admission(now, limits)).await.requests_this_minute, n);
    }
    let mut refused = f.admission(now + Duration::seconds(1), limits);
    refused.usage =
        vec![usage_record(&f.meter, now.date_naive(), UsageCounts { cache_hits: 1, input_tokens: 9, ..UsageCounts::default() })];
    assert_eq!(limited(stores, &refused).await, (LimitKind::RequestsPerMinute, counters(3, 3, 3, 0)));
    assert_eq!(current(stores, &f.meter, now).await, counters(3, 3, 3, 0), "no counter moved");
    let day = one_day(stores, &f.meter, now.date_naive()).await.unwrap();
    assert_eq!((day.counts.requests, day.counts.cache_hits, day.counts.input_tokens), (3, 0, 0), "the carried usage was not applied");
    assert_eq!(last_used(stores, &f).await, Some(now), "the refused admission did not mark the key used");
}

pub async fn a_new_minute_starts_from_zero_while_the_day_keeps_counting(stores: &ProxyStores) {
    let f = fixture(stores, "meter-next-minute").await;
    let now = base_time();
    let limits = Limits { requests_per_minute: Some(3), ..Limits::default() };
    for _ in 0..3 {
        admitted(stores, &f.admission(now, limits)).await;
    }
    limited(stores, &f.admission(now, limits)).await;
    let later = now + Duration::seconds(60);
    assert_eq!(current(stores, &f.meter, later).await, counters(0, 3, 3, 0));
    assert_eq!(admitted(stores, &f.admission(later, limits)).await, counters(1, 4, 4, 0));
    assert_eq!(admitted(stores, &f.admission(later, limits)).await, counters(2, 5, 5, 0));
}

pub async fn day_limit_refuses_until_the_next_day(stores: &ProxyStores) {
    let f = fixture(stores, "meter-day").await;
    let now = base_time();
    let limits = Limits { requests_per_minute: Some(100), requests_per_day: Some(2), ..Limits::default() };
    admitted(stores, &f.admission(now, limits)).await;
    admitted(stores, &f.admission(now + Duration::seconds(60), limits)).await;
    let refused_at = now + Duration::seconds(120);
    assert_eq!(limited(stores, &f.admission(refused_at, limits)).await, (LimitKind::RequestsPerDay, counters(0, 2, 2, 0)));
    assert_eq!(current(stores, &f.meter, refused_at).await, counters(0, 2, 2, 0), "the minute counted before the refusal was rolled back");
    let tomorrow = now + Duration::days(1);
    assert_eq!(admitted(stores, &f.admission(tomorrow, limits)).await, counters(1, 1, 3, 0));
    assert_eq!(one_day(stores, &f.meter, now.date_naive()).await.unwrap().counts.requests, 2);
}

pub async fn month_limit_refuses_until_the_next_month(stores: &ProxyStores) {
    let f = fixture(stores, "meter-month").await;
    let now = base_time();
    let limits = Limits { requests_per_day: Some(10), requests_per_month: Some(2), ..Limits::default() };
    admitted(stores, &f.admission(now, limits)).await;
    admitted(stores, &f.admission(now + Duration::days(1), limits)).await;
    let refused_at = now + Duration::days(2);
    assert_eq!(limited(stores, &f.admission(refused_at, limits)).await, (LimitKind::RequestsPerMonth, counters(0, 0, 2, 0)));
    assert!(
        one_day(stores, &f.meter, refused_at.date_naive()).await.is_none_or(|d| d.counts.requests == 0),
        "the refused day counted nothing"
    );
    let next_month = first_of_next_month(now);
    assert_eq!(admitted(stores, &f.admission(next_month, limits)).await, counters(1, 1, 1, 0));
}

pub async fn a_zero_limit_refuses_the_first_request(stores: &ProxyStores) {
    for kind in [LimitKind::RequestsPerMinute, LimitKind::RequestsPerDay, LimitKind::RequestsPerMonth, LimitKind::LlmTokensPerMonth] {
        let f = fixture(stores, "meter-zero").await;
        let limits = match kind {
            LimitKind::RequestsPerMinute => Limits { requests_per_minute: Some(0), ..Limits::default() },
            LimitKind::RequestsPerDay => Limits { requests_per_day: Some(0), ..Limits::default() },
            LimitKind::RequestsPerMonth => Limits { requests_per_month: Some(0), ..Limits::default() },
            LimitKind::LlmTokensPerMonth => Limits { llm_tokens_per_month: Some(0), ..Limits::default() },
        };
        assert_eq!(limited(stores, &f.admission(base_time(), limits)).await, (kind, Counters::default()), "{kind:?}");
        assert_eq!(current(stores, &f.meter, base_time()).await, Counters::default(), "{kind:?}");
    }
}

pub async fn concurrent_admits_never_overshoot(stores: &ProxyStores) {
    let f = fixture(stores, "meter-race").await;
    let now = base_time();
    let limits = Limits { requests_per_minute: Some(50), ..Limits::default() };
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let (meter, admission) = (stores.meter.clone(), f.admission(now, limits));
            tokio::spawn(async move { meter.admit(&admission).await })
        })
        .collect();
    let (mut admitted_count, mut limited_count) = (0, 0);
    for task in tasks {
        match task.await.unwrap().expect("every admission gets a verdict") {
            Verdict::Admitted(c) => {
                assert!(c.requests_this_minute <= 50, "{c:?}");
                admitted_count += 1;
            }
            Verdict::Limited { limit: LimitKind::RequestsPerMinute, counters } => {
                assert_eq!(counters.requests_this_minute, 50);
                limited_count += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((admitted_count, limited_count), (50, 150));
    assert_eq!(current(stores, &f.meter, now).await, counters(50, 50, 50, 0));
}

/// Asserts the admission (carrying usage) is refused as `KeyChanged` and wrote nothing.
async fn assert_key_changed(stores: &ProxyStores, f: &Fixture, mut admission: Admission) {
    let day = admission.now.date_naive();
    admission.usage = vec![usage_record(&f.meter, day, tokens(5, 5))];
    assert_eq!(admit(stores, &admission).await, Verdict::KeyChanged);
    admission.counted = false;
    assert_eq!(admit(stores, &admission).await, Verdict::KeyChanged, "uncounted admissions check the key too");
    assert_eq!(current(stores, &f.meter, admission.now).await, Counters::default());
    assert!(days(stores, &f.ws, day, day).await.is_empty(), "no usage was applied");
}

pub async fn key_changed_when_deleted(stores: &ProxyStores) {
    let f = fixture(stores, "meter-deleted").await;
    stores.keys.delete(&f.ws, &f.key.id, 1, draft(&f.ws, action::KEY_DELETE, "openai", Some(&f.key.id))).await.unwrap();
    assert_key_changed(stores, &f, f.admission(base_time(), Limits::default())).await;
    let mut unknown = f.admission(base_time(), Limits::default());
    unknown.key_id = uuid::Uuid::now_v7().to_string();
    assert_key_changed(stores, &f, unknown).await;
}

pub async fn key_changed_when_the_material_version_differs(stores: &ProxyStores) {
    let f = fixture(stores, "meter-version").await;
    let mut stale = f.admission(base_time(), Limits::default());
    stale.key_version = 2;
    assert_key_changed(stores, &f, stale).await;
    // After a rotation to version 2, admissions that read version 1 are the stale ones.
    let mut rotated = f.key.clone();
    rotated.key_version = 2;
    rotated.version = 2;
    stores
        .keys
        .update(&rotated, 1, MaterialChange::Replace(&sealed(2)), draft(&f.ws, action::KEY_UPDATE, "openai", Some(&f.key.id)))
        .await
        .unwrap();
    assert_key_changed(stores, &f, f.admission(base_time(), Limits::default())).await;
    let mut current_version = f.admission(base_time(), Limits::default());
    current_version.key_version = 2;
    assert_eq!(admitted(stores, &current_version).await, counters(1, 1, 1, 0));
}

pub async fn key_changed_when_revoked(stores: &ProxyStores) {
    let f = fixture(stores, "meter-revoked").await;
    let mut revoked = f.key.clone();
    revoked.status = KeyStatus::Revoked;
    revoked.version = 2;
    stores.keys.update(&revoked, 1, MaterialChange::Keep, draft(&f.ws, action::KEY_UPDATE, "openai", Some(&f.key.id))).await.unwrap();
    assert_key_changed(stores, &f, f.admission(base_time(), Limits::default())).await;
    assert_eq!(last_used(stores, &f).await, None);

    // The same through the revoke port, which also frees the key's slot.
    let f = fixture(stores, "meter-revoke-port").await;
    let mut revoked = f.key.clone();
    revoked.status = KeyStatus::Revoked;
    revoked.version = 2;
    stores.keys.revoke(&revoked, 1, draft(&f.ws, action::KEY_REVOKE, "openai", Some(&f.key.id))).await.unwrap();
    assert_key_changed(stores, &f, f.admission(base_time(), Limits::default())).await;
    assert_eq!(last_used(stores, &f).await, None);
}

pub async fn uncounted_admissions_pass_a_reached_limit_and_move_no_counter(stores: &ProxyStores) {
    let f = fixture(stores, "meter-uncounted").await;
    let now = base_time();
    let limits = Limits { requests_per_minute: Some(1), requests_per_day: Some(1), ..Limits::default() };
    admitted(stores, &f.admission(now, limits)).await;
    assert_eq!(limited(stores, &f.admission(now, limits)).await.0, LimitKind::RequestsPerMinute);
    let mut hit = f.admission(now + Duration::seconds(1), limits);
    hit.counted = false;
    hit.usage = vec![usage_record(&f.meter, now.date_naive(), cache_hits(1))];
    assert_eq!(admitted(stores, &hit).await, counters(1, 1, 1, 0));
    assert_eq!(admitted(stores, &hit).await, counters(1, 1, 1, 0));
    assert_eq!(current(stores, &f.meter, now).await, counters(1, 1, 1, 0));
    let day = one_day(stores, &f.meter, now.date_naive()).await.unwrap();
    assert_eq!((day.counts.requests, day.counts.cache_hits), (1, 2));
    assert_eq!(last_used(stores, &f).await, Some(now + Duration::seconds(1)), "a cache hit uses the key too");
}

pub async fn tokens_count_against_the_month_token_limit(stores: &ProxyStores) {
    let f = fixture(stores, "meter-tokens").await;
    let now = base_time();
    let limits = Limits { llm_tokens_per_month: Some(150), ..Limits::default() };
    let mut first = f.admission(now, limits);
    first.usage = vec![usage_record(&f.meter, now.date_naive(), tokens(100, 50))];
    assert_eq!(admitted(stores, &first).await, counters(1, 1, 1, 150), "the counters include the tokens just added");
    let (limit, seen) = limited(stores, &f.admission(now + Duration::days(1), limits)).await;
    assert_eq!((limit, seen), (LimitKind::LlmTokensPerMonth, counters(0, 0, 1, 150)));
    let day = one_day(stores, &f.meter, now.date_naive()).await.unwrap();
    assert_eq!((day.counts.input_tokens, day.counts.output_tokens), (100, 50));
    // The month limit on requests is checked first when both are reached.
    let both = Limits { requests_per_month: Some(1), llm_tokens_per_month: Some(150), ..Limits::default() };
    assert_eq!(limited(stores, &f.admission(now, both)).await.0, LimitKind::RequestsPerMonth);
}

pub async fn usage_of_other_meters_and_days_is_applied(stores: &ProxyStores) {
    let f = fixture(stores, "meter-other").await;
    let now = base_time();
    let today = now.date_naive();
    let yesterday = today - Duration::days(1);
    let development = f.other_meter(Environment::Development);
    let mut admission = f.admission(now, Limits::default());
    admission.usage = vec![
        usage_record(&f.meter, yesterday, UsageCounts { server_errors: 2, input_tokens: 7, ..UsageCounts::default() }),
        usage_record(&development, today, tokens(10, 5)),
    ];
    assert_eq!(admitted(stores, &admission).await, counters(1, 1, 1, 7), "yesterday's tokens belong to this month");
    assert_eq!(current(stores, &development, now).await, counters(0, 0, 0, 15));
    let mine = one_day(stores, &f.meter, yesterday).await.expect("yesterday's row");
    assert_eq!((mine.counts.server_errors, mine.counts.input_tokens, mine.counts.requests), (2, 7, 0));
    let theirs = one_day(stores, &development, today).await.expect("development's row");
    assert_eq!((theirs.counts.input_tokens, theirs.counts.output_tokens), (10, 5));
    assert_eq!(days(stores, &f.ws, yesterday, today).await.len(), 3);
}

pub async fn latency_buckets_add_up(stores: &ProxyStores) {
    let f = fixture(stores, "meter-latency").await;
    let day = base_time().date_naive();
    let measured = |samples: &[u64]| {
        let mut counts = UsageCounts::default();
        samples.iter().for_each(|ms| counts.record_latency(*ms));
        usage_record(&f.meter, day, counts)
    };
    let mut admission = f.admission(base_time(), Limits::default());
    admission.usage = vec![measured(&[3, 40])];
    admitted(stores, &admission).await;
    stores.meter.record_usage(&[measured(&[40, 60_000]), usage_record(&f.meter, day, cache_hits(1))]).await.unwrap();
    let buckets = one_day(stores, &f.meter, day).await.unwrap().counts.latency_ms_buckets;
    let mut expected = vec![0u64; LATENCY_BUCKETS];
    expected[0] = 1;
    expected[3] = 2;
    expected[LATENCY_BUCKETS - 1] = 1;
    assert_eq!(buckets, expected);
}

pub async fn latest_provider_limits_are_kept(stores: &ProxyStores) {
    let f = fixture(stores, "meter-provider-limits").await;
    let day = base_time().date_naive();
    let seen = |remaining: &str, at: DateTime<Utc>| UsageRecord {
        provider_limits: BTreeMap::from([("x-ratelimit-remaining-requests".to_owned(), remaining.to_owned())]),
        observed_at: at,
        ..usage_record(&f.meter, day, UsageCounts::default())
    };
    let t = base_time();
    let limits_of = || async { one_day(stores, &f.meter, day).await.map(|d| (d.provider_limits, d.provider_limits_at)).unwrap() };
    let mut admission = f.admission(t, Limits::default());
    admission.usage = vec![seen("10", t)];
    admitted(stores, &admission).await;
    let expected = (BTreeMap::from([("x-ratelimit-remaining-requests".to_owned(), "10".to_owned())]), Some(t));
    assert_eq!(limits_of().await, expected);
    stores.meter.record_usage(&[seen("99", t - Duration::seconds(5))]).await.unwrap();
    assert_eq!(limits_of().await, expected, "an older observation does not overwrite");
    let empty = UsageRecord { observed_at: t + Duration::seconds(5), ..usage_record(&f.meter, day, cache_hits(1)) };
    stores.meter.record_usage(&[empty]).await.unwrap();
    assert_eq!(limits_of().await, expected, "no headers is nothing new");
    stores.meter.record_usage(&[seen("7", t + Duration::seconds(9))]).await.unwrap();
    let newest = (BTreeMap::from([("x-ratelimit-remaining-requests".to_owned(), "7".to_owned())]), Some(t + Duration::seconds(9)));
    assert_eq!(limits_of().await, newest);
}

pub async fn record_usage_outside_an_admission(stores: &ProxyStores) {
    let f = fixture(stores, "meter-record").await;
    let now = base_time();
    let day = now.date_naive();
    let outcome =
        UsageCounts { auth_errors: 1, client_errors: 2, network_errors: 3, rate_limited: 4, cost_micro_usd: 250, ..tokens(30, 12) };
    stores.meter.record_usage(&[usage_record(&f.meter, day, outcome.clone())]).await.unwrap();
    stores.meter.record_usage(&[usage_record(&f.meter, day, outcome.clone())]).await.unwrap();
    stores.meter.record_usage(&[]).await.unwrap();
    let stored = one_day(stores, &f.meter, day).await.unwrap();
    let mut twice = outcome.clone();
    twice.add(&outcome);
    assert_eq!(stored.counts, twice);
    assert_eq!(current(stores, &f.meter, now).await, counters(0, 0, 0, 84), "tokens only; no request was counted");
    assert_eq!(last_used(stores, &f).await, None, "only admissions use the key");
}

pub async fn usage_filters_by_provider_and_range_and_sorts(stores: &ProxyStores) {
    let ws = workspace("meter-usage");
    let meter = |provider: &str, environment| MeterKey { workspace: ws.clone(), provider: provider.into(), environment };
    let d0 = base_time().date_naive();
    let day = |n: i64| d0 + Duration::days(n);
    // Written out of order on purpose.
    let records = [
        usage_record(&meter("openai", Environment::Production), day(2), cache_hits(1)),
        usage_record(&meter("groq", Environment::Production), day(1), cache_hits(1)),
        usage_record(&meter("openai", Environment::Production), day(0), cache_hits(1)),
        usage_record(&meter("openai", Environment::Development), day(1), cache_hits(1)),
        usage_record(&meter("openai", Environment::Production), day(1), cache_hits(1)),
        usage_record(&meter("openai", Environment::Production), day(3), cache_hits(1)),
    ];
    stores.meter.record_usage(&records).await.unwrap();
    let keys = |days: Vec<UsageDay>| days.into_iter().map(|d| (d.provider, d.environment, d.day)).collect::<Vec<_>>();
    let all = keys(stores.meter.usage(&ws, None, day(0), day(3)).await.unwrap());
    // (provider, environment, day): environments in the order of their ids (`development` < `production`).
    assert_eq!(
        all,
        [
            ("groq".to_owned(), Environment::Production, day(1)),
            ("openai".to_owned(), Environment::Development, day(1)),
            ("openai".to_owned(), Environment::Production, day(0)),
            ("openai".to_owned(), Environment::Production, day(1)),
            ("openai".to_owned(), Environment::Production, day(2)),
            ("openai".to_owned(), Environment::Production, day(3)),
        ]
    );
    let openai = keys(stores.meter.usage(&ws, Some("openai"), day(1), day(2)).await.unwrap());
    assert_eq!(
        openai,
        [
            ("openai".to_owned(), Environment::Development, day(1)),
            ("openai".to_owned(), Environment::Production, day(1)),
            ("openai".to_owned(), Environment::Production, day(2)),
        ],
        "both ends inclusive"
    );
    assert!(stores.meter.usage(&ws, Some("mistral"), day(0), day(3)).await.unwrap().is_empty());
    assert!(stores.meter.usage(&ws, None, day(4), day(9)).await.unwrap().is_empty());
}

pub async fn policy_round_trip_with_audit(stores: &ProxyStores) {
    let ws = workspace("meter-policy");
    let meter = MeterKey { workspace: ws.clone(), provider: "fmp".into(), environment: Environment::Production };
    let development = MeterKey { environment: Environment::Development, ..meter.clone() };
    assert_eq!(stores.meter.policy(&meter).await.unwrap(), None);
    let first = Limits { requests_per_minute: Some(10), requests_per_day: Some(250), ..Limits::default() };
    let entry = stores.meter.put_policy(&meter, &first, draft(&ws, action::QUOTA_UPDATE, "fmp", None)).await.unwrap();
    assert_eq!(stores.meter.policy(&meter).await.unwrap(), Some(first));
    let second = Limits { requests_per_month: Some(1_000), llm_tokens_per_month: Some(5), ..Limits::default() };
    stores.meter.put_policy(&meter, &second, draft(&ws, action::QUOTA_UPDATE, "fmp", None)).await.unwrap();
    assert_eq!(stores.meter.policy(&meter).await.unwrap(), Some(second), "the second put replaces the first");
    assert_eq!(stores.meter.policy(&development).await.unwrap(), None);
    let chain = stores.audit.chain_slice(&ws, 0, 10).await.unwrap();
    assert_eq!(chain.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(), [action::QUOTA_UPDATE, action::QUOTA_UPDATE]);
    assert_eq!(chain[0], entry);
    let mut verifier = ChainVerifier::new();
    chain.iter().for_each(|e| verifier.feed(e));
    let report = verifier.finish(stores.audit.chain_head(&ws).await.unwrap());
    assert!(report.ok, "{report:?}");
}

pub async fn workspaces_are_isolated(stores: &ProxyStores) {
    let ours = fixture(stores, "meter-iso-a").await;
    let theirs = fixture(stores, "meter-iso-b").await;
    let now = base_time();
    let mut admission = ours.admission(now, Limits::default());
    admission.usage = vec![usage_record(&ours.meter, now.date_naive(), tokens(1, 1))];
    admitted(stores, &admission).await;
    stores.meter.put_policy(&ours.meter, &Limits::default(), draft(&ours.ws, action::QUOTA_UPDATE, "openai", None)).await.unwrap();
    assert_eq!(current(stores, &theirs.meter, now).await, Counters::default());
    assert!(days(stores, &theirs.ws, now.date_naive(), now.date_naive()).await.is_empty());
    assert_eq!(stores.meter.policy(&theirs.meter).await.unwrap(), None);
    assert_eq!(stores.audit.chain_head(&theirs.ws).await.unwrap().map(|h| h.0), Some(1), "only their key's creation");
    // Our key id under their meter is not their key.
    let mut crossed = theirs.admission(now, Limits::default());
    crossed.key_id = ours.key.id.clone();
    assert_eq!(admit(stores, &crossed).await, Verdict::KeyChanged);
    assert_eq!(last_used(stores, &theirs).await, None);
}
