//! Named, seeded emulator scenarios.
