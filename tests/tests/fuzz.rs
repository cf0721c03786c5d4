//! The short fuzz pass of the test command (no root, no processes): mutants of the committed
//! corpus through the image reader, the engine's decoders and the loader, with a fixed seed.
//! Long runs: the stasis-fuzz binary (docs/fuzzing.md).

use stasis_tests::fuzz::{self, alloc::BudgetAlloc, corpus::Corpus, targets, Config};

#[global_allocator]
static ALLOC: BudgetAlloc = BudgetAlloc;

/// Every dump of the corpus loads as it is: else the mutants would only ever reach the first
/// check that fails, and the corpus wants making again (`stasis-fuzz --make-corpus`).
#[test]
fn corpus_dumps_load_unmutated() {
    let corpus = Corpus::load(&Corpus::default_dir()).expect("tests/fuzz/corpus");
    let dir = stasis_tests::temp_dir("fuzz-corpus");
    let dirs = corpus.materialize(&dir).expect("materialise the corpus");
    for (d, dump) in dirs.iter().zip(&corpus.dumps) {
        if let Err(e) = stasis::restore::load::load(d) {
            panic!("corpus dump {} no longer loads: {e}", dump.name);
        }
        assert_eq!(targets::load_outcome(d), "loaded");
    }
    std::fs::remove_dir_all(&dir).expect("clean up");
}

/// The budget is really checked: an allocation over it is reported (and still served).
#[test]
fn allocations_over_the_budget_are_caught() {
    let (v, usage) = stasis_tests::fuzz::alloc::with_budget(100, 0, 0, || vec![1u8; 1000]);
    assert_eq!(v.len(), 1000);
    assert_eq!(usage.over, Some(1000));
    let (_, usage) = stasis_tests::fuzz::alloc::with_budget(100, 0, 0, || vec![1u8; 50]);
    assert_eq!((usage.over, usage.largest), (None, 50));
}

#[test]
fn decoders_survive_mutants_of_real_images() {
    let corpus = Corpus::load(&Corpus::default_dir()).expect("tests/fuzz/corpus");
    // About 15 s in a debug build (the test command) on 2 cores.
    let iterations = if cfg!(debug_assertions) {
        200_000
    } else {
        2_000_000
    };
    let cfg = Config {
        seed: 0x5eed,
        iterations,
        crash_dir: std::env::temp_dir().join("stasis-fuzz-crashes"),
        ..Config::default()
    };
    let report = fuzz::run(&corpus, &cfg);
    eprintln!("{}", report.summary());
    assert!(
        report.failures.is_empty(),
        "{} failing inputs:\n{}",
        report.failures.len(),
        report
            .failures
            .iter()
            .map(|f| f.what.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(report.inputs, iterations);
}

/// The first finding: a pagemap entry claiming 2^52 pages overflowed the loader's sum of
/// page bytes. Refused now, naming the pagemap, before anything is read or allocated.
#[test]
fn a_pagemap_claiming_exabytes_is_refused() {
    use stasis::images::{magic, pb, ImageKind, ImageReader, ImageWriter};
    let corpus = Corpus::load(&Corpus::default_dir()).expect("tests/fuzz/corpus");
    let dir = stasis_tests::temp_dir("fuzz-pagemap");
    let dirs = corpus.materialize(&dir).expect("materialise the corpus");
    let d = &dirs[corpus
        .dumps
        .iter()
        .position(|d| d.name == "counter")
        .expect("counter")];
    let name = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .find(|n| n.starts_with("pagemap-") && !n.starts_with("pagemap-shmem"))
        .expect("a pagemap");
    for (vaddr, nr_pages) in [
        (None, 1u64 << 52),
        (Some(u64::MAX - 4095), 1),
        (Some(123), 1),
    ] {
        let bytes = std::fs::read(d.join(&name)).unwrap();
        let mut r = ImageReader::new(&name, &bytes, ImageKind::Normal, magic::PAGEMAP).unwrap();
        let head: pb::PagemapHead = r.next_required().unwrap();
        let mut entries: Vec<pb::PagemapEntry> = r.all().unwrap();
        entries[0].nr_pages = Some(nr_pages);
        if let Some(v) = vaddr {
            entries[0].vaddr = v;
        }
        let mut w = ImageWriter::new(ImageKind::Normal, magic::PAGEMAP);
        w.push(&head);
        entries.iter().for_each(|e| w.push(e));
        std::fs::write(d.join(format!("{name}.new")), w.into_bytes()).unwrap();
        std::fs::rename(d.join(format!("{name}.new")), d.join(&name)).unwrap();
        let e = stasis::restore::load::load(d).err().expect("refused");
        assert!(
            e.to_string().starts_with(&format!("{name}: pagemap entry")),
            "{e}"
        );
        std::fs::write(d.join(&name), &bytes).unwrap();
    }
    std::fs::remove_dir_all(&dir).expect("clean up");
}
