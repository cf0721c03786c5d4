//! The seed corpus: real dumps made by `stasis dump` of the test workloads
//! (`tests/fuzz/corpus/<workload>/`). Page contents are never decoded, so `pages-*.img` are
//! not stored: `sparse.txt` lists their names and sizes, and a materialised dump gets sparse
//! files of those sizes (the loader only checks that they are long enough).

use std::io;
use std::path::{Path, PathBuf};

use stasis::images::{magic, ImageKind};

/// The file that lists the page images of a corpus dump, one `NAME SIZE` a line.
pub const SPARSE_LIST: &str = "sparse.txt";

/// One image of a dump, with the headers it starts with.
#[derive(Clone, Debug)]
pub struct Image {
    pub name: String,
    pub bytes: Vec<u8>,
    pub kind: ImageKind,
    /// Type magic; [`magic::RAW_IMAGE`] for a headerless image.
    pub magic: u32,
    /// Bytes of headers before the first entry.
    pub header: usize,
}

impl Image {
    pub fn new(name: &str, bytes: Vec<u8>) -> Image {
        let word = |i: usize| {
            bytes
                .get(i * 4..i * 4 + 4)
                .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
        };
        let (kind, magic, header) = match (word(0), word(1)) {
            (Some(magic::IMG_COMMON), Some(m)) => (ImageKind::Normal, m, 8),
            (Some(magic::IMG_SERVICE), Some(m)) => (ImageKind::Service, m, 8),
            (Some(magic::INVENTORY), _) => (ImageKind::Inventory, magic::INVENTORY, 4),
            _ => (ImageKind::Normal, magic::RAW_IMAGE, 0),
        };
        Image {
            name: name.to_string(),
            bytes,
            kind,
            magic,
            header,
        }
    }
}

/// One dump directory.
#[derive(Clone, Debug)]
pub struct Dump {
    pub name: String,
    pub images: Vec<Image>,
    /// Page images: name and size (made sparse when materialised).
    pub sparse: Vec<(String, u64)>,
}

impl Dump {
    /// Bytes of all its images (page images not counted).
    pub fn bytes(&self) -> usize {
        self.images.iter().map(|i| i.bytes.len()).sum()
    }
}

/// Every dump of the corpus, in name order.
#[derive(Clone, Debug, Default)]
pub struct Corpus {
    pub dumps: Vec<Dump>,
}

fn sorted_entries(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<io::Result<_>>()?;
    out.sort();
    Ok(out)
}

fn bad_data(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

impl Corpus {
    /// The corpus committed with the tests.
    pub fn default_dir() -> PathBuf {
        crate::workspace_root().join("tests/fuzz/corpus")
    }

    /// Reads every dump under `dir` (one subdirectory each).
    pub fn load(dir: &Path) -> io::Result<Corpus> {
        let mut dumps = Vec::new();
        for d in sorted_entries(dir)? {
            if !d.is_dir() {
                continue;
            }
            let mut dump = Dump {
                name: d.file_name().unwrap_or_default().to_string_lossy().into(),
                images: Vec::new(),
                sparse: Vec::new(),
            };
            for f in sorted_entries(&d)? {
                let name = f
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .to_string();
                if name == SPARSE_LIST {
                    for line in std::fs::read_to_string(&f)?.lines() {
                        let mut w = line.split_whitespace();
                        let (Some(n), Some(size)) = (w.next(), w.next()) else {
                            continue;
                        };
                        let size = size
                            .parse()
                            .map_err(|_| bad_data(format!("{}: bad size {size}", f.display())))?;
                        dump.sparse.push((n.to_string(), size));
                    }
                } else if name.ends_with(".img") {
                    dump.images.push(Image::new(&name, std::fs::read(&f)?));
                }
            }
            if !dump.images.is_empty() {
                dumps.push(dump);
            }
        }
        if dumps.is_empty() {
            return Err(bad_data(format!(
                "{}: no dump in the corpus",
                dir.display()
            )));
        }
        Ok(Corpus { dumps })
    }

    /// Every (dump, image) pair.
    pub fn pairs(&self) -> Vec<(usize, usize)> {
        self.dumps
            .iter()
            .enumerate()
            .flat_map(|(d, dump)| (0..dump.images.len()).map(move |i| (d, i)))
            .collect()
    }

    /// Writes every dump as a directory under `root` (page images sparse); their paths.
    pub fn materialize(&self, root: &Path) -> io::Result<Vec<PathBuf>> {
        let mut dirs = Vec::new();
        for dump in &self.dumps {
            let dir = root.join(&dump.name);
            std::fs::create_dir_all(&dir)?;
            for img in &dump.images {
                std::fs::write(dir.join(&img.name), &img.bytes)?;
            }
            for (name, size) in &dump.sparse {
                std::fs::File::create(dir.join(name))?.set_len(*size)?;
            }
            dirs.push(dir);
        }
        Ok(dirs)
    }

    /// Copies the images of a dump made by `stasis dump` into `out/<name>/`, page images as
    /// entries of [`SPARSE_LIST`] (logs and anything not an image are left out).
    pub fn import(dump_dir: &Path, out: &Path, name: &str) -> io::Result<()> {
        let dest = out.join(name);
        let _ = std::fs::remove_dir_all(&dest);
        std::fs::create_dir_all(&dest)?;
        let mut sparse = String::new();
        for f in sorted_entries(dump_dir)? {
            let file = f
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string();
            if !file.ends_with(".img") {
                continue;
            }
            if file.starts_with("pages-") {
                sparse.push_str(&format!("{file} {}\n", std::fs::metadata(&f)?.len()));
            } else {
                std::fs::copy(&f, dest.join(&file))?;
            }
        }
        std::fs::write(dest.join(SPARSE_LIST), sparse)
    }
}
