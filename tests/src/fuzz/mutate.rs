//! Deterministic mutations of image files: bytes, the u32 frames of the image format, and the
//! protobuf fields inside them.

/// xorshift64*: the same seed gives the same mutants on every machine.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // splitmix64 of the seed, so nearby seeds (iteration numbers) diverge at once.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// True one time in `n`.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const INTERESTING_BYTES: [u8; 6] = [0, 1, 0x7f, 0x80, 0xfe, 0xff];

/// Values that make sizes, counts, addresses and offsets overflow, wrap, or claim more than
/// the input holds.
fn interesting_u64(rng: &mut Rng, old: u64) -> u64 {
    const FIXED: [u64; 18] = [
        0,
        1,
        2,
        0x7f,
        0x80,
        0xff,
        4096,
        0x7fff_ffff,
        0x8000_0000,
        0xffff_ffff,
        1 << 32,
        1 << 40,
        (1 << 52) - 1,
        1 << 52,
        1 << 63,
        u64::MAX - 4095,
        u64::MAX - 1,
        u64::MAX,
    ];
    match rng.below(6) {
        0 => old.wrapping_add(1),
        1 => old.wrapping_sub(1),
        2 => old ^ (1 << rng.below(64)),
        3 => old.wrapping_mul(4096),
        _ => *rng.pick(&FIXED),
    }
}

fn interesting_u32(rng: &mut Rng, old: u32, left: usize) -> u32 {
    const FIXED: [u32; 9] = [
        0,
        1,
        0x7f,
        0x80,
        0x7fff_ffff,
        0x8000_0000,
        0xffff_ffff,
        64 << 20,
        (64 << 20) + 1,
    ];
    let left = u32::try_from(left).unwrap_or(u32::MAX);
    match rng.below(6) {
        0 => old.wrapping_add(1 + rng.below(8) as u32),
        1 => old.wrapping_sub(1 + rng.below(8) as u32),
        2 => left,
        3 => left.wrapping_add(1),
        _ => *rng.pick(&FIXED),
    }
}

/// Entries of an image: (offset of the u32 length, length), from `header` on, as long as the
/// lengths fit. Raw payloads between entries end the walk early (a heuristic is enough).
pub fn frames(bytes: &[u8], header: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut pos = header;
    while let Some(w) = bytes.get(pos..pos + 4) {
        let len = u32::from_le_bytes([w[0], w[1], w[2], w[3]]) as usize;
        if len > bytes.len() - pos - 4 {
            break;
        }
        out.push((pos, len));
        pos += 4 + len;
    }
    out
}

fn read_varint(b: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*pos)?;
        *pos += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// One protobuf field: where it is and its value.
struct Field {
    start: usize,
    value: usize,
    end: usize,
    key: u64,
}

/// The fields of a protobuf message, or None when `b` is not one.
fn fields(b: &[u8]) -> Option<Vec<Field>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < b.len() {
        let start = pos;
        let key = read_varint(b, &mut pos)?;
        let value = pos;
        match key & 7 {
            0 => {
                read_varint(b, &mut pos)?;
            }
            1 => pos += 8,
            2 => {
                let len = read_varint(b, &mut pos)?;
                pos = pos.checked_add(usize::try_from(len).ok()?)?;
            }
            5 => pos += 4,
            _ => return None,
        }
        if pos > b.len() || key >> 3 == 0 {
            return None;
        }
        out.push(Field {
            start,
            value,
            end: pos,
            key,
        });
    }
    Some(out)
}

