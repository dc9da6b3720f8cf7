//! Sets of preserved physical pages, modelled on Linux KHO's radix tree.
