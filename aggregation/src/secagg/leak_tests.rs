//! DESIGN.md, "A round", step 3, the requirement on masking: what the coordinator receives —
//! every upload, every member's answer, every rebuilt seed, *each individually* — combines to
//! the sum over `U` and nothing less, with up to `t−1` colluding committee members when it
//! proposes one statement of its choosing, and up to `2t−c−1` when it shows different
//! statements to different members.
//!
//! The coordinator's knowledge is modelled as linear forms over the round's unknowns: `q_i`
//! (participant `i`'s vector) and `r_ik = PRG(s_ik)` (the mask of `i`'s seed for member `k`).
//! An upload is `q_i + Σ_k r_ik`; a member's partial is the sum of the masks it holds over `U`;
//! a mask is known once its seed is (a colluder's own box, or `t` shares). A participant's
//! update leaks when `q_i` lies in the span of the forms modulo the known masks. Masks are
//! uniform and independent in `Z_{2^32}` and every coefficient is 0 or ±1, so a combination
//! that isolates `q_i` in the ring is one over the rationals too; spans are computed over
//! `GF(2^31 − 1)` and `GF(2)`.
//!
//! The structure of the forms (which seeds a box holds, which shares, what a partial sums) is
//! read from the real messages — boxes opened with the members' keys, partials and uploads
//! checked against the masks they are said to be sums of — so the model is the code's.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use conclave_crypto::{Identity, ParticipantId, Seed, prg, shamir};
use proptest::prelude::*;

use super::*;

/// An unknown of the round.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Sym {
    /// Participant `i`'s quantized vector.
    Q(usize),
    /// The mask of participant `i`'s seed for committee member `k`.
    R(usize, usize),
}

type Form = BTreeSet<Sym>;

/// The span of some linear forms over GF(`p`), with the symbols in `known` taken as known
/// (their columns dropped), kept in reduced row echelon form.
struct Span {
    p: u64,
    known: BTreeSet<Sym>,
    cols: BTreeMap<Sym, usize>,
    /// Reduced rows, each with its pivot column.
    rows: Vec<(usize, Vec<u64>)>,
}

impl Span {
    fn new(forms: &[Form], known: &BTreeSet<Sym>, p: u64) -> Self {
        let mut span = Span {
            p,
            known: known.clone(),
            cols: BTreeMap::new(),
            rows: Vec::new(),
        };
        for s in forms.iter().flatten() {
            if !known.contains(s) {
                let n = span.cols.len();
                span.cols.entry(*s).or_insert(n);
            }
        }
        for form in forms {
            if let Some(v) = span.dense(form) {
                span.insert(v);
            }
        }
        span
    }

    /// The form as a vector over the columns; `None` if it has a symbol no row has.
    fn dense(&self, form: &Form) -> Option<Vec<u64>> {
        let mut v = vec![0u64; self.cols.len()];
        for s in form.iter().filter(|s| !self.known.contains(s)) {
            v[*self.cols.get(s)?] = 1;
        }
        Some(v)
    }

    /// Reduces `v` by the rows; what is left.
    fn reduce(&self, mut v: Vec<u64>) -> Vec<u64> {
        let p = self.p;
        for (pivot, row) in &self.rows {
            let f = v[*pivot];
            if f != 0 {
                for (x, r) in v.iter_mut().zip(row) {
                    *x = (*x + p - f * r % p) % p;
                }
            }
        }
        v
    }

    fn insert(&mut self, v: Vec<u64>) {
        let p = self.p;
        let mut v = self.reduce(v);
        let Some(pivot) = v.iter().position(|&x| x != 0) else {
            return;
        };
        let inv = pow(v[pivot], p - 2, p);
        for x in v.iter_mut() {
            *x = *x * inv % p;
        }
        for (_, row) in self.rows.iter_mut() {
            let f = row[pivot];
            if f != 0 {
                for (x, r) in row.iter_mut().zip(&v) {
                    *x = (*x + p - f * r % p) % p;
                }
            }
        }
        self.rows.push((pivot, v));
    }

