//! The on-disk form of the live sequences a draining server hands to its successor
//! (`--state_dir`): per model version instance, its identity and state variables, then every
//! sequence's id, step count, idle time and state bytes.
//!
//! Layout (little-endian), format 1:
//!
//! ```text
//! "SEQCSNAP"  format:u32  body_len:u64  body  crc32c(body):u32
//! body = sections:u32 { name:str version:i64 precision:str
//!                       states:u32 { name:str elem:str dims:u32 { d:u64 } bytes:u64 }
//!                       sequences:u64 { id steps:u64 idle_ms:u64 state:bytes } }
//! str/bytes = len:u64 data;  id = 0:u8 n:u64 | 1:u8 s:str
//! ```
//!
//! Decoding trusts nothing: every length is checked against what is left before anything is
//! allocated, the checksum covers the whole body, and any mismatch is an error naming it.

use crate::request::SequenceId;
use crate::signature::StateInfo;

pub const MAGIC: &[u8; 8] = b"SEQCSNAP";
pub const FORMAT: u32 = 1;
/// The file name inside `--state_dir`.
pub const FILE_NAME: &str = "sequences.snapshot";

/// One sequence as a snapshot holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Saved {
    pub id: SequenceId,
    pub steps: u64,
    /// How long it had been idle when saved (its idle timeout goes on from there).
    pub idle_ms: u64,
    /// Its state variables back to back, in the instance's state order.
    pub state: Vec<u8>,
}

/// One model version instance's sequences.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Section {
    pub name: String,
    pub version: i64,
    pub precision: String,
    /// (name, element type name, dims, bytes) of each state variable.
    pub states: Vec<(String, String, Vec<u64>, u64)>,
    pub sequences: Vec<Saved>,
}

impl Section {
    /// The state descriptors of `states` as a section records them.
    pub fn describe(states: &[StateInfo]) -> Vec<(String, String, Vec<u64>, u64)> {
        states
            .iter()
            .map(|s| {
                (
                    s.name.clone(),
                    s.elem.name().to_string(),
                    s.dims.iter().map(|&d| d as u64).collect(),
                    s.byte_size as u64,
                )
            })
            .collect()
    }

    /// Bytes of one sequence's state.
    pub fn state_bytes(&self) -> u64 {
        self.states.iter().map(|s| s.3).sum()
    }
}

/// Encodes a snapshot (one buffer: the header's length and the checksum are filled in after
/// the body, so the states are copied once).
pub fn encode(sections: &[Section]) -> Vec<u8> {
    let states: usize = sections.iter().flat_map(|s| &s.sequences).map(|q| q.state.len() + 40).sum();
    let mut out = Vec::with_capacity(states + 4096);
    out.extend_from_slice(MAGIC);
    put_u32(&mut out, FORMAT);
    let len_at = out.len();
    put_u64(&mut out, 0);
    let body_at = out.len();
    let body = &mut out;
    put_u32(body, sections.len() as u32);
    for s in sections {
        put_str(body, &s.name);
        body.extend_from_slice(&s.version.to_le_bytes());
        put_str(body, &s.precision);
        put_u32(body, s.states.len() as u32);
        for (name, elem, dims, bytes) in &s.states {
            put_str(body, name);
            put_str(body, elem);
            put_u32(body, dims.len() as u32);
            for d in dims {
                put_u64(body, *d);
            }
            put_u64(body, *bytes);
        }
        put_u64(body, s.sequences.len() as u64);
        for q in &s.sequences {
            match &q.id {
                SequenceId::Num(n) => {
                    body.push(0);
                    put_u64(body, *n);
                }
                SequenceId::Str(t) => {
                    body.push(1);
                    put_str(body, t);
                }
            }
            put_u64(body, q.steps);
            put_u64(body, q.idle_ms);
            put_u64(body, q.state.len() as u64);
            body.extend_from_slice(&q.state);
        }
    }
    let body_len = (out.len() - body_at) as u64;
    out[len_at..len_at + 8].copy_from_slice(&body_len.to_le_bytes());
    let crc = crc32c(&out[body_at..]);
    put_u32(&mut out, crc);
    out
}

/// Decodes a snapshot, or says what is wrong with it.
pub fn decode(data: &[u8]) -> Result<Vec<Section>, String> {
    let mut r = Reader { data, at: 0 };
    if r.take(8).ok() != Some(&MAGIC[..]) {
        return Err("not a seqcore snapshot (no SEQCSNAP header)".into());
    }
    let format = r.u32()?;
    if format != FORMAT {
        return Err(format!("snapshot format {format}; this server reads format {FORMAT}"));
    }
    let len = r.u64()?;
    let body = r.take_len(len).map_err(|_| format!("truncated: the body should be {len} bytes"))?;
    let crc = r.u32().map_err(|_| "truncated: the checksum is missing".to_string())?;
    if r.at != data.len() {
        return Err(format!("{} bytes after the checksum", data.len() - r.at));
    }
    if crc32c(body) != crc {
        return Err("checksum mismatch: the file is corrupt".into());
    }
    let mut r = Reader { data: body, at: 0 };
    let n = r.u32()?;
    let mut sections = Vec::new();
    for _ in 0..n {
        let name = r.str()?;
        let version = i64::from_le_bytes(r.array()?);
        let precision = r.str()?;
        let nstates = r.u32()?;
        let mut states = Vec::new();
        for _ in 0..nstates {
            let sname = r.str()?;
            let elem = r.str()?;
            let ndims = r.u32()?;
            let mut dims = Vec::new();
            for _ in 0..ndims {
                dims.push(r.u64()?);
            }
            states.push((sname, elem, dims, r.u64()?));
        }
        let mut section = Section { name, version, precision, states, sequences: Vec::new() };
        // Sizes as the file says them: their sum may not fit (found by fuzzing, which made it
        // overflow; fuzz/corpus/snapshot/crash-state-sizes-overflow).
        let want = section.states.iter().try_fold(0u64, |n, s| n.checked_add(s.3)).ok_or_else(|| {
            format!(
                "model {:?} version {}: its state variables add up to more than 2^64 bytes",
                section.name, section.version
            )
        })?;
        let count = r.u64()?;
        for _ in 0..count {
            let id = match r.take(1)?[0] {
                0 => SequenceId::Num(r.u64()?),
                1 => SequenceId::Str(r.str()?.into_boxed_str()),
                t => return Err(format!("unknown sequence id tag {t}")),
            };
            let steps = r.u64()?;
            let idle_ms = r.u64()?;
            let len = r.u64()?;
            if len != want {
                return Err(format!(
                    "model {:?} version {}: a sequence's state is {len} bytes, its variables {want}",
                    section.name, section.version
                ));
            }
            let state = r.take_len(len)?.to_vec();
            section.sequences.push(Saved { id, steps, idle_ms, state });
        }
        sections.push(section);
    }
    if r.at != body.len() {
        return Err("trailing bytes inside the body".into());
    }
    Ok(sections)
}

struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.data.len()).ok_or("truncated")?;
        let s = &self.data[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn take_len(&mut self, n: u64) -> Result<&'a [u8], String> {
        self.take(usize::try_from(n).map_err(|_| "truncated")?)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn str(&mut self) -> Result<String, String> {
        let len = self.u64()?;
        let b = self.take_len(len)?;
        String::from_utf8(b.to_vec()).map_err(|_| "a name is not UTF-8".to_string())
    }
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u64(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// CRC-32C (Castagnoli), reflected, slicing by 8 (eight table lookups per 8 bytes: a 400 MiB
/// snapshot in well under a second).
pub fn crc32c(data: &[u8]) -> u32 {
    static TABLES: std::sync::OnceLock<[[u32; 256]; 8]> = std::sync::OnceLock::new();
    let t = TABLES.get_or_init(|| {
        let mut t = [[0u32; 256]; 8];
        for (i, e) in t[0].iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0x82F6_3B78 ^ (c >> 1) } else { c >> 1 };
            }
            *e = c;
        }
        for k in 1..8 {
            for i in 0..256 {
                let prev = t[k - 1][i];
                t[k][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            }
        }
        t
    });
    let mut crc = !0u32;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let lo = crc ^ u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        crc = t[7][(lo & 0xff) as usize]
            ^ t[6][((lo >> 8) & 0xff) as usize]
            ^ t[5][((lo >> 16) & 0xff) as usize]
            ^ t[4][(lo >> 24) as usize]
            ^ t[3][c[4] as usize]
            ^ t[2][c[5] as usize]
            ^ t[1][c[6] as usize]
            ^ t[0][c[7] as usize];
    }
    for &b in chunks.remainder() {
        crc = t[0][((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Section> {
        vec![Section {
            name: "lstm".into(),
            version: 2,
            precision: "f32".into(),
            states: vec![("h".into(), "f32".into(), vec![1, 2], 8), ("c".into(), "f32".into(), vec![1, 1], 4)],
            sequences: vec![
                Saved { id: SequenceId::Num(7), steps: 3, idle_ms: 120, state: (0..12).collect() },
                Saved { id: SequenceId::Str("utt-1".into()), steps: 1, idle_ms: 0, state: vec![9; 12] },
            ],
        }]
    }

    #[test]
    fn a_snapshot_decodes_to_what_was_encoded() {
        let s = sample();
        assert_eq!(decode(&encode(&s)).unwrap(), s);
        assert_eq!(decode(&encode(&[])).unwrap(), vec![]);
    }

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        // Every length around the 8-byte chunks gives the bytewise answer.
        let data: Vec<u8> = (0..100u32).map(|i| (i * 37 + 11) as u8).collect();
        for n in 0..data.len() {
            let mut crc = !0u32;
            for &b in &data[..n] {
                crc ^= b as u32;
                for _ in 0..8 {
                    crc = if crc & 1 != 0 { 0x82F6_3B78 ^ (crc >> 1) } else { crc >> 1 };
                }
            }
            assert_eq!(crc32c(&data[..n]), !crc, "length {n}");
        }
    }

    #[test]
    fn every_damage_is_named() {
        let good = encode(&sample());
        let err = |d: &[u8]| decode(d).unwrap_err();
        assert!(err(b"hello").contains("not a seqcore snapshot"));
        let mut v2 = good.clone();
        v2[8..12].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(err(&v2), "snapshot format 2; this server reads format 1");
        for cut in [12, 20, good.len() / 2, good.len() - 1] {
            assert!(err(&good[..cut]).contains("truncated"), "cut at {cut}: {}", err(&good[..cut]));
        }
        let mut flipped = good.clone();
        flipped[40] ^= 1;
        assert_eq!(err(&flipped), "checksum mismatch: the file is corrupt");
        let mut longer = good.clone();
        longer.push(0);
        assert!(err(&longer).contains("after the checksum"));
        // A lying length inside a valid checksum: refused without allocating it.
        let mut s = sample();
        s[0].sequences[0].state = vec![0; 5];
        assert!(err(&encode(&s)).contains("a sequence's state is 5 bytes, its variables 12"));
        // State sizes whose sum does not fit in 64 bits (found by fuzzing): an error, no overflow.
        let mut s = sample();
        s[0].states[0].3 = u64::MAX;
        s[0].sequences.clear();
        assert!(err(&encode(&s)).contains("add up to more than 2^64 bytes"));
    }
}
