//! Workspace-level emulator-backed end-to-end and property tests live in `tests/`.

pub mod vtd_prog;
