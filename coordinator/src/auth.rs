//! Who sent a request, and whether it is fresh. Every request that acts for a participant is
//! signed over `method ‖ 0x00 ‖ encoding` with a fresh 16-byte nonce and the time it was
//! signed. The coordinator refuses a signature that does not verify, a time more than
//! [`MAX_CLOCK_SKEW_MS`] away from its own clock, a time before it last started, and a nonce it
//! has seen within the window. Nonces live in memory only; the start-time rule is what keeps a
//! request captured before a restart from being replayed after it (DESIGN.md, "Identities and
//! messages").

use std::collections::HashMap;

use conclave_crypto::ParticipantId;
use conclave_proto::codec::message_name;
use conclave_proto::{NONCE_LEN, Signed};

use crate::CoordinatorError;

/// How far a request's signing time may be from the coordinator's clock.
pub const MAX_CLOCK_SKEW_MS: u64 = 5 * 60 * 1000;

/// Nonces remembered per signer and job within the time window: more requests from one signer
/// in one window are refused (one participant cannot crowd out the others' nonces).
const MAX_NONCES_PER_SIGNER: usize = 1 << 14;

/// A checked request signature.
#[derive(Clone, Debug)]
pub struct Signer {
    pub did: ParticipantId,
    nonce: Vec<u8>,
    time: u64,
}

/// Checks a signed request's signature and signing time (at `now`, for a coordinator that
/// started at `started`) and returns the signer. The nonce is checked against the job's memory
/// separately, under the lock ([`Nonces::consume`]).
pub fn authenticate<T: Signed>(
    req: &T,
    now: u64,
    started: u64,
) -> Result<Signer, CoordinatorError> {
    // What a signer must have signed, for every refusal to name (a third party's client
    // most often gets the method string or the signed message wrong).
    let expected = || {
        format!(
            "expected an Ed25519 signature over \"{}\" || 0x00 || the {} encoded with \
             auth.signature empty",
            T::METHOD,
            message_name::<T>()
        )
    };
    let auth = req.auth().ok_or_else(|| {
        CoordinatorError::BadAuth(format!(
            "{} has no auth; {}",
            message_name::<T>(),
            expected()
        ))
    })?;
    let did = ParticipantId::parse(&auth.participant)
        .map_err(|e| CoordinatorError::BadAuth(format!("auth.participant: {e}")))?;
    if auth.nonce.len() != NONCE_LEN {
        return Err(CoordinatorError::BadAuth(format!(
            "auth.nonce must be {NONCE_LEN} fresh random bytes, got {}",
            auth.nonce.len()
        )));
    }
    did.verify(&req.signing_bytes(), &auth.signature)
        .map_err(|e| CoordinatorError::BadAuth(format!("{e}: {}", expected())))?;
    let time = auth.time_unix_ms;
    if time.abs_diff(now) > MAX_CLOCK_SKEW_MS {
        return Err(CoordinatorError::ClockSkew {
            signed: time,
            now,
            max: MAX_CLOCK_SKEW_MS,
        });
    }
    if time < started {
        return Err(CoordinatorError::SignedBeforeStart {
            signed: time,
            started,
        });
    }
    Ok(Signer {
        did,
        nonce: auth.nonce.clone(),
        time,
    })
}

/// The nonces a job has seen, per signer, with their signing times.
#[derive(Default)]
pub struct Nonces {
    seen: HashMap<String, HashMap<Vec<u8>, u64>>,
}

impl Nonces {
    /// Refuses a nonce seen before from the same signer; remembers it otherwise.
    pub fn consume(&mut self, signer: &Signer, now: u64) -> Result<(), CoordinatorError> {
        let seen = self.seen.entry(signer.did.to_string()).or_default();
        if seen.contains_key(&signer.nonce) {
            return Err(CoordinatorError::Replay(signer.did.to_string()));
        }
        if seen.len() >= MAX_NONCES_PER_SIGNER {
            // Requests outside the window are refused by their time: their nonces can go.
            let oldest = now.saturating_sub(2 * MAX_CLOCK_SKEW_MS);
            seen.retain(|_, t| *t >= oldest);
            if seen.len() >= MAX_NONCES_PER_SIGNER {
                return Err(CoordinatorError::TooManyRequests(signer.did.to_string()));
            }
        }
        seen.insert(signer.nonce.clone(), signer.time);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use conclave_crypto::Identity;
    use conclave_proto::v1;

    fn signed(identity: &Identity, time: u64) -> v1::WorkRequest {
        let mut req = v1::WorkRequest {
            job_id: "j".into(),
            auth: None,
        };
        let auth = req.auth_mut();
        auth.participant = identity.participant_id().to_string();
        auth.nonce = vec![3; NONCE_LEN];
        auth.time_unix_ms = time;
        let signature = identity.sign(&req.signing_bytes());
        req.auth_mut().signature = signature.to_vec();
        req
    }

    #[test]
    fn stale_future_and_pre_start_requests_are_refused() {
        let id = Identity::generate();
        let now = 10_000_000;
        assert!(authenticate(&signed(&id, now), now, now - 1).is_ok());
        assert!(matches!(
            authenticate(&signed(&id, now - MAX_CLOCK_SKEW_MS - 1), now, 0),
            Err(CoordinatorError::ClockSkew { .. })
        ));
        assert!(matches!(
            authenticate(&signed(&id, now + MAX_CLOCK_SKEW_MS + 1), now, 0),
            Err(CoordinatorError::ClockSkew { .. })
        ));
        // Signed one second before this coordinator (re)started: a capture from its last life.
        assert!(matches!(
            authenticate(&signed(&id, now - 1000), now, now - 999),
            Err(CoordinatorError::SignedBeforeStart { .. })
        ));
        // The signed time cannot be changed without the key.
        let mut req = signed(&id, now);
        req.auth_mut().time_unix_ms = now + 1;
        assert!(matches!(
            authenticate(&req, now, 0),
            Err(CoordinatorError::BadAuth(_))
        ));
    }

    #[test]
    fn a_refused_signature_names_what_should_have_been_signed() {
        let id = Identity::generate();
        let now = 10_000_000;
        // Signed as another call: the method string is part of what is signed.
        let mut req = signed(&id, now);
        let mut as_join = v1::JoinRequest {
            job_id: "j".into(),
            auth: req.auth.clone(),
            ..Default::default()
        };
        as_join.auth_mut().signature.clear();
        req.auth_mut().signature = id.sign(&as_join.signing_bytes()).to_vec();
        let Err(CoordinatorError::BadAuth(why)) = authenticate(&req, now, 0) else {
            panic!("a signature over another method was accepted");
        };
        assert!(why.contains("\"/conclave.v1.Rounds/Work\""), "{why}");
        assert!(why.contains("conclave.v1.WorkRequest"), "{why}");
        req.auth = None;
        let Err(CoordinatorError::BadAuth(why)) = authenticate(&req, now, 0) else {
            panic!("an unsigned request was accepted");
        };
        assert!(why.contains("/conclave.v1.Rounds/Work"), "{why}");
    }

    #[test]
    fn a_nonce_is_accepted_once() {
        let id = Identity::generate();
        let mut nonces = Nonces::default();
        let s = authenticate(&signed(&id, 5_000_000), 5_000_000, 0).unwrap();
        nonces.consume(&s, 5_000_000).unwrap();
        assert!(matches!(
            nonces.consume(&s, 5_000_000),
            Err(CoordinatorError::Replay(_))
        ));
    }
}