    /// Whether the span holds `target` (plus known symbols).
    fn contains(&self, target: Sym) -> bool {
        match self.dense(&[target].into()) {
            Some(v) => self.reduce(v).iter().all(|&x| x == 0),
            // A symbol in no row: only a known one is "held".
            None => self.known.contains(&target),
        }
    }
}

fn pow(mut b: u64, mut e: u64, p: u64) -> u64 {
    let mut r = 1 % p;
    b %= p;
    while e > 0 {
        if e & 1 == 1 {
            r = r * b % p;
        }
        b = b * b % p;
        e >>= 1;
    }
    r
}

/// What a coordinator holding `forms` and knowing `known` can isolate: a symbol is isolated
/// when it lies in the span over either field.
struct Knowledge([Span; 2]);

impl Knowledge {
    fn new(forms: &[Form], known: &BTreeSet<Sym>) -> Self {
        Knowledge([
            Span::new(forms, known, (1 << 31) - 1),
            Span::new(forms, known, 2),
        ])
    }

    fn isolates(&self, target: Sym) -> bool {
        self.0.iter().any(|s| s.contains(target))
    }
}

/// Whether some combination isolates `target`.
fn isolates(rows: &[Form], known: &BTreeSet<Sym>, target: Sym) -> bool {
    Knowledge::new(rows, known).isolates(target)
}

/// A round of `n` participants whose first `c` form the committee; every participant in
/// `uploaders` has uploaded. Holds what the boxes say, read with the members' keys.
struct Round {
    config: RoundConfig,
    people: Vec<Arc<Identity>>,
    uploaders: Vec<usize>,
    q: BTreeMap<usize, Vec<u32>>,
    y: BTreeMap<usize, Vec<u32>>,
    manifests: BTreeMap<usize, Manifest>,
    /// `seeds[(i, k)]`: participant `i`'s seed for member `k`, where its box to `k` holds one.
    seeds: BTreeMap<(usize, usize), Seed>,
    /// `shares[(i, k)]`: the members holding a share of `s_ik`, with that share.
    shares: BTreeMap<(usize, usize), Vec<(usize, shamir::Share)>>,
}

const LEN: usize = 8;

impl Round {
    fn new(n: usize, c: usize, t: usize, uploaders: &[usize]) -> Self {
        let people: Vec<Arc<Identity>> = (0..n).map(|_| Arc::new(Identity::generate())).collect();
        let config = RoundConfig {
            job_id: "j-leak".into(),
            round: 3,
            participants: people.iter().map(|p| p.public()).collect(),
            committee: people[..c].iter().map(|p| p.public()).collect(),
            threshold: t,
            min_participants: 2,
            len: LEN,
            plan_hash: [3; 32],
        };
        let mut round = Round {
            config,
            people,
            uploaders: uploaders.to_vec(),
            q: BTreeMap::new(),
            y: BTreeMap::new(),
            manifests: BTreeMap::new(),
            seeds: BTreeMap::new(),
            shares: BTreeMap::new(),
        };
        for &i in uploaders {
            let q: Vec<u32> = (0..LEN as u32).map(|k| (i as u32 + 1) * 1000 + k).collect();
            let (y, manifest) = contribute(&round.config, &round.people[i], q.as_slice()).unwrap();
            for k in 0..c {
                let opened = round
                    .config
                    .open_box(
                        &round.people[k],
                        &manifest.participant,
                        k,
                        &manifest.sealed[k],
                    )
                    .unwrap();
                round.seeds.insert((i, k), opened.seed);
                for (j, share) in opened.shares {
                    round.shares.entry((i, j)).or_default().push((k, share));
                }
            }
            // The upload is q_i plus exactly the masks of the seeds its boxes hold.
            let mut unmasked = y.clone();
            for ((_, _), seed) in round.seeds.range((i, 0)..(i + 1, 0)) {
                prg::sub_mask(&mut unmasked, seed);
            }
            assert_eq!(unmasked, q, "upload of {i} is q_i + Σ_k PRG(s_ik)");
            round.q.insert(i, q);
            round.y.insert(i, y);
            round.manifests.insert(i, manifest);
        }
        round
    }

