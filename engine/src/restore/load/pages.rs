//! Pagemaps: each entry checked to lie inside its mappings or object before any page is read.

use std::path::Path;

use super::{invalid, read, LoadError};
use crate::images::{self, magic, names, pb, ImageKind, ImageReader};
use crate::sys::mem::PAGE_SIZE;

pub(super) fn pagemap(
    dir: &Path,
    file: &str,
) -> Result<(Vec<pb::PagemapEntry>, String), LoadError> {
    let bytes = read(dir, file)?;
    let mut r = ImageReader::new(file, &bytes, ImageKind::Normal, magic::PAGEMAP)?;
    let head: pb::PagemapHead = r.next_required()?;
    let entries: Vec<pb::PagemapEntry> = r.all()?;
    let pages_file = names::pages(head.pages_id);
    let size = std::fs::metadata(dir.join(&pages_file))
        .map_err(|_| LoadError::Missing {
            dir: dir.to_path_buf(),
            file: pages_file.clone(),
        })?
        .len();
    let mut need = 0u64;
    for e in &entries {
        let (_, len) = span(file, e)?;
        if e.flags.unwrap_or(images::PE_PRESENT) & images::PE_PRESENT != 0 {
            need = need.checked_add(len).ok_or_else(|| {
                invalid(
                    file,
                    "the pages of all entries add up to more than 2^64 bytes",
                )
            })?;
        }
        if e.in_parent == Some(true) || e.flags.unwrap_or(0) & images::PE_PARENT != 0 {
            return Err(invalid(
                file,
                "incremental images (pages in a parent) are not supported",
            ));
        }
    }
    if need > size {
        return Err(invalid(
            &pages_file,
            format!("truncated: {file} needs {need} bytes of pages, the file has {size}"),
        ));
    }
    Ok((entries, pages_file))
}

/// Whether `start..end` lies within mappings that follow each other without a gap. CRIU
/// writes one pagemap entry for pages of adjacent mappings (a RELRO segment and the data
/// after it), so an entry may span several.
pub(super) fn covered(vmas: &[pb::VmaEntry], start: u64, end: u64) -> bool {
    if start >= end {
        // No page to place.
        return true;
    }
    let mut at = start;
    // The mappings are sorted and do not overlap (checked above).
    for v in vmas.iter().filter(|v| v.end > start) {
        if v.start > at {
            return false;
        }
        at = at.max(v.end);
        if at >= end {
            return true;
        }
    }
    at >= end
}

pub fn nr_pages(e: &pb::PagemapEntry) -> u64 {
    e.nr_pages.unwrap_or(e.compat_nr_pages as u64)
}

/// A pagemap entry's first address (page aligned) and length in bytes, checked: every sum
/// and product on them afterwards (`vaddr + len`, offsets into the pages file) is known not
/// to overflow.
pub(super) fn span(file: &str, e: &pb::PagemapEntry) -> Result<(u64, u64), LoadError> {
    let bad = |what: &str| {
        invalid(
            file,
            format!(
                "pagemap entry at {:#x} with {} pages: {what}",
                e.vaddr,
                nr_pages(e)
            ),
        )
    };
    if !e.vaddr.is_multiple_of(PAGE_SIZE) {
        return Err(bad("address not page aligned"));
    }
    let len = nr_pages(e)
        .checked_mul(PAGE_SIZE)
        .filter(|len| e.vaddr.checked_add(*len).is_some())
        .ok_or_else(|| bad("ends past the end of the address space"))?;
    Ok((e.vaddr, len))
}

/// Every entry of a shared memory object's pagemap (offsets as addresses) lies inside the
/// object's `size` bytes, rounded up to a page.
pub(super) fn check_object_pages(
    file: &str,
    entries: &[pb::PagemapEntry],
    size: u64,
) -> Result<(), LoadError> {
    let limit = size
        .checked_next_multiple_of(PAGE_SIZE)
        .ok_or_else(|| invalid(file, format!("object size {size} is too large")))?;
    for e in entries {
        let (start, len) = span(file, e)?;
        if start + len > limit {
            return Err(invalid(
                file,
                format!(
                    "pages at {start:#x}-{:#x} lie beyond the object's {size} bytes",
                    start + len
                ),
            ));
        }
    }
    Ok(())
}
