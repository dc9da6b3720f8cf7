//! Queued-invalidation descriptors.
//!
//! A descriptor is 128 bits (IQA.DW = 0) or 256 bits (IQA.DW = 1; the upper two
//! qwords are reserved for every type decoded here). The type is
//! `bits[11:9] << 4 | bits[3:0]`.

use super::regs::{ContextGranularity, IotlbGranularity};
use iommu_core::qword_struct;

/// Context-cache invalidate descriptor type.
pub const TYPE_CONTEXT_CACHE: u8 = 1;
/// IOTLB invalidate descriptor type.
pub const TYPE_IOTLB: u8 = 2;
/// Device-TLB invalidate descriptor type.
pub const TYPE_DEVICE_TLB: u8 = 3;
/// Interrupt-entry-cache invalidate descriptor type.
pub const TYPE_IEC: u8 = 4;
/// Invalidation wait descriptor type.
pub const TYPE_WAIT: u8 = 5;
/// PASID-based IOTLB invalidate descriptor type.
pub const TYPE_PASID_IOTLB: u8 = 6;
/// PASID-cache invalidate descriptor type.
pub const TYPE_PASID_CACHE: u8 = 7;
/// PASID-based device-TLB invalidate descriptor type.
pub const TYPE_PASID_DEVICE_TLB: u8 = 8;

qword_struct!(
    /// One invalidation descriptor, 256 bits; a 128-bit descriptor uses qwords 0–1.
    QiDescriptor,
    4
);

/// PASID-cache invalidation granularity (PASID-cache descriptor G).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PasidCacheGranularity {
    /// 0: every PASID-cache entry of a domain.
    Domain,
    /// 1: entries of one PASID in one domain.
    Pasid,
    /// 3: every PASID-cache entry.
    Global,
}

/// PASID-based IOTLB invalidation granularity (descriptor G).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PasidIotlbGranularity {
    /// 2: every entry of a PASID within a domain.
    Pasid,
    /// 3: pages `ADDR .. ADDR + 2^AM pages` of a PASID within a domain.
    Page,
}

/// A decoded invalidation descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Descriptor {
    /// Type 1: context-cache invalidation.
    ContextCache {
        /// Granularity.
        granularity: ContextGranularity,
        /// Domain ID (domain- and device-selective).
        did: u16,
        /// Source ID (device-selective).
        sid: u16,
        /// Function mask.
        fm: u8,
    },
    /// Type 2: IOTLB invalidation.
    Iotlb {
        /// Granularity.
        granularity: IotlbGranularity,
        /// Drain writes.
        dw: bool,
        /// Drain reads.
        dr: bool,
        /// Domain ID.
        did: u16,
        /// Page address (page-selective).
        addr: u64,
        /// Invalidation hint: only leaf entries changed.
        ih: bool,
        /// Address mask: `2^am` pages.
        am: u8,
    },
    /// Type 3: device-TLB invalidation.
    DeviceTlb {
        /// Source ID of the device.
        sid: u16,
        /// Physical-function source ID.
        pfsid: u16,
        /// Max invalidations pending.
        mip: u8,
        /// Size bit (range encoded in the address).
        size: bool,
        /// Address.
        addr: u64,
    },
    /// Type 4: interrupt-entry-cache invalidation.
    Iec {
        /// Index-selective (true) or global (false).
        index_selective: bool,
        /// Index mask.
        im: u8,
        /// Interrupt index.
        iidx: u16,
    },
    /// Type 5: invalidation wait.
    Wait {
        /// Raise an invalidation-completion interrupt (ICS.IWC).
        interrupt: bool,
        /// Write `status_data` to `status_addr`.
        status_write: bool,
        /// Fence.
        fence: bool,
        /// Page-request drain.
        page_drain: bool,
        /// Status data.
        status_data: u32,
        /// Status address (dword aligned).
        status_addr: u64,
    },
    /// Type 6: PASID-based IOTLB invalidation.
    PasidIotlb {
        /// Granularity.
        granularity: PasidIotlbGranularity,
        /// Domain ID.
        did: u16,
        /// PASID.
        pasid: u32,
        /// Page address (page-selective).
        addr: u64,
        /// Invalidation hint.
        ih: bool,
        /// Address mask.
        am: u8,
    },
    /// Type 7: PASID-cache invalidation.
    PasidCache {
        /// Granularity.
        granularity: PasidCacheGranularity,
        /// Domain ID.
        did: u16,
        /// PASID.
        pasid: u32,
    },
    /// Type 8: PASID-based device-TLB invalidation.
    PasidDeviceTlb {
        /// Source ID.
        sid: u16,
        /// PASID.
        pasid: u32,
        /// Global.
        global: bool,
        /// Size bit.
        size: bool,
        /// Address.
        addr: u64,
    },
}

