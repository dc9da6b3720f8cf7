//! VT-d model