    fn c(&self) -> usize {
        self.config.committee.len()
    }

    fn t(&self) -> usize {
        self.config.threshold
    }

    fn id(&self, i: usize) -> ParticipantId {
        self.people[i].participant_id()
    }

    /// The statement summing the uploads of `u` with answering members `a` (positions).
    fn statement(&self, u: &[usize], a: &[usize]) -> (Statement, Vec<usize>) {
        let mut order: Vec<usize> = u.to_vec();
        order.sort_by_key(|&i| self.id(i));
        let mut a = a.to_vec();
        a.sort_unstable();
        (
            Statement {
                job_id: self.config.job_id.clone(),
                round: self.config.round,
                uploads: order
                    .iter()
                    .map(|&i| (self.id(i), self.manifests[&i].hash()))
                    .collect(),
                answering: a.iter().map(|&k| self.id(k)).collect(),
            },
            order,
        )
    }

    /// The uploads as linear forms.
    fn upload_forms(&self) -> Vec<Form> {
        self.uploaders
            .iter()
            .map(|&i| {
                let mut f: Form = [Sym::Q(i)].into();
                f.extend(
                    (0..self.c())
                        .filter_map(|k| self.seeds.contains_key(&(i, k)).then_some(Sym::R(i, k))),
                );
                f
            })
            .collect()
    }
}

/// What a coordinator (with `colluders`, committee positions) gathers by showing statements:
/// `shown[k]` lists, for honest member `k`, the statements it is shown in order; every member
/// (honest or not) acts through the real [`Member`] or, for colluders, signs whatever it is
/// shown. Returns the forms it holds and the symbols it knows.
fn gather(
    round: &Round,
    statements: &[(Vec<usize>, Vec<usize>)],
    shown: &BTreeMap<usize, Vec<usize>>,
    colluders: &[usize],
) -> (Vec<Form>, BTreeSet<Sym>, Vec<bool>) {
    let built: Vec<(Statement, Vec<usize>)> = statements
        .iter()
        .map(|(u, a)| round.statement(u, a))
        .collect();
    let mut members: BTreeMap<usize, Member> = BTreeMap::new();
    let mut approvals: Vec<Vec<Approval>> = vec![Vec::new(); built.len()];
    let mut signed_by: Vec<Vec<usize>> = vec![Vec::new(); built.len()];
    for (&k, order) in shown {
        let member = members.entry(k).or_insert_with(|| {
            Member::new(round.config.clone(), Arc::clone(&round.people[k])).unwrap()
        });
        for &s in order {
            let (statement, order) = &built[s];
            let views: Vec<MemberView> = order
                .iter()
                .map(|i| round.manifests[i].view_for(k))
                .collect();
            if let Ok(a) = member.sign_statement(statement, &views) {
                approvals[s].push(a);
                signed_by[s].push(k);
            }
        }
    }
    for &k in colluders {
        for (s, (statement, _)) in built.iter().enumerate() {
            let hash = statement.hash();
            approvals[s].push(Approval {
                member: round.id(k),
                statement_hash: hash,
                signature: round.people[k].sign(&hash).to_vec(),
            });
        }
    }
    let mut forms = round.upload_forms();
    let mut known: BTreeSet<Sym> = BTreeSet::new();
    let mut revealed_shares: BTreeMap<(usize, usize), BTreeSet<u8>> = BTreeMap::new();
    let mut approved = vec![false; built.len()];
    for (s, (_, order)) in built.iter().enumerate() {
        for &k in &signed_by[s] {
            let Ok(reveal) = members.get_mut(&k).unwrap().reveal(&approvals[s]) else {
                continue;
            };
            approved[s] = true;
            // The partial is the sum, over U, of the masks member k holds.
            let holds: Vec<usize> = order
                .iter()
                .copied()
                .filter(|&i| round.seeds.contains_key(&(i, k)))
                .collect();
            let mut rest = reveal.partial.clone();
            for i in &holds {
                prg::sub_mask(&mut rest, &round.seeds[&(*i, k)]);
            }
            assert!(rest.iter().all(|&x| x == 0), "partial of member {k}");
            forms.push(holds.iter().map(|&i| Sym::R(i, k)).collect());
            for share in &reveal.shares {
                let i = (0..round.people.len())
                    .find(|&i| round.id(i) == share.participant)
                    .unwrap();
                revealed_shares
                    .entry((i, share.absent))
                    .or_default()
                    .insert(share.share.index());
            }
        }
    }
    // Known masks: colluders' own seeds, and seeds with t shares (colluders hold one share of
    // each seed they were sent a share of; honest members' reveals add theirs).
    for (&(i, k), seed) in &round.seeds {
        let mut indices = revealed_shares.get(&(i, k)).cloned().unwrap_or_default();
        let mut pieces: Vec<shamir::Share> = Vec::new();
        for (holder, share) in round.shares.get(&(i, k)).into_iter().flatten() {
            if colluders.contains(holder) || indices.contains(&share.index()) {
                indices.insert(share.index());
                pieces.push(share.clone());
            }
        }
        if colluders.contains(&k) || indices.len() >= round.t() {
            if !colluders.contains(&k) {
                let rebuilt = shamir::combine(&pieces, round.t()).unwrap();
                assert_eq!(rebuilt.expose(), seed.expose(), "rebuilt seed ({i}, {k})");
            }
            known.insert(Sym::R(i, k));
        }
    }
    for &k in colluders {
        known.insert(Sym::Q(k));
    }
    (forms, known, approved)
}

