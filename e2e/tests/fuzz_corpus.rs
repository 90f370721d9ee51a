//! The `fuzz/` targets on stable: each target's body (a plain library function that checks
//! properties) runs over its committed corpus (`fuzz/corpus/<target>/`) and then over
//! deterministic seeded mutations of it (bit flips, interesting bytes, truncations, inserts,
//! splices, duplications, deep nesting) for a bounded time: `FUZZ_SECS` per target (default 10),
//! `FUZZ_SEED` to vary the run. cargo-fuzz (`cargo +nightly fuzz run <target>`) runs the same
//! bodies with coverage guidance.
//!
//! A failure writes the input to `target/fuzz-failures/<target>/` and names it; add it to the
//! corpus with the fix, as a regression entry.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = corpus_dir(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .collect();
    files.sort();
    let seeds: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(f).expect("corpus file"))
        .collect();
    assert!(seeds.len() >= 5, "{target}: a corpus of at least 5 seeds");
    seeds
}

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// Bytes that change the meaning of JSON, SSE, YAML, globs and tokens.
const INTERESTING: &[u8] = b"\0\xff\x7f\"{}[]:,\n\r\\*?!^-.=_ #&|>'\t";

/// One to four mutations of `seed`, now and then spliced with `other`.
fn mutate(rng: &mut Rng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = seed.to_vec();
    for _ in 0..=rng.below(4) {
        let len = out.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                out[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                out[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 => out.truncate(rng.below(len + 1)),
            3 => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n)
                    .map(|_| {
                        if rng.below(2) == 0 {
                            INTERESTING[rng.below(INTERESTING.len())]
                        } else {
                            rng.next() as u8
                        }
                    })
                    .collect();
                out.splice(at..at, bytes);
            }
            4 => {
                // Splice: a prefix of this one, a suffix of another.
                let cut = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                out.truncate(cut);
                out.extend_from_slice(&other[from..]);
            }
            5 if len > 0 => {
                // Duplicate a range (repetition finds quadratic paths).
                let a = rng.below(len);
                let b = (a + 1 + rng.below(64)).min(len);
                let piece = out[a..b].to_vec();
                let times = 1 + rng.below(16);
                for _ in 0..times {
                    out.splice(b..b, piece.iter().copied());
                }
            }
            6 => {
                // Nesting: wrap in brackets many levels deep.
                let depth = 1 + rng.below(300);
                let (open, close): (&[u8], &[u8]) = match rng.below(3) {
                    0 => (b"[", b"]"),
                    1 => (b"{\"a\":", b"}"),
                    _ => (b"- ", b""),
                };
                let mut wrapped = open.repeat(depth);
                wrapped.extend_from_slice(&out);
                wrapped.extend_from_slice(&close.repeat(depth));
                out = wrapped;
            }
            7 if len > 1 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(16)).min(len);
                out.drain(a..b);
            }
            _ => {
                let at = rng.below(len + 1);
                out.splice(at..at, std::iter::once(b'\n'));
            }
        }
    }
    out.truncate(64 * 1024);
    out
}

fn secs() -> Duration {
    let s = std::env::var("FUZZ_SECS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(10.0);
    Duration::from_secs_f64(s.max(0.0))
}

fn seed() -> u64 {
    std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_f00d_cafe_b0ba)
}

/// Runs `body` on one input; a panic saves the input and fails the test naming it.
fn check(target: &str, body: fn(&[u8]), input: &[u8], what: &str) {
    if catch_unwind(AssertUnwindSafe(|| body(input))).is_ok() {
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/fuzz-failures")
        .join(target);
    let _ = std::fs::create_dir_all(&dir);
    let name = format!("{:016x}", fnv(input));
    let path = dir.join(&name);
    let _ = std::fs::write(&path, input);
    let shown: String = String::from_utf8_lossy(&input[..input.len().min(400)]).into_owned();
    panic!(
        "{target}: a property failed on {what}; input saved to {} ({} bytes): {shown:?}",
        path.display(),
        input.len()
    );
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// The corpus, then seeded mutations until the time is up; prints what ran.
fn run(target: &str, body: fn(&[u8])) {
    let seeds = corpus(target);
    for (i, s) in seeds.iter().enumerate() {
        check(target, body, s, &format!("corpus entry {i}"));
    }
    let mut rng = Rng(seed() ^ fnv(target.as_bytes()) | 1);
    let until = Instant::now() + secs();
    let mut runs = 0u64;
    // Mutations pile up on a few recent inputs too, so deeper changes are reached.
    let mut pool = seeds.clone();
    while Instant::now() < until {
        for _ in 0..64 {
            let a = &pool[rng.below(pool.len())];
            let b = &seeds[rng.below(seeds.len())];
            let input = mutate(&mut rng, a, b);
            check(target, body, &input, &format!("mutation {runs}"));
            runs += 1;
            if rng.below(16) == 0 {
                if pool.len() >= seeds.len() + 64 {
                    pool.truncate(seeds.len());
                }
                pool.push(input);
            }
        }
    }
    println!(
        "fuzz {target}: {} corpus entries, {runs} mutations",
        seeds.len()
    );
}

#[test]
fn fuzz_jsonrpc() {
    run("jsonrpc", reflow_dataplane::fuzzing::jsonrpc);
}

#[test]
fn fuzz_sse() {
    run("sse", reflow_dataplane::fuzzing::sse);
}

#[test]
fn fuzz_jwt() {
    run("jwt", reflow_dataplane::fuzzing::jwt);
}

#[test]
fn fuzz_glob() {
    run("glob", reflow_crds::fuzzing::glob);
}

#[test]
fn fuzz_manifests() {
    run("manifests", reflow_crds::fuzzing::manifests);
}

/// The corpora reach the deep paths: a seed token verifies, seed manifests load and compile.
#[test]
fn fuzz_corpora_reach_the_accepting_paths() {
    let token = std::fs::read_to_string(corpus_dir("jwt").join("valid_hs256.txt")).expect("seed");
    let (signed, signature) = token.rsplit_once('.').expect("three parts");
    let mac = reflow_dataplane::fuzzing::hmac_sha256(
        reflow_dataplane::fuzzing::JWT_SECRET.as_bytes(),
        signed.as_bytes(),
    );
    let again = reflow_dataplane::fuzzing::signed_token(&serde_json::json!({"sub": "x"}));
    assert_eq!(again.split('.').count(), 3);
    use base64::Engine;
    assert_eq!(
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(signature)
            .expect("base64url"),
        mac,
        "the seed is signed with the target's key"
    );
    for name in ["target_policy.yaml", "credential.yaml", "stdio.yaml"] {
        let text = std::fs::read_to_string(corpus_dir("manifests").join(name)).expect("seed");
        let mut loaded = reflow_crds::loader::Loaded::default();
        reflow_crds::loader::load_str(Path::new(name), &text, &mut loaded)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let key = reflow_crds::SealingKey::from_bytes(&[7; 32]);
        let compiled = reflow_crds::compile(&loaded.inputs, &key).expect("compiles");
        assert!(!compiled.snapshot.targets().is_empty(), "{name}");
    }
}
