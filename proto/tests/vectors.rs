//! Request-signing test vectors: one JSON file per signed request type in `tests/vectors/`,
//! so that a client written in any language can check its signing against this one.
//!
//! Each file holds an Ed25519 key (its 32-byte seed, public key and did:key), the gRPC
//! method, the message type, the whole signed request (protobuf, hex), the exact bytes signed
//! and the signature. This test checks every file from first principles (did:key encoding,
//! `method || 0x00 || encoding with auth.signature empty`, Ed25519) and that this crate derives
//! the same bytes, so a change to the signing rule or to a signed message's encoding fails
//! here. `CONCLAVE_WRITE_VECTORS=1 cargo test -p conclave-proto --test vectors` rewrites the
//! files after a deliberate change of the contract.

use std::path::PathBuf;

use conclave_proto::Signed;
use conclave_proto::v1::{self, *};
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde_json::{Value, json};

/// The test key: seed bytes 0x00, 0x01, ..., 0x1f. Never use it for anything else.
fn key() -> SigningKey {
    SigningKey::from_bytes(&std::array::from_fn(|i| i as u8))
}

/// `did:key:z` + base58btc(0xed 0x01 || public key).
fn did_of(public: &VerifyingKey) -> String {
    let mut bytes = vec![0xed, 0x01];
    bytes.extend_from_slice(public.as_bytes());
    format!("did:key:z{}", bs58::encode(bytes).into_string())
}

/// A fixed `Auth` for the test key (nonce 0xa0.., a fixed signing time), unsigned.
fn auth() -> Option<Auth> {
    Some(Auth {
        participant: did_of(&key().verifying_key()),
        nonce: (0xa0..0xb0).collect(),
        signature: Vec::new(),
        time_unix_ms: 1_764_547_200_000,
    })
}

const JOB: &str = "j-0123456789abcdef";

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

/// Signs `req` with the test key and returns its vector.
fn vector<T: Signed>(message_type: &str, mut req: T) -> Value {
    let key = key();
    let signed = req.signing_bytes();
    let signature = key.sign(&signed).to_bytes().to_vec();
    req.auth_mut().signature = signature.clone();
    json!({
        "description": format!(
            "{message_type} for {}, signed by the test key (seed 000102...1f)",
            T::METHOD
        ),
        "secret_key_seed": hex::encode(key.to_bytes()),
        "public_key": hex::encode(key.verifying_key().as_bytes()),
        "did": did_of(&key.verifying_key()),
        "method": T::METHOD,
        "message_type": message_type,
        "request": hex::encode(req.encode_to_vec()),
        "signed_bytes": hex::encode(&signed),
        "signature": hex::encode(&signature),
    })
}

fn field(v: &Value, name: &str) -> String {
    v[name]
        .as_str()
        .unwrap_or_else(|| panic!("vector field {name} missing"))
        .to_owned()
}

fn bytes(v: &Value, name: &str) -> Vec<u8> {
    hex::decode(field(v, name)).unwrap_or_else(|e| panic!("vector field {name}: {e}"))
}

/// Checks one vector file against `built` (the same request built here) and from first
/// principles.
fn check<T: Signed + Default>(file: &str, message_type: &str, built: T) {
    let path = dir().join(file);
    let expected = vector(message_type, built);
    if std::env::var_os("CONCLAVE_WRITE_VECTORS").is_some() {
        let text = serde_json::to_string_pretty(&expected).unwrap() + "\n";
        std::fs::write(&path, text).unwrap();
    }
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (write it with CONCLAVE_WRITE_VECTORS=1)",
            path.display()
        )
    });
    let v: Value = serde_json::from_str(&text).unwrap();

    // The key and its did:key.
    let seed: [u8; 32] = bytes(&v, "secret_key_seed").try_into().unwrap();
    let key = SigningKey::from_bytes(&seed);
    assert_eq!(bytes(&v, "public_key"), key.verifying_key().as_bytes());
    assert_eq!(
        field(&v, "did"),
        did_of(&key.verifying_key()),
        "{file}: did:key"
    );
    assert!(
        field(&v, "did").starts_with("did:key:z6Mk"),
        "{file}: Ed25519 did:keys read z6Mk…"
    );

    // The request decodes, is canonical, and names the signer.
    let request = bytes(&v, "request");
    let req = T::decode(request.as_slice()).unwrap();
    assert_eq!(req.encode_to_vec(), request, "{file}: canonical encoding");
    let auth = req.auth().expect("signed requests carry auth");
    assert_eq!(auth.participant, field(&v, "did"));
    assert_eq!(auth.signature, bytes(&v, "signature"));
    assert_eq!(auth.nonce.len(), conclave_proto::NONCE_LEN);

    // The signed bytes, from first principles: method, a zero byte, the request encoded with
    // auth.signature empty.
    assert_eq!(field(&v, "method"), T::METHOD);
    let mut unsigned = req.clone();
    unsigned.auth_mut().signature.clear();
    let mut signed = field(&v, "method").into_bytes();
    signed.push(0);
    signed.extend(unsigned.encode_to_vec());
    assert_eq!(signed, bytes(&v, "signed_bytes"), "{file}: signed bytes");
    assert_eq!(
        req.signing_bytes(),
        signed,
        "{file}: this crate's signing_bytes"
    );

    // Ed25519 is deterministic: the signature is exactly this one, and it verifies.
    let signature = Signature::from_slice(&bytes(&v, "signature")).unwrap();
    assert_eq!(key.sign(&signed), signature, "{file}: signature");
    key.verifying_key().verify(&signed, &signature).unwrap();
    // Bound to its method: the same message under another method does not verify.
    let mut other = b"/conclave.v1.Rounds/Other\0".to_vec();
    other.extend(unsigned.encode_to_vec());
    assert!(key.verifying_key().verify(&other, &signature).is_err());

    // And the file is what this crate builds today (a changed encoding fails here).
    assert_eq!(
        v, expected,
        "{file}: the vector is stale; the wire contract changed"
    );
}

