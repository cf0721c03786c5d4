//! OCI runtime specs, runtime state and checkpoint archives (tar + zstd) for stasis.
//!
//! Not implemented yet: the engine core comes first (see docs/ARCHITECTURE.md).
