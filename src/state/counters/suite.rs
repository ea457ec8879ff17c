//! The behaviour every [`Counters`] shares, run against each implementation by the tests at
//! the bottom of its file. Time moves by hand (`now`), never by sleeping.

use super::*;
use std::sync::Arc;

const MINUTE: u64 = 60_000;

fn take(key: &str, window: Window, amount: u64, limit: u64, check: Check) -> Take<'_> {
    Take {
        key,
        window,
        amount,
        limit,
        check,
        lease: None,
    }
}

async fn used(c: &dyn Counters, key: &str, window: Window, now: u64) -> u64 {
    c.read(&[(key, window)], now).await.unwrap()[0].used
}

/// Every rule of the trait but [`Counters::remove_ended`], on one store, from `t` (a recent
/// Unix ms: Redis expires keys on its own clock).
pub async fn conformance(c: &dyn Counters, t: u64) {
    // Fits: admitted up to the limit exactly, then refused, nothing added.
    let day = Window::Fixed {
        start: t,
        end: t + MINUTE,
    };
    let images = |n| take("vk:a:images", day, n, 5, Check::Fits);
    let got = c.take(&[images(3)], "h", t).await.unwrap();
    let expect = CounterState {
        used: 3,
        window_start: t,
        resets_at: t + MINUTE,
    };
    assert_eq!(
        got,
        Taken {
            refused: None,
            counters: vec![expect]
        }
    );
    assert_eq!(
        c.take(&[images(2)], "h", t).await.unwrap().counters[0].used,
        5,
        "exactly at the limit"
    );
    let over = c.take(&[images(1)], "h", t + 1).await.unwrap();
    assert_eq!(over.refused, Some(0));
    assert_eq!(over.counters[0].used, 5, "a refused take adds nothing");
    assert_eq!(used(c, "vk:a:images", day, t + 2).await, 5);

    // Below: admitted while used < limit (the last one may pass it), refused at and after.
    let budget = Window::FromFirstUse { length: MINUTE };
    let spend = |key, n| take(key, budget, n, 10, Check::Below);
    assert_eq!(c.take(&[spend("vk:a:budget", 4)], "h", t).await.unwrap().refused, None);
    let passed = c.take(&[spend("vk:a:budget", 7)], "h", t + 1).await.unwrap();
    assert_eq!((passed.refused, passed.counters[0].used), (None, 11));
    assert_eq!(
        passed.counters[0].window_start, t,
        "the window started at the first take"
    );
    assert_eq!(
        c.take(&[spend("vk:a:budget", 1)], "h", t + 2).await.unwrap().refused,
        Some(0)
    );
    assert_eq!(
        c.take(&[spend("vk:a:exact", 10)], "h", t).await.unwrap().counters[0].used,
        10
    );
    let at_limit = c.take(&[spend("vk:a:exact", 1)], "h", t).await.unwrap();
    assert_eq!(
        (at_limit.refused, at_limit.counters[0].used),
        (Some(0), 10),
        "used == limit"
    );

    // All or nothing: one take refused, no counter of the call moves.
    let requests = |n| take("vk:b:requests", day, n, 100, Check::Fits);
    c.take(&[requests(1)], "h", t).await.unwrap();
    let calls = [
        requests(1),
        take("vk:b:images", day, 3, 2, Check::Fits),
        take("vk:b:spend", day, 9, 5, Check::Fits),
    ];
    let refused = c.take(&calls, "h", t).await.unwrap();
    assert_eq!(refused.refused, Some(1), "the first refused take");
    let unchanged: Vec<u64> = refused.counters.iter().map(|s| s.used).collect();
    assert_eq!(unchanged, vec![1, 0, 0]);
    assert_eq!(
        used(c, "vk:b:requests", day, t).await,
        1,
        "the admitted take was not added"
    );
    assert_eq!(used(c, "vk:b:images", day, t).await, 0);
    // ... and all are added when all fit; a key named twice sees its earlier amount.
    let both = [requests(2), take("vk:b:images", day, 2, 2, Check::Fits), requests(3)];
    let added = c.take(&both, "h", t).await.unwrap();
    assert_eq!(added.refused, None);
    let after: Vec<u64> = added.counters.iter().map(|s| s.used).collect();
    assert_eq!(after, vec![3, 2, 6]);
    assert_eq!(used(c, "vk:b:requests", day, t).await, 6);
    let twice = [
        take("vk:b:images", day, 0, 2, Check::Fits),
        take("vk:b:twice", day, 1, 1, Check::Fits),
        take("vk:b:twice", day, 1, 1, Check::Fits),
    ];
    assert_eq!(
        c.take(&twice, "h", t).await.unwrap().refused,
        Some(2),
        "the second take on a key counts the first"
    );
    assert_eq!(used(c, "vk:b:twice", day, t).await, 0);

    // Fixed window: a new start resets the counter.
    let first = Window::Fixed {
        start: t,
        end: t + 1000,
    };
    let second = Window::Fixed {
        start: t + 1000,
        end: t + 2000,
    };
    assert_eq!(
        c.take(&[take("vk:c:day", first, 5, 5, Check::Fits)], "h", t)
            .await
            .unwrap()
            .refused,
        None
    );
    assert_eq!(
        c.take(&[take("vk:c:day", first, 1, 5, Check::Fits)], "h", t + 999)
            .await
            .unwrap()
            .refused,
        Some(0)
    );
    let next = c
        .take(&[take("vk:c:day", second, 1, 5, Check::Fits)], "h", t + 1000)
        .await
        .unwrap();
    let expect = CounterState {
        used: 1,
        window_start: t + 1000,
        resets_at: t + 2000,
    };
    assert_eq!(
        next,
        Taken {
            refused: None,
            counters: vec![expect]
        }
    );

    // From first use: the window rolls over once its length has passed since it started.
    let minute = Window::FromFirstUse { length: 1000 };
    let rate = || take("vk:d:minute", minute, 1, 2, Check::Fits);
    c.take(&[rate()], "h", t).await.unwrap();
    assert_eq!(c.take(&[rate()], "h", t + 500).await.unwrap().counters[0].used, 2);
    assert_eq!(c.take(&[rate()], "h", t + 999).await.unwrap().refused, Some(0));
    let rolled = c.take(&[rate()], "h", t + 1000).await.unwrap();
    let expect = CounterState {
        used: 1,
        window_start: t + 1000,
        resets_at: t + 2000,
    };
    assert_eq!(
        rolled,
        Taken {
            refused: None,
            counters: vec![expect]
        }
    );

    // Read changes nothing: an ended window reads as empty, and is still there after.
    let ended = c.read(&[("vk:d:minute", minute)], t + 5000).await.unwrap();
    assert_eq!(
        ended,
        vec![CounterState {
            used: 0,
            window_start: t + 5000,
            resets_at: t + 6000
        }]
    );
    let again = c
        .read(&[("vk:d:minute", minute), ("vk:d:unknown", day)], t + 1500)
        .await
        .unwrap();
    let unknown = CounterState {
        used: 0,
        window_start: t,
        resets_at: t + MINUTE,
    };
    assert_eq!(again, vec![expect, unknown]);
    assert_eq!(c.read(&[], t).await.unwrap(), vec![]);

    // Settle: a reservation counts (reads included) until settled, then the settled amount
    // counts for good in its place, only while the window still starts where it did.
    let reserve = |n, lease| Take {
        lease,
        ..take("vk:e:budget", budget, n, 1000, Check::Below)
    };
    let start = c.take(&[reserve(100, Some(MINUTE))], "e1", t).await.unwrap().counters[0].window_start;
    assert_eq!(
        used(c, "vk:e:budget", budget, t + 1).await,
        100,
        "the reservation counts"
    );
    let both = c.take(&[reserve(30, None)], "e2", t + 1).await.unwrap();
    assert_eq!(both.counters[0].used, 130, "settled 30 + reserved 100");
    c.settle("vk:e:budget", start, "e1", 150, t + 2).await.unwrap();
    assert_eq!(used(c, "vk:e:budget", budget, t + 3).await, 180, "settled 30 + 150");
    c.take(&[reserve(70, Some(MINUTE))], "e3", t + 4).await.unwrap();
    c.settle("vk:e:budget", start, "e3", 20, t + 5).await.unwrap();
    assert_eq!(
        used(c, "vk:e:budget", budget, t + 6).await,
        200,
        "settled below the reservation"
    );
    c.settle("vk:e:budget", start + 1, "e4", 500, t + 7).await.unwrap();
    assert_eq!(used(c, "vk:e:budget", budget, t + 8).await, 200, "another window start");
    c.settle("vk:e:none", t, "e1", 5, t).await.unwrap();
    assert_eq!(used(c, "vk:e:none", budget, t).await, 0, "settle creates nothing");
    // A reservation nobody settles stops counting when its lease passes; settled late, its
    // amount is still counted in its window.
    c.take(&[reserve(50, Some(1000))], "e5", t + 10).await.unwrap();
    assert_eq!(used(c, "vk:e:budget", budget, t + 1009).await, 250, "within the lease");
    assert_eq!(used(c, "vk:e:budget", budget, t + 1010).await, 200, "the lease passed");
    let after_lease = c.take(&[reserve(0, None)], "e6", t + 1010).await.unwrap();
    assert_eq!(after_lease.counters[0].used, 200, "a take does not count it either");
    c.settle("vk:e:budget", start, "e5", 40, t + 1020).await.unwrap();
    assert_eq!(
        used(c, "vk:e:budget", budget, t + 1021).await,
        240,
        "settled after expiry"
    );
    // Settling into a window that rolled over counts nothing.
    c.take(&[reserve(60, Some(2 * MINUTE))], "e7", t + 2000).await.unwrap();
    let later = c.take(&[reserve(10, None)], "e8", t + MINUTE).await.unwrap().counters[0];
    assert_eq!((later.used, later.window_start), (10, t + MINUTE), "rolled over");
    c.settle("vk:e:budget", start, "e7", 500, t + MINUTE + 1).await.unwrap();
    assert_eq!(
        used(c, "vk:e:budget", budget, t + MINUTE + 2).await,
        10,
        "the old window's settlement is dropped (and its reservation with it)"
    );

    sliding(c, t).await;

    // Slots: up to the limit; a release frees one; a lease that passed frees its slot.
    let slot = "vk:f:concurrent";
    assert!(c.acquire(slot, "h1", 2, 1000, t).await.unwrap());
    assert!(c.acquire(slot, "h2", 2, 1000, t + 10).await.unwrap());
    assert!(!c.acquire(slot, "h3", 2, 1000, t + 20).await.unwrap(), "at the limit");
    c.release(slot, "h1").await.unwrap();
    c.release(slot, "nobody").await.unwrap();
    c.release("vk:f:none", "h1").await.unwrap();
    assert!(c.acquire(slot, "h3", 2, 1000, t + 30).await.unwrap(), "released");
    assert!(
        !c.acquire(slot, "h4", 2, 1000, t + 1009).await.unwrap(),
        "h2 holds until t + 1010"
    );
    assert!(
        c.acquire(slot, "h4", 2, 1000, t + 1010).await.unwrap(),
        "h2's lease passed"
    );
    assert!(!c.acquire(slot, "h5", 2, 1000, t + 1011).await.unwrap(), "h3 and h4");
    assert!(!c.acquire("vk:f:zero", "h1", 0, 1000, t).await.unwrap(), "limit 0");
}

