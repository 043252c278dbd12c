//! The participant's side: mask a quantized vector and seal its seeds and their shares.

use conclave_crypto::{Identity, Seed, prg, seal, shamir};
use zeroize::Zeroizing;

use super::{Manifest, ProtocolError, RoundConfig};

/// Masks `quantized` for the round: returns the masked vector `y_i` for the coordinator and the
/// signed [`Manifest`]: one HPKE box per committee member `k` holding the seed `s_ik` and `k`'s
/// share of every seed `s_ij`. Every seed is fresh; nothing secret is kept.
pub fn contribute(
    config: &RoundConfig,
    identity: &Identity,
    quantized: &[u32],
) -> Result<(Vec<u32>, Manifest), ProtocolError> {
    config.validate()?;
    if quantized.len() != config.len {
        return Err(ProtocolError::Length {
            got: quantized.len(),
            expected: config.len,
        });
    }
    let me = identity.participant_id();
    if config.participant(&me).is_none() {
        return Err(ProtocolError::UnknownParticipant(me.to_string()));
    }
    let c = config.committee.len();
    let mut masked = quantized.to_vec();
    // plaintexts[k]: s_ik, then member k's share of s_ij for every j (index byte + 32 bytes).
    let mut plaintexts: Vec<Zeroizing<Vec<u8>>> = (0..c)
        .map(|_| Zeroizing::new(Vec::with_capacity(32 + 33 * c)))
        .collect();
    for plaintext in plaintexts.iter_mut() {
        let seed = Seed::random();
        prg::add_mask(&mut masked, &seed);
        plaintext.extend_from_slice(seed.expose());
    }
    for j in 0..c {
        let seed = Seed::from_bytes(plaintexts[j][..32].try_into().expect("32 bytes"));
        let shares = shamir::split(&seed, config.threshold, c)
            .map_err(|e| ProtocolError::BadConfig(e.to_string()))?;
        for (k, share) in shares.iter().enumerate() {
            plaintexts[k].push(share.index());
            plaintexts[k].extend_from_slice(share.expose());
        }
    }
    let mut sealed = Vec::with_capacity(c);
    for (k, (member, plaintext)) in config.committee.iter().zip(&plaintexts).enumerate() {
        let sealed_box = seal::seal(
            &member.sealing_key,
            &config.box_info(&me, k),
            b"",
            plaintext,
        )
        .map_err(|e| {
            ProtocolError::BadConfig(format!("cannot seal to committee member {k}: {e}"))
        })?;
        sealed.push(sealed_box);
    }
    let mut manifest = Manifest {
        job_id: config.job_id.clone(),
        round: config.round,
        participant: me,
        vector_hash: super::messages::vector_hash(&masked),
        sealed,
        signature: Vec::new(),
    };
    manifest.sign(identity);
    Ok((masked, manifest))
}
