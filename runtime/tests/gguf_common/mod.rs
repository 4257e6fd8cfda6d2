//! Shared helpers for the GGUF tests: a raw byte-level GGUF generator that
//! can express malformed files (tern's own writer refuses to), a seeded PRNG,
//! a small SHA-256, and unique temp directories.
//!
//! Not every test file uses every helper.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

// ---- value type ids, as on disk ---------------------------------------------
pub const T_U8: u32 = 0;
pub const T_I8: u32 = 1;
pub const T_U16: u32 = 2;
pub const T_I16: u32 = 3;
pub const T_U32: u32 = 4;
pub const T_I32: u32 = 5;
pub const T_F32: u32 = 6;
pub const T_BOOL: u32 = 7;
pub const T_STRING: u32 = 8;
pub const T_ARRAY: u32 = 9;
pub const T_U64: u32 = 10;
pub const T_I64: u32 = 11;
pub const T_F64: u32 = 12;

// ---- GGML tensor type ids -----------------------------------------------------
pub const G_F32: u32 = 0;
pub const G_F16: u32 = 1;
pub const G_Q4_0: u32 = 2;
pub const G_Q8_0: u32 = 8;
pub const G_Q8_K: u32 = 15;
pub const G_I8: u32 = 24;
pub const G_I64: u32 = 27;

