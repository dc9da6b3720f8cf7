//! AMD-Vi backend: will hold the register map and entry layouts (`hw`), the v1/v2 page
//! table formats, the driver and the live-update handover for AMD IOMMUs. Not built yet.
#![no_std]
