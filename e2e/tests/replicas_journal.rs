//! The persisted replay buffer on a real (throwaway) Postgres: a session keeps its newest 256
//! events and at most 4 MiB, in order; an event larger than the byte bound is not journaled;
//! events past the maximum age are swept; while the database is down a waiter is not held, and
//! the writer commits what it holds once the database is back (nothing skipped, order kept).

use std::sync::Arc;
use std::time::{Duration, Instant};

use reflow_dataplane::postgres::{
    Database, JournalSettings, REPLAY_BYTES, REPLAY_EVENTS, StreamJournal,
};
use reflow_e2e::harness::TestPostgres;
use secrecy::SecretString;

const WAIT: Duration = Duration::from_secs(30);

fn text(n: usize, fill: char) -> Arc<str> {
    Arc::from(fill.to_string().repeat(n))
}

#[test]
fn the_journal_keeps_its_bounds_and_survives_a_database_outage() {
    let mut pg = TestPostgres::start().expect("postgres");
    let url = pg.create_database("journal").expect("database");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let db = Database::new(&SecretString::from(url), 4).expect("pool");
    rt.block_on(db.connect_and_migrate(WAIT)).expect("migrated");
    let settings = JournalSettings {
        max_age: Duration::from_secs(8),
        sweep_every: Duration::from_secs(1),
    };
    let journal = rt.block_on(async { StreamJournal::start(db.clone(), settings) });

    rt.block_on(async {
        // Count bound: 300 events of one session, the newest 256 kept, oldest first.
        let mut last = 0;
        for seq in 1..=300u64 {
            let data = Arc::from(format!("event-{seq}"));
            last = journal.append("a", 0, seq, data).expect("queued");
        }
        assert!(journal.settled(last, WAIT).await, "committed");
        let kept = journal.load("a").await.expect("load");
        assert_eq!(kept.len(), REPLAY_EVENTS);
        let seqs: Vec<u64> = kept.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (45..=300).collect::<Vec<u64>>());
        assert_eq!(&*kept[0].data, "event-45");

        // Byte bound: three events of 1.5 MiB: the newest two fit in 4 MiB.
        let big = REPLAY_BYTES / 8 * 3;
        for seq in 1..=3u64 {
            last = journal
                .append("b", 7, seq, text(big, char::from(b'a' + seq as u8)))
                .expect("queued");
        }
        assert!(journal.settled(last, WAIT).await);
        let kept = journal.load("b").await.expect("load");
        assert_eq!(kept.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3]);
        assert!(kept.iter().all(|e| e.stream == 7 && e.data.len() == big));
        // Larger than the whole bound: not journaled at all; nor an id out of range.
        assert_eq!(journal.append("b", 7, 4, text(REPLAY_BYTES + 1, 'x')), None);
        assert_eq!(journal.append("b", u64::MAX, 5, text(1, 'x')), None);
        assert_eq!(journal.skipped(), 2);
        // Sessions are apart: "a" is untouched by "b".
        assert_eq!(journal.load("a").await.expect("load").len(), REPLAY_EVENTS);

        // Age bound: past max_age the sweep removes them.
        let deadline = Instant::now() + Duration::from_secs(20);
        while !journal.load("a").await.expect("load").is_empty() {
            assert!(Instant::now() < deadline, "old events never swept");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });

    // The database goes away: appending does not block, a waiter gives up, and once the
    // database is back the held events are committed, in order.
    pg.stop().expect("postgres stops");
    let tickets: Vec<u64> = (1..=5u64)
        .map(|seq| {
            journal
                .append("c", 0, seq, Arc::from(format!("during-{seq}")))
                .expect("queued")
        })
        .collect();
    let started = Instant::now();
    let settled = rt.block_on(journal.settled(tickets[4], Duration::from_secs(3)));
    assert!(!settled, "committed without a database?");
    assert!(started.elapsed() < Duration::from_secs(4));
    // Once the writer has seen the outage, a waiter is not held at all.
    let started = Instant::now();
    assert!(!rt.block_on(journal.settled(tickets[4], Duration::from_secs(10))));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    pg.start_again().expect("postgres is back");
    rt.block_on(async {
        let deadline = Instant::now() + WAIT;
        while !journal.settled(tickets[4], Duration::from_secs(1)).await {
            assert!(
                Instant::now() < deadline,
                "never committed after the outage"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let kept = journal.load("c").await.expect("load");
        let seqs: Vec<u64> = kept.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [1, 2, 3, 4, 5]);
    });
}
