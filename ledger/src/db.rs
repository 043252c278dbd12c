//! The ledger's storage: an embedded SQLite database (WAL journal, `synchronous = FULL`, so a
//! committed transaction is on disk before `commit` returns). It holds the entries and a small
//! key-value table for the owner's state (the coordinator keeps its job records there), so a
//! state change and the entries that record it are one transaction.
//!
//! Appends are built as a [`Batch`] on the current head and committed at once; a batch built
//! on a head that has since moved is refused, so concurrent appends keep one total order.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use conclave_crypto::Identity;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tokio::sync::watch;

use crate::entry::{Entry, GENESIS, Hash, MAX_ENTRY_BYTES, Payload};
use crate::{EntryError, LedgerError};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS ledger (
    idx INTEGER PRIMARY KEY,
    body BLOB NOT NULL,
    signature BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS state (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
";

/// Where the chain ends: the number of entries and the hash of the last one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    pub len: u64,
    pub hash: Hash,
}

impl Head {
    const EMPTY: Head = Head {
        len: 0,
        hash: GENESIS,
    };
}

/// One stored row, undecoded: what verification reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawRow {
    pub idx: i64,
    pub body: Vec<u8>,
    pub signature: Vec<u8>,
}

/// A change to the owner's state, committed with a batch.
#[derive(Clone, Debug)]
pub enum StateWrite {
    Put { key: String, value: Vec<u8> },
    Delete { key: String },
}

/// Payloads waiting to be committed together, as consecutive entries signed by one signer
/// at one time. They are chained onto the ledger's head and signed when committed, under the
/// ledger's write lock: batches built at the same time (by different jobs) never conflict, and
/// each lands whole, in commit order.
pub struct Batch<'a> {
    signer: &'a Identity,
    time_unix_ms: u64,
    payloads: Vec<Payload>,
}

impl Batch<'_> {
    /// Adds an entry after the batch's last one.
    pub fn push(&mut self, payload: Payload) {
        self.payloads.push(payload);
    }

    /// Who signs the batch's entries.
    pub fn signer(&self) -> &Identity {
        self.signer
    }

    /// The entries so far.
    pub fn len(&self) -> usize {
        self.payloads.len()
    }

    pub fn is_empty(&self) -> bool {
        self.payloads.is_empty()
    }

    /// What the entries so far record.
    pub fn payloads(&self) -> &[Payload] {
        &self.payloads
    }

    /// The entries, chained onto `head` and signed: what a commit on that head writes.
    pub fn seal(self, head: Head) -> Vec<Entry> {
        let mut next = head;
        self.payloads
            .into_iter()
            .map(|payload| {
                let entry =
                    Entry::create(self.signer, next.len, next.hash, self.time_unix_ms, payload);
                next = Head {
                    len: next.len + 1,
                    hash: *entry.hash(),
                };
                entry
            })
            .collect()
    }
}

/// An open ledger database.
pub struct Ledger {
    path: PathBuf,
    write: Mutex<Connection>,
    read: Mutex<Connection>,
    head: Mutex<Head>,
    appended: watch::Sender<u64>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Connections and the head stay consistent across a panic: a transaction that did not
    // commit is rolled back when dropped, and the head moves only after a commit.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Ledger {
    /// Opens (creating if needed) the ledger database at `path` for appending.
    pub fn open(path: &Path) -> Result<Self, LedgerError> {
        let write = Connection::open(path)?;
        write.pragma_update(None, "journal_mode", "WAL")?;
        write.pragma_update(None, "synchronous", "FULL")?;
        write.busy_timeout(std::time::Duration::from_secs(10))?;
        write.execute_batch(SCHEMA)?;
        let read = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        Self::finish_open(path, write, read)
    }

