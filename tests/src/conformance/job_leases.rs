//! The `JobLeases` contract: one holder at a time per job, leases that expire, and the position
//! a run saves for the next one.

use chrono::{DateTime, Duration, Utc};
use stockpulse_shared::ports::LeaseError;

use super::ProxyStores;

/// Runs every check of the suite as its own `#[tokio::test]`, against the `ProxyStores` that
/// `$make` (an async expression) builds.
#[macro_export]
macro_rules! job_leases_conformance {
    ($make:expr) => {
        $crate::job_leases_conformance!(@tests $make;
            a_free_lease_is_taken_with_no_position,
            a_held_lease_is_refused_to_another_holder,
            the_holder_may_acquire_again,
            an_expired_lease_goes_to_another_holder,
            release_saves_the_position_for_the_next_run,
            release_by_a_non_holder_changes_nothing,
            concurrent_acquires_exactly_one_wins,
        );
    };
    (@tests $make:expr; $($name:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let stores = $make.await;
                $crate::conformance::job_leases::$name(&stores).await;
            }
        )+
    };
}

/// A job name no other check uses (suites share one backend).
fn job(tag: &str) -> String {
    format!("job-{tag}-{}", uuid::Uuid::new_v4().simple())
}

/// Whole seconds, so that every store keeps the instants exactly.
fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(Utc::now().timestamp(), 0).expect("a valid instant")
}

pub async fn a_free_lease_is_taken_with_no_position(stores: &ProxyStores) {
    let job = job("free");
    let t = now();
    assert_eq!(stores.leases.acquire(&job, "run-a", t, t + Duration::minutes(5)).await, Ok(None));
    // Another job's lease is its own.
    let other = self::job("free-other");
    assert_eq!(stores.leases.acquire(&other, "run-b", t, t + Duration::minutes(5)).await, Ok(None));
}

pub async fn a_held_lease_is_refused_to_another_holder(stores: &ProxyStores) {
    let job = job("held");
    let t = now();
    let until = t + Duration::minutes(5);
    stores.leases.acquire(&job, "run-a", t, until).await.expect("free");
    assert_eq!(stores.leases.acquire(&job, "run-b", t, t + Duration::minutes(10)).await, Err(LeaseError::Held { until }));
    assert_eq!(
        stores.leases.acquire(&job, "run-b", until - Duration::seconds(1), until + Duration::minutes(5)).await,
        Err(LeaseError::Held { until }),
        "still valid a second before it ends"
    );
    // The refusals changed nothing: the holder still holds it.
    assert!(stores.leases.release(&job, "run-a", None).await.unwrap());
}

pub async fn the_holder_may_acquire_again(stores: &ProxyStores) {
    let job = job("again");
    let t = now();
    stores.leases.acquire(&job, "run-a", t, t + Duration::minutes(5)).await.expect("free");
    let extended = t + Duration::minutes(15);
    assert_eq!(stores.leases.acquire(&job, "run-a", t + Duration::minutes(1), extended).await, Ok(None), "the holder renews");
    assert_eq!(
        stores.leases.acquire(&job, "run-b", t + Duration::minutes(10), t + Duration::minutes(20)).await,
        Err(LeaseError::Held { until: extended }),
        "the renewal moved `until`"
    );
}

pub async fn an_expired_lease_goes_to_another_holder(stores: &ProxyStores) {
    let job = job("expired");
    let t = now();
    let until = t + Duration::minutes(5);
    stores.leases.acquire(&job, "crashed-run", t, until).await.expect("free");
    // `until` itself is expired.
    assert_eq!(stores.leases.acquire(&job, "run-b", until, until + Duration::minutes(5)).await, Ok(None));
    assert_eq!(
        stores.leases.acquire(&job, "crashed-run", until + Duration::seconds(1), until + Duration::minutes(10)).await,
        Err(LeaseError::Held { until: until + Duration::minutes(5) }),
        "the new holder has it now"
    );
    assert!(!stores.leases.release(&job, "crashed-run", Some("late")).await.unwrap(), "a run that outlived its lease saves nothing");
    assert!(stores.leases.release(&job, "run-b", None).await.unwrap());
}

pub async fn release_saves_the_position_for_the_next_run(stores: &ProxyStores) {
    let job = job("position");
    let t = now();
    stores.leases.acquire(&job, "run-1", t, t + Duration::minutes(5)).await.expect("free");
    assert!(stores.leases.release(&job, "run-1", Some("[\"ws-a\",\"key-7\"]")).await.unwrap());
    // Released: free at once, long before `until`, and the position comes with it.
    let position = stores.leases.acquire(&job, "run-2", t + Duration::seconds(1), t + Duration::minutes(5)).await;
    assert_eq!(position, Ok(Some("[\"ws-a\",\"key-7\"]".to_owned())));
    assert!(stores.leases.release(&job, "run-2", Some("[\"ws-b\",\"key-1\"]")).await.unwrap());
    assert_eq!(
        stores.leases.acquire(&job, "run-3", t + Duration::seconds(2), t + Duration::minutes(5)).await,
        Ok(Some("[\"ws-b\",\"key-1\"]".to_owned())),
        "the newest position"
    );
    // A release without a position clears it (the walk finished: start over next time).
    assert!(stores.leases.release(&job, "run-3", None).await.unwrap());
    assert_eq!(stores.leases.acquire(&job, "run-4", t + Duration::seconds(3), t + Duration::minutes(5)).await, Ok(None));
    assert!(!stores.leases.release(&job, "run-3", Some("stale")).await.unwrap(), "released leases are not released twice");
}

pub async fn release_by_a_non_holder_changes_nothing(stores: &ProxyStores) {
    let job = job("non-holder");
    let t = now();
    let until = t + Duration::minutes(5);
    stores.leases.acquire(&job, "run-a", t, until).await.expect("free");
    assert!(stores.leases.release(&job, "run-a", Some("saved")).await.unwrap());
    stores.leases.acquire(&job, "run-b", t, until).await.expect("released");
    assert!(!stores.leases.release(&job, "intruder", Some("bogus")).await.unwrap());
    assert!(!stores.leases.release(&job, "intruder", None).await.unwrap());
    assert_eq!(
        stores.leases.acquire(&job, "run-c", t + Duration::seconds(1), until).await,
        Err(LeaseError::Held { until }),
        "the holder still holds it"
    );
    assert_eq!(
        stores.leases.acquire(&job, "run-b", t + Duration::seconds(1), until).await,
        Ok(Some("saved".to_owned())),
        "the position is untouched"
    );
    // A job nobody ever took: nothing to release, and nothing is created by trying.
    let never = self::job("never");
    assert!(!stores.leases.release(&never, "intruder", Some("bogus")).await.unwrap());
    assert_eq!(stores.leases.acquire(&never, "run-a", t, until).await, Ok(None));
}

pub async fn concurrent_acquires_exactly_one_wins(stores: &ProxyStores) {
    let job = job("race");
    let t = now();
    let until = t + Duration::minutes(5);
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let (leases, job) = (stores.leases.clone(), job.clone());
            tokio::spawn(async move { (i, leases.acquire(&job, &format!("run-{i}"), t, until).await) })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            (i, Ok(None)) => winners.push(i),
            (_, Err(LeaseError::Held { until: held })) => assert_eq!(held, until),
            (i, other) => panic!("run-{i}: unexpected {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    let winner = format!("run-{}", winners[0]);
    assert!(stores.leases.release(&job, &winner, None).await.unwrap(), "the winner holds it");
}
