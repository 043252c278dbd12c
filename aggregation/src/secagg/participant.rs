//! The participant's side: mask a quantized vector and seal its seeds and their shares.

use conclave_crypto::{Identity, Seed, prg, seal, shamir};

use super::{Manifest, ProtocolError, RoundConfig};

/// Masks `quantized` for the round: returns the masked vector `y_i` for the coordinator and the
/// signed [`Manifest`] of sealed seeds and shares. Every seed is fresh; nothing secret is kept.
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
    let mut sealed_seeds = Vec::with_capacity(c);
    let mut sealed_shares = Vec::with_capacity(c);
    let seal_err = |e: seal::SealError| {
        ProtocolError::BadConfig(format!("cannot seal to a committee member: {e}"))
    };
    for (j, member) in config.committee.iter().enumerate() {
        let seed = Seed::random();
        prg::add_mask(&mut masked, &seed);
        sealed_seeds.push(
            seal::seal(
                &member.sealing_key,
                &config.seed_info(&me, j),
                b"",
                seed.expose(),
            )
            .map_err(seal_err)?,
        );
        let shares = shamir::split(&seed, config.threshold, c)
            .map_err(|e| ProtocolError::BadConfig(e.to_string()))?;
        let mut row = Vec::with_capacity(c);
        for (k, (share, holder)) in shares.iter().zip(&config.committee).enumerate() {
            let mut plaintext = [0u8; 33];
            plaintext[0] = share.index();
            plaintext[1..].copy_from_slice(share.expose());
            row.push(
                seal::seal(
                    &holder.sealing_key,
                    &config.share_info(&me, j, k),
                    b"",
                    &plaintext,
                )
                .map_err(seal_err)?,
            );
            zeroize::Zeroize::zeroize(&mut plaintext);
        }
        sealed_shares.push(row);
    }
    let mut manifest = Manifest {
        job_id: config.job_id.clone(),
        round: config.round,
        participant: me,
        vector_hash: super::messages::vector_hash(&masked),
        sealed_seeds,
        sealed_shares,
        signature: Vec::new(),
    };
    manifest.sign(identity);
    Ok((masked, manifest))
}