/// Why a descriptor could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DescriptorError {
    /// The type is not one of 1–8.
    InvalidType {
        /// The full 7-bit type.
        ty: u8,
    },
    /// A reserved field is non-zero (or a granularity uses a reserved encoding).
    Reserved {
        /// The type.
        ty: u8,
        /// Which qword.
        qword: usize,
        /// The offending bits.
        bits: u64,
    },
}

impl core::fmt::Display for DescriptorError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            DescriptorError::InvalidType { ty } => {
                write!(f, "invalid descriptor type {ty:#x}")
            }
            DescriptorError::Reserved { ty, qword, bits } => write!(
                f,
                "descriptor type {ty:#x}: reserved bits {bits:#x} set in qword {qword}"
            ),
        }
    }
}

fn check(ty: u8, qword: usize, value: u64, rsvd: u64) -> Result<(), DescriptorError> {
    if value & rsvd != 0 {
        Err(DescriptorError::Reserved {
            ty,
            qword,
            bits: value & rsvd,
        })
    } else {
        Ok(())
    }
}

impl QiDescriptor {
    /// The 7-bit descriptor type, `bits[11:9] << 4 | bits[3:0]`.
    pub fn ty(&self) -> u8 {
        (((self.qword(0) >> 9) & 7) << 4 | (self.qword(0) & 0xf)) as u8
    }

