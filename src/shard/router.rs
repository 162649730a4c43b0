//! The one pure function that maps a sequence to its shard. Nothing else routes.

/// Index of a shard (one pinned core, one glommio executor).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardId(pub u16);

/// Maps `sequence_id` to the shard that owns it, for `shards` shards.
///
/// Ids are mixed before reduction so that patterned client ids (all even, multiples of the
/// shard count) still spread evenly; the reduction is Lemire's multiply-shift, not `%`.
pub fn shard_of(sequence_id: u64, shards: u16) -> ShardId {
    debug_assert!(shards > 0);
    let mixed = mix64(sequence_id);
    ShardId(((u128::from(mixed) * u128::from(shards)) >> 64) as u16)
}

/// Maps any sequence id to its shard: numbers as above, strings through a fixed hash first.
pub fn shard_of_id(id: &crate::request::SequenceId, shards: u16) -> ShardId {
    match id {
        crate::request::SequenceId::Num(n) => shard_of(*n, shards),
        crate::request::SequenceId::Str(s) => shard_of(fnv1a64(s.as_bytes()), shards),
    }
}

/// FNV-1a, 64-bit: fixed (not seeded), so every shard and process routes a string alike.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// splitmix64's finaliser: a bijection on u64 with good avalanche.
fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_shard_owns_everything() {
        for id in [0, 1, 2, u64::MAX, 5_000_000_000] {
            assert_eq!(shard_of(id, 1), ShardId(0));
        }
    }

    #[test]
    fn spreads_sequential_and_patterned_ids() {
        for shards in [2u16, 3, 4, 8] {
            for stride in [1u64, 2, shards as u64, 1000] {
                let mut counts = vec![0u32; shards as usize];
                let n = 100_000u64;
                for i in 0..n {
                    counts[shard_of(i * stride + 1, shards).0 as usize] += 1;
                }
                let even = n as f64 / shards as f64;
                for c in counts {
                    assert!((c as f64 - even).abs() < even * 0.05, "shards {shards} stride {stride}");
                }
            }
        }
    }

    #[test]
    fn is_a_pure_function() {
        assert_eq!(shard_of(42, 4), shard_of(42, 4));
    }

    #[test]
    fn string_ids_spread_too() {
        use crate::request::SequenceId;
        let mut counts = [0u32; 2];
        for i in 0..10_000 {
            counts[shard_of_id(&SequenceId::Str(format!("utt-{i}").into()), 2).0 as usize] += 1;
        }
        assert!(counts.iter().all(|&c| (4_500..5_500).contains(&c)), "{counts:?}");
        assert_eq!(shard_of_id(&SequenceId::Num(9), 3), shard_of(9, 3));
    }
}
