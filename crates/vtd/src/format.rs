//! VT-d page-table formats.