    /// Decodes the descriptor and checks its reserved fields; `wide` says whether it is
    /// a 256-bit descriptor (then qwords 2 and 3 must be zero).
    pub fn decode(&self, wide: bool) -> Result<Descriptor, DescriptorError> {
        let ty = self.ty();
        let lo = self.qword(0);
        let hi = self.qword(1);
        if !(1..=8).contains(&ty) {
            return Err(DescriptorError::InvalidType { ty });
        }
        if wide {
            check(ty, 2, self.qword(2), u64::MAX)?;
            check(ty, 3, self.qword(3), u64::MAX)?;
        }
        let bits = iommu_core::entry::get_bits;
        let reserved_g = |qword: usize, g: u64| DescriptorError::Reserved { ty, qword, bits: g };
        match ty {
            TYPE_CONTEXT_CACHE => {
                // lo: G 5:4, DID 31:16, SID 47:32, FM 49:48; rest reserved; hi reserved.
                check(ty, 0, lo, 0xfffc_0000_0000_ffc0)?;
                check(ty, 1, hi, u64::MAX)?;
                let granularity = ContextGranularity::from_bits(bits(lo, 5, 4))
                    .ok_or_else(|| reserved_g(0, lo & 0x30))?;
                Ok(Descriptor::ContextCache {
                    granularity,
                    did: bits(lo, 31, 16) as u16,
                    sid: bits(lo, 47, 32) as u16,
                    fm: bits(lo, 49, 48) as u8,
                })
            }
            TYPE_IOTLB => {
                // lo: G 5:4, DW 6, DR 7, DID 31:16; hi: AM 5:0, IH 6, ADDR 63:12.
                check(ty, 0, lo, 0xffff_ffff_0000_ff00)?;
                check(ty, 1, hi, 0xf80)?;
                let granularity = IotlbGranularity::from_bits(bits(lo, 5, 4))
                    .ok_or_else(|| reserved_g(0, lo & 0x30))?;
                Ok(Descriptor::Iotlb {
                    granularity,
                    dw: lo & (1 << 6) != 0,
                    dr: lo & (1 << 7) != 0,
                    did: bits(lo, 31, 16) as u16,
                    addr: hi & !0xfff,
                    ih: hi & (1 << 6) != 0,
                    am: bits(hi, 5, 0) as u8,
                })
            }
            TYPE_DEVICE_TLB => {
                // lo: PFSID[3:0] 15:12, MIP 20:16, SID 47:32, PFSID[15:4] 63:52;
                // hi: S 0, ADDR 63:12.
                check(ty, 0, lo, 0x000f_0000_ffe0_0ff0)?;
                check(ty, 1, hi, 0xffe)?;
                Ok(Descriptor::DeviceTlb {
                    sid: bits(lo, 47, 32) as u16,
                    pfsid: (bits(lo, 15, 12) | bits(lo, 63, 52) << 4) as u16,
                    mip: bits(lo, 20, 16) as u8,
                    size: hi & 1 != 0,
                    addr: hi & !0xfff,
                })
            }
            TYPE_IEC => {
                // lo: G 4, IM 31:27, IIDX 47:32; hi reserved.
                check(ty, 0, lo, 0xffff_0000_07ff_ffe0)?;
                check(ty, 1, hi, u64::MAX)?;
                Ok(Descriptor::Iec {
                    index_selective: lo & (1 << 4) != 0,
                    im: bits(lo, 31, 27) as u8,
                    iidx: bits(lo, 47, 32) as u16,
                })
            }
            TYPE_WAIT => {
                // lo: IF 4, SW 5, FN 6, PD 7, status data 63:32; hi: address 63:2.
                check(ty, 0, lo, 0xffff_ff00)?;
                check(ty, 1, hi, 0x3)?;
                Ok(Descriptor::Wait {
                    interrupt: lo & (1 << 4) != 0,
                    status_write: lo & (1 << 5) != 0,
                    fence: lo & (1 << 6) != 0,
                    page_drain: lo & (1 << 7) != 0,
                    status_data: (lo >> 32) as u32,
                    status_addr: hi & !0x3,
                })
            }
            TYPE_PASID_IOTLB => {
                // lo: G 5:4, DID 31:16, PASID 51:32; hi: AM 5:0, IH 6, ADDR 63:12.
                check(ty, 0, lo, 0xfff0_0000_0000_ffc0)?;
                check(ty, 1, hi, 0xf80)?;
                let granularity = match bits(lo, 5, 4) {
                    2 => PasidIotlbGranularity::Pasid,
                    3 => PasidIotlbGranularity::Page,
                    _ => return Err(reserved_g(0, lo & 0x30)),
                };
                Ok(Descriptor::PasidIotlb {
                    granularity,
                    did: bits(lo, 31, 16) as u16,
                    pasid: bits(lo, 51, 32) as u32,
                    addr: hi & !0xfff,
                    ih: hi & (1 << 6) != 0,
                    am: bits(hi, 5, 0) as u8,
                })
            }
            TYPE_PASID_CACHE => {
                // lo: G 5:4, DID 31:16, PASID 51:32; hi reserved.
                check(ty, 0, lo, 0xfff0_0000_0000_ffc0)?;
                check(ty, 1, hi, u64::MAX)?;
                let granularity = match bits(lo, 5, 4) {
                    0 => PasidCacheGranularity::Domain,
                    1 => PasidCacheGranularity::Pasid,
                    3 => PasidCacheGranularity::Global,
                    _ => return Err(reserved_g(0, lo & 0x30)),
                };
                Ok(Descriptor::PasidCache {
                    granularity,
                    did: bits(lo, 31, 16) as u16,
                    pasid: bits(lo, 51, 32) as u32,
                })
            }
            _ => {
                // TYPE_PASID_DEVICE_TLB — lo: MIP 8:4, PFSID[3:0] 15:12, SID 31:16,
                // PASID 51:32, PFSID[15:4] 63:52; hi: G 0, S 11, ADDR 63:12.
                check(ty, 0, lo, 0x0000_0000_0000_0e00)?;
                check(ty, 1, hi, 0x7fe)?;
                Ok(Descriptor::PasidDeviceTlb {
                    sid: bits(lo, 31, 16) as u16,
                    pasid: bits(lo, 51, 32) as u32,
                    global: hi & 1 != 0,
                    size: hi & (1 << 11) != 0,
                    addr: hi & !0xfff,
                })
            }
        }
    }

