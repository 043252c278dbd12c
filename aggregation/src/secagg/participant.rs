//! The participant's side: mask a quantized vector and seal its seeds and their shares.

use conclave_crypto::{Identity, Seed, prg, seal, shamir};
use zeroize::Zeroizing;

use super::{Manifest, ProtocolError, RoundConfig};

/// Masks `quantized` for the round: returns the masked vector `y_i` for the coordinator and the
/// signed [`Manifest`]. The mask is `Σ_{j∈H} PRG(s_ij)` over the `t` mask holders `H` of
/// [`RoundConfig::mask_holders`]; each committee member `k` gets one HPKE box with `s_ik` if
/// `k ∈ H`, and `k`'s share of every `s_ij`, `j ∈ H`. Every seed is fresh; nothing secret is
/// kept.
pub fn contribute(
    config: &RoundConfig,
    identity: &Identity,
    quantized: impl Into<Vec<u32>>,
) -> Result<(Vec<u32>, Manifest), ProtocolError> {
    let quantized: Vec<u32> = quantized.into();
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
    let holders = config.mask_holders(&me);
    let mut masked = quantized;
    // plaintexts[k]: s_ik if k holds one, then k's share of s_ij for every holder j (index
    // byte + 32 bytes), in holder order.
    let mut plaintexts: Vec<Zeroizing<Vec<u8>>> = (0..c)
        .map(|k| Zeroizing::new(Vec::with_capacity(config.box_len(holders.contains(&k)))))
        .collect();
    let seeds: Vec<Seed> = holders.iter().map(|_| Seed::random()).collect();
    prg::add_masks(&mut masked, &seeds);
    for (&j, seed) in holders.iter().zip(&seeds) {
        plaintexts[j].extend_from_slice(seed.expose());
    }
    for seed in &seeds {
        let shares = shamir::split(seed, config.threshold, c)
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
