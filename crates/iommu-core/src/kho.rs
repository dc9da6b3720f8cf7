//! The kexec-handover (KHO) blob and versioned client records.
