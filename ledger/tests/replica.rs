//! A participant's replica against an honest and a dishonest coordinator ledger.

use conclave_crypto::Identity;
use conclave_ledger::replica::Replica;
use conclave_ledger::sim::{PLAIN_JOB, SimJob};
use conclave_ledger::{Ledger, LedgerError};

/// Serves what a coordinator's ledger holds from `from`, as the gRPC stream does.
fn serve(ledger: &Ledger, from: u64) -> Vec<conclave_ledger::Entry> {
    ledger.read(from, usize::MAX >> 1).unwrap()
}

fn rounds(ledger: &Ledger, coordinator: &Identity, job: &mut SimJob, n: usize) {
    for _ in 0..n {
        let mut b = ledger.batch(coordinator, 5);
        job.round(&mut b);
        ledger.commit(b, &[]).unwrap();
    }
}

#[test]
fn a_replica_follows_an_honest_coordinator_and_catches_a_rewrite_and_a_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Identity::generate();
    let honest = Ledger::open(&dir.path().join("coordinator.db")).unwrap();
    let mut b = honest.batch(&coordinator, 1);
    let mut job = SimJob::create(&mut b, "j-1", PLAIN_JOB, 3);
    honest.commit(b, &[]).unwrap();
    rounds(&honest, &coordinator, &mut job, 2);

    let replica_path = dir.path().join("replica.db");
    let (mut replica, _) = Replica::open(&replica_path).unwrap();
    let added = replica
        .apply(serve(&honest, replica.request_from()))
        .unwrap();
    replica.finish().unwrap();
    assert_eq!(added, honest.head().len);
    assert_eq!(replica.head(), honest.head());

    // More rounds; the replica re-checks its last entry and appends the rest.
    rounds(&honest, &coordinator, &mut job, 1);
    let (mut replica, report) = Replica::open(&replica_path).unwrap();
    assert_eq!(report.verified, added);
    replica
        .apply(serve(&honest, replica.request_from()))
        .unwrap();
    replica.finish().unwrap();
    assert_eq!(replica.head(), honest.head());
    let synced = replica.head();
    drop(replica);

    // The coordinator rewrites history with its own key: a chain that verifies on its own
    // (different participants), as long as or longer than what the replica holds.
    let forged = Ledger::open(&dir.path().join("forged.db")).unwrap();
    let mut b = forged.batch(&coordinator, 1);
    let mut other = SimJob::create(&mut b, "j-1", PLAIN_JOB, 3);
    forged.commit(b, &[]).unwrap();
    rounds(&forged, &coordinator, &mut other, 4);
    assert!(forged.head().len > synced.len);
    let (mut replica, _) = Replica::open(&replica_path).unwrap();
    let err = replica
        .apply(serve(&forged, replica.request_from()))
        .unwrap_err();
    assert!(matches!(err, LedgerError::Rewritten(_)), "{err}");
    assert_eq!(
        replica.head(),
        synced,
        "nothing from the forged chain is kept"
    );

    // A coordinator that no longer serves the replica's last entry truncated its history.
    let (mut replica, _) = Replica::open(&replica_path).unwrap();
    replica.apply(Vec::new()).unwrap();
    assert!(matches!(replica.finish(), Err(LedgerError::Rewritten(_))));

    // Entries signed by another key, even if linked correctly, are refused.
    let impostor = Identity::generate();
    let mut b = honest.batch(&impostor, 9);
    rounds_into(&mut b, &mut job);
    let bad = b.seal(honest.head());
    let (mut replica, _) = Replica::open(&replica_path).unwrap();
    let mut served = serve(&honest, replica.request_from());
    served.extend(bad);
    let err = replica.apply(served).unwrap_err();
    assert!(
        matches!(err, LedgerError::BadServedEntry { index, .. } if index == synced.len),
        "{err}"
    );
    assert_eq!(replica.head(), synced);
}

fn rounds_into(b: &mut conclave_ledger::Batch<'_>, job: &mut SimJob) {
    job.round(b);
}