    /// Encodes a descriptor (reserved fields zero).
    pub fn encode(d: &Descriptor) -> Self {
        let (lo, hi) = match *d {
            Descriptor::ContextCache {
                granularity,
                did,
                sid,
                fm,
            } => (
                TYPE_CONTEXT_CACHE as u64
                    | granularity.bits() << 4
                    | (did as u64) << 16
                    | (sid as u64) << 32
                    | ((fm & 3) as u64) << 48,
                0,
            ),
            Descriptor::Iotlb {
                granularity,
                dw,
                dr,
                did,
                addr,
                ih,
                am,
            } => (
                TYPE_IOTLB as u64
                    | granularity.bits() << 4
                    | (dw as u64) << 6
                    | (dr as u64) << 7
                    | (did as u64) << 16,
                (addr & !0xfff) | (ih as u64) << 6 | (am & 0x3f) as u64,
            ),
            Descriptor::DeviceTlb {
                sid,
                pfsid,
                mip,
                size,
                addr,
            } => (
                TYPE_DEVICE_TLB as u64
                    | ((pfsid & 0xf) as u64) << 12
                    | ((mip & 0x1f) as u64) << 16
                    | (sid as u64) << 32
                    | ((pfsid >> 4) as u64) << 52,
                (addr & !0xfff) | size as u64,
            ),
            Descriptor::Iec {
                index_selective,
                im,
                iidx,
            } => (
                TYPE_IEC as u64
                    | (index_selective as u64) << 4
                    | ((im & 0x1f) as u64) << 27
                    | (iidx as u64) << 32,
                0,
            ),
            Descriptor::Wait {
                interrupt,
                status_write,
                fence,
                page_drain,
                status_data,
                status_addr,
            } => (
                TYPE_WAIT as u64
                    | (interrupt as u64) << 4
                    | (status_write as u64) << 5
                    | (fence as u64) << 6
                    | (page_drain as u64) << 7
                    | (status_data as u64) << 32,
                status_addr & !0x3,
            ),
            Descriptor::PasidIotlb {
                granularity,
                did,
                pasid,
                addr,
                ih,
                am,
            } => (
                TYPE_PASID_IOTLB as u64
                    | match granularity {
                        PasidIotlbGranularity::Pasid => 2,
                        PasidIotlbGranularity::Page => 3,
                    } << 4
                    | (did as u64) << 16
                    | ((pasid & 0xfffff) as u64) << 32,
                (addr & !0xfff) | (ih as u64) << 6 | (am & 0x3f) as u64,
            ),
            Descriptor::PasidCache {
                granularity,
                did,
                pasid,
            } => (
                TYPE_PASID_CACHE as u64
                    | match granularity {
                        PasidCacheGranularity::Domain => 0,
                        PasidCacheGranularity::Pasid => 1,
                        PasidCacheGranularity::Global => 3,
                    } << 4
                    | (did as u64) << 16
                    | ((pasid & 0xfffff) as u64) << 32,
                0,
            ),
            Descriptor::PasidDeviceTlb {
                sid,
                pasid,
                global,
                size,
                addr,
            } => (
                TYPE_PASID_DEVICE_TLB as u64
                    | (sid as u64) << 16
                    | ((pasid & 0xfffff) as u64) << 32,
                (addr & !0xfff) | global as u64 | (size as u64) << 11,
            ),
        };
        Self::from_qwords([lo, hi, 0, 0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_values_match_linux() {
        // Linux iommu.h: QI_CC_TYPE 1, QI_IOTLB_TYPE 2, QI_DIOTLB_TYPE 3, QI_IEC_TYPE 4,
        // QI_IWD_TYPE 5, QI_EIOTLB_TYPE 6, QI_PC_TYPE 7, QI_DEIOTLB_TYPE 8.
        assert_eq!(
            [
                TYPE_CONTEXT_CACHE,
                TYPE_IOTLB,
                TYPE_DEVICE_TLB,
                TYPE_IEC,
                TYPE_WAIT,
                TYPE_PASID_IOTLB,
                TYPE_PASID_CACHE,
                TYPE_PASID_DEVICE_TLB
            ],
            [1, 2, 3, 4, 5, 6, 7, 8]
        );
        assert_eq!(core::mem::size_of::<QiDescriptor>(), 32);
    }

    #[test]
    fn context_cache_descriptor_matches_linux() {
        // Linux: QI_CC_FM(fm) fm << 48, QI_CC_SID(sid) sid << 32, QI_CC_DID(did) did << 16,
        // QI_CC_GRAN(DMA_CCMD_DEVICE_INVL) = (3 << 61) >> 57 = 3 << 4.
        let d = Descriptor::ContextCache {
            granularity: ContextGranularity::Device,
            did: 0x12,
            sid: 0x0308,
            fm: 1,
        };
        let q = QiDescriptor::encode(&d);
        assert_eq!(
            q.qword(0),
            1 | (3 << 4) | (0x12 << 16) | (0x0308 << 32) | (1 << 48)
        );
        assert_eq!(q.qword(1), 0);
        assert_eq!(q.decode(false), Ok(d));
        assert_eq!(q.decode(true), Ok(d));
    }

    #[test]
    fn iotlb_descriptor_matches_linux_and_qemu() {
        // Linux: QI_IOTLB_DID(did) did << 16, QI_IOTLB_DR(dr) dr << 7, QI_IOTLB_DW(dw) dw << 6,
        // QI_IOTLB_GRAN(DMA_TLB_PSI_FLUSH) = (3 << 60) >> 56 = 3 << 4, QI_IOTLB_IH(ih) ih << 6,
        // QI_IOTLB_AM(am) am & 0x3f. QEMU: VTD_INV_DESC_IOTLB_RSVD_LO 0xffffffff0000ff00,
        // VTD_INV_DESC_IOTLB_RSVD_HI 0xf80.
        let d = Descriptor::Iotlb {
            granularity: IotlbGranularity::Page,
            dw: true,
            dr: true,
            did: 5,
            addr: 0x1234_5000,
            ih: true,
            am: 3,
        };
        let q = QiDescriptor::encode(&d);
        assert_eq!(q.qword(0), 2 | (3 << 4) | (1 << 6) | (1 << 7) | (5 << 16));
        assert_eq!(q.qword(1), 0x1234_5000 | (1 << 6) | 3);
        assert_eq!(q.decode(false), Ok(d));
        let bad = QiDescriptor::from_qwords([q.qword(0) | (1 << 40), q.qword(1), 0, 0]);
        assert_eq!(
            bad.decode(false),
            Err(DescriptorError::Reserved {
                ty: 2,
                qword: 0,
                bits: 1 << 40
            })
        );
        let bad_hi = QiDescriptor::from_qwords([q.qword(0), q.qword(1) | 0x80, 0, 0]);
        assert!(matches!(
            bad_hi.decode(false),
            Err(DescriptorError::Reserved { qword: 1, .. })
        ));
        let g0 = QiDescriptor::from_qwords([2, 0, 0, 0]);
        assert!(matches!(
            g0.decode(false),
            Err(DescriptorError::Reserved { .. })
        ));
        // In a 256-bit queue, qwords 2 and 3 are reserved.
        let wide = QiDescriptor::from_qwords([q.qword(0), q.qword(1), 1, 0]);
        assert!(wide.decode(false).is_ok());
        assert!(matches!(
            wide.decode(true),
            Err(DescriptorError::Reserved { qword: 2, .. })
        ));
    }

    #[test]
    fn wait_descriptor_matches_linux_and_qemu() {
        // Linux: QI_IWD_STATUS_DATA(d) d << 32, QI_IWD_STATUS_WRITE 1 << 5,
        // QI_IWD_FENCE 1 << 6, QI_IWD_PRQ_DRAIN 1 << 7; QEMU VTD_INV_DESC_WAIT_IF 1 << 4,
        // VTD_INV_DESC_WAIT_RSVD_HI 3.
        let d = Descriptor::Wait {
            interrupt: true,
            status_write: true,
            fence: true,
            page_drain: false,
            status_data: 0xdead_beef,
            status_addr: 0x8000_1004,
        };
        let q = QiDescriptor::encode(&d);
        assert_eq!(
            q.qword(0),
            5 | (1 << 4) | (1 << 5) | (1 << 6) | (0xdead_beef << 32)
        );
        assert_eq!(q.qword(1), 0x8000_1004);
        assert_eq!(q.decode(false), Ok(d));
        let mis = QiDescriptor::from_qwords([q.qword(0), 0x8000_1006, 0, 0]);
        assert!(mis.decode(false).is_err());
    }

    #[test]
    fn pasid_descriptors_match_linux() {
        // Linux: QI_PC_PASID(p) p << 32, QI_PC_DID(d) d << 16, QI_PC_GRAN(g) g << 4 with
        // QI_PC_ALL_PASIDS 0, QI_PC_PASID_SEL 1, QI_PC_GLOBAL 3; QI_EIOTLB_PASID(p) p << 32,
        // QI_EIOTLB_DID(d) d << 16, QI_EIOTLB_GRAN(g) g << 4 with QI_GRAN_NONG_PASID 2,
        // QI_GRAN_PSI_PASID 3; QI_EIOTLB_IH(ih) ih << 6; QI_EIOTLB_AM(am) am & 0x3f.
        let pc = Descriptor::PasidCache {
            granularity: PasidCacheGranularity::Pasid,
            did: 7,
            pasid: 0x12345,
        };
        let q = QiDescriptor::encode(&pc);
        assert_eq!(q.qword(0), 7 | (1 << 4) | (7 << 16) | (0x12345 << 32));
        assert_eq!(q.decode(true), Ok(pc));
        let g2 = QiDescriptor::from_qwords([7 | (2 << 4), 0, 0, 0]);
        assert!(g2.decode(true).is_err());
        let pi = Descriptor::PasidIotlb {
            granularity: PasidIotlbGranularity::Page,
            did: 3,
            pasid: 9,
            addr: 0x40_0000,
            ih: false,
            am: 9,
        };
        let q = QiDescriptor::encode(&pi);
        assert_eq!(q.qword(0), 6 | (3 << 4) | (3 << 16) | (9 << 32));
        assert_eq!(q.qword(1), 0x40_0000 | 9);
        assert_eq!(q.decode(true), Ok(pi));
    }

    #[test]
    fn device_tlb_and_iec_match_linux() {
        // Linux: QI_DEV_IOTLB_SID(sid) sid << 32, QI_DEV_IOTLB_QDEP(q) q << 16,
        // QI_DEV_IOTLB_PFSID(p) = (p & 0xf) << 12 | ((p >> 4) & 0xfff) << 52,
        // QI_DEV_IOTLB_SIZE 1; QI_IEC_SELECTIVE 1 << 4, QI_IEC_IIDEX(i) i << 32,
        // QI_IEC_IM(m) m << 27.
        let d = Descriptor::DeviceTlb {
            sid: 0x0100,
            pfsid: 0x0123,
            mip: 4,
            size: true,
            addr: 0x7fff_f000,
        };
        let q = QiDescriptor::encode(&d);
        assert_eq!(
            q.qword(0),
            3 | (0x3 << 12) | (4 << 16) | (0x0100 << 32) | (0x12 << 52)
        );
        assert_eq!(q.qword(1), 0x7fff_f001);
        assert_eq!(q.decode(false), Ok(d));
        let iec = Descriptor::Iec {
            index_selective: true,
            im: 2,
            iidx: 0x40,
        };
        let q = QiDescriptor::encode(&iec);
        assert_eq!(q.qword(0), 4 | (1 << 4) | (2 << 27) | (0x40 << 32));
        assert_eq!(q.decode(false), Ok(iec));
    }

    #[test]
    fn type_high_bits_extend_the_type() {
        // VirtualBox iommu-intel.h: bits 11:9 are Type[6:4] in every descriptor.
        let q = QiDescriptor::from_qwords([1 | (1 << 9) | (1 << 4), 0, 0, 0]);
        assert_eq!(q.ty(), 0x11);
        assert_eq!(
            q.decode(false),
            Err(DescriptorError::InvalidType { ty: 0x11 })
        );
        let z = QiDescriptor::from_qwords([0, 0, 0, 0]);
        assert_eq!(z.decode(false), Err(DescriptorError::InvalidType { ty: 0 }));
    }
}
