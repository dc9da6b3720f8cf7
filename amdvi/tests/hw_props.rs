//! Property tests of the AMD-Vi layouts: encodings round-trip for every value the
//! fields can hold (`cargo test -p amdvi --test hw_props`).

use amdvi::hw::cmd::{Cmd, Command, InvRange};
use amdvi::hw::dte::{DeviceTableEntry, Glx, GuestPagingMode};
use amdvi::hw::event::{Event, EventEntry, EventFlags};
use amdvi::hw::pte::{sized_page_addr, sized_page_shift, NEXT_LEVEL_MASK, PR};
use amdvi::hw::ADDR_51_12;
use proptest::prelude::*;

proptest! {
    /// The GCR3 root pointer, split over DTE bits 60:58, 95:80 and 127:107, reads back
    /// for any 4 KiB-aligned address below 2^52, and leaves DomainID and Mode alone.
    #[test]
    fn gcr3_root_round_trips(addr in any::<u64>(), dom in any::<u16>()) {
        let root = addr & ADDR_51_12;
        let mut e = DeviceTableEntry::blocking(dom);
        e.set_guest(root, Glx::One, false, GuestPagingMode::Level4);
        prop_assert_eq!(e.gcr3_root(), root);
        prop_assert_eq!(e.domain_id(), dom);
        prop_assert!(e.valid() && e.translation_valid() && e.guest_valid());
    }

    /// A NextLevel-7 address encodes exactly its page size and base.
    #[test]
    fn sized_page_encoding_round_trips(shift in 13u32..=52, pfn in any::<u64>()) {
        let pa = (pfn << shift) & ADDR_51_12;
        let a = sized_page_addr(pa, shift);
        prop_assert_eq!(sized_page_shift(a | (7 << 9) | PR), Some(shift));
        prop_assert_eq!(a & !((1u64 << shift) - 1), pa);
        prop_assert_eq!(a & NEXT_LEVEL_MASK, 0);
    }

    /// An invalidation range covers what was asked, is naturally aligned, and is at
    /// most twice the smallest aligned power of two holding both ends; the command
    /// built from it decodes to the same range.
    #[test]
    fn invalidation_range_covers(start in any::<u64>(), len in 1u64..(1 << 40), dom in any::<u16>()) {
        let start = start & ((1u64 << 52) - 1);
        let r = InvRange::covering(start, len);
        let (first, last) = r.bounds();
        let end = start.saturating_add(len - 1);
        prop_assert!(first <= start && end <= last);
        let size = (last - first).wrapping_add(1);
        if size != 0 {
            prop_assert!(size.is_power_of_two());
            prop_assert_eq!(first % size, 0);
            // The half-size aligned block around `start` would miss `end`.
            if size > 4096 {
                let half = size / 2;
                prop_assert!(start / half != end / half);
            }
        }
        let c = Command::invalidate_iommu_pages(dom, r, true);
        prop_assert_eq!(c.reserved_bits(), [0, 0]);
        match c.decode() {
            Some(Cmd::InvalidateIommuPages { domain_id, range, pde: true, .. }) => {
                prop_assert_eq!(domain_id, dom);
                prop_assert_eq!(range.bounds(), (first, last));
            }
            other => prop_assert!(false, "{:?}", other),
        }
    }

    /// IO_PAGE_FAULT fields read back as written.
    #[test]
    fn io_page_fault_round_trips(dev in any::<u16>(), dom in any::<u16>(), flags in 0u16..0x1000, addr in any::<u64>()) {
        let e = EventEntry::io_page_fault(dev, dom, EventFlags(flags), addr);
        prop_assert_eq!(
            e.decode(),
            Some(Event::IoPageFault {
                device_id: dev,
                domain_or_pasid: dom as u32,
                flags: EventFlags(flags),
                address: addr
            })
        );
    }
}