#[test]
fn every_signed_request_matches_its_vector() {
    let hash = |b: u8| vec![b; 32];
    check(
        "join.json",
        "conclave.v1.JoinRequest",
        JoinRequest {
            job_id: JOB.into(),
            x25519_public: hash(0x11),
            draw_commitment: hash(0x12),
            admission_signature: vec![0x13; 64],
            auth: auth(),
        },
    );
    check(
        "work.json",
        "conclave.v1.WorkRequest",
        WorkRequest {
            job_id: JOB.into(),
            auth: auth(),
        },
    );
    check(
        "upload_header.json",
        "conclave.v1.UploadHeader",
        UploadHeader {
            job_id: JOB.into(),
            round: 3,
            num_samples: 120,
            dim: 31,
            payload_hash: hash(0x21),
            manifest: Some(SealedManifest {
                vector_hash: hash(0x22),
                sealed_boxes: vec![vec![0x23; 48], vec![0x24; 48]],
                signature: vec![0x25; 64],
                plan_hash: hash(0x26),
            }),
            contribution_signature: vec![0x27; 64],
            auth: auth(),
        },
    );
    check(
        "metrics.json",
        "conclave.v1.MetricsReport",
        MetricsReport {
            job_id: JOB.into(),
            model_version: 2,
            loss: 0.25,
            accuracy: 0.875,
            num_examples: 57,
            auth: auth(),
        },
    );
    check(
        "check.json",
        "conclave.v1.CheckReport",
        CheckReport {
            job_id: JOB.into(),
            round: 3,
            complaints: vec![Complaint {
                participant: "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK".into(),
                manifest_hash: hash(0x31),
                reason: v1::ComplaintReason::Unopenable.into(),
                signature: vec![0x32; 64],
            }],
            auth: auth(),
        },
    );
    check(
        "draw_reveal.json",
        "conclave.v1.DrawRevealRequest",
        DrawRevealRequest {
            job_id: JOB.into(),
            attempt: 1,
            pool_hash: hash(0x41),
            value: hash(0x42),
            signature: vec![0x43; 64],
            auth: auth(),
        },
    );
    check(
        "approval.json",
        "conclave.v1.ApprovalRequest",
        ApprovalRequest {
            job_id: JOB.into(),
            round: 3,
            statement_hash: hash(0x51),
            signature: vec![0x52; 64],
            auth: auth(),
        },
    );
    check(
        "reveal_header.json",
        "conclave.v1.RevealHeader",
        RevealHeader {
            job_id: JOB.into(),
            round: 3,
            statement_hash: hash(0x61),
            shares: vec![RevealedShare {
                participant: "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK".into(),
                absent: 2,
                index: 1,
                value: hash(0x62),
            }],
            len: 32,
            partial_hash: hash(0x63),
            auth: auth(),
        },
    );
    check(
        "record_export.json",
        "conclave.v1.RecordExportRequest",
        RecordExportRequest {
            job_id: JOB.into(),
            model_version: 5,
            model_hash: hash(0x71),
            format: "safetensors".into(),
            signature: vec![0x72; 64],
            auth: auth(),
        },
    );
    check(
        "create_job.json",
        "conclave.v1.CreateJobRequest",
        CreateJobRequest {
            spec: Some(JobSpec {
                name: "vectors".into(),
                rounds: 2,
                min_participants: 2,
                privacy: v1::Privacy::Plain.into(),
                ..Default::default()
            }),
            auth: auth(),
        },
    );
    check(
        "get_job.json",
        "conclave.v1.GetJobRequest",
        GetJobRequest {
            job_id: JOB.into(),
            auth: auth(),
        },
    );
    check(
        "list_jobs.json",
        "conclave.v1.ListJobsRequest",
        ListJobsRequest {
            after_job_id: String::new(),
            auth: auth(),
        },
    );
    check(
        "list_rounds.json",
        "conclave.v1.ListRoundsRequest",
        ListRoundsRequest {
            job_id: JOB.into(),
            first_round: 9,
            auth: auth(),
        },
    );
    check(
        "download_model.json",
        "conclave.v1.DownloadModelRequest",
        DownloadModelRequest {
            job_id: JOB.into(),
            model_version: 4,
            auth: auth(),
        },
    );
    check(
        "ledger_entries.json",
        "conclave.v1.LedgerRequest",
        LedgerRequest {
            from_index: 10,
            follow: true,
            auth: auth(),
        },
    );
}

#[test]
fn every_vector_file_is_checked() {
    // A file nobody checks would be a promise nobody keeps.
    let mut files: Vec<String> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files.len(), 15, "{files:?}");
}
