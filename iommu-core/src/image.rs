//! Layout rules of ELF memory images, one set for every reader: the emulator's snapshot
//! loader and `iommu-inspect` both call these functions, so a file one refuses the other
//! refuses for the same reason.
//!
//! The rules, for the `PT_LOAD` segments (`p_paddr`, `p_filesz`, `p_offset`) of a core:
//!
//! - `p_paddr` is 4 KiB aligned and `p_paddr + p_filesz - 1` does not wrap;
//! - in a file that must hold whole pages (an emulator snapshot), `p_filesz` is a
//!   non-zero multiple of 4 KiB;
//! - no two segments overlap, except that a segment may repeat memory that one other
//!   segment wholly holds (a kdump vmcore's kernel-text segment repeats part of a RAM
//!   segment) when its bytes are identical to that segment's bytes there. The repeat
//!   is dropped. The bytes compared across all repeats are bounded by the file size;
//! - with a RAM layout (a snapshot's machine note), every segment lies in RAM;
//! - every device names an existing unit;
//! - no two devices have the same requester and PASID, and the devices of one requester
//!   are all behind one unit (a requester's requests are routed to one unit).
//!
//! Segments are sorted by physical address; the checks cost O(n log n) in the number of
//! segments and RAM ranges, plus the bytes of the repeats.

use crate::RequesterId;
use alloc::vec::Vec;
use core::fmt;

/// Page size the rules use.
pub const PAGE: u64 = 4096;

/// One `PT_LOAD` segment as a reader found it in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadSegment {
    /// File offset of its program header (named in errors).
    pub header: u64,
    /// First physical address (`p_paddr`).
    pub paddr: u64,
    /// Bytes in the file (`p_filesz`, non-zero).
    pub size: u64,
    /// File offset of the first byte (`p_offset`).
    pub offset: u64,
}

impl LoadSegment {
    /// Last physical address (the segment is checked not to wrap first).
    pub fn last(&self) -> u64 {
        self.paddr + (self.size - 1)
    }
}

/// Why an image's layout is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutError {
    /// `p_paddr` is not 4 KiB aligned.
    UnalignedPaddr {
        /// Program header offset.
        header: u64,
        /// `p_paddr`.
        paddr: u64,
    },
    /// `p_filesz` is zero or not a multiple of 4 KiB in a file that holds whole pages.
    PartialPages {
        /// Program header offset.
        header: u64,
        /// `p_filesz`.
        size: u64,
    },
    /// `p_paddr + p_filesz` overflows 64 bits.
    Wraps {
        /// Program header offset.
        header: u64,
        /// `p_paddr`.
        paddr: u64,
        /// `p_filesz`.
        size: u64,
    },
    /// The segment's bytes are not inside the file.
    BeyondFile {
        /// Program header offset.
        header: u64,
        /// `p_offset`.
        offset: u64,
        /// `p_filesz`.
        size: u64,
    },
    /// Two segments overlap and neither wholly holds the other.
    Overlap {
        /// Program header of the segment starting first.
        first: u64,
        /// Program header of the other.
        second: u64,
        /// First physical address both claim.
        addr: u64,
    },
    /// A segment repeats memory another holds, with different bytes.
    RepeatDiffers {
        /// Program header of the holding segment.
        first: u64,
        /// Program header of the repeat.
        second: u64,
        /// First physical address whose bytes differ.
        addr: u64,
    },
    /// The repeated segments hold more bytes in total than the file does.
    RepeatsTooLarge {
        /// Program header of the repeat that exceeded the bound.
        header: u64,
        /// The file size (the bound).
        file_size: u64,
    },
    /// A segment covers memory outside the RAM layout.
    OutsideRam {
        /// Program header offset.
        header: u64,
        /// First physical address that is not RAM.
        addr: u64,
    },
    /// A device names a unit the image does not have.
    NoSuchUnit {
        /// Index of the device in its list.
        device: usize,
        /// The MMIO base it names.
        unit: u64,
    },
    /// A device repeats the requester and PASID of an earlier one.
    DuplicateDevice {
        /// Index of the device in its list.
        device: usize,
        /// Index of the earlier device.
        first: usize,
        /// The requester.
        rid: RequesterId,
        /// The PASID, if any.
        pasid: Option<u32>,
    },
    /// A device puts its requester behind another unit than an earlier device of the
    /// same requester does.
    ConflictingRoute {
        /// Index of the device in its list.
        device: usize,
        /// The requester.
        rid: RequesterId,
        /// The unit it names.
        unit: u64,
        /// The unit the earlier device of the requester names.
        existing: u64,
    },
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use LayoutError as E;
        match *self {
            E::UnalignedPaddr { header, paddr } => write!(
                f,
                "load segment (program header at file offset {header:#x}): p_paddr {paddr:#x} \
                 is not 4 KiB aligned"
            ),
            E::PartialPages { header, size } => write!(
                f,
                "load segment (program header at file offset {header:#x}): p_filesz {size:#x} \
                 is not a non-zero multiple of 4 KiB"
            ),
            E::Wraps {
                header,
                paddr,
                size,
            } => write!(
                f,
                "load segment (program header at file offset {header:#x}) at physical \
                 {paddr:#x} of {size:#x} bytes overflows 64 bits"
            ),
            E::BeyondFile {
                header,
                offset,
                size,
            } => write!(
                f,
                "load segment (program header at file offset {header:#x}): {size:#x} bytes at \
                 file offset {offset:#x} run past the end of the file"
            ),
            E::Overlap {
                first,
                second,
                addr,
            } => write!(
                f,
                "load segments with program headers at file offsets {first:#x} and {second:#x} \
                 both claim physical address {addr:#x}"
            ),
            E::RepeatDiffers {
                first,
                second,
                addr,
            } => write!(
                f,
                "load segment with program header at file offset {second:#x} repeats memory of \
                 the one at {first:#x} with different bytes (first at physical {addr:#x})"
            ),
            E::RepeatsTooLarge { header, file_size } => write!(
                f,
                "repeated load segments (the last at program header {header:#x}) hold more than \
                 the file's {file_size:#x} bytes"
            ),
            E::OutsideRam { header, addr } => write!(
                f,
                "load segment (program header at file offset {header:#x}) covers physical \
                 {addr:#x}, which is not RAM in the machine note"
            ),
            E::NoSuchUnit { device, unit } => write!(
                f,
                "device {device} is behind the unit at {unit:#x}, which the image does not have"
            ),
            E::DuplicateDevice {
                device,
                first,
                rid,
                pasid,
            } => {
                write!(f, "device {device} repeats device {first}: requester {rid}")?;
                match pasid {
                    Some(p) => write!(f, " PASID {p:#x}"),
                    None => write!(f, " without PASID"),
                }
            }
            E::ConflictingRoute {
                device,
                rid,
                unit,
                existing,
            } => write!(
                f,
                "device {device} puts requester {rid} behind the unit at {unit:#x}, an earlier \
                 device behind the unit at {existing:#x}"
            ),
        }
    }
}

