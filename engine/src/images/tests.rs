use super::*;
use prost::Message;

fn pstree(pid: u32, ppid: u32, threads: &[u32]) -> pb::PstreeEntry {
    pb::PstreeEntry {
        pid,
        ppid,
        pgid: pid,
        sid: 1,
        threads: threads.to_vec(),
    }
}

fn x86_regs() -> pb::UserX86RegsEntry {
    pb::UserX86RegsEntry {
        r15: 15,
        r14: 14,
        r13: 13,
        r12: 12,
        bp: 0x7ffd_0000_1000,
        bx: 0xb0b0,
        r11: 0x246,
        r10: 10,
        r9: 9,
        r8: 8,
        ax: 0xdead_beef,
        cx: 0xc0c0,
        dx: 0xd0d0,
        si: 0x5151,
        di: 0xd1d1,
        orig_ax: u64::MAX,
        ip: 0x40_1000,
        cs: 0x33,
        flags: 0x246,
        sp: 0x7ffd_0000_0ff8,
        ss: 0x2b,
        fs_base: 0x7f00_1234_5678,
        gs_base: 0,
        ds: 0,
        es: 0,
        fs: 0,
        gs: 0,
        mode: Some(X86_MODE_NATIVE),
    }
}

fn core_entry(comm: &str) -> pb::CoreEntry {
    pb::CoreEntry {
        mtype: pb::core_entry::March::X8664 as i32,
        thread_info: Some(pb::ThreadInfoX86 {
            clear_tid_addr: 0x7f00_0000_0a10,
            gpregs: x86_regs(),
            fpregs: pb::UserX86FpregsEntry {
                cwd: 0x37f,
                mxcsr: 0x1f80,
                st_space: vec![0; 32],
                xmm_space: vec![7; 64],
                ..Default::default()
            },
            tls: vec![],
        }),
        tc: Some(pb::TaskCoreEntry {
            task_state: TASK_ALIVE,
            exit_code: 0,
            personality: 0,
            flags: 0x40_0100,
            blk_sigset: 0,
            comm: comm.to_string(),
            ..Default::default()
        }),
        thread_core: Some(pb::ThreadCoreEntry {
            futex_rla: 0,
            futex_rla_len: 24,
            sched_nice: Some(0),
            sched_policy: Some(0),
            creds: None,
            ..Default::default()
        }),
        ids: Some(pb::TaskKobjIdsEntry {
            vm_id: 1,
            files_id: 2,
            fs_id: 3,
            sighand_id: 4,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn inventory() -> pb::InventoryEntry {
    pb::InventoryEntry {
        img_version: CRTOOLS_IMAGES_V1_1,
        fdinfo_per_id: Some(true),
        root_ids: Some(pb::TaskKobjIdsEntry {
            vm_id: 1,
            files_id: 2,
            fs_id: 3,
            sighand_id: 4,
            ..Default::default()
        }),
        ns_per_id: Some(true),
        lsmtype: Some(pb::Lsmtype::NoLsm as i32),
        ..Default::default()
    }
}

fn stats() -> pb::StatsEntry {
    pb::StatsEntry {
        dump: Some(pb::DumpStatsEntry {
            freezing_time: 1234,
            frozen_time: 5678,
            memdump_time: 91,
            memwrite_time: 23,
            pages_scanned: 4242,
            pages_skipped_parent: 0,
            pages_written: 77,
            pages_lazy: 0,
            ..Default::default()
        }),
        restore: None,
    }
}

/// A Normal image with the given type magic and raw entry bytes appended.
fn image_with(type_magic: u32, tail: &[u8]) -> Vec<u8> {
    let mut w = ImageWriter::new(ImageKind::Normal, type_magic);
    w.push_raw(tail);
    w.into_bytes()
}

#[test]
fn header_layout() {
    let b = ImageWriter::new(ImageKind::Normal, magic::CORE).into_bytes();
    assert_eq!(b, [0x19, 0x43, 0x56, 0x54, 0x47, 0x38, 0x05, 0x55]);
    let b = ImageWriter::new(ImageKind::Inventory, magic::INVENTORY).into_bytes();
    assert_eq!(b, magic::INVENTORY.to_le_bytes());
    let b = ImageWriter::new(ImageKind::Service, magic::STATS).into_bytes();
    assert_eq!(&b[..4], &magic::IMG_SERVICE.to_le_bytes());
    assert_eq!(&b[4..], &magic::STATS.to_le_bytes());
    // Raw images have no header.
    assert!(ImageWriter::new(ImageKind::Normal, magic::PAGES)
        .into_bytes()
        .is_empty());
}

#[test]
fn entry_framing() {
    let e = pstree(1, 0, &[1]);
    let mut w = ImageWriter::new(ImageKind::Normal, magic::PSTREE);
    w.push(&e);
    let b = w.into_bytes();
    let body = e.encode_to_vec();
    assert_eq!(&b[8..12], &(body.len() as u32).to_le_bytes());
    assert_eq!(&b[12..], &body[..]);
}

#[test]
fn round_trip_pstree() {
    let entries = vec![pstree(10, 0, &[10, 11, 12]), pstree(20, 10, &[20])];
    let mut w = ImageWriter::new(ImageKind::Normal, magic::PSTREE);
    for e in &entries {
        w.push(e);
    }
    let bytes = w.into_bytes();
    let mut r = ImageReader::new("pstree.img", &bytes, ImageKind::Normal, magic::PSTREE).unwrap();
    assert_eq!(r.offset(), 8);
    let got: Vec<pb::PstreeEntry> = r.all().unwrap();
    assert_eq!(got, entries);
    assert!(r.is_eof());
    assert_eq!(r.offset(), bytes.len() as u64);
    assert!(r.next::<pb::PstreeEntry>().unwrap().is_none());
}

#[test]
fn round_trip_core_inventory_stats() {
    let core = core_entry("sleeper");
    let mut w = ImageWriter::new(ImageKind::Normal, magic::CORE);
    w.push(&core);
    let bytes = w.into_bytes();
    let mut r = ImageReader::new("core-1.img", &bytes, ImageKind::Normal, magic::CORE).unwrap();
    let got: pb::CoreEntry = r.next_required().unwrap();
    assert_eq!(got, core);
    assert_eq!(got.thread_info.as_ref().unwrap().gpregs.ip, 0x40_1000);
    assert_eq!(
        got.thread_info.as_ref().unwrap().gpregs.mode(),
        pb::UserX86RegsMode::Native
    );
    assert!(matches!(
        r.next_required::<pb::CoreEntry>(),
        Err(ImageError::Empty { .. })
    ));

    let inv = inventory();
    let mut w = ImageWriter::new(ImageKind::Inventory, magic::INVENTORY);
    w.push(&inv);
    let bytes = w.into_bytes();
    let mut r = ImageReader::new(
        names::INVENTORY,
        &bytes,
        ImageKind::Inventory,
        magic::INVENTORY,
    )
    .unwrap();
    assert_eq!(r.next_required::<pb::InventoryEntry>().unwrap(), inv);

    let st = stats();
    let mut w = ImageWriter::new(ImageKind::Service, magic::STATS);
    w.push(&st);
    let bytes = w.into_bytes();
    let mut r =
        ImageReader::new(names::STATS_DUMP, &bytes, ImageKind::Service, magic::STATS).unwrap();
    assert_eq!(r.next_required::<pb::StatsEntry>().unwrap(), st);
}

#[test]
fn round_trip_mm_pagemap_and_raw_payload() {
    let mm = pb::MmEntry {
        mm_start_code: 0x40_0000,
        mm_end_code: 0x40_1000,
        vmas: vec![pb::VmaEntry {
            start: 0x40_0000,
            end: 0x40_1000,
            pgoff: 0,
            shmid: 0,
            prot: 5,
            flags: 2,
            status: vma_status::VMA_AREA_REGULAR | vma_status::VMA_FILE_PRIVATE,
            fd: -1,
            madv: None,
            fdflags: None,
        }],
        mm_saved_auxv: vec![33, 0x7ffd_0000_0000, 0, 0],
        ..Default::default()
    };
    let mut w = ImageWriter::new(ImageKind::Normal, magic::MM);
    w.push(&mm);
    let bytes = w.into_bytes();
    let mut r = ImageReader::new("mm-1.img", &bytes, ImageKind::Normal, magic::MM).unwrap();
    assert_eq!(r.next_required::<pb::MmEntry>().unwrap(), mm);

    // pagemap: a head then entries of another type.
    let mut w = ImageWriter::new(ImageKind::Normal, magic::PAGEMAP);
    w.push(&pb::PagemapHead { pages_id: 7 });
    let pe = pb::PagemapEntry {
        vaddr: 0x7ffd_0000_0000,
        compat_nr_pages: 3,
        in_parent: None,
        flags: Some(PE_PRESENT),
        nr_pages: Some(3),
    };
    w.push(&pe);
    let bytes = w.into_bytes();
    let mut r =
        ImageReader::new("pagemap-1.img", &bytes, ImageKind::Normal, magic::PAGEMAP).unwrap();
    assert_eq!(r.next_required::<pb::PagemapHead>().unwrap().pages_id, 7);
    assert_eq!(r.all::<pb::PagemapEntry>().unwrap(), vec![pe]);

    // pipes-data: entry followed by `bytes` raw bytes.
    let data = b"hello pipe";
    let mut w = ImageWriter::new(ImageKind::Normal, magic::PIPES_DATA);
    w.push(&pb::PipeDataEntry {
        pipe_id: 9,
        bytes: data.len() as u32,
        size: Some(65536),
    });
    w.push_raw(data);
    w.push(&pb::PipeDataEntry {
        pipe_id: 10,
        bytes: 0,
        size: None,
    });
    let bytes = w.into_bytes();
    let mut r = ImageReader::new(
        names::PIPES_DATA,
        &bytes,
        ImageKind::Normal,
        magic::PIPES_DATA,
    )
    .unwrap();
    let e: pb::PipeDataEntry = r.next_required().unwrap();
    assert_eq!(r.raw(u64::from(e.bytes)).unwrap(), data);
    let e2: pb::PipeDataEntry = r.next_required().unwrap();
    assert_eq!(e2.pipe_id, 10);
    assert_eq!(r.raw(0).unwrap(), b"");
    assert!(r.is_eof());
    match r.raw(1) {
        Err(ImageError::Truncated { needed, left, .. }) => assert_eq!((needed, left), (1, 0)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn repeated_scalars_are_unpacked() {
    // CRIU's schema is proto2 without [packed=true]: each element is its
    // own tag/varint pair (tag 5, wire type 0 = 0x28).
    let b = pstree(1, 0, &[1, 2]).encode_to_vec();
    assert!(b.ends_with(&[0x28, 1, 0x28, 2]), "{b:02x?}");
}

#[test]
fn raw_magic_reader_has_no_header() {
    let bytes = [1u8, 2, 3];
    let mut r = ImageReader::new("pages-1.img", &bytes, ImageKind::Normal, magic::PAGES).unwrap();
    assert_eq!(r.offset(), 0);
    assert_eq!(r.raw(3).unwrap(), &bytes);
}

#[test]
fn bad_magic() {
    let bytes = ImageWriter::new(ImageKind::Normal, magic::CORE).into_bytes();
    match ImageReader::new("core-5.img", &bytes, ImageKind::Normal, magic::MM) {
        Err(ImageError::BadMagic {
            file,
            expected,
            found,
        }) => {
            assert_eq!(file, "core-5.img");
            assert_eq!(expected, magic::MM);
            assert_eq!(found, magic::CORE);
        }
        other => panic!("{other:?}"),
    }
    // Service header where the common one is expected.
    let bytes = ImageWriter::new(ImageKind::Service, magic::STATS).into_bytes();
    let err = ImageReader::new("x", &bytes, ImageKind::Normal, magic::STATS).unwrap_err();
    assert!(matches!(
        err,
        ImageError::BadMagic {
            expected: magic::IMG_COMMON,
            found: magic::IMG_SERVICE,
            ..
        }
    ));
    // Inventory must not have the common magic.
    let bytes = ImageWriter::new(ImageKind::Normal, magic::INVENTORY).into_bytes();
    let err = ImageReader::new(
        "inventory.img",
        &bytes,
        ImageKind::Inventory,
        magic::INVENTORY,
    )
    .unwrap_err();
    assert!(matches!(err, ImageError::BadMagic { .. }));
    let msg = err.to_string();
    assert!(msg.starts_with("inventory.img: "), "{msg}");
    assert!(msg.contains("0x58313116 (INVENTORY)"), "{msg}");
    assert!(msg.contains("0x54564319 (IMG_COMMON)"), "{msg}");
}

#[test]
fn truncated_header() {
    for n in 0..8 {
        let bytes = ImageWriter::new(ImageKind::Normal, magic::CORE).into_bytes();
        let err = ImageReader::new("core-1.img", &bytes[..n], ImageKind::Normal, magic::CORE)
            .unwrap_err();
        match err {
            ImageError::Truncated {
                offset,
                needed,
                left,
                ..
            } => {
                assert_eq!(offset, if n < 4 { 0 } else { 4 });
                assert_eq!(needed, 4);
                assert_eq!(left, (n % 4) as u64);
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn truncated_length_prefix() {
    let bytes = image_with(magic::PSTREE, &[5, 0]);
    let mut r = ImageReader::new("pstree.img", &bytes, ImageKind::Normal, magic::PSTREE).unwrap();
    let err = r.next::<pb::PstreeEntry>().unwrap_err();
    match &err {
        ImageError::Truncated {
            file,
            offset,
            needed,
            left,
        } => {
            assert_eq!(file, "pstree.img");
            assert_eq!((*offset, *needed, *left), (8, 4, 2));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "pstree.img: truncated at byte 8: entry needs 4 bytes, 2 left"
    );
    // Position unchanged: the same error again.
    assert_eq!(r.offset(), 8);
    assert!(r.next::<pb::PstreeEntry>().is_err());
}

#[test]
fn truncated_body() {
    let mut w = ImageWriter::new(ImageKind::Normal, magic::CORE);
    w.push(&core_entry("cat"));
    let full = w.into_bytes();
    let cut = &full[..full.len() - 5];
    let mut r = ImageReader::new("core-1234.img", cut, ImageKind::Normal, magic::CORE).unwrap();
    let err = r.next::<pb::CoreEntry>().unwrap_err();
    let body_len = (full.len() - 12) as u64;
    match &err {
        ImageError::Truncated {
            offset,
            needed,
            left,
            ..
        } => {
            assert_eq!((*offset, *needed, *left), (12, body_len, body_len - 5));
        }
        other => panic!("{other:?}"),
    }
    let msg = err.to_string();
    assert_eq!(
        msg,
        format!(
            "core-1234.img: truncated at byte 12: entry needs {body_len} bytes, {} left",
            body_len - 5
        )
    );
    assert!(!msg.contains('\n'));
}

#[test]
fn too_large_entry() {
    let len = (MAX_ENTRY_SIZE + 1) as u32;
    let bytes = image_with(magic::MM, &len.to_le_bytes());
    let mut r = ImageReader::new("mm-1.img", &bytes, ImageKind::Normal, magic::MM).unwrap();
    match r.next::<pb::MmEntry>() {
        Err(ImageError::TooLarge { file, offset, len }) => {
            assert_eq!(file, "mm-1.img");
            assert_eq!(offset, 8);
            assert_eq!(len, MAX_ENTRY_SIZE + 1);
        }
        other => panic!("{other:?}"),
    }
    let bytes = image_with(magic::MM, &u32::MAX.to_le_bytes());
    let mut r = ImageReader::new("mm-1.img", &bytes, ImageKind::Normal, magic::MM).unwrap();
    let err = r.next::<pb::MmEntry>().unwrap_err();
    assert!(matches!(err, ImageError::TooLarge { .. }));
    assert!(err
        .to_string()
        .starts_with("mm-1.img: entry at byte 8 claims 4294967295 bytes"));
    // Exactly at the limit but with no body: truncated, not too large.
    let bytes = image_with(magic::MM, &(MAX_ENTRY_SIZE as u32).to_le_bytes());
    let mut r = ImageReader::new("mm-1.img", &bytes, ImageKind::Normal, magic::MM).unwrap();
    assert!(matches!(
        r.next::<pb::MmEntry>(),
        Err(ImageError::Truncated { .. })
    ));
}

#[test]
fn garbage_fails_decoding() {
    let cases: &[&[u8]] = &[
        // field 1, invalid wire type 7
        &[0x0f],
        // field 1 as length-delimited with a length beyond the body
        &[0x0a, 0x7f, 1, 2],
        // unterminated varint
        &[0x08, 0xff, 0xff],
        // field number 0
        &[0x00, 0x01],
    ];
    for body in cases {
        let mut tail = (body.len() as u32).to_le_bytes().to_vec();
        tail.extend_from_slice(body);
        let bytes = image_with(magic::PSTREE, &tail);
        let mut r =
            ImageReader::new("pstree.img", &bytes, ImageKind::Normal, magic::PSTREE).unwrap();
        match r.next::<pb::PstreeEntry>() {
            Err(e @ ImageError::Decode { .. }) => {
                let ImageError::Decode { offset, .. } = &e else {
                    unreachable!()
                };
                assert_eq!(*offset, 12);
                assert!(std::error::Error::source(&e).is_some());
                let msg = e.to_string();
                assert!(
                    msg.starts_with("pstree.img: cannot decode entry at byte 12"),
                    "{msg}"
                );
                assert!(!msg.contains('\n'));
            }
            other => panic!("{body:02x?}: {other:?}"),
        }
    }
}

#[test]
fn error_display_and_file() {
    let errs = [
        ImageError::Missing {
            file: "fs-3.img".into(),
        },
        ImageError::Empty {
            file: "fs-3.img".into(),
        },
        ImageError::TooLarge {
            file: "fs-3.img".into(),
            offset: 8,
            len: 1 << 30,
        },
    ];
    for e in &errs {
        assert_eq!(e.file(), "fs-3.img");
        let s = e.to_string();
        assert!(s.starts_with("fs-3.img: "), "{s}");
        assert!(!s.contains('\n'));
    }
}

#[test]
fn magic_and_names() {
    assert_eq!(magic::IMG_COMMON, 0x5456_4319);
    assert_eq!(magic::IMG_SERVICE, 0x5510_5940);
    assert_eq!(magic::INVENTORY, 0x5831_3116);
    assert_eq!(magic::PSTREE, 0x5027_3030);
    assert_eq!(magic::CORE, 0x5505_3847);
    assert_eq!(magic::SIGNAL, 0x5925_5647);
    assert_eq!(magic::PSIGNAL, magic::SIGNAL);
    assert_eq!(magic::STATS, 0x5709_3306);
    assert_eq!(magic::name(magic::CORE), Some("CORE"));
    assert_eq!(magic::name(0x1234_5678), None);
    assert_eq!(names::core(1234), "core-1234.img");
    assert_eq!(names::pagemap(42), "pagemap-42.img");
    assert_eq!(names::pages(1), "pages-1.img");
    assert_eq!(names::fdinfo(2), "fdinfo-2.img");
    assert_eq!(names::ghost_file(255), "ghost-file-ff.img");
    assert_eq!(names::tcp_stream(0xabc), "tcp-stream-abc.img");
    assert_eq!(names::stats("dump"), names::STATS_DUMP);
    assert_eq!(names::pipes_data(), "pipes-data.img");
    assert_eq!(names::tmpfs_img(3), "tmpfs-3.tar.gz.img");
}

/// xorshift64*: deterministic pseudo-random bytes without extra crates.
struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn drain<M: prost::Message + Default>(r: &mut ImageReader<'_>) {
    for _ in 0..1000 {
        match r.next::<M>() {
            Ok(Some(_)) => {
                let _ = r.raw(r.offset() % 7);
            }
            Ok(None) | Err(_) => return,
        }
    }
}

#[test]
fn fuzz_reader_never_panics() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let kinds = [ImageKind::Normal, ImageKind::Inventory, ImageKind::Service];
    for &(_, m) in magic::ALL {
        for round in 0..60 {
            let kind = kinds[round % 3];
            // Start from a valid header half the time so entries get parsed.
            let mut bytes = if round % 2 == 0 {
                ImageWriter::new(kind, m).into_bytes()
            } else {
                Vec::new()
            };
            let n = rng.below(200) as usize;
            for i in 0..n {
                let v = rng.next() as u8;
                // Sprinkle small plausible length prefixes.
                if i % 17 == 0 && rng.below(2) == 0 {
                    bytes.extend_from_slice(&(rng.below(40) as u32).to_le_bytes());
                } else {
                    bytes.push(v);
                }
            }
            let Ok(mut r) = ImageReader::new("fuzz.img", &bytes, kind, m) else {
                continue;
            };
            let mut r2 = r.clone();
            let mut r3 = r.clone();
            let mut r4 = r.clone();
            drain::<pb::CoreEntry>(&mut r);
            drain::<pb::PstreeEntry>(&mut r2);
            drain::<pb::MmEntry>(&mut r3);
            drain::<pb::FileEntry>(&mut r4);
            assert!(r.offset() <= bytes.len() as u64);
        }
    }
}

// ---- crit compatibility (runs only when CRIU's crit is installed) ----

fn crit_path() -> Option<std::path::PathBuf> {
    ["/usr/bin/crit", "/usr/local/bin/crit", "/usr/sbin/crit"]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.exists())
}

fn unique_temp_dir(tag: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "stasis-{tag}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run_crit(crit: &std::path::Path, args: &[&std::ffi::OsStr]) -> String {
    let out = std::process::Command::new(crit)
        .args(args)
        .output()
        .expect("spawn crit");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "crit {args:?} failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn crit_decodes_our_images() {
    let Some(crit) = crit_path() else {
        println!("SKIP: crit not installed");
        return;
    };
    let dir = unique_temp_dir("crit");

    let mut w = ImageWriter::new(ImageKind::Inventory, magic::INVENTORY);
    w.push(&inventory());
    std::fs::write(dir.join(names::INVENTORY), w.into_bytes()).unwrap();

    let mut w = ImageWriter::new(ImageKind::Normal, magic::PSTREE);
    w.push(&pstree(1, 0, &[1, 2]));
    w.push(&pstree(4321, 1, &[4321]));
    std::fs::write(dir.join(names::PSTREE), w.into_bytes()).unwrap();

    for (pid, comm) in [(1, "stasis-init"), (4321, "stasis-kid")] {
        let mut w = ImageWriter::new(ImageKind::Normal, magic::CORE);
        w.push(&core_entry(comm));
        std::fs::write(dir.join(names::core(pid)), w.into_bytes()).unwrap();
    }

    let mut w = ImageWriter::new(ImageKind::Service, magic::STATS);
    w.push(&stats());
    std::fs::write(dir.join(names::STATS_DUMP), w.into_bytes()).unwrap();

    let decode = |name: &str| {
        let path = dir.join(name);
        run_crit(
            &crit,
            &[
                "decode".as_ref(),
                "-i".as_ref(),
                path.as_os_str(),
                "--pretty".as_ref(),
            ],
        )
    };

    let out = decode(names::INVENTORY);
    assert!(out.contains("\"magic\": \"INVENTORY\""), "{out}");
    assert!(out.contains("\"img_version\": 2"), "{out}");
    assert!(out.contains("\"fdinfo_per_id\": true"), "{out}");
    assert!(out.contains("\"sighand_id\": 4"), "{out}");

    let out = decode(names::PSTREE);
    assert!(out.contains("\"magic\": \"PSTREE\""), "{out}");
    assert!(out.contains("\"pid\": 4321"), "{out}");
    assert!(out.contains("\"ppid\": 1"), "{out}");

    let out = decode(&names::core(1));
    assert!(out.contains("\"magic\": \"CORE\""), "{out}");
    assert!(out.contains("\"mtype\": \"X86_64\""), "{out}");
    assert!(out.contains("\"comm\": \"stasis-init\""), "{out}");
    // gpregs is marked hex in CRIU's schema, so --pretty prints hex strings.
    assert!(out.contains("\"ip\": \"0x401000\""), "{out}");
    assert!(out.contains("\"ax\": \"0xdeadbeef\""), "{out}");
    assert!(out.contains("\"sp\": \"0x7ffd00000ff8\""), "{out}");
    assert!(out.contains("\"mode\": \"NATIVE\""), "{out}");
    assert!(out.contains("\"mxcsr\": 8064"), "{out}");
    assert!(out.contains("\"futex_rla_len\": 24"), "{out}");

    let out = decode(names::STATS_DUMP);
    assert!(out.contains("\"magic\": \"STATS\""), "{out}");
    assert!(out.contains("\"freezing_time\": 1234"), "{out}");
    assert!(out.contains("\"pages_scanned\": 4242"), "{out}");

    let out = run_crit(&crit, &["x".as_ref(), dir.as_os_str(), "ps".as_ref()]);
    assert!(out.contains("stasis-init"), "{out}");
    assert!(out.contains("stasis-kid"), "{out}");
    assert!(out.contains("4321"), "{out}");

    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn all_refuses_entries_that_would_take_too_much_memory() {
    // 600k empty entries: 2.4 MB of image, but 600k FileEntry structs (over 1 GiB).
    let mut bytes = ImageWriter::new(ImageKind::Normal, magic::FILES).into_bytes();
    bytes.resize(8 + 4 * 600_000, 0);
    let mut r = ImageReader::new("files.img", &bytes, ImageKind::Normal, magic::FILES).unwrap();
    let e = r.clone().all::<pb::FileEntry>().unwrap_err();
    assert!(
        matches!(
            e,
            ImageError::TooMany {
                entries: 600_000,
                ..
            }
        ),
        "{e}"
    );
    assert!(e
        .to_string()
        .starts_with("files.img: 600000 entries would take"));
    // The same frames as a small message are fine, and reserved exactly.
    let all = r.all::<pb::PstreeEntry>().unwrap();
    assert_eq!((all.len(), all.capacity()), (600_000, 600_000));
    assert!(r.is_eof());
}