/// Little-endian encoders for hand-built fields.
pub fn u32le(v: u32) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}
pub fn u64le(v: u64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

/// A GGUF string: u64 length then bytes.
pub fn gstr(s: &[u8]) -> Vec<u8> {
    let mut v = u64le(s.len() as u64);
    v.extend_from_slice(s);
    v
}

/// One encoded KV: key, type id, payload (already encoded).
pub fn kv(key: &[u8], type_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = gstr(key);
    v.extend(u32le(type_id));
    v.extend_from_slice(payload);
    v
}

pub fn kv_u32(key: &str, x: u32) -> Vec<u8> {
    kv(key.as_bytes(), T_U32, &u32le(x))
}

pub fn kv_str(key: &str, s: &str) -> Vec<u8> {
    kv(key.as_bytes(), T_STRING, &gstr(s.as_bytes()))
}

/// An array KV: element type, count, then the element bytes as given.
pub fn kv_arr(key: &str, elem: u32, count: u64, elems: &[u8]) -> Vec<u8> {
    let mut p = u32le(elem);
    p.extend(u64le(count));
    p.extend_from_slice(elems);
    kv(key.as_bytes(), T_ARRAY, &p)
}

/// One tensor info as it will be encoded.
#[derive(Clone, Debug)]
pub struct TensorSpec {
    pub name: Vec<u8>,
    /// Encoded n_dims (may disagree with `dims.len()` on purpose).
    pub n_dims: u32,
    pub dims: Vec<u64>,
    pub ty: u32,
    pub offset: u64,
}

impl TensorSpec {
    pub fn new(name: &str, ty: u32, dims: &[u64]) -> TensorSpec {
        TensorSpec {
            name: name.as_bytes().to_vec(),
            n_dims: dims.len() as u32,
            dims: dims.to_vec(),
            ty,
            offset: 0,
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut v = gstr(&self.name);
        v.extend(u32le(self.n_dims));
        for d in &self.dims {
            v.extend(u64le(*d));
        }
        v.extend(u32le(self.ty));
        v.extend(u64le(self.offset));
        v
    }
}

/// (block size, bytes per block) for the few types the generator sizes.
fn layout(ty: u32) -> (u64, u64) {
    match ty {
        G_F32 => (1, 4),
        G_F16 => (1, 2),
        G_Q4_0 => (32, 18),
        G_Q8_0 => (32, 34),
        G_I8 => (1, 1),
        _ => (1, 1),
    }
}

/// A GGUF described field by field; every field can be set to something
/// invalid. `valid()` gives a small correct file to mutate.
#[derive(Clone, Debug)]
pub struct FileSpec {
    pub magic: [u8; 4],
    pub version: u32,
    /// Encoded counts; `None` = the real number of entries.
    pub n_tensors: Option<u64>,
    pub n_kv: Option<u64>,
    pub kvs: Vec<Vec<u8>>,
    pub tensors: Vec<TensorSpec>,
    /// Alignment used to pad before the data section.
    pub align: u64,
    /// Bytes of data written after the padding (`None`: exactly what the
    /// tensors need, padded).
    pub data_len: Option<u64>,
}

impl FileSpec {
    /// A header with no KVs and no tensors.
    pub fn empty() -> FileSpec {
        FileSpec {
            magic: *b"GGUF",
            version: 3,
            n_tensors: None,
            n_kv: None,
            kvs: Vec::new(),
            tensors: Vec::new(),
            align: 32,
            data_len: None,
        }
    }

    /// Two KVs and two tensors (F32 [4] = 16 bytes, Q8_0 [32, 2] = 68 bytes),
    /// with correct offsets.
    pub fn valid() -> FileSpec {
        let mut f = FileSpec::empty();
        f.kvs.push(kv_str("general.architecture", "llama"));
        f.kvs.push(kv_u32("llama.block_count", 1));
        f.tensors
            .push(TensorSpec::new("token_embd.weight", G_F32, &[4]));
        f.tensors
            .push(TensorSpec::new("blk.0.attn_q.weight", G_Q8_0, &[32, 2]));
        f.fix_offsets();
        f
    }

    /// Size in bytes of tensor `t` for the generator's few types.
    pub fn size_of(t: &TensorSpec) -> u64 {
        let (bs, ts) = layout(t.ty);
        // Wrapping: the generator is also used to describe absurd shapes.
        let n = t.dims.iter().fold(1u64, |a, &d| a.wrapping_mul(d));
        (n / bs).wrapping_mul(ts)
    }

    fn pad(x: u64, a: u64) -> u64 {
        x.div_ceil(a).wrapping_mul(a)
    }

    /// Set each tensor's offset to the running sum of padded sizes.
    pub fn fix_offsets(&mut self) {
        let mut off = 0;
        let a = self.align;
        for t in &mut self.tensors {
            t.offset = off;
            off = off.wrapping_add(FileSpec::pad(FileSpec::size_of(t), a));
        }
    }

    /// Bytes of the header, KVs and tensor infos, before padding.
    pub fn header_bytes(&self) -> Vec<u8> {
        let mut b = self.magic.to_vec();
        b.extend(u32le(self.version));
        b.extend(u64le(self.n_tensors.unwrap_or(self.tensors.len() as u64)));
        b.extend(u64le(self.n_kv.unwrap_or(self.kvs.len() as u64)));
        for k in &self.kvs {
            b.extend_from_slice(k);
        }
        for t in &self.tensors {
            b.extend(t.encode());
        }
        b
    }

    /// Offset of the data section.
    pub fn data_offset(&self) -> u64 {
        FileSpec::pad(self.header_bytes().len() as u64, self.align)
    }

    /// The whole file. Data bytes are a recognisable pattern, not zeros.
    pub fn build(&self) -> Vec<u8> {
        let mut b = self.header_bytes();
        let padded = FileSpec::pad(b.len() as u64, self.align) as usize;
        b.resize(padded, 0);
        let data_len = self.data_len.unwrap_or_else(|| {
            self.tensors
                .iter()
                .map(|t| FileSpec::pad(FileSpec::size_of(t), self.align))
                .sum()
        });
        b.extend((0..data_len).map(|i| (i % 251) as u8));
        b
    }
}

/// splitmix64: a tiny, seeded, good-enough PRNG for tests.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
    pub fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
}

/// A fresh, unique directory under the system temp dir. Removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let p = std::env::temp_dir().join(format!("tern-{tag}-{}-{nanos}-{n}", std::process::id()));
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// SHA-256 (FIPS 180-4), enough to check fixture tensor digests without a
/// new dependency.
pub fn sha256_hex(data: &[u8]) -> String {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in msg.chunks_exact(64) {
        let mut w = [0u32; 64];
        for (i, c) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *x = x.wrapping_add(y);
        }
    }
    h.iter().map(|x| format!("{x:08x}")).collect()
}

#[test]
fn sha256_known_answers() {
    assert_eq!(
        sha256_hex(b""),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(
        sha256_hex(b"abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    let long = vec![b'a'; 1000];
    assert_eq!(
        sha256_hex(&long),
        "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3"
    );
}
