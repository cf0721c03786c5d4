//! cgroup freezer (v2 `cgroup.freeze`, v1 `freezer.state` fallback) and membership for stasis.
//!
//! Not implemented yet: bare process trees are frozen with ptrace (see docs/ARCHITECTURE.md).