/// Checks `segs` by the rules above and returns them sorted by physical address, with
/// repeats dropped. `file` is the whole file; `whole_pages` asks for 4 KiB multiples.
pub fn check_segments(
    mut segs: Vec<LoadSegment>,
    file: &[u8],
    whole_pages: bool,
) -> Result<Vec<LoadSegment>, LayoutError> {
    let file_size = file.len() as u64;
    for s in &segs {
        if whole_pages && (s.size == 0 || s.size % PAGE != 0) {
            return Err(LayoutError::PartialPages {
                header: s.header,
                size: s.size,
            });
        }
        if s.paddr % PAGE != 0 {
            return Err(LayoutError::UnalignedPaddr {
                header: s.header,
                paddr: s.paddr,
            });
        }
        if s.size == 0 || s.paddr.checked_add(s.size - 1).is_none() {
            return Err(LayoutError::Wraps {
                header: s.header,
                paddr: s.paddr,
                size: s.size,
            });
        }
        if s.offset.checked_add(s.size).map_or(true, |e| e > file_size) {
            return Err(LayoutError::BeyondFile {
                header: s.header,
                offset: s.offset,
                size: s.size,
            });
        }
    }
    // Largest first at one address, so a holding segment comes before its repeats.
    segs.sort_unstable_by_key(|s| (s.paddr, core::cmp::Reverse(s.size), s.header));
    let mut kept: Vec<LoadSegment> = Vec::with_capacity(segs.len());
    let mut compared = 0u64;
    for s in segs {
        let Some(k) = kept.last() else {
            kept.push(s);
            continue;
        };
        if s.paddr > k.last() {
            kept.push(s);
            continue;
        }
        // Kept segments are disjoint and sorted, so only the last can hold s.paddr.
        if s.last() > k.last() {
            return Err(LayoutError::Overlap {
                first: k.header,
                second: s.header,
                addr: s.paddr,
            });
        }
        let from = k.offset + (s.paddr - k.paddr);
        if from != s.offset {
            compared = compared.saturating_add(s.size);
            if compared > file_size {
                return Err(LayoutError::RepeatsTooLarge {
                    header: s.header,
                    file_size,
                });
            }
            let a = &file[from as usize..(from + s.size) as usize];
            let b = &file[s.offset as usize..(s.offset + s.size) as usize];
            if let Some(i) = a.iter().zip(b).position(|(x, y)| x != y) {
                return Err(LayoutError::RepeatDiffers {
                    first: k.header,
                    second: s.header,
                    addr: s.paddr + i as u64,
                });
            }
        }
    }
    Ok(kept)
}

