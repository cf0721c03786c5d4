//! The loader's checks on hand-made images (no root, no kernel).

use super::pages::covered;
use super::*;

#[test]
fn a_file_only_mapped_shared_writable_is_opened_read_write() {
    use crate::images::vma_status::VMA_FILE_SHARED;
    let vma = |shmid: u64| pb::VmaEntry {
        shmid,
        status: VMA_FILE_SHARED,
        fdflags: Some(libc::O_RDWR as u32),
        ..Default::default()
    };
    let reg = |id: u32| pb::FileEntry {
        id,
        reg: Some(pb::RegFileEntry {
            id,
            flags: libc::O_LARGEFILE as u32,
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut img = DumpImage::default();
    img.tasks.push(TaskImage {
        pstree: Default::default(),
        threads: Vec::new(),
        mm: pb::MmEntry {
            vmas: vec![vma(22), vma(23)],
            ..Default::default()
        },
        pagemap: Vec::new(),
        pages_file: String::new(),
        // File 23 is also an fd: its mode is the fd's, left alone.
        fds: vec![pb::FdinfoEntry {
            id: 23,
            ..Default::default()
        }],
        fs: Default::default(),
        zombie_exit: None,
        files_id: 2,
        shares_parent_files: false,
    });
    img.files.insert(22, reg(22));
    img.files.insert(23, reg(23));
    open_mapped_files_as_their_mappings_need(&mut img);
    let flags = |id| img.files[&id].reg.as_ref().unwrap().flags as libc::c_int;
    assert_eq!(flags(22), libc::O_RDWR | libc::O_LARGEFILE);
    assert_eq!(flags(23), libc::O_LARGEFILE);
}

fn unix(id: u32, ino: u32, peer: u32) -> pb::FileEntry {
    pb::FileEntry {
        id,
        usk: Some(pb::UnixSkEntry {
            id,
            ino,
            peer,
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn pages_may_span_adjacent_mappings_but_not_a_gap() {
    let vma = |start: u64, end: u64| pb::VmaEntry {
        start,
        end,
        ..Default::default()
    };
    let vmas = [
        vma(0x1000, 0x3000),
        vma(0x3000, 0x5000),
        vma(0x6000, 0x7000),
    ];
    assert!(covered(&vmas, 0x1000, 0x3000));
    assert!(
        covered(&vmas, 0x2000, 0x4000),
        "across two adjacent mappings"
    );
    assert!(!covered(&vmas, 0x4000, 0x6000), "into a gap");
    assert!(!covered(&vmas, 0x6000, 0x8000), "past the last mapping");
    assert!(!covered(&vmas, 0x0, 0x2000), "before the first");
    assert!(covered(&vmas, 0x9000, 0x9000), "no page to place");
}

#[test]
fn a_socket_in_flight_comes_after_what_its_peer_carries() {
    // 1 is in flight, paired with 2 (held by a task); 2's queue carries 3.
    let files: HashMap<u32, pb::FileEntry> = [
        (1, unix(1, 100, 200)),
        (2, unix(2, 200, 100)),
        (
            3,
            pb::FileEntry {
                id: 3,
                ..Default::default()
            },
        ),
    ]
    .into();
    let q = |files: Vec<u32>| crate::net::unix::Queued {
        data: b"x".to_vec(),
        files,
    };
    let queues: HashMap<u32, Vec<crate::net::unix::Queued>> =
        [(2, vec![q(vec![3])]), (5, vec![q(vec![1])])].into();
    assert_eq!(in_flight_order(vec![1, 3], &files, &queues), vec![3, 1]);
    // Circular needs keep their order instead of looping.
    let queues: HashMap<u32, Vec<crate::net::unix::Queued>> =
        [(2, vec![q(vec![1])]), (1, vec![q(vec![2])])].into();
    assert_eq!(in_flight_order(vec![1, 2], &files, &queues), vec![1, 2]);
}

#[test]
fn a_zombie_s_thread_list_is_its_pid_whatever_criu_left_there() {
    use crate::images::ImageWriter;
    let dir = std::env::temp_dir().join(format!("stasis-load-zombie-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |file: &str, magic: u32, entries: &[&dyn Fn(&mut ImageWriter)]| {
        let mut w = ImageWriter::new(ImageKind::Normal, magic);
        for e in entries {
            e(&mut w);
        }
        std::fs::write(dir.join(file), w.into_bytes()).unwrap();
    };
    let entry = |pid: u32, ppid: u32, threads: Vec<u32>| pb::PstreeEntry {
        pid,
        ppid,
        pgid: 10,
        sid: 10,
        threads,
    };
    write(
        names::PSTREE,
        magic::PSTREE,
        &[
            &|w| w.push(&entry(10, 0, vec![10])),
            // CRIU 4.2 writes a zombie's list uninitialised.
            &|w| w.push(&entry(12, 10, vec![861339408])),
        ],
    );
    let core = |state: u32| pb::CoreEntry {
        tc: Some(pb::TaskCoreEntry {
            task_state: state,
            ..Default::default()
        }),
        ..Default::default()
    };
    write(
        &names::core(12),
        magic::CORE,
        &[&|w| w.push(&core(images::TASK_DEAD))],
    );
    let tree = load_pstree(&dir).expect("a zombie's list is not checked");
    assert_eq!(tree[1].threads, vec![12]);
    // A live process with a bad list is still refused.
    write(
        &names::core(12),
        magic::CORE,
        &[&|w| w.push(&core(images::TASK_ALIVE))],
    );
    assert!(load_pstree(&dir).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// CRIU writes a ghost file under 12 KiB with no size and no chunks: its contents are the
/// rest of the image (a deleted POSIX semaphore of python's multiprocessing, 32 bytes).
#[test]
fn a_ghost_without_a_size_holds_the_rest_of_its_image() {
    use crate::images::{magic, ImageKind, ImageWriter};
    let dir = std::env::temp_dir().join(format!("stasis-ghost-nosize-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut remap = ImageWriter::new(ImageKind::Normal, magic::REMAP_FPATH);
    remap.push(&pb::RemapFilePathEntry {
        orig_id: 13,
        remap_id: 1,
        remap_type: Some(pb::RemapType::Ghost as i32),
    });
    std::fs::write(dir.join(names::REMAP_FPATH), remap.into_bytes()).unwrap();
    let mut ghost = ImageWriter::new(ImageKind::Normal, magic::GHOST_FILE);
    ghost.push(&pb::GhostFileEntry {
        mode: libc::S_IFREG | 0o600,
        ..Default::default()
    });
    let sem = [1u8, 0, 0, 0, 0, 0, 0, 0, 0x80, 0, 0, 0, 0, 0, 0, 0];
    ghost.push_raw(&sem);
    std::fs::write(dir.join(names::ghost_file(1)), ghost.into_bytes()).unwrap();
    let mut img = DumpImage::default();
    img.files.insert(
        13,
        pb::FileEntry {
            id: 13,
            reg: Some(Default::default()),
            ..Default::default()
        },
    );
    let loaded = load_ghosts(&dir, &mut img);
    std::fs::remove_dir_all(&dir).unwrap();
    loaded.unwrap();
    let (entry, chunks) = &img.ghosts[&1];
    assert_eq!(entry.size, Some(sem.len() as u64));
    assert_eq!(chunks, &vec![(0, sem.to_vec())]);
}

/// CRIU 4.2 keeps a process's cgroup set in its main thread's core (`thread_core.cg_set`),
/// stasis in the task core (`tc.cg_set`): either is the process's, the thread's first, as
/// CRIU's restore reads them. Read from the task core only, CRIU's images of a container
/// put no task into a cgroup and moved none under the new container's `--cgroup-root`.
#[test]
fn a_process_cgroup_set_is_read_where_criu_or_stasis_writes_it() {
    let task = |thread_set: Option<u32>, task_set: Option<u32>| TaskImage {
        pstree: Default::default(),
        threads: vec![ThreadImage {
            tid: 1,
            core: pb::CoreEntry {
                tc: Some(pb::TaskCoreEntry {
                    cg_set: task_set,
                    ..Default::default()
                }),
                thread_core: Some(pb::ThreadCoreEntry {
                    cg_set: thread_set,
                    ..Default::default()
                }),
                ..Default::default()
            },
        }],
        mm: Default::default(),
        pagemap: Vec::new(),
        pages_file: String::new(),
        fds: Vec::new(),
        fs: Default::default(),
        zombie_exit: None,
        files_id: 2,
        shares_parent_files: false,
    };
    assert_eq!(task(Some(2), None).cg_set(), Some(2), "CRIU's");
    assert_eq!(task(None, Some(3)).cg_set(), Some(3), "stasis's");
    assert_eq!(
        task(Some(2), Some(3)).cg_set(),
        Some(2),
        "the thread's first"
    );
    assert_eq!(task(None, None).cg_set(), None);
}
