//! Live-update handover (placeholder while the driver compiles).

/// Old-kernel handover state of a unit.
#[derive(Debug)]
pub(crate) struct Outgoing;
/// New-kernel handover state of a unit.
#[derive(Debug)]
pub(crate) struct Incoming;