/// A new value for one field of `msg` (recursing into embedded messages), or one field
/// dropped, duplicated or added; None when `msg` has no fields to work on.
fn edit_message(rng: &mut Rng, msg: &[u8], depth: usize) -> Option<Vec<u8>> {
    let fs = fields(msg)?;
    if fs.is_empty() || rng.one_in(12) {
        // Add a field: a known key of this message with a new value, or any small key.
        let key = match fs.first() {
            Some(f) if rng.one_in(2) => f.key & !7,
            _ => (rng.below(40) as u64 + 1) << 3,
        };
        let mut out = msg.to_vec();
        put_varint(&mut out, key);
        put_varint(&mut out, interesting_u64(rng, 0));
        return Some(out);
    }
    let f = &fs[rng.below(fs.len())];
    let mut new = Vec::with_capacity(msg.len() + 16);
    new.extend_from_slice(&msg[..f.start]);
    match rng.below(16) {
        // Drop it (a required field goes missing).
        0 => {}
        // Repeat it: a repeated field grows, a singular one is given twice.
        1 => {
            let times = if rng.one_in(8) { 64 } else { 2 };
            for _ in 0..times {
                new.extend_from_slice(&msg[f.start..f.end]);
            }
        }
        _ => new_value(rng, msg, f, depth, &mut new),
    }
    new.extend_from_slice(&msg[f.end..]);
    Some(new)
}

fn new_value(rng: &mut Rng, msg: &[u8], f: &Field, depth: usize, new: &mut Vec<u8>) {
    new.extend_from_slice(&msg[f.start..f.value]);
    match f.key & 7 {
        0 => {
            let mut p = f.value;
            let old = read_varint(msg, &mut p).unwrap_or(0);
            put_varint(new, interesting_u64(rng, old));
        }
        1 => {
            let old = u64::from_le_bytes(msg[f.value..f.end].try_into().unwrap_or([0; 8]));
            new.extend_from_slice(&interesting_u64(rng, old).to_le_bytes());
        }
        5 => {
            let old = u32::from_le_bytes(msg[f.value..f.end].try_into().unwrap_or([0; 4]));
            new.extend_from_slice(&interesting_u32(rng, old, 0).to_le_bytes());
        }
        _ => {
            let mut p = f.value;
            let len = read_varint(msg, &mut p).unwrap_or(0) as usize;
            let inner = &msg[p..p + len];
            let edited = match rng.below(4) {
                0 | 1 if depth < 4 => edit_message(rng, inner, depth + 1),
                2 => {
                    // Packed varints (repeated scalars): one gets an interesting value.
                    let mut out = inner.to_vec();
                    if !out.is_empty() {
                        let at = rng.below(out.len());
                        out.truncate(at);
                        put_varint(&mut out, interesting_u64(rng, 0));
                    }
                    Some(out)
                }
                _ => None,
            };
            let inner = edited.unwrap_or_else(|| {
                let mut b = inner.to_vec();
                byte_op(rng, &mut b);
                b
            });
            put_varint(new, inner.len() as u64);
            new.extend_from_slice(&inner);
        }
    }
}

/// A bit flip, an interesting byte, or a cut.
fn byte_op(rng: &mut Rng, b: &mut Vec<u8>) {
    if b.is_empty() {
        b.push(*rng.pick(&INTERESTING_BYTES));
        return;
    }
    let at = rng.below(b.len());
    match rng.below(3) {
        0 => b[at] ^= 1 << rng.below(8),
        1 => b[at] = *rng.pick(&INTERESTING_BYTES),
        _ => b.truncate(at),
    }
}

