//! The KHO blob decodes with the reference devicetree compiler: `dtc -I dtb -O dts`
//! (Debian package device-tree-compiler, installed by .ci/run).
//!
//! Without `dtc` the test fails when the `CI` environment variable is set, and prints a
//! loud skip message otherwise.

use iommu_core::kho::{
    fdt, read_handover, read_preserved, write_handover, Client, FrameAllocator, KHO_FDT_COMPATIBLE,
    PROP_PRESERVED_DATA, PROP_PRESERVED_MEMORY_MAP,
};
use iommu_core::pageset::PageSet;
use iommu_core::{MemError, PhysAddr, PhysMem};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

/// Sparse test memory: pages appear when written; unwritten pages read as poison.
#[derive(Default)]
struct Mem(BTreeMap<u64, Box<[u8; 4096]>>);

impl PhysMem for Mem {
    fn read(&self, addr: PhysAddr, buf: &mut [u8]) -> Result<(), MemError> {
        for (i, b) in buf.iter_mut().enumerate() {
            let a = addr.0 + i as u64;
            let page = self
                .0
                .get(&(a >> 12))
                .ok_or(MemError::Poisoned { addr: PhysAddr(a) })?;
            *b = page[(a & 0xfff) as usize];
        }
        Ok(())
    }
    fn write(&mut self, addr: PhysAddr, data: &[u8]) -> Result<(), MemError> {
        for (i, &b) in data.iter().enumerate() {
            let a = addr.0 + i as u64;
            self.0.entry(a >> 12).or_insert_with(|| Box::new([0; 4096]))[(a & 0xfff) as usize] = b;
        }
        Ok(())
    }
}

struct Bump(u64);

impl FrameAllocator for Bump {
    fn alloc_contiguous(&mut self, pages: usize) -> Option<PhysAddr> {
        let a = self.0;
        self.0 += pages as u64 * 4096;
        Some(PhysAddr(a))
    }
}

/// How dtc prints an 8-byte property: two big-endian 32-bit cells of the raw bytes.
/// Our u64 properties are little-endian (CPU order, as Linux writes them).
fn dts_cells(v: u64) -> String {
    let b = v.to_le_bytes();
    let hi = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let lo = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
    format!("<{hi:#x} {lo:#x}>")
}

fn dtc_available() -> bool {
    Command::new("dtc")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("kho-dtc-{}-{name}", std::process::id()))
}

#[test]
fn dtc_decodes_the_kho_blob() {
    if !dtc_available() {
        if std::env::var_os("CI").is_some() {
            panic!("dtc (device-tree-compiler) is not installed, and CI is set: install it");
        }
        // Written straight to stderr: the test harness captures eprintln! of passing
        // tests, and this must be seen.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "\n{bar}\n!!! SKIPPED dtc_decodes_the_kho_blob: `dtc` is not installed, so the KHO \
             blob was NOT checked against the reference decoder.\n!!! Install it with: \
             apt-get install -y device-tree-compiler (CI=1 makes this a failure)\n{bar}",
            bar = "!".repeat(78)
        );
        return;
    }

    let mut preserved = PageSet::new();
    preserved.insert_range(PhysAddr(0x10_0000), 64).unwrap();
    preserved.insert(PhysAddr(0x4000_0000), 9).unwrap();
    let payload = vec![0x5a; 300];
    let clients = [
        Client {
            name: "iommu-vtd",
            compatible: "iommu-vtd-v1",
            payload: &payload,
        },
        Client {
            name: "iommufd",
            compatible: "iommufd-session-v1",
            payload: b"x",
        },
    ];
    let mut mem = Mem::default();
    let w = write_handover(&mut mem, &mut Bump(0x2_0000_0000), &preserved, &clients).unwrap();
    let mut blob = vec![0u8; w.blob_size as usize];
    mem.read(w.blob, &mut blob).unwrap();

    let dtb = temp_path("blob.dtb");
    std::fs::write(&dtb, &blob).unwrap();
    let out = Command::new("dtc")
        .args(["-I", "dtb", "-O", "dts"])
        .arg(&dtb)
        .output()
        .unwrap();
    let dts = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "dtc failed: {stderr}");
    assert!(stderr.trim().is_empty(), "dtc warned: {stderr}");
    eprintln!("{dts}");

    assert!(dts.starts_with("/dts-v1/;"), "{dts}");
    assert!(
        dts.contains(&format!("compatible = \"{KHO_FDT_COMPATIBLE}\";")),
        "{dts}"
    );
    assert!(
        dts.contains(&format!(
            "{PROP_PRESERVED_MEMORY_MAP} = {};",
            dts_cells(w.memory_map.0)
        )),
        "{dts}"
    );
    for c in &w.clients {
        let node = format!(
            "{} {{\n\t\t{PROP_PRESERVED_DATA} = {};\n\t}};",
            c.name,
            dts_cells(c.data.0)
        );
        assert!(dts.contains(&node), "missing {node:?} in\n{dts}");
    }

    // Interoperability the other way: dtc re-encodes the blob (its own layout choices)
    // and our strict reader accepts it with the same content.
    let dtb2 = temp_path("recompiled.dtb");
    let out = Command::new("dtc")
        .args(["-I", "dts", "-O", "dtb", "-o"])
        .arg(&dtb2)
        .arg("-")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(dts.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let recompiled = std::fs::read(&dtb2).unwrap();
    let _ = std::fs::remove_file(&dtb);
    let _ = std::fs::remove_file(&dtb2);
    let ours = fdt::parse(&blob, 2).unwrap();
    let theirs = fdt::parse(&recompiled, 2).unwrap();
    let strip = |n: &fdt::FdtNode| {
        (
            n.properties
                .iter()
                .map(|p| (p.name.clone(), p.value.clone()))
                .collect::<Vec<_>>(),
            n.children
                .iter()
                .map(|c| {
                    (
                        c.name.clone(),
                        c.properties
                            .iter()
                            .map(|p| (p.name.clone(), p.value.clone()))
                            .collect::<Vec<_>>(),
                    )
                })
                .collect::<Vec<_>>(),
        )
    };
    assert_eq!(strip(&theirs.root), strip(&ours.root));

    // The dtc-made blob placed in memory reads back as the same handover.
    let at = PhysAddr(0x3_0000_0000);
    mem.write(at, &recompiled).unwrap();
    let h = read_handover(&mem, at).unwrap();
    assert_eq!(h.memory_map, w.memory_map);
    assert_eq!(h.clients, w.clients);
    let all = read_preserved(&mem, w.blob).unwrap();
    assert!(preserved.is_subset(&all));
}