/// The honest uploaders whose vector the coordinator can isolate although what the protocol
/// lets it learn — the colluders' own vectors and the sum over `U` of each approved statement
/// — does not isolate it. (A `U` whose only honest member is `i` gives `q_i` away by design:
/// that is the sum; `min_participants` and the admission list are what stand against it.)
fn leaked(
    round: &Round,
    forms: &[Form],
    known: &BTreeSet<Sym>,
    colluders: &[usize],
    sums: &[&[usize]],
) -> Vec<usize> {
    let allowed: Vec<Form> = sums
        .iter()
        .map(|u| u.iter().map(|&i| Sym::Q(i)).collect())
        .collect();
    let own: BTreeSet<Sym> = colluders.iter().map(|&k| Sym::Q(k)).collect();
    let held = Knowledge::new(forms, known);
    let allowed = Knowledge::new(&allowed, &own);
    round
        .uploaders
        .iter()
        .copied()
        .filter(|i| !colluders.contains(i))
        .filter(|&i| held.isolates(Sym::Q(i)) && !allowed.isolates(Sym::Q(i)))
        .collect()
}

/// The statements of `statements` that were approved.
fn approved_sums<'a>(
    statements: &'a [(Vec<usize>, Vec<usize>)],
    approved: &[bool],
) -> Vec<&'a [usize]> {
    statements
        .iter()
        .zip(approved)
        .filter(|(_, a)| **a)
        .map(|((u, _), _)| u.as_slice())
        .collect()
}

/// One statement `(U, A)` of the coordinator's choosing, shown to every honest member of `A`.
fn curious(round: &Round, u: &[usize], a: &[usize], colluders: &[usize]) -> Vec<usize> {
    let shown: BTreeMap<usize, Vec<usize>> = a
        .iter()
        .filter(|k| !colluders.contains(k))
        .map(|&k| (k, vec![0]))
        .collect();
    let statements = [(u.to_vec(), a.to_vec())];
    let (forms, known, approved) = gather(round, &statements, &shown, colluders);
    let leaks = leaked(
        round,
        &forms,
        &known,
        colluders,
        &approved_sums(&statements, &approved),
    );
    // Not vacuous: an approved statement does unmask the sum over U.
    if approved[0] {
        let mut all_known = known.clone();
        all_known.extend(
            u.iter()
                .filter(|i| !colluders.contains(i))
                .skip(1)
                .map(|&i| Sym::Q(i)),
        );
        if let Some(&first) = u.iter().find(|i| !colluders.contains(i)) {
            assert!(
                isolates(&forms, &all_known, Sym::Q(first)),
                "the sum over U is unmasked once the statement is approved"
            );
        }
    }
    leaks
}

