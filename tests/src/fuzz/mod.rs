//! A fuzzer for the image decoders and the loader that runs on stable Rust: deterministic
//! mutants of real images (the corpus), each fed to every decoder under catch_unwind and an
//! allocation budget. Used by the `stasis-fuzz` binary (long runs) and by `tests/fuzz.rs`
//! (a short pass in the test command). See docs/fuzzing.md.

pub mod alloc;
pub mod corpus;
pub mod mutate;
pub mod targets;

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use corpus::Corpus;
use mutate::Rng;

/// The largest single allocation a decoder may make for an input of `len` bytes.
pub fn budget(len: usize) -> usize {
    64 * len + (1 << 20)
}

/// One run.
#[derive(Clone, Debug)]
pub struct Config {
    pub seed: u64,
    pub iterations: u64,
    /// Stop early after this long.
    pub time: Option<Duration>,
    /// One input in `load_every` is also loaded as part of a whole dump directory (0: never).
    pub load_every: u64,
    /// Where failing inputs are saved.
    pub crash_dir: PathBuf,
    /// Where the dump directories for the loader are made (/dev/shm when it exists).
    pub scratch: PathBuf,
    /// Stop after this many failures.
    pub max_failures: usize,
    /// Print progress every this many inputs (0: never).
    pub progress_every: u64,
}

impl Default for Config {
    fn default() -> Config {
        let shm = PathBuf::from("/dev/shm");
        Config {
            seed: 1,
            iterations: 100_000,
            time: None,
            load_every: 16,
            crash_dir: PathBuf::from("fuzz-crashes"),
            scratch: if shm.is_dir() {
                shm
            } else {
                std::env::temp_dir()
            },
            max_failures: 10,
            progress_every: 0,
        }
    }
}

/// A panic or an allocation over the budget, with the input that caused it.
#[derive(Debug)]
pub struct Failure {
    pub iteration: u64,
    pub what: String,
    pub saved: Option<PathBuf>,
}

/// What a run did.
#[derive(Debug, Default)]
pub struct Report {
    /// Mutants decoded in memory.
    pub inputs: u64,
    /// Of those, also loaded as part of a dump directory.
    pub loads: u64,
    /// Bytes of all inputs.
    pub input_bytes: u64,
    pub elapsed: Duration,
    pub failures: Vec<Failure>,
    /// The largest single allocation seen relative to its input: (allocation, input length).
    pub worst_ratio: (usize, usize),
    /// What the loader made of its inputs ("loaded", or the error and the image it names),
    /// and how often.
    pub outcomes: std::collections::BTreeMap<String, u64>,
}

impl Report {
    pub fn summary(&self) -> String {
        let (a, n) = self.worst_ratio;
        format!(
            "{} inputs ({} also through load, {} MiB in all) in {:.1}s, {} failures; largest \
             single allocation {a} bytes for a {n}-byte input (budget 64 x input + 1 MiB)",
            self.inputs,
            self.loads,
            self.input_bytes >> 20,
            self.elapsed.as_secs_f64(),
            self.failures.len()
        )
    }
}

/// One input: which image of the corpus it mutates, and how.
pub struct Case {
    pub dump: usize,
    pub image: usize,
    pub bytes: Vec<u8>,
    /// Removed instead of mutated (the loader's "missing image" paths).
    pub removed: bool,
    pub rng: Rng,
}

/// The input of `iteration`: a function of the seed, the iteration and the corpus alone.
pub fn case(corpus: &Corpus, pairs: &[(usize, usize)], seed: u64, iteration: u64) -> Case {
    let mut rng = Rng::new(seed.rotate_left(32) ^ iteration);
    let (dump, image) = pairs[rng.below(pairs.len())];
    let img = &corpus.dumps[dump].images[image];
    let (od, oi) = pairs[rng.below(pairs.len())];
    let other = &corpus.dumps[od].images[oi].bytes;
    let bytes = mutate::mutant(&mut rng, &img.bytes, img.header, other);
    let removed = rng.one_in(200);
    Case {
        dump,
        image,
        bytes,
        removed,
        rng,
    }
}

static PANIC: Mutex<Option<String>> = Mutex::new(None);

fn take_panic() -> String {
    PANIC
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .unwrap_or_else(|| "panic".into())
}

