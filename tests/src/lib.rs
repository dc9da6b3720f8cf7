//! Workspace-level emulator-backed end-to-end and property tests live in `tests/`.
