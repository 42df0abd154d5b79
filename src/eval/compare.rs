//! Two evaluations of the same prompts compared prompt by prompt, as
//! `eval --compare` does with two `eval --save` folders.
//!
//! Two models' pass rates on the same 200 prompts can differ by a few
//! points while they pass very different prompts, so the rates alone say
//! little. What counts is the prompts only one of them passes: under the
//! hypothesis that neither model is better, each such prompt is as likely
//! to fall to either side, and the exact two-sided sign test (binomial,
//! p = 1/2) says how surprising the split is.

use std::path::Path;

use serde::Deserialize;

use super::ObjectScore;
use crate::{invalid, Error, Result};

/// One line of `scores.jsonl`, as `eval --save` writes it.
#[derive(Clone, Debug, Deserialize)]
pub struct SavedScore {
    pub index: usize,
    pub prompt: String,
    pub seed: u64,
    pub pass: bool,
    pub objects: Vec<ObjectScore>,
}

/// Reads an `eval --save` folder's `scores.jsonl` (or the file itself).
pub fn read_scores(path: &Path) -> Result<Vec<SavedScore>> {
    let file = if path.is_dir() {
        path.join("scores.jsonl")
    } else {
        path.to_path_buf()
    };
    let text = std::fs::read_to_string(&file).map_err(|e| Error::io(&file, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| {
                Error::Invalid(format!(
                    "{} line {}: not a line of eval --save's scores: {e}",
                    file.display(),
                    i + 1
                ))
            })
        })
        .collect()
}

/// The prompts of one kind (one object, or two) in both evaluations.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Paired {
    /// Objects in each of these prompts.
    pub objects: usize,
    pub prompts: usize,
    pub pass_a: usize,
    pub pass_b: usize,
    /// Prompts that pass in A and fail in B.
    pub only_a: usize,
    pub only_b: usize,
    /// Exact two-sided sign test of `only_a` against `only_b`.
    pub p_value: f64,
}

/// Pairs two evaluations prompt by prompt, per number of objects. Both must
/// hold the same prompts with the same seeds in the same order (two
/// `eval --save` runs with the same `--count` or `--prompts`), else the
/// comparison is refused and the first difference named.
pub fn compare(a: &[SavedScore], b: &[SavedScore]) -> Result<Vec<Paired>> {
    if a.len() != b.len() {
        invalid!(
            "the evaluations scored {} and {} prompts: compare two runs of the same prompts",
            a.len(),
            b.len()
        );
    }
    if let Some((x, y)) = a
        .iter()
        .zip(b)
        .find(|(x, y)| x.prompt != y.prompt || x.seed != y.seed)
    {
        invalid!(
            "prompt {} differs: \"{}\" (seed {}) against \"{}\" (seed {}): compare two runs of the same prompts",
            x.index,
            x.prompt,
            x.seed,
            y.prompt,
            y.seed
        );
    }
    let mut kinds: Vec<usize> = a.iter().map(|s| s.objects.len()).collect();
    kinds.sort_unstable();
    kinds.dedup();
    Ok(kinds
        .into_iter()
        .map(|objects| {
            let pairs: Vec<(bool, bool)> = a
                .iter()
                .zip(b)
                .filter(|(x, _)| x.objects.len() == objects)
                .map(|(x, y)| (x.pass, y.pass))
                .collect();
            let count = |f: fn(&(bool, bool)) -> bool| pairs.iter().filter(|p| f(p)).count();
            let (only_a, only_b) = (count(|&(x, y)| x && !y), count(|&(x, y)| y && !x));
            Paired {
                objects,
                prompts: pairs.len(),
                pass_a: count(|p| p.0),
                pass_b: count(|p| p.1),
                only_a,
                only_b,
                p_value: sign_test(only_a, only_b),
            }
        })
        .collect())
}

