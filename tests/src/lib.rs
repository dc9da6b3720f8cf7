//! Workspace-level emulator-backed end-to-end and property tests live in `tests/`; this
//! library holds what they share.
#![warn(missing_docs)]

pub mod smmuv3_rig;
pub mod vtd_prog;
