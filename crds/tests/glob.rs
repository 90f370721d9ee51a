//! Differential test of the glob matcher (with its literal prefix/suffix shortcuts and the byte
//! mask prefilter) against a plain recursive matcher, on random patterns and names that include
//! multi-byte characters.

use reflow_crds::glob::{Glob, byte_mask};

#[derive(Clone, Debug)]
enum Tok {
    Lit(char),
    One,
    Star,
    Class(bool, Vec<(char, char)>),
}

fn render(toks: &[Tok]) -> String {
    let mut s = String::new();
    for t in toks {
        match t {
            Tok::Lit(c) if matches!(c, '*' | '?' | '[' | '\\') => {
                s.push('\\');
                s.push(*c);
            }
            Tok::Lit(c) => s.push(*c),
            Tok::One => s.push('?'),
            Tok::Star => s.push('*'),
            Tok::Class(neg, ranges) => {
                s.push('[');
                if *neg {
                    s.push('!');
                }
                for (lo, hi) in ranges {
                    s.push(*lo);
                    if lo != hi {
                        s.push('-');
                        s.push(*hi);
                    }
                }
                s.push(']');
            }
        }
    }
    s
}

fn reference(toks: &[Tok], name: &[char]) -> bool {
    match toks.split_first() {
        None => name.is_empty(),
        Some((Tok::Star, rest)) => (0..=name.len()).any(|i| reference(rest, &name[i..])),
        Some((t, rest)) => match name.split_first() {
            None => false,
            Some((c, tail)) => {
                let ok = match t {
                    Tok::Lit(l) => l == c,
                    Tok::One => true,
                    Tok::Class(neg, ranges) => {
                        ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(c)) != *neg
                    }
                    Tok::Star => unreachable!(),
                };
                ok && reference(rest, tail)
            }
        },
    }
}

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

const ALPHABET: [char; 6] = ['a', 'b', 'c', '_', 'é', '*'];

#[test]
fn matcher_agrees_with_a_reference_on_random_patterns() {
    let mut r = Rng(0xDEAD_BEEF_CAFE_F00D);
    let (mut matched, mut total) = (0, 0);
    for _ in 0..3_000 {
        let toks: Vec<Tok> = (0..1 + r.below(6))
            .map(|_| match r.below(10) {
                0..=4 => Tok::Lit(ALPHABET[r.below(6) as usize]),
                5 => Tok::One,
                6..=7 => Tok::Star,
                8 => Tok::Class(false, vec![('a', 'b')]),
                _ => Tok::Class(true, vec![('b', 'b'), ('é', 'é')]),
            })
            .collect();
        let pattern = render(&toks);
        let glob = Glob::new(&pattern).unwrap_or_else(|e| panic!("{pattern:?}: {e}"));
        for _ in 0..20 {
            let name: Vec<char> = (0..r.below(8))
                .map(|_| ALPHABET[r.below(6) as usize])
                .collect();
            let text: String = name.iter().collect();
            let want = reference(&toks, &name);
            assert_eq!(
                glob.matches(&text),
                want,
                "pattern {pattern:?} name {text:?}"
            );
            if want {
                assert!(
                    glob.may_match(byte_mask(&text)),
                    "mask rules out {pattern:?} {text:?}"
                );
            }
            total += 1;
            matched += usize::from(want);
        }
    }
    assert!(
        matched > total / 20 && matched < total / 2,
        "{matched}/{total}"
    );
}
