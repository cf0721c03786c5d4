//! Network namespaces for stasis: veth pairs, addresses and routes over rtnetlink.
//!
//! Not implemented yet: the engine core comes first (see docs/ARCHITECTURE.md).