/// One mutation of `bytes` (an image whose headers are `header` bytes long); `other` is
/// another image of the corpus to take chunks from.
pub fn mutate_once(rng: &mut Rng, bytes: &mut Vec<u8>, header: usize, other: &[u8]) {
    let fr = frames(bytes, header);
    let n = bytes.len();
    match rng.below(20) {
        0..=2 => byte_op(rng, bytes),
        // A length prefix at a frame boundary.
        3..=4 if !fr.is_empty() => {
            let (at, len) = *rng.pick(&fr);
            let v = interesting_u32(rng, len as u32, n - at - 4);
            bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
        }
        // Truncation: anywhere, or just inside / at the end of an entry.
        5 => bytes.truncate(rng.below(n + 1)),
        6 if !fr.is_empty() => {
            let (at, len) = *rng.pick(&fr);
            bytes.truncate(at + rng.below(len + 5));
        }
        // Extension: random bytes or zeros.
        7 => {
            let k = 1 + rng.below(64);
            let zero = rng.one_in(2);
            bytes.extend((0..k).map(|_| if zero { 0 } else { rng.next_u64() as u8 }));
        }
        // Splice: a chunk of another image, inserted or overwriting.
        8..=9 if !other.is_empty() => {
            let from = rng.below(other.len());
            let len = 1 + rng.below((other.len() - from).min(256));
            let chunk = &other[from..from + len];
            let at = rng.below(n + 1);
            if rng.one_in(2) {
                bytes.splice(at..at, chunk.iter().copied());
            } else {
                let end = (at + len).min(n);
                bytes.splice(at..end, chunk.iter().copied());
            }
        }
        // An entry duplicated, dropped, or moved to the end.
        10 if !fr.is_empty() => {
            let (at, len) = *rng.pick(&fr);
            let entry = bytes[at..at + 4 + len].to_vec();
            match rng.below(3) {
                0 => {
                    bytes.splice(at..at, entry);
                }
                1 => {
                    bytes.drain(at..at + 4 + len);
                }
                _ => bytes.extend_from_slice(&entry),
            }
        }
        // A whole entry of another image appended (another type's entry in this file).
        11 => {
            let ofr = frames(other, 8.min(other.len()));
            if let Some(&(at, len)) = ofr.get(rng.below(ofr.len().max(1))) {
                bytes.extend_from_slice(&other[at..at + 4 + len]);
            }
        }
        // A protobuf field inside an entry, with the entry's length fixed up.
        _ if !fr.is_empty() => {
            let (at, len) = *rng.pick(&fr);
            let body = &bytes[at + 4..at + 4 + len];
            if let Some(new) = edit_message(rng, body, 0) {
                let mut framed = (new.len() as u32).to_le_bytes().to_vec();
                framed.extend_from_slice(&new);
                bytes.splice(at..at + 4 + len, framed);
            }
        }
        _ => byte_op(rng, bytes),
    }
}

/// Mutants are cut to this size (repeated fields can grow them fast).
pub const MAX_MUTANT: usize = 256 << 10;

/// 1 to 4 mutations of `original`.
pub fn mutant(rng: &mut Rng, original: &[u8], header: usize, other: &[u8]) -> Vec<u8> {
    let mut bytes = original.to_vec();
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        mutate_once(rng, &mut bytes, header, other);
        bytes.truncate(MAX_MUTANT);
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_and_varints() {
        let mut b = Vec::new();
        put_varint(&mut b, 8); // field 1, varint
        put_varint(&mut b, 300);
        b.extend_from_slice(&[0x12, 2, 8, 1]); // field 2, embedded {1: 1}
        let fs = fields(&b).expect("a message");
        assert_eq!(fs.len(), 2);
        assert_eq!((fs[0].key, fs[1].key), (8, 0x12));
        assert_eq!(fields(&[0x08]).map(|f| f.len()), None);
        let mut rng = Rng::new(1);
        for _ in 0..1000 {
            let e = edit_message(&mut rng, &b, 0).expect("edited");
            assert!(e.len() < 4096);
        }
    }

    #[test]
    fn same_seed_same_mutants() {
        let img = [0x19, 0x43, 0x56, 0x54, 1, 2, 3, 4, 2, 0, 0, 0, 8, 5];
        let a: Vec<Vec<u8>> = (0..100)
            .map(|i| mutant(&mut Rng::new(i), &img, 8, &img))
            .collect();
        let b: Vec<Vec<u8>> = (0..100)
            .map(|i| mutant(&mut Rng::new(i), &img, 8, &img))
            .collect();
        assert_eq!(a, b);
        assert!(a.iter().any(|m| m.as_slice() != img));
    }
}
