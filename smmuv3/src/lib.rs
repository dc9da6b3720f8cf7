//! Arm SMMUv3 backend: will hold the register map, STE/CD layouts (`hw`), the VMSAv8-64
//! table formats, the driver and the live-update handover for SMMUv3. Not built yet.
#![no_std]
