//! The next version and the changelog from conventional commits (to be written).