/// Runs the fuzzer over `corpus`. Panics if [`alloc::BudgetAlloc`] is not the global
/// allocator (the budget would not be checked).
pub fn run(corpus: &Corpus, cfg: &Config) -> Report {
    assert!(
        alloc::installed(),
        "the fuzz harness needs `#[global_allocator] static A: BudgetAlloc = BudgetAlloc;`"
    );
    let pairs = corpus.pairs();
    let bed = (cfg.load_every > 0).then(|| {
        targets::LoadBed::new(corpus, &cfg.scratch).expect("dump directories for the loader")
    });
    // Panics of this thread (the inputs') are kept for the report, not printed; other
    // threads' (other tests) go to the hook there was.
    let hook = std::sync::Arc::new(std::panic::take_hook());
    let (me, prev) = (std::thread::current().id(), hook.clone());
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().id() == me {
            *PANIC.lock().unwrap_or_else(|e| e.into_inner()) = Some(info.to_string());
        } else {
            prev(info);
        }
    }));
    let start = Instant::now();
    let mut report = Report::default();
    for iteration in 0..cfg.iterations {
        if cfg.time.is_some_and(|t| start.elapsed() >= t)
            || report.failures.len() >= cfg.max_failures
        {
            break;
        }
        if cfg.progress_every > 0 && iteration > 0 && iteration % cfg.progress_every == 0 {
            eprintln!(
                "stasis-fuzz: {iteration} inputs, {:.0}s, {} failures",
                start.elapsed().as_secs_f64(),
                report.failures.len()
            );
        }
        let load = bed
            .as_ref()
            .filter(|_| iteration % cfg.load_every == cfg.load_every - 1);
        one(corpus, &pairs, cfg, iteration, load, &mut report);
    }
    report.elapsed = start.elapsed();
    std::panic::set_hook(Box::new(move |info| hook(info)));
    report
}

/// One input through every decoder (and the loader when `load` is given).
fn one(
    corpus: &Corpus,
    pairs: &[(usize, usize)],
    cfg: &Config,
    iteration: u64,
    load: Option<&targets::LoadBed>,
    report: &mut Report,
) {
    let mut c = case(corpus, pairs, cfg.seed, iteration);
    let img = &corpus.dumps[c.dump].images[c.image];
    report.inputs += 1;
    report.input_bytes += c.bytes.len() as u64;
    report.loads += u64::from(load.is_some());
    let mut check = |what: &str, len: usize, f: &mut dyn FnMut()| {
        let (out, usage) = alloc::with_budget(budget(len), cfg.seed, iteration, || {
            std::panic::catch_unwind(AssertUnwindSafe(&mut *f))
        });
        let (worst, worst_len) = report.worst_ratio;
        if usage.largest as u128 * worst_len.max(1) as u128 > worst as u128 * len.max(1) as u128 {
            report.worst_ratio = (usage.largest, len);
        }
        let problem = match (out, usage.over) {
            (Err(_), _) => Some(format!("{what}: {}", take_panic())),
            (Ok(()), Some(size)) => Some(format!(
                "{what}: an allocation of {size} bytes for {len} bytes of input (budget {})",
                budget(len)
            )),
            (Ok(()), None) => None,
        };
        if let Some(what) = problem {
            let name = format!("{}-{}", corpus.dumps[c.dump].name, img.name);
            report
                .failures
                .push(failure(cfg, iteration, &name, &c.bytes, what));
        }
    };
    let bytes = c.bytes.clone();
    let rng = &mut c.rng;
    check("decode", bytes.len(), &mut || {
        targets::decode_mutant(img, &bytes, rng)
    });
    if let Some(bed) = load {
        let dump = &corpus.dumps[c.dump];
        let len = dump.bytes() - img.bytes.len() + bytes.len();
        let mutant = (!c.removed).then_some(bytes.as_slice());
        let mut outcome = None;
        check("load", len, &mut || {
            outcome = Some(
                bed.load_with(corpus, c.dump, c.image, mutant)
                    .expect("writing the dump directory"),
            );
        });
        let outcome = outcome.unwrap_or_else(|| "panicked".into());
        *report.outcomes.entry(outcome).or_default() += 1;
    }
}

fn failure(cfg: &Config, iteration: u64, image: &str, bytes: &[u8], what: String) -> Failure {
    let what = format!("seed {} iteration {iteration} ({image}): {what}", cfg.seed);
    let path = cfg
        .crash_dir
        .join(format!("crash-{}-{iteration}-{image}", cfg.seed));
    let saved = std::fs::create_dir_all(&cfg.crash_dir)
        .and_then(|()| std::fs::write(&path, bytes))
        .ok()
        .map(|()| path);
    eprintln!(
        "stasis-fuzz: {what}\n  input saved to {}; rerun: stasis-fuzz --seed {} --save-only {iteration}",
        saved
            .as_ref()
            .map_or("(not saved)".into(), |p| p.display().to_string()),
        cfg.seed
    );
    Failure {
        iteration,
        what,
        saved,
    }
}
