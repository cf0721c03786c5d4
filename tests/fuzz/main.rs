//! stasis-fuzz: fuzzes the image reader, the engine's image decoders and the loader with
//! mutants of real images, on stable Rust. See docs/fuzzing.md.
//!
//! ```text
//! cargo run --profile fuzz -p stasis-tests --bin stasis-fuzz -- --iterations 3000000
//! ```

mod make_corpus;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use stasis_tests::fuzz::{self, alloc::BudgetAlloc, corpus::Corpus, Config};

#[global_allocator]
static ALLOC: BudgetAlloc = BudgetAlloc;

const USAGE: &str = "usage: stasis-fuzz [--iterations N] [--seed S] [--time SECONDS] \
[--corpus DIR] [--crash-dir DIR] [--load-every N] [--max-failures N] [--progress N] [--stats]
       stasis-fuzz --seed S --save-only ITERATION [--crash-dir DIR]   (write that input, run nothing)
       stasis-fuzz --make-corpus DIR                                  (dump the workloads; root)";

struct Args {
    cfg: Config,
    corpus: PathBuf,
    save_only: Option<u64>,
    make_corpus: Option<PathBuf>,
    stats: bool,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        cfg: Config {
            iterations: 1_000_000,
            progress_every: 100_000,
            ..Config::default()
        },
        corpus: Corpus::default_dir(),
        save_only: None,
        make_corpus: None,
        stats: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Err(String::new());
        }
        if flag == "--stats" {
            a.stats = true;
            continue;
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = || -> Result<u64, String> {
            value
                .parse()
                .map_err(|_| format!("{flag}: not a number: {value}"))
        };
        match flag.as_str() {
            "--iterations" => a.cfg.iterations = num()?,
            "--seed" => a.cfg.seed = num()?,
            "--time" => a.cfg.time = Some(Duration::from_secs(num()?)),
            "--load-every" => a.cfg.load_every = num()?,
            "--max-failures" => a.cfg.max_failures = num()? as usize,
            "--progress" => a.cfg.progress_every = num()?,
            "--save-only" => a.save_only = Some(num()?),
            "--corpus" => a.corpus = value.into(),
            "--crash-dir" => a.cfg.crash_dir = value.into(),
            "--make-corpus" => a.make_corpus = Some(value.into()),
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    Ok(a)
}

fn main() -> ExitCode {
    let a = match parse() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("stasis-fuzz: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    if let Some(out) = &a.make_corpus {
        return match make_corpus::make_corpus(out) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("stasis-fuzz: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let corpus = match Corpus::load(&a.corpus) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("stasis-fuzz: corpus {}: {e}", a.corpus.display());
            return ExitCode::FAILURE;
        }
    };
    if let Some(iteration) = a.save_only {
        let c = fuzz::case(&corpus, &corpus.pairs(), a.cfg.seed, iteration);
        let img = &corpus.dumps[c.dump].images[c.image];
        let path = a.cfg.crash_dir.join(format!(
            "input-{}-{iteration}-{}-{}",
            a.cfg.seed, corpus.dumps[c.dump].name, img.name
        ));
        let written = std::fs::create_dir_all(&a.cfg.crash_dir)
            .and_then(|()| std::fs::write(&path, &c.bytes));
        return match written {
            Ok(()) => {
                println!(
                    "{} (mutant of {}/{}{})",
                    path.display(),
                    corpus.dumps[c.dump].name,
                    img.name,
                    if c.removed {
                        "; removed for the loader"
                    } else {
                        ""
                    }
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("stasis-fuzz: {}: {e}", path.display());
                ExitCode::FAILURE
            }
        };
    }
    let images: usize = corpus.dumps.iter().map(|d| d.images.len()).sum();
    eprintln!(
        "stasis-fuzz: seed {}, {} dumps, {images} images, up to {} inputs",
        a.cfg.seed,
        corpus.dumps.len(),
        a.cfg.iterations
    );
    let report = fuzz::run(&corpus, &a.cfg);
    println!("stasis-fuzz: {}", report.summary());
    if a.stats {
        println!("what the loader made of its inputs:");
        for (outcome, n) in &report.outcomes {
            println!("{n:>9}  {outcome}");
        }
    }
    if report.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
