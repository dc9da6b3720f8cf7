//! VT-d register map and entry layouts.
