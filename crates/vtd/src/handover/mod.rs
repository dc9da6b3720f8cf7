//! VT-d live-update handover: prepare/freeze in the old kernel, adopt/finish in the new.