/// A sliding window: exact within every window of its length; entries settle and leave.
async fn sliding(c: &dyn Counters, t: u64) {
    let window = Window::Sliding { length: 1000 };
    let hit = |now: u64| async move {
        let taken = c
            .take(
                &[take("vk:s:requests", window, 1, 3, Check::Fits)],
                &format!("s{now}"),
                now,
            )
            .await
            .unwrap();
        (taken.refused.is_none(), taken.counters[0])
    };
    let state = |used, now, resets_at| CounterState {
        used,
        window_start: now,
        resets_at,
    };
    assert_eq!(hit(t).await, (true, state(1, t, t + 1000)));
    assert_eq!(hit(t + 400).await, (true, state(2, t + 400, t + 1000)));
    assert_eq!(hit(t + 800).await, (true, state(3, t + 800, t + 1000)));
    assert_eq!(
        hit(t + 900).await,
        (false, state(3, t + 900, t + 1000)),
        "3 in the window"
    );
    assert_eq!(hit(t + 999).await, (false, state(3, t + 999, t + 1000)));
    assert_eq!(
        hit(t + 1001).await,
        (true, state(3, t + 1001, t + 1400)),
        "the first entry left"
    );
    assert_eq!(hit(t + 1300).await, (false, state(3, t + 1300, t + 1400)));
    assert_eq!(hit(t + 1400).await, (true, state(3, t + 1400, t + 1800)));
    let read = c.read(&[("vk:s:requests", window)], t + 1850).await.unwrap();
    assert_eq!(read, vec![state(2, t + 1850, t + 2001)], "read counts live entries");
    let empty = c.read(&[("vk:s:requests", window)], t + 2400).await.unwrap();
    assert_eq!(empty, vec![state(0, t + 2400, t + 3400)], "none live: now + length");

    // A key named twice in one call: the second take counts the first.
    let twice = |n| take("vk:s:twice", window, n, 2, Check::Fits);
    let both = c.take(&[twice(1), twice(1)], "s1", t).await.unwrap();
    assert_eq!((both.refused, both.counters[1].used), (None, 2));
    assert_eq!(c.take(&[twice(1)], "s2", t + 1).await.unwrap().refused, Some(0));

    // Settle sets the holder's entry's amount (0 removes it); a gone entry stays gone.
    let images = |n| Take {
        lease: Some(5),
        ..take("vk:s:images", window, n, 10, Check::Fits)
    };
    let first = c.take(&[images(4)], "i1", t).await.unwrap().counters[0];
    assert_eq!(first.window_start, t, "the entry's ts");
    c.settle("vk:s:images", first.window_start, "i1", 2, t + 10)
        .await
        .unwrap();
    assert_eq!(used(c, "vk:s:images", window, t + 11).await, 2, "settled to 2");
    assert_eq!(
        used(c, "vk:s:images", window, t + 500).await,
        2,
        "an entry's lease is its window"
    );
    let second = c.take(&[images(3)], "i2", t + 20).await.unwrap().counters[0];
    assert_eq!(second.used, 5);
    c.settle("vk:s:images", second.window_start, "i2", 0, t + 21)
        .await
        .unwrap();
    assert_eq!(used(c, "vk:s:images", window, t + 22).await, 2, "0 removes the entry");
    c.settle("vk:s:images", second.window_start, "i2", 5, t + 23)
        .await
        .unwrap();
    assert_eq!(
        used(c, "vk:s:images", window, t + 24).await,
        2,
        "nothing: the entry is gone"
    );
    c.settle("vk:s:images", t + 1, "i1", 9, t + 25).await.unwrap();
    assert_eq!(
        used(c, "vk:s:images", window, t + 26).await,
        2,
        "another ts: not the entry"
    );
    assert_eq!(used(c, "vk:s:images", window, t + 1000).await, 0, "i1 left the window");
}