fn subsets(of: &[usize], min: usize) -> Vec<Vec<usize>> {
    (0u32..1 << of.len())
        .map(|bits| {
            of.iter()
                .enumerate()
                .filter(|(b, _)| bits >> b & 1 == 1)
                .map(|(_, &x)| x)
                .collect::<Vec<_>>()
        })
        .filter(|s| s.len() >= min)
        .collect()
}

/// Every `(U, A)` a coordinator may propose, for every colluding set of up to `max_colluders`
/// members: no honest upload is isolated.
fn no_statement_isolates_an_upload(n: usize, c: usize, t: usize, max_colluders: usize) {
    let uploaders: Vec<usize> = (0..n).collect();
    let round = Round::new(n, c, t, &uploaders);
    let committee: Vec<usize> = (0..c).collect();
    for colluders in subsets(&committee, 0)
        .into_iter()
        .filter(|s| s.len() <= max_colluders)
    {
        for u in subsets(&uploaders, 2) {
            for a in subsets(&committee, t) {
                let leaks = curious(&round, &u, &a, &colluders);
                assert!(
                    leaks.is_empty(),
                    "c = {c}, t = {t}, colluders {colluders:?}, U = {u:?}, A = {a:?}: the coordinator isolates the update of {leaks:?}"
                );
            }
        }
    }
}

#[test]
fn no_statement_isolates_an_upload_c3_t2() {
    no_statement_isolates_an_upload(4, 3, 2, 1);
}

#[test]
fn no_statement_isolates_an_upload_c5_t3() {
    no_statement_isolates_an_upload(5, 5, 3, 1);
}

