//! Workspace-level emulator-backed end-to-end and property tests live in `tests/`; this
//! library holds what they share.
#![warn(missing_docs)]

pub mod vtd_prog;
