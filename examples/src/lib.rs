//! Examples of the stasis engine used as a library; see examples/.
