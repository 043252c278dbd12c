//! A coordinator's stored job record, read and replaced directly in its data directory's
//! database, for tests that tamper with it. A record is read whole, from its parts; it is
//! written back whole (as an older coordinator stored it), which the coordinator also loads.

use conclave_coordinator::store::{JobRecord, records_from_rows};

/// Job `job`'s record, as JSON.
pub fn read(db: &rusqlite::Connection, job: &str) -> serde_json::Value {
    let mut stmt = db
        .prepare("SELECT key, value FROM state WHERE key = ?1 OR substr(key, 1, ?3) = ?2")
        .unwrap();
    let whole = format!("job/{job}");
    let parts = format!("{whole}/");
    let rows: Vec<(String, Vec<u8>)> = stmt
        .query_map(rusqlite::params![whole, parts, parts.len() as i64], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let records: Vec<JobRecord> = records_from_rows(rows).unwrap();
    assert_eq!(records.len(), 1, "one stored record of {job}");
    serde_json::to_value(&records[0]).unwrap()
}

/// Replaces job `job`'s stored record with `record`, stored whole.
pub fn replace(db: &rusqlite::Connection, job: &str, record: &serde_json::Value) {
    let whole = format!("job/{job}");
    let parts = format!("{whole}/");
    db.execute(
        "DELETE FROM state WHERE key = ?1 OR substr(key, 1, ?3) = ?2",
        rusqlite::params![whole, parts, parts.len() as i64],
    )
    .unwrap();
    db.execute(
        "INSERT INTO state (key, value) VALUES (?1, ?2)",
        rusqlite::params![whole, serde_json::to_vec(record).unwrap()],
    )
    .unwrap();
}