/// [`Counters::remove_ended`] on a store that keeps counters until it is called: ended
/// counters go (and are counted), others stay; expired slots go too.
pub async fn remove_ended(c: &dyn Counters, t: u64) {
    let short = Window::Fixed {
        start: t,
        end: t + 1000,
    };
    let long = Window::FromFirstUse { length: 5000 };
    let calls = [
        take("vk:g:short", short, 1, 9, Check::Fits),
        take("vk:g:long", long, 2, 9, Check::Fits),
    ];
    assert_eq!(c.take(&calls, "h", t).await.unwrap().refused, None);
    assert!(c.acquire("vk:g:slots", "h1", 1, 1000, t).await.unwrap());
    assert_eq!(c.remove_ended(t + 999).await.unwrap(), 0);
    assert_eq!(used(c, "vk:g:short", short, t + 999).await, 1);
    assert_eq!(c.remove_ended(t + 1000).await.unwrap(), 1);
    assert_eq!(
        used(c, "vk:g:short", short, t + 500).await,
        0,
        "removed: its own window reads empty"
    );
    assert_eq!(used(c, "vk:g:long", long, t + 1000).await, 2, "still in its window");
    assert!(c.acquire("vk:g:slots", "h2", 1, 1000, t + 1000).await.unwrap());
    assert_eq!(c.remove_ended(t + 5000).await.unwrap(), 1);
    assert_eq!(c.remove_ended(t + 5000).await.unwrap(), 0);

    // A sliding window goes once its last entry left it; an expired reservation is dropped
    // (its counter stays until its window ends).
    let sliding = Window::Sliding { length: 1000 };
    let fixed = Window::Fixed {
        start: t + 6000,
        end: t + 9000,
    };
    let calls = [
        take("vk:g:sliding", sliding, 1, 9, Check::Fits),
        Take {
            lease: Some(500),
            ..take("vk:g:reserved", fixed, 4, 9, Check::Fits)
        },
    ];
    assert_eq!(c.take(&calls, "g1", t + 6000).await.unwrap().refused, None);
    assert_eq!(c.remove_ended(t + 6999).await.unwrap(), 0);
    assert_eq!(used(c, "vk:g:sliding", sliding, t + 6999).await, 1);
    assert_eq!(c.remove_ended(t + 7000).await.unwrap(), 1, "the sliding window");
    assert_eq!(used(c, "vk:g:reserved", fixed, t + 7000).await, 0);
    assert_eq!(c.remove_ended(t + 9000).await.unwrap(), 1, "the fixed counter");
}

