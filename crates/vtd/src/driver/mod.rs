//! VT-d driver: bring-up, domains, map/unmap, attach, invalidation.