    /// Opens an existing ledger database read-only (e.g. a running coordinator's).
    pub fn open_read_only(path: &Path) -> Result<Self, LedgerError> {
        if !path.is_file() {
            return Err(LedgerError::NotALedger(path.display().to_string()));
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let read = Connection::open_with_flags(path, flags)?;
        let has_table: Option<String> = read
            .query_row(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'ledger'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        if has_table.is_none() {
            return Err(LedgerError::NotALedger(path.display().to_string()));
        }
        let write = Connection::open_with_flags(path, flags)?;
        Self::finish_open(path, write, read)
    }

    fn finish_open(path: &Path, write: Connection, read: Connection) -> Result<Self, LedgerError> {
        read.busy_timeout(std::time::Duration::from_secs(10))?;
        let last = read
            .query_row(
                "SELECT idx, body, signature FROM ledger ORDER BY idx DESC LIMIT 1",
                [],
                |r| {
                    Ok(RawRow {
                        idx: r.get(0)?,
                        body: r.get(1)?,
                        signature: r.get(2)?,
                    })
                },
            )
            .optional()?;
        let head = match last {
            None => Head::EMPTY,
            // Whatever the last row holds: verification judges it (a coordinator does not
            // start on a ledger that fails; inspection must still open a damaged one).
            Some(row) => Head {
                len: row.idx.max(0) as u64 + 1,
                hash: crate::entry::entry_hash(&row.body),
            },
        };
        Ok(Self {
            path: path.to_owned(),
            write: Mutex::new(write),
            read: Mutex::new(read),
            head: Mutex::new(head),
            appended: watch::channel(head.len).0,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The current head.
    pub fn head(&self) -> Head {
        *lock(&self.head)
    }

    /// A receiver of the entry count, updated after every commit.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.appended.subscribe()
    }

    /// Starts a batch of entries signed by `signer` at `time_unix_ms`.
    pub fn batch<'a>(&self, signer: &'a Identity, time_unix_ms: u64) -> Batch<'a> {
        Batch {
            signer,
            time_unix_ms,
            payloads: Vec::new(),
        }
    }

    /// Durably commits a batch, chained onto the head as it is now, and state changes in one
    /// transaction; returns the new head. Nothing is written when it fails.
    pub fn commit(&self, batch: Batch<'_>, state: &[StateWrite]) -> Result<Head, LedgerError> {
        let mut conn = lock(&self.write);
        let mut head = lock(&self.head);
        let entries = batch.seal(*head);
        let start = *head;
        self.write_locked(&mut conn, &mut head, start, &entries, state)
    }

    /// Appends entries that must extend the head `start` (a replica's served entries, after
    /// they were checked), with state changes, in one durable transaction.
    pub fn commit_entries(
        &self,
        start: Head,
        entries: &[Entry],
        state: &[StateWrite],
    ) -> Result<Head, LedgerError> {
        // An entry too large to read back would make every later verify (and the next
        // startup) fail: refused here, before anything is written.
        let mut conn = lock(&self.write);
        let mut head = lock(&self.head);
        self.write_locked(&mut conn, &mut head, start, entries, state)
    }

    /// Writes `entries`, which must extend `start`, the head now, with `state`, in one durable
    /// transaction. The caller holds the write connection and the head.
    fn write_locked(
        &self,
        conn: &mut Connection,
        head: &mut Head,
        start: Head,
        entries: &[Entry],
        state: &[StateWrite],
    ) -> Result<Head, LedgerError> {
        if let Some(e) = entries.iter().find(|e| e.bytes().len() > MAX_ENTRY_BYTES) {
            return Err(LedgerError::Entry {
                index: e.index(),
                source: EntryError::TooLarge(e.bytes().len()),
            });
        }
        if *head != start {
            return Err(LedgerError::Conflict {
                built: start.len,
                now: head.len,
            });
        }
        let mut next = start;
        let tx = conn.transaction()?;
        {
            let mut insert =
                tx.prepare_cached("INSERT INTO ledger (idx, body, signature) VALUES (?1, ?2, ?3)")?;
            for e in entries {
                if e.index() != next.len || e.prev_hash() != next.hash {
                    return Err(LedgerError::Corrupt(format!(
                        "entry {} does not extend the chain at {}",
                        e.index(),
                        next.len
                    )));
                }
                insert.execute(params![e.index() as i64, e.bytes(), &e.signature()[..]])?;
                next = Head {
                    len: next.len + 1,
                    hash: *e.hash(),
                };
            }
            let mut put =
                tx.prepare_cached("INSERT OR REPLACE INTO state (key, value) VALUES (?1, ?2)")?;
            let mut delete = tx.prepare_cached("DELETE FROM state WHERE key = ?1")?;
            for w in state {
                match w {
                    StateWrite::Put { key, value } => put.execute(params![key, value])?,
                    StateWrite::Delete { key } => delete.execute(params![key])?,
                };
            }
        }
        tx.commit()?;
        *head = next;
        // Under the head lock, so followers never see the count go backwards.
        if !entries.is_empty() {
            self.appended.send_replace(next.len);
        }
        Ok(next)
    }

    /// Up to `limit` decoded entries from index `from` (signatures not checked).
    pub fn read(&self, from: u64, limit: usize) -> Result<Vec<Entry>, LedgerError> {
        let rows = self.raw_rows(from, limit)?;
        rows.into_iter()
            .map(|row| {
                let index = row.idx as u64;
                Entry::from_parts(row.body, &row.signature)
                    .map_err(|source| LedgerError::Entry { index, source })
            })
            .collect()
    }

    /// One decoded entry.
    pub fn get(&self, index: u64) -> Result<Option<Entry>, LedgerError> {
        Ok(self
            .read(index, 1)?
            .into_iter()
            .next()
            .filter(|e| e.index() == index))
    }

    /// Up to `limit` stored rows with `idx >= from`, in order, as stored.
    pub fn raw_rows(&self, from: u64, limit: usize) -> Result<Vec<RawRow>, LedgerError> {
        let conn = lock(&self.read);
        let mut stmt = conn.prepare_cached(
            "SELECT idx, body, signature FROM ledger WHERE idx >= ?1 ORDER BY idx LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![from as i64, limit as i64], |r| {
            Ok(RawRow {
                idx: r.get(0)?,
                body: r.get(1)?,
                signature: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Calls `f` on every entry in order, decoding as it goes; stops at the first error.
    pub fn for_each(&self, mut f: impl FnMut(Entry)) -> Result<(), LedgerError> {
        let mut from = 0;
        loop {
            let entries = self.read(from, 4096)?;
            let Some(last) = entries.last() else {
                return Ok(());
            };
            from = last.index() + 1;
            entries.into_iter().for_each(&mut f);
        }
    }

    /// Every state value whose key starts with `prefix`, by key.
    pub fn state(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, LedgerError> {
        let conn = lock(&self.read);
        let mut stmt = conn.prepare_cached(
            "SELECT key, value FROM state WHERE substr(key, 1, ?2) = ?1 ORDER BY key",
        )?;
        let rows = stmt.query_map(params![prefix, prefix.len() as i64], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }
}

/// Checks an entry decodes; used where an error must name its index.
pub(crate) fn decode_row(row: RawRow) -> Result<Entry, (u64, EntryError)> {
    let index = row.idx as u64;
    Entry::from_parts(row.body, &row.signature).map_err(|e| (index, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use conclave_proto::v1;

    fn admitted(n: u32) -> Payload {
        Payload::ParticipantAdmitted(v1::ParticipantAdmitted {
            draw_commitment: Vec::new(),
            signature: Vec::new(),
            job_id: "j-1".into(),
            participant: format!("p{n}"),
            sealing_key: vec![],
        })
    }

    #[test]
    fn commits_batches_and_state_atomically_and_reopens_at_the_head() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.db");
        let id = Identity::generate();
        let ledger = Ledger::open(&path).unwrap();
        let mut b = ledger.batch(&id, 1);
        b.push(admitted(0));
        b.push(admitted(1));
        let put = StateWrite::Put {
            key: "job/j-1".into(),
            value: b"{}".to_vec(),
        };
        let head = ledger.commit(b, &[put]).unwrap();
        assert_eq!(head.len, 2);
        assert_eq!(head.hash, *ledger.get(1).unwrap().unwrap().hash());
        assert_eq!(ledger.state("job/").unwrap().len(), 1);
        assert!(ledger.state("jobs/").unwrap().is_empty());

        // Batches started together land whole, one after the other, in commit order.
        let mut first = ledger.batch(&id, 2);
        let mut second = ledger.batch(&id, 3);
        second.push(admitted(2));
        second.push(admitted(3));
        first.push(admitted(4));
        ledger.commit(second, &[]).unwrap();
        ledger.commit(first, &[]).unwrap();
        let head = ledger.head();
        assert_eq!(head.len, 5);

        // Served entries that do not extend the head are refused, and write nothing.
        let stale = ledger.read(4, 1).unwrap();
        let delete = StateWrite::Delete {
            key: "job/j-1".into(),
        };
        let before = Head {
            len: 4,
            hash: stale[0].prev_hash(),
        };
        assert!(matches!(
            ledger.commit_entries(before, &stale, &[delete]),
            Err(LedgerError::Conflict { built: 4, now: 5 })
        ));
        assert_eq!(ledger.state("job/").unwrap().len(), 1);
        drop(ledger);

        let reopened = Ledger::open(&path).unwrap();
        assert_eq!(reopened.head(), head);
        let entries = reopened.read(0, 10).unwrap();
        assert_eq!(entries.len(), 5);
        for pair in entries.windows(2) {
            assert_eq!(pair[1].prev_hash(), *pair[0].hash());
        }
        let payloads: Vec<String> = entries
            .iter()
            .map(|e| match e.payload() {
                Payload::ParticipantAdmitted(a) => a.participant.clone(),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(payloads, ["p0", "p1", "p2", "p3", "p4"]);
        assert_eq!(entries[4].time_unix_ms(), 2);
        let ro = Ledger::open_read_only(&path).unwrap();
        assert_eq!(ro.head(), head);
        assert!(matches!(
            Ledger::open_read_only(&dir.path().join("missing.db")),
            Err(LedgerError::NotALedger(_))
        ));
    }

    #[test]
    fn an_entry_too_large_to_read_back_is_refused_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.db");
        let id = Identity::generate();
        let ledger = Ledger::open(&path).unwrap();
        let mut b = ledger.batch(&id, 1);
        b.push(admitted(0));
        ledger.commit(b, &[]).unwrap();
        let head = ledger.head();

        let mut b = ledger.batch(&id, 2);
        b.push(admitted(1));
        b.push(Payload::ParticipantAdmitted(v1::ParticipantAdmitted {
            job_id: "j-1".into(),
            participant: "p".repeat(MAX_ENTRY_BYTES),
            ..Default::default()
        }));
        let put = StateWrite::Put {
            key: "job/j-1".into(),
            value: b"{}".to_vec(),
        };
        match ledger.commit(b, &[put]) {
            Err(LedgerError::Entry {
                index: 2,
                source: EntryError::TooLarge(n),
            }) => assert!(n > MAX_ENTRY_BYTES),
            other => panic!("{other:?}"),
        }
        // Nothing of the batch, its smaller entry and its state included, was written, and
        // the ledger still opens and reads to its end.
        assert_eq!(ledger.head(), head);
        assert!(ledger.state("job/").unwrap().is_empty());
        drop(ledger);
        let reopened = Ledger::open(&path).unwrap();
        assert_eq!(reopened.head(), head);
        assert_eq!(reopened.read(0, 10).unwrap().len(), 1);
    }
}