/// 50 tasks, shared between `a` and `b` (two clients of one store, like two replicas), each
/// take 1 against a limit of 10, and each ask for one of 10 slots: exactly 10 get each.
pub async fn concurrent(a: Arc<dyn Counters>, b: Arc<dyn Counters>, t: u64) {
    let day = Window::Fixed {
        start: t,
        end: t + MINUTE,
    };
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let c = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                let taken = c
                    .take(&[take("vk:h:requests", day, 1, 10, Check::Fits)], "h", t)
                    .await
                    .unwrap();
                let slot = c
                    .acquire("vk:h:slots", &format!("holder-{i}"), 10, MINUTE, t)
                    .await
                    .unwrap();
                (taken.refused.is_none(), slot)
            })
        })
        .collect();
    let (mut admitted, mut slots) = (0, 0);
    for task in tasks {
        let (took, slot) = task.await.unwrap();
        admitted += usize::from(took);
        slots += usize::from(slot);
    }
    assert_eq!((admitted, slots), (10, 10));
    assert_eq!(used(&*a, "vk:h:requests", day, t).await, 10);
    assert_eq!(used(&*b, "vk:h:requests", day, t).await, 10);

    // The same on a sliding window, each task at its own ms, with a reserved budget beside.
    let window = Window::Sliding { length: MINUTE };
    let budget = Window::FromFirstUse { length: MINUTE };
    let tasks: Vec<_> = (0..50u64)
        .map(|i| {
            let c = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                let takes = [
                    take("vk:h:sliding", window, 1, 10, Check::Fits),
                    Take {
                        lease: Some(MINUTE),
                        ..take("vk:h:usd", budget, 3, 1000, Check::Below)
                    },
                ];
                let taken = c.take(&takes, &format!("holder-{i}"), t + i).await.unwrap();
                taken.refused.is_none()
            })
        })
        .collect();
    let mut admitted = 0;
    for task in tasks {
        admitted += usize::from(task.await.unwrap());
    }
    assert_eq!(admitted, 10);
    assert_eq!(used(&*a, "vk:h:sliding", window, t + 50).await, 10);
    assert_eq!(used(&*b, "vk:h:usd", budget, t + 50).await, 30, "10 reservations of 3");
}
