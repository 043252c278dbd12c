//! The participant's side: mask a quantized vector and seal its seeds and their shares.

use conclave_crypto::{Identity, Seed, prg, seal, shamir};
use zeroize::Zeroizing;

use super::{Manifest, ProtocolError, RoundConfig};

/// Masks `quantized` for the round: returns the masked vector `y_i` for the coordinator and the
/// signed [`Manifest`]. The mask is `Σ_k PRG(s_ik)` with one fresh seed `s_ik` for every
/// committee member `k`; member `k` gets one HPKE box holding `s_ik` and its Shamir share
/// (`t`-of-`c`) of every other member's seed `s_ij`, `j ≠ k`. Every member's answer therefore
/// covers every upload it sums, so no single answer isolates one participant's masks
/// (DESIGN.md, "A round", step 3). The manifest names the plan the participant masked under
/// ([`RoundConfig::plan_hash`]). Every seed is fresh; nothing secret is kept.
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
    let mut masked = quantized;
    let seeds: Vec<Seed> = (0..c).map(|_| Seed::random()).collect();
    prg::add_masks(&mut masked, &seeds);
    // plaintexts[k]: s_ik, then k's share of s_ij for every other member j (index byte + 32
    // bytes), in committee order.
    let mut plaintexts: Vec<Zeroizing<Vec<u8>>> = seeds
        .iter()
        .map(|seed| {
            let mut p = Zeroizing::new(Vec::with_capacity(config.box_len()));
            p.extend_from_slice(seed.expose());
            p
        })
        .collect();
    for (j, seed) in seeds.iter().enumerate() {
        let shares = shamir::split(seed, config.threshold, c)
            .map_err(|e| ProtocolError::BadConfig(e.to_string()))?;
        for (k, share) in shares.iter().enumerate().filter(|(k, _)| *k != j) {
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
        plan_hash: config.plan_hash,
        vector_hash: super::messages::vector_hash(&masked),
        sealed,
        signature: Vec::new(),
    };
    manifest.sign(identity);
    Ok((masked, manifest))
}
