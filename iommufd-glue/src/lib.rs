//! iommufd-glue: will hold the iommufd-like objects (IOAS, hardware page table, device)
//! and the live-update session (prepare, freeze, finish, cancel) with tokens that find
//! objects again after the reboot. Not built yet.
