//! VT-d registers decoded by field, with the field positions of `vtd::hw::regs`.

use super::Unit;
use tock_registers::fields::Field;
use tock_registers::RegisterLongName;
use vtd::hw::regs::{self as r, CAP, ECAP, FECTL, FSTS, GSTS, IQA, IQERCD, IQH, IQT, IRTA, PMEN};
use vtd::hw::regs::{CCMD, FRCD_HI, FRCD_LO, ICS, IECTL, IOTLB, IVA, RTADDR, VER};

/// One register with its fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodedReg {
    /// Name (`CAP`, `FRCD3_HI`...).
    pub name: String,
    /// Offset from the MMIO base.
    pub offset: u64,
    /// Width in bytes.
    pub width: u32,
    /// Raw value.
    pub value: u64,
    /// Fields in bit order: name and value.
    pub fields: Vec<(&'static str, u64)>,
    /// A one-line reading of the register (e.g. `256 domain IDs`), if useful.
    pub note: Option<String>,
}

fn f64s<R: RegisterLongName>(
    v: u64,
    list: &[(&'static str, Field<u64, R>)],
) -> Vec<(&'static str, u64)> {
    list.iter().map(|(n, f)| (*n, f.read(v))).collect()
}

fn f32s<R: RegisterLongName>(
    v: u64,
    list: &[(&'static str, Field<u32, R>)],
) -> Vec<(&'static str, u64)> {
    list.iter()
        .map(|(n, f)| (*n, f.read(v as u32) as u64))
        .collect()
}

fn sagaw_note(sagaw: u64) -> String {
    let mut w = Vec::new();
    for (bit, name) in [
        (1, "39-bit/3-level"),
        (2, "48-bit/4-level"),
        (3, "57-bit/5-level"),
    ] {
        if sagaw >> bit & 1 != 0 {
            w.push(name);
        }
    }
    if w.is_empty() {
        "no supported second-stage width".into()
    } else {
        w.join(", ")
    }
}

/// Every register of `unit` the image holds, decoded; unknown offsets get a name
/// `REG_0x...` and no fields.
pub fn decode(unit: &Unit) -> Vec<DecodedReg> {
    let cap = unit.cap();
    let ecap = unit.ecap();
    let (iva_off, iotlb_off) = r::iotlb_offsets(ecap);
    let fro = r::fault_recording_offset(cap, 0);
    let nfr = r::fault_recording_count(cap);
    let mut out: Vec<DecodedReg> = unit
        .regs
        .iter()
        .map(|reg| {
            let v = reg.value;
            let (name, fields, note): (String, Vec<(&'static str, u64)>, Option<String>) =
                match reg.offset {
                    r::VER => (
                        "VER".into(),
                        f32s(v, &[("MAX", VER::MAX), ("MIN", VER::MIN)]),
                        Some(format!(
                            "VT-d {}.{}",
                            VER::MAX.read(v as u32),
                            VER::MIN.read(v as u32)
                        )),
                    ),
                    r::CAP => (
                        "CAP".into(),
                        f64s(
                            v,
                            &[
                                ("ND", CAP::ND),
                                ("AFL", CAP::AFL),
                                ("RWBF", CAP::RWBF),
                                ("PLMR", CAP::PLMR),
                                ("PHMR", CAP::PHMR),
                                ("CM", CAP::CM),
                                ("SAGAW", CAP::SAGAW),
                                ("MGAW", CAP::MGAW),
                                ("ZLR", CAP::ZLR),
                                ("FRO", CAP::FRO),
                                ("SLLPS", CAP::SLLPS),
                                ("PSI", CAP::PSI),
                                ("NFR", CAP::NFR),
                                ("MAMV", CAP::MAMV),
                                ("DWD", CAP::DWD),
                                ("DRD", CAP::DRD),
                                ("FL1GP", CAP::FL1GP),
                                ("PI", CAP::PI),
                                ("FL5LP", CAP::FL5LP),
                                ("ECMDS", CAP::ECMDS),
                                ("ESIRTPS", CAP::ESIRTPS),
                                ("ESRTPS", CAP::ESRTPS),
                            ],
                        ),
                        Some(format!(
                            "{} domain IDs; second-stage widths: {}; MGAW {} bits; {} fault \
                             records at {:#x}",
                            r::domain_count(v),
                            sagaw_note(CAP::SAGAW.read(v)),
                            CAP::MGAW.read(v) + 1,
                            r::fault_recording_count(v),
                            r::fault_recording_offset(v, 0)
                        )),
                    ),
                    r::ECAP => (
                        "ECAP".into(),
                        f64s(
                            v,
                            &[
                                ("C", ECAP::C),
                                ("QI", ECAP::QI),
                                ("DT", ECAP::DT),
                                ("IR", ECAP::IR),
                                ("EIM", ECAP::EIM),
                                ("PT", ECAP::PT),
                                ("SC", ECAP::SC),
                                ("IRO", ECAP::IRO),
                                ("MHMV", ECAP::MHMV),
                                ("MTS", ECAP::MTS),
                                ("NEST", ECAP::NEST),
                                ("PRS", ECAP::PRS),
                                ("ERS", ECAP::ERS),
                                ("SRS", ECAP::SRS),
                                ("NWFS", ECAP::NWFS),
                                ("EAFS", ECAP::EAFS),
                                ("PSS", ECAP::PSS),
                                ("PASID", ECAP::PASID),
                                ("DIT", ECAP::DIT),
                                ("PDS", ECAP::PDS),
                                ("SMTS", ECAP::SMTS),
                                ("VCS", ECAP::VCS),
                                ("SLADS", ECAP::SLADS),
                                ("SLTS", ECAP::SLTS),
                                ("FLTS", ECAP::FLTS),
                                ("SMPWCS", ECAP::SMPWCS),
                                ("RPS", ECAP::RPS),
                                ("ADMS", ECAP::ADMS),
                                ("RPRIVS", ECAP::RPRIVS),
                            ],
                        ),
                        Some(format!(
                            "IVA/IOTLB registers at {:#x}/{:#x}",
                            r::iotlb_offsets(v).0,
                            r::iotlb_offsets(v).1
                        )),
                    ),
                    r::GSTS => {
                        let g = v as u32;
                        (
                            "GSTS".into(),
                            f32s(
                                v,
                                &[
                                    ("CFIS", GSTS::CFIS),
                                    ("IRTPS", GSTS::IRTPS),
                                    ("IRES", GSTS::IRES),
                                    ("QIES", GSTS::QIES),
                                    ("WBFS", GSTS::WBFS),
                                    ("AFLS", GSTS::AFLS),
                                    ("FLS", GSTS::FLS),
                                    ("RTPS", GSTS::RTPS),
                                    ("TES", GSTS::TES),
                                ],
                            ),
                            Some(format!(
                                "translation {}, root pointer {}, queued invalidation {}",
                                if GSTS::TES.is_set(g) {
                                    "enabled"
                                } else {
                                    "disabled"
                                },
                                if GSTS::RTPS.is_set(g) {
                                    "latched"
                                } else {
                                    "not latched"
                                },
                                if GSTS::QIES.is_set(g) {
                                    "enabled"
                                } else {
                                    "disabled"
                                },
                            )),
                        )
                    }
                    r::RTADDR => (
                        "RTADDR".into(),
                        vec![
                            ("TTM", RTADDR::TTM.read(v)),
                            ("RTA", RTADDR::RTA.read(v) << 12),
                        ],
                        Some(format!(
                            "root table {:#x}, {} mode",
                            RTADDR::RTA.read(v) << 12,
                            super::mode_name(r::Ttm::from_bits(RTADDR::TTM.read(v)))
                        )),
                    ),
                    r::CCMD => (
                        "CCMD".into(),
                        f64s(
                            v,
                            &[
                                ("DID", CCMD::DID),
                                ("SID", CCMD::SID),
                                ("FM", CCMD::FM),
                                ("CAIG", CCMD::CAIG),
                                ("CIRG", CCMD::CIRG),
                                ("ICC", CCMD::ICC),
                            ],
                        ),
                        None,
                    ),
                    r::FSTS => (
                        "FSTS".into(),
                        f32s(
                            v,
                            &[
                                ("PFO", FSTS::PFO),
                                ("PPF", FSTS::PPF),
                                ("AFO", FSTS::AFO),
                                ("APF", FSTS::APF),
                                ("IQE", FSTS::IQE),
                                ("ICE", FSTS::ICE),
                                ("ITE", FSTS::ITE),
                                ("PRO", FSTS::PRO),
                                ("FRI", FSTS::FRI),
                            ],
                        ),
                        None,
                    ),
                    r::FECTL => (
                        "FECTL".into(),
                        f32s(v, &[("IP", FECTL::IP), ("IM", FECTL::IM)]),
                        None,
                    ),
                    r::FEDATA => ("FEDATA".into(), vec![], None),
                    r::FEADDR => ("FEADDR".into(), vec![], None),
                    r::FEUADDR => ("FEUADDR".into(), vec![], None),
                    r::PMEN => (
                        "PMEN".into(),
                        f32s(v, &[("PRS", PMEN::PRS), ("EPM", PMEN::EPM)]),
                        None,
                    ),
                    r::IQH => ("IQH".into(), vec![("QH", IQH::QH.read(v))], None),
                    r::IQT => ("IQT".into(), vec![("QT", IQT::QT.read(v))], None),
                    r::IQA => (
                        "IQA".into(),
                        vec![
                            ("QS", IQA::QS.read(v)),
                            ("DW", IQA::DW.read(v)),
                            ("IQA", IQA::IQA.read(v) << 12),
                        ],
                        Some(format!(
                            "queue at {:#x}, {} pages, {}-bit descriptors",
                            IQA::IQA.read(v) << 12,
                            1u64 << IQA::QS.read(v),
                            if IQA::DW.read(v) != 0 { 256 } else { 128 }
                        )),
                    ),
                    r::ICS => ("ICS".into(), f32s(v, &[("IWC", ICS::IWC)]), None),
                    r::IECTL => (
                        "IECTL".into(),
                        f32s(v, &[("IP", IECTL::IP), ("IM", IECTL::IM)]),
                        None,
                    ),
                    r::IEDATA => ("IEDATA".into(), vec![], None),
                    r::IEADDR => ("IEADDR".into(), vec![], None),
                    r::IEUADDR => ("IEUADDR".into(), vec![], None),
                    r::IQERCD => (
                        "IQERCD".into(),
                        f64s(
                            v,
                            &[
                                ("IQEI", IQERCD::IQEI),
                                ("ITESID", IQERCD::ITESID),
                                ("ICESID", IQERCD::ICESID),
                            ],
                        ),
                        None,
                    ),
                    r::IRTA => (
                        "IRTA".into(),
                        vec![
                            ("S", IRTA::S.read(v)),
                            ("EIME", IRTA::EIME.read(v)),
                            ("IRTA", IRTA::IRTA.read(v) << 12),
                        ],
                        None,
                    ),
                    o if o == iva_off && ecap != 0 => (
                        "IVA".into(),
                        vec![
                            ("AM", IVA::AM.read(v)),
                            ("IH", IVA::IH.read(v)),
                            ("ADDR", IVA::ADDR.read(v) << 12),
                        ],
                        None,
                    ),
                    o if o == iotlb_off && ecap != 0 => (
                        "IOTLB".into(),
                        f64s(
                            v,
                            &[
                                ("DID", IOTLB::DID),
                                ("DW", IOTLB::DW),
                                ("DR", IOTLB::DR),
                                ("IAIG", IOTLB::IAIG),
                                ("IIRG", IOTLB::IIRG),
                                ("IVT", IOTLB::IVT),
                            ],
                        ),
                        None,
                    ),
                    o if cap != 0 && o >= fro && o < fro + nfr * r::FRCD_SIZE => {
                        let i = (o - fro) / r::FRCD_SIZE;
                        if (o - fro) % r::FRCD_SIZE == 0 {
                            (
                                format!("FRCD{i}_LO"),
                                vec![("FI", FRCD_LO::FI.read(v) << 12)],
                                None,
                            )
                        } else {
                            let fr = FRCD_HI::FR.read(v);
                            let note = FRCD_HI::F.is_set(v).then(|| {
                                let reason = vtd::hw::fault::FaultReason::from_code(fr as u8)
                                    .map_or("unknown reason", |f| f.description());
                                format!("fault recorded: reason {fr:#04x} ({reason})")
                            });
                            (
                                format!("FRCD{i}_HI"),
                                f64s(
                                    v,
                                    &[
                                        ("SID", FRCD_HI::SID),
                                        ("T2", FRCD_HI::T2),
                                        ("PRIV", FRCD_HI::PRIV),
                                        ("EXE", FRCD_HI::EXE),
                                        ("PP", FRCD_HI::PP),
                                        ("FR", FRCD_HI::FR),
                                        ("PV", FRCD_HI::PV),
                                        ("AT", FRCD_HI::AT),
                                        ("T1", FRCD_HI::T1),
                                        ("F", FRCD_HI::F),
                                    ],
                                ),
                                note,
                            )
                        }
                    }
                    o => (format!("REG_{o:#x}"), vec![], None),
                };
            DecodedReg {
                name,
                offset: reg.offset,
                width: reg.width,
                value: v,
                fields,
                note,
            }
        })
        .collect();
    out.sort_by_key(|d| d.offset);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::RegValue;
    use iommu_core::PhysAddr;

    fn unit(regs: Vec<RegValue>) -> Unit {
        Unit {
            index: 0,
            name: "dmar0".into(),
            base: PhysAddr(0xfed9_0000),
            regs,
            assumed: false,
            base_known: true,
            haw: 48,
            segment: 0,
        }
    }

    #[test]
    fn gsts_and_rtaddr_fields_match_linux() {
        // Linux drivers/iommu/intel/iommu.h: DMA_GSTS_TES = 1 << 31, DMA_GSTS_RTPS = 1 << 30,
        // DMA_GSTS_QIES = 1 << 26; DMA_RTADDR_SMT = 1 << 10 (TTM = 01, scalable mode).
        let u = unit(vec![
            RegValue {
                offset: 0x1c,
                width: 4,
                value: (1 << 31) | (1 << 30) | (1 << 26),
            },
            RegValue {
                offset: 0x20,
                width: 8,
                value: 0x1234_5000 | (1 << 10),
            },
        ]);
        let d = decode(&u);
        let g = &d[0];
        assert_eq!(g.name, "GSTS");
        assert!(g.fields.contains(&("TES", 1)));
        assert!(g.fields.contains(&("RTPS", 1)));
        assert!(g.fields.contains(&("QIES", 1)));
        assert!(g.fields.contains(&("IRES", 0)));
        let rt = &d[1];
        assert_eq!(rt.name, "RTADDR");
        assert_eq!(rt.fields, vec![("TTM", 1), ("RTA", 0x1234_5000)]);
        assert_eq!(
            rt.note.as_deref(),
            Some("root table 0x12345000, scalable mode")
        );
    }

    #[test]
    fn cap_fields_match_linux_macros() {
        // Linux iommu.h: cap_ndoms(c) = 1 << (4 + 2 * (c & 7)); cap_sagaw(c) = (c >> 8) & 0x1f;
        // cap_mgaw(c) = ((c >> 16) & 0x3f) + 1; cap_fault_reg_offset(c) = ((c >> 24) & 0x3ff) * 16;
        // cap_num_fault_regs(c) = ((c >> 40) & 0xff) + 1.
        let cap: u64 = 2 | (0b0100 << 8) | (47 << 16) | (0x22 << 24) | (7 << 40);
        let u = unit(vec![RegValue {
            offset: 8,
            width: 8,
            value: cap,
        }]);
        let d = decode(&u);
        assert_eq!(d[0].name, "CAP");
        assert!(d[0].fields.contains(&("ND", 2)));
        assert!(d[0].fields.contains(&("SAGAW", 0b0100)));
        assert!(d[0].fields.contains(&("MGAW", 47)));
        assert!(d[0].fields.contains(&("FRO", 0x22)));
        assert_eq!(
            d[0].note.as_deref(),
            Some(
                "256 domain IDs; second-stage widths: 48-bit/4-level; MGAW 48 bits; 8 fault \
                 records at 0x220"
            )
        );
    }

    #[test]
    fn fault_record_registers_are_named() {
        // CAP.FRO = 0x22 -> FRCD0 at 0x220; F is bit 127 (bit 63 of the high qword) and
        // FR bits 103:96 (Linux dma_frcd_fault_reason(c) = c & 0xff of the dword at +12).
        let cap: u64 = (0x22 << 24) | (1 << 40);
        let hi = (1u64 << 63) | (0x06 << 32) | 0x0010;
        let u = unit(vec![
            RegValue {
                offset: 8,
                width: 8,
                value: cap,
            },
            RegValue {
                offset: 0x230,
                width: 8,
                value: 0,
            },
            RegValue {
                offset: 0x238,
                width: 8,
                value: hi,
            },
        ]);
        let d = decode(&u);
        let names: Vec<&str> = d.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["CAP", "FRCD1_LO", "FRCD1_HI"]);
        assert!(d[2].fields.contains(&("FR", 6)));
        assert!(d[2].fields.contains(&("SID", 0x10)));
        assert_eq!(
            d[2].note.as_deref(),
            Some("fault recorded: reason 0x06 (PTE Read access is not set)")
        );
    }
}