/// The case: `c = 10, t = 7`, one colluder, `|U| = 2`, `|A| = 7`.
#[test]
fn one_colluder_of_ten_isolates_no_upload() {
    let round = Round::new(12, 10, 7, &(0..12).collect::<Vec<_>>());
    let committee: Vec<usize> = (0..10).collect();
    let sevens: Vec<Vec<usize>> = subsets(&committee, 7)
        .into_iter()
        .filter(|a| a.len() == 7)
        .step_by(3)
        .collect();
    for colluder in [0, 9] {
        for u in [[10, 11], [colluder, 11]] {
            for a in &sevens {
                let a = a.as_slice();
                let leaks = curious(&round, &u, a, &[colluder]);
                assert!(
                    leaks.is_empty(),
                    "colluder {colluder}, U = {u:?}, A = {a:?}: {leaks:?}"
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A malicious coordinator with up to `2t − c − 1` colluding members shows each honest
    /// member statements of its choosing, in any order; whatever gets approved and revealed,
    /// no honest upload is isolated.
    #[test]
    fn different_statements_to_different_members_isolate_no_upload(
        c in 1usize..7, t_frac in 0.0f64..1.0, extra in 0usize..3,
        upload_bits in any::<u16>(), statement_bits in proptest::collection::vec((any::<u16>(), any::<u16>()), 1..4),
        shown_bits in proptest::collection::vec(any::<u32>(), 7), colluder_bits in any::<u8>(),
    ) {
        let t = c / 2 + 1 + ((c - c / 2 - 1) as f64 * t_frac) as usize;
        let n = (c + extra).max(2);
        let mut uploaders: Vec<usize> = (0..n).filter(|i| upload_bits >> i & 1 == 1).collect();
        if uploaders.len() < 2 {
            uploaders = (0..n).collect();
        }
        let round = Round::new(n, c, t, &uploaders);
        let bound = (2 * t).saturating_sub(c + 1);
        let colluders: Vec<usize> = (0..c).filter(|k| colluder_bits >> k & 1 == 1).take(bound).collect();
        let mut statements: Vec<(Vec<usize>, Vec<usize>)> = Vec::new();
        for (ub, ab) in &statement_bits {
            let u: Vec<usize> = uploaders.iter().copied().filter(|i| ub >> i & 1 == 1).collect();
            let a: Vec<usize> = (0..c).filter(|k| ab >> k & 1 == 1).collect();
            if !statements.contains(&(u.clone(), a.clone())) {
                statements.push((u, a));
            }
        }
        let shown: BTreeMap<usize, Vec<usize>> = (0..c)
            .filter(|k| !colluders.contains(k))
            .map(|k| {
                let bits = shown_bits[k];
                let order: Vec<usize> = (0..statements.len())
                    .map(|s| (bits as usize >> (2 * s)) % statements.len())
                    .collect();
                (k, order)
            })
            .collect();
        let (forms, known, approved) = gather(&round, &statements, &shown, &colluders);
        prop_assert!(approved.iter().filter(|a| **a).count() <= 1, "two statements approved");
        let leaks = leaked(&round, &forms, &known, &colluders, &approved_sums(&statements, &approved));
        prop_assert!(leaks.is_empty(), "c = {}, t = {}, colluders {:?}, statements {:?}, shown {:?}: isolates {:?}", c, t, colluders, statements, shown, leaks);
    }

    /// A curious coordinator with up to `t − 1` colluding members and one statement `(U, A)`
    /// of its choosing (any dropouts) isolates no honest upload.
    #[test]
    fn one_statement_with_t_minus_one_colluders_isolates_no_upload(
        c in 1usize..8, t_frac in 0.0f64..1.0, extra in 0usize..3,
        upload_bits in any::<u16>(), u_bits in any::<u16>(), a_bits in any::<u16>(), colluder_bits in any::<u8>(),
    ) {
        let t = c / 2 + 1 + ((c - c / 2 - 1) as f64 * t_frac) as usize;
        let n = (c + extra).max(2);
        let mut uploaders: Vec<usize> = (0..n).filter(|i| upload_bits >> i & 1 == 1).collect();
        if uploaders.len() < 2 {
            uploaders = (0..n).collect();
        }
        let round = Round::new(n, c, t, &uploaders);
        let colluders: Vec<usize> = (0..c).filter(|k| colluder_bits >> k & 1 == 1).take(t - 1).collect();
        let mut u: Vec<usize> = uploaders.iter().copied().filter(|i| u_bits >> i & 1 == 1).collect();
        if u.len() < 2 {
            u = uploaders.clone();
        }
        let mut a: Vec<usize> = (0..c).filter(|k| a_bits >> k & 1 == 1).collect();
        if a.len() < t {
            a = (0..c).collect();
        }
        let leaks = curious(&round, &u, &a, &colluders);
        prop_assert!(leaks.is_empty(), "c = {}, t = {}, colluders {:?}, U = {:?}, A = {:?}: isolates {:?}", c, t, colluders, u, a, leaks);
    }
}

/// The model is not vacuous: with `t` colluders (beyond the guarantee) every honest upload in
/// `U` is isolated, and a statement over one participant isolates it.
#[test]
fn the_model_sees_a_leak_beyond_the_guarantee() {
    let round = Round::new(5, 3, 2, &[0, 1, 2, 3, 4]);
    let leaks = curious(&round, &[3, 4], &[0, 1, 2], &[0, 1]);
    assert_eq!(leaks, vec![2, 3, 4], "t colluders see every honest upload");
    let mut unmasked = round.y[&4].clone();
    for k in 0..3 {
        if let Some(seed) = round.seeds.get(&(4, k)) {
            prg::sub_mask(&mut unmasked, seed);
        }
    }
    assert_eq!(unmasked, round.q[&4]);
}