/// The exact two-sided sign test: the probability, were each of the
/// `a + b` discordant prompts a fair coin, of a split at least as uneven as
/// `a` to `b` (twice the smaller tail, at most 1).
pub fn sign_test(a: usize, b: usize) -> f64 {
    let n = a + b;
    let m = a.min(b);
    // binomial probabilities in logs, so that no term underflows on the way
    let mut log_pmf = n as f64 * 0.5f64.ln();
    let mut tail = 0.0;
    for i in 0..=m {
        tail += log_pmf.exp();
        log_pmf += ((n - i) as f64).ln() - ((i + 1) as f64).ln();
    }
    (2.0 * tail).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against exact values (Python's `math.comb`, summed exactly).
    #[test]
    fn the_sign_test_matches_exact_binomial_tails() {
        for (a, b, p) in [
            (28, 34, 0.5257733601756501),
            (11, 14, 0.6900379657745361),
            (0, 10, 0.001953125),
            (5, 5, 1.0),
            (150, 250, 6.531819212838427e-07),
        ] {
            let got = sign_test(a, b);
            assert!(
                (got - p).abs() <= 1e-9 * p.max(1e-300),
                "{a} vs {b}: {got} != {p}"
            );
            assert_eq!(got, sign_test(b, a));
        }
        assert_eq!(sign_test(0, 0), 1.0);
    }

    fn saved(index: usize, prompt: &str, pass: bool, objects: usize) -> SavedScore {
        let ok = ObjectScore {
            colour: true,
            shape: pass,
            size: true,
            motion: true,
        };
        SavedScore {
            index,
            prompt: prompt.into(),
            seed: 1000 + index as u64,
            pass,
            objects: vec![ok; objects],
        }
    }

    #[test]
    fn prompts_are_paired_by_kind_and_other_prompts_refused() {
        let one = "a red circle growing";
        let two = "a red circle growing and a blue square shrinking";
        let a = [
            saved(0, one, true, 1),
            saved(1, one, true, 1),
            saved(2, two, false, 2),
            saved(3, two, true, 2),
            saved(4, two, false, 2),
        ];
        let b = [
            saved(0, one, false, 1),
            saved(1, one, true, 1),
            saved(2, two, true, 2),
            saved(3, two, true, 2),
            saved(4, two, true, 2),
        ];
        let paired = compare(&a, &b).unwrap();
        assert_eq!(paired.len(), 2);
        let (p1, p2) = (&paired[0], &paired[1]);
        assert_eq!(
            (p1.objects, p1.prompts, p1.pass_a, p1.pass_b, p1.only_a, p1.only_b),
            (1, 2, 2, 1, 1, 0)
        );
        assert_eq!(
            (p2.objects, p2.prompts, p2.pass_a, p2.pass_b, p2.only_a, p2.only_b),
            (2, 3, 1, 3, 0, 2)
        );
        assert_eq!(p2.p_value, 0.5);
        let mut other = b.clone();
        other[3].seed += 1;
        let err = compare(&a, &other).unwrap_err().to_string();
        assert!(err.contains("prompt 3 differs"), "{err}");
        let err = compare(&a, &b[..4]).unwrap_err().to_string();
        assert!(err.contains("5 and 4 prompts"), "{err}");
    }

    #[test]
    fn saved_scores_read_back_and_a_bad_line_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let line = r#"{"clip":"000.gif","index":0,"objects":[{"colour":true,"motion":false,"shape":true,"size":true}],"pass":false,"prompt":"a red circle growing","seed":7}"#;
        std::fs::write(dir.path().join("scores.jsonl"), format!("{line}\n")).unwrap();
        let read = read_scores(dir.path()).unwrap();
        assert_eq!(read.len(), 1);
        assert!(!read[0].objects[0].motion && read[0].seed == 7);
        std::fs::write(
            dir.path().join("scores.jsonl"),
            format!("{line}\nnot json\n"),
        )
        .unwrap();
        let err = read_scores(dir.path()).unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
    }
}
