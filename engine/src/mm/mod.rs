//! Memory: VMAs, page images and shared memory objects.

pub mod pages;
