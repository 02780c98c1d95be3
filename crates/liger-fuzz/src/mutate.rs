//! Byte-level mutations of a seed, the kinds that find parser bugs: flipped bits, bytes and
//! integers set to boundary values (counts and sizes of 0, 1, 2^31, 2^32 - 1, 2^64 - 1),
//! truncation, repeated and inserted chunks, and splices of two inputs.

use rand::rngs::SmallRng;
use rand::Rng;

const INTERESTING_U32: [u32; 8] = [0, 1, 0x7f, 0xff, 0x7fff_ffff, 0x8000_0000, 0xffff_fffe, 0xffff_ffff];

/// One to eight stacked mutations of `seed` (and, for splices, `other`).
pub fn mutate(seed: &[u8], other: &[u8], rng: &mut SmallRng) -> Vec<u8> {
    let mut data = seed.to_vec();
    for _ in 0..rng.random_range(1..=8) {
        mutate_once(&mut data, other, rng);
    }
    data
}

fn mutate_once(data: &mut Vec<u8>, other: &[u8], rng: &mut SmallRng) {
    if data.is_empty() {
        data.push(rng.random());
        return;
    }
    let at = rng.random_range(0..data.len());
    match rng.random_range(0..9) {
        0 => data[at] ^= 1 << rng.random_range(0..8),
        1 => data[at] = [0u8, 0xff, 0x7f, 0x80, b'{', b'"', b'%', b'\n'][rng.random_range(0..8)],
        2 => data[at] = rng.random(),
        3 => {
            // A little-endian u32 or u64 set to a boundary value: counts, lengths, offsets.
            let v = INTERESTING_U32[rng.random_range(0..INTERESTING_U32.len())];
            let wide = rng.random_bool(0.5);
            let bytes: Vec<u8> = if wide {
                (v as u64 | if v > 1 { 0xffff_ffff_0000_0000 } else { 0 }).to_le_bytes().to_vec()
            } else {
                v.to_le_bytes().to_vec()
            };
            for (i, b) in bytes.into_iter().enumerate() {
                if let Some(slot) = data.get_mut(at + i) {
                    *slot = b;
                }
            }
        }
        4 => data.truncate(at),
        5 => {
            let len = rng.random_range(1..=64.min(data.len() - at));
            let chunk = data[at..at + len].to_vec();
            let to = rng.random_range(0..=data.len());
            data.splice(to..to, chunk);
        }
        6 => {
            let len = rng.random_range(1..=16);
            let noise: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            data.splice(at..at, noise);
        }
        7 => {
            let len = rng.random_range(1..=64.min(data.len() - at));
            data.drain(at..at + len);
        }
        _ => {
            if !other.is_empty() {
                let from = rng.random_range(0..other.len());
                let len = rng.random_range(1..=256.min(other.len() - from));
                let end = (at + len).min(data.len());
                data.splice(at..end, other[from..from + len].iter().copied());
            }
        }
    }
}