/// Coalesces RAM ranges `(base, size)` into sorted, disjoint, non-adjacent inclusive
/// runs `(first, last)`; empty or wrapping ranges are skipped (readers refuse them).
pub fn ram_runs(ram: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut r: Vec<(u64, u64)> = ram
        .iter()
        .filter(|&&(_, z)| z > 0)
        .filter_map(|&(b, z)| Some((b, b.checked_add(z - 1)?)))
        .collect();
    r.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(r.len());
    for (a, b) in r {
        match out.last_mut() {
            Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

/// Whether physical address `addr` lies in `runs` (from [`ram_runs`]).
pub fn in_runs(runs: &[(u64, u64)], addr: u64) -> bool {
    let i = runs.partition_point(|&(a, _)| a <= addr);
    i > 0 && addr <= runs[i - 1].1
}

/// Checks that every segment (sorted, disjoint: the output of [`check_segments`]) lies in
/// the RAM ranges `(base, size)`, by one sweep over both sorted lists.
pub fn check_in_ram(segs: &[LoadSegment], ram: &[(u64, u64)]) -> Result<(), LayoutError> {
    let runs = ram_runs(ram);
    let mut i = 0usize;
    for s in segs {
        while runs.get(i).is_some_and(|&(_, last)| last < s.paddr) {
            i += 1;
        }
        let bad = match runs.get(i) {
            Some(&(first, _)) if first > s.paddr => Some(s.paddr),
            Some(&(_, last)) if last < s.last() => Some(last + 1),
            Some(_) => None,
            None => Some(s.paddr),
        };
        if let Some(addr) = bad {
            return Err(LayoutError::OutsideRam {
                header: s.header,
                addr,
            });
        }
    }
    Ok(())
}

/// Checks that every device's unit (an MMIO base) is one of `units`.
pub fn check_device_units(
    devices: impl IntoIterator<Item = u64>,
    units: &[u64],
) -> Result<(), LayoutError> {
    let mut bases: Vec<u64> = units.to_vec();
    bases.sort_unstable();
    for (device, unit) in devices.into_iter().enumerate() {
        if bases.binary_search(&unit).is_err() {
            return Err(LayoutError::NoSuchUnit { device, unit });
        }
    }
    Ok(())
}

/// One device as an image lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceEntry {
    /// The requester.
    pub rid: RequesterId,
    /// The PASID its requests carry, if any.
    pub pasid: Option<u32>,
    /// MMIO base of its unit.
    pub unit: u64,
}

/// Checks the devices of an image: each names one of `units`
/// ([`check_device_units`]), no two have the same requester and PASID, and the devices
/// of one requester are behind one unit. The error names the first device (in list
/// order) that breaks a rule, the repeat before the route when it breaks both, as if the
/// devices were added one by one. O(n log n) in the devices.
pub fn check_devices(devices: &[DeviceEntry], units: &[u64]) -> Result<(), LayoutError> {
    check_device_units(devices.iter().map(|d| d.unit), units)?;
    // The first failing device in list order; for one device, the repeat is kept over
    // the route (it is checked first).
    let mut worst: Option<(usize, LayoutError)> = None;
    // Repeats: in (requester, PASID, index) order, every entry of a run but the first.
    let mut order: Vec<usize> = (0..devices.len()).collect();
    order.sort_unstable_by_key(|&i| (devices[i].rid, devices[i].pasid, i));
    let mut run = 0;
    for k in 0..order.len() {
        let (i, f) = (order[k], order[run]);
        if (devices[i].rid, devices[i].pasid) != (devices[f].rid, devices[f].pasid) {
            run = k;
            continue;
        }
        if k != run && worst.as_ref().map_or(true, |(w, _)| i < *w) {
            worst = Some((
                i,
                LayoutError::DuplicateDevice {
                    device: i,
                    first: f,
                    rid: devices[i].rid,
                    pasid: devices[i].pasid,
                },
            ));
        }
    }
    // Routes: in (requester, index) order, the first device of a requester names its
    // unit.
    order.sort_unstable_by_key(|&i| (devices[i].rid, i));
    let mut run = 0;
    for k in 0..order.len() {
        let (i, f) = (order[k], order[run]);
        if devices[i].rid != devices[f].rid {
            run = k;
            continue;
        }
        if devices[i].unit != devices[f].unit && worst.as_ref().map_or(true, |(w, _)| i < *w) {
            worst = Some((
                i,
                LayoutError::ConflictingRoute {
                    device: i,
                    rid: devices[i].rid,
                    unit: devices[i].unit,
                    existing: devices[f].unit,
                },
            ));
        }
    }
    match worst {
        Some((_, e)) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn seg(header: u64, paddr: u64, size: u64, offset: u64) -> LoadSegment {
        LoadSegment {
            header,
            paddr,
            size,
            offset,
        }
    }

    #[test]
    fn repeat_with_identical_bytes_is_dropped_and_with_different_bytes_refused() {
        let mut file = vec![0u8; 4 * PAGE as usize];
        file[PAGE as usize..2 * PAGE as usize].fill(7);
        file[3 * PAGE as usize..].fill(7);
        // RAM segment at 0x10000 of two pages from file offset 0; the repeat is its
        // second page, copied at file offset 3 pages.
        let big = seg(0x40, 0x10000, 2 * PAGE, 0);
        let kept = check_segments(vec![seg(0x78, 0x11000, PAGE, 3 * PAGE), big], &file, true);
        assert_eq!(kept, Ok(vec![big]));
        file[3 * PAGE as usize + 5] = 8;
        assert_eq!(
            check_segments(vec![seg(0x78, 0x11000, PAGE, 3 * PAGE), big], &file, true),
            Err(LayoutError::RepeatDiffers {
                first: 0x40,
                second: 0x78,
                addr: 0x11005
            })
        );
    }

    #[test]
    fn partial_overlap_unaligned_and_outside_ram_are_refused() {
        let file = vec![0u8; 4 * PAGE as usize];
        assert!(matches!(
            check_segments(
                vec![seg(0x40, 0, 2 * PAGE, 0), seg(0x78, PAGE, 2 * PAGE, 0)],
                &file,
                true
            ),
            Err(LayoutError::Overlap { addr: 0x1000, .. })
        ));
        assert!(matches!(
            check_segments(vec![seg(0x40, 8, PAGE, 0)], &file, false),
            Err(LayoutError::UnalignedPaddr { paddr: 8, .. })
        ));
        let s = [seg(0x40, 0x2000, 2 * PAGE, 0)];
        // Adjacent RAM ranges hold a segment spanning both.
        assert_eq!(check_in_ram(&s, &[(0x3000, PAGE), (0x2000, PAGE)]), Ok(()));
        assert_eq!(
            check_in_ram(&s, &[(0x2000, PAGE)]),
            Err(LayoutError::OutsideRam {
                header: 0x40,
                addr: 0x3000
            })
        );
        assert_eq!(
            check_device_units([0x1000, 0x2000], &[0x1000]),
            Err(LayoutError::NoSuchUnit {
                device: 1,
                unit: 0x2000
            })
        );
    }

    /// Devices as one reader lists them: a repeat of (requester, PASID) and a requester
    /// split over two units are refused at the first device (list order) that breaks a
    /// rule, the repeat first when a device breaks both; PASIDs of one requester behind
    /// one unit are fine.
    #[test]
    fn repeated_devices_and_split_requesters_are_refused_at_the_first_offender() {
        let r = |bus: u8| RequesterId {
            segment: 0,
            bus,
            devfn: 8,
        };
        let d = |bus, pasid, unit| DeviceEntry {
            rid: r(bus),
            pasid,
            unit,
        };
        let units = [0x1000, 0x2000];
        let fine = [
            d(1, None, 0x1000),
            d(1, Some(3), 0x1000),
            d(2, Some(3), 0x2000),
        ];
        assert_eq!(check_devices(&fine, &units), Ok(()));
        let repeat = [
            d(1, None, 0x1000),
            d(2, Some(3), 0x2000),
            d(1, None, 0x1000),
            d(1, Some(4), 0x2000),
        ];
        assert_eq!(
            check_devices(&repeat, &units),
            Err(LayoutError::DuplicateDevice {
                device: 2,
                first: 0,
                rid: r(1),
                pasid: None
            })
        );
        // Device 1 splits requester 1 before device 3 repeats it; device 3 breaks both
        // rules and is not the first offender.
        let split = [
            d(1, Some(3), 0x1000),
            d(1, None, 0x2000),
            d(2, None, 0x1000),
            d(1, None, 0x2000),
        ];
        assert_eq!(
            check_devices(&split, &units),
            Err(LayoutError::ConflictingRoute {
                device: 1,
                rid: r(1),
                unit: 0x2000,
                existing: 0x1000
            })
        );
        // One device breaking both: the repeat is named.
        let both = [d(1, None, 0x1000), d(1, None, 0x2000)];
        assert!(matches!(
            check_devices(&both, &units),
            Err(LayoutError::DuplicateDevice { device: 1, .. })
        ));
        // A missing unit comes first.
        assert!(matches!(
            check_devices(&[d(1, None, 0x1000), d(1, None, 0x3000)], &units),
            Err(LayoutError::NoSuchUnit { device: 1, .. })
        ));
    }
}
