//! QEMU's `edu` device (`hw/misc/edu.c`, `docs/specs/edu.rst`): its DMA engine moves up
//! to 4 KiB between memory (a DMA address, translated by the IOMMU) and a buffer inside
//! the device.
//!
//! BAR0 registers (64-bit accesses allowed from 0x80 on): 0x00 identification
//! (`0x010000ed`), 0x80 source, 0x88 destination, 0x90 count, 0x98 command. Command bit 0
//! starts a transfer and stays set while it runs (the device ignores register writes
//! meanwhile); bit 1 is the direction, 0 from memory into the buffer (`EDU_DMA_FROM_PCI`),
//! 1 from the buffer to memory (`EDU_DMA_TO_PCI`); bit 2 asks for an interrupt (never
//! used here). The buffer is at device address 0x40000. A transfer completes about
//! 100 ms of virtual time after the command.

use iommu_core::RegisterAccess;
use std::fmt;

/// Identification register.
pub const REG_ID: u64 = 0x00;
/// Low byte of the identification register (`0x010000ed`: version 1.0, 0xed).
pub const ID_MAGIC: u32 = 0xed;
/// DMA source address.
pub const REG_DMA_SRC: u64 = 0x80;
/// DMA destination address.
pub const REG_DMA_DST: u64 = 0x88;
/// DMA byte count.
pub const REG_DMA_COUNT: u64 = 0x90;
/// DMA command.
pub const REG_DMA_CMD: u64 = 0x98;
/// Command: start (and busy while set; `EDU_DMA_RUN`).
pub const CMD_RUN: u64 = 1 << 0;
/// Command: direction buffer → memory (`EDU_DMA_TO_PCI`; clear: memory → buffer).
pub const CMD_TO_MEMORY: u64 = 1 << 1;
/// Device address of the DMA buffer (`DMA_START`).
pub const BUFFER: u64 = 0x40000;
/// Bytes of the DMA buffer (`DMA_SIZE`).
pub const BUFFER_SIZE: u64 = 4096;

/// Direction of a transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From memory (a DMA address) into the device's buffer: a DMA read.
    MemoryToBuffer,
    /// From the buffer to memory: a DMA write.
    BufferToMemory,
}

/// What went wrong with the device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EduError {
    /// BAR0 does not identify as `edu`.
    NotEdu {
        /// The identification register read.
        id: u32,
    },
    /// A transfer is still running, so the device would ignore a new one.
    Busy,
    /// The buffer range is not inside the device's 4 KiB buffer.
    BadBufferRange {
        /// Offset in the buffer.
        offset: u64,
        /// Bytes.
        len: u64,
    },
    /// A register did not take the value written (the device ignored it).
    NotTaken {
        /// Register offset.
        reg: u64,
        /// Value written.
        wrote: u64,
        /// Value read back.
        read: u64,
    },
    /// The transfer did not complete within the poll limit.
    Timeout {
        /// Polls made.
        polls: u32,
    },
}

impl fmt::Display for EduError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EduError::NotEdu { id } => {
                write!(f, "edu: identification {id:#010x}, not an edu device")
            }
            EduError::Busy => write!(f, "edu: a DMA transfer is still running"),
            EduError::BadBufferRange { offset, len } => write!(
                f,
                "edu: buffer range {offset:#x}+{len:#x} outside the {BUFFER_SIZE:#x}-byte buffer"
            ),
            EduError::NotTaken { reg, wrote, read } => write!(
                f,
                "edu: register {reg:#x} reads {read:#x} after writing {wrote:#x}"
            ),
            EduError::Timeout { polls } => {
                write!(f, "edu: DMA still running after {polls} polls")
            }
        }
    }
}

impl std::error::Error for EduError {}

/// An `edu` device behind its BAR0 registers.
#[derive(Debug)]
pub struct Edu<R: RegisterAccess> {
    bar: R,
}

impl<R: RegisterAccess> Edu<R> {
    /// The device behind `bar`, after checking its identification.
    pub fn new(mut bar: R) -> Result<Self, EduError> {
        let id = bar.read32(REG_ID);
        if id & 0xff != ID_MAGIC {
            return Err(EduError::NotEdu { id });
        }
        Ok(Self { bar })
    }

    /// The registers.
    pub fn bar(&mut self) -> &mut R {
        &mut self.bar
    }

    /// Whether a transfer is running (command bit 0).
    pub fn busy(&mut self) -> bool {
        self.bar.read64(REG_DMA_CMD) & CMD_RUN != 0
    }

    /// Starts a transfer of `len` bytes between DMA address `dma` and the buffer at
    /// `offset`, without waiting for it.
    pub fn start(
        &mut self,
        dir: Direction,
        dma: u64,
        offset: u64,
        len: u64,
    ) -> Result<(), EduError> {
        if offset.checked_add(len).map_or(true, |e| e > BUFFER_SIZE) || len == 0 {
            return Err(EduError::BadBufferRange { offset, len });
        }
        if self.busy() {
            return Err(EduError::Busy);
        }
        let buf = BUFFER + offset;
        let (src, dst, cmd) = match dir {
            Direction::MemoryToBuffer => (dma, buf, CMD_RUN),
            Direction::BufferToMemory => (buf, dma, CMD_RUN | CMD_TO_MEMORY),
        };
        for (reg, v) in [(REG_DMA_SRC, src), (REG_DMA_DST, dst), (REG_DMA_COUNT, len)] {
            self.bar.write64(reg, v);
            let read = self.bar.read64(reg);
            if read != v {
                return Err(EduError::NotTaken {
                    reg,
                    wrote: v,
                    read,
                });
            }
        }
        self.bar.write64(REG_DMA_CMD, cmd);
        Ok(())
    }

    /// Polls until no transfer runs, at most `polls` times, calling `pause` between
    /// polls.
    pub fn wait(&mut self, polls: u32, mut pause: impl FnMut()) -> Result<(), EduError> {
        for _ in 0..polls {
            if !self.busy() {
                return Ok(());
            }
            pause();
        }
        if self.busy() {
            Err(EduError::Timeout { polls })
        } else {
            Ok(())
        }
    }

    /// One transfer, started and waited for.
    pub fn transfer(
        &mut self,
        dir: Direction,
        dma: u64,
        offset: u64,
        len: u64,
        polls: u32,
        pause: impl FnMut(),
    ) -> Result<(), EduError> {
        self.start(dir, dma, offset, len)?;
        self.wait(polls, pause)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake BAR0: the register file of edu.c, a log of writes, and a transfer that
    /// finishes after `run_for` reads of the command register.
    #[derive(Debug, Default)]
    struct FakeEdu {
        regs: [u64; 4],
        writes: Vec<(u64, u64)>,
        run_for: u32,
        left: u32,
    }

    impl RegisterAccess for FakeEdu {
        fn read32(&mut self, offset: u64) -> u32 {
            assert_eq!(offset, REG_ID);
            0x0100_00ed
        }
        fn write32(&mut self, _: u64, _: u32) {
            panic!("32-bit write");
        }
        fn read64(&mut self, offset: u64) -> u64 {
            let i = ((offset - 0x80) / 8) as usize;
            if offset == REG_DMA_CMD && self.regs[3] & CMD_RUN != 0 {
                if self.left == 0 {
                    self.regs[3] &= !CMD_RUN;
                } else {
                    self.left -= 1;
                }
            }
            self.regs[i]
        }
        fn write64(&mut self, offset: u64, value: u64) {
            self.writes.push((offset, value));
            // Like edu.c: writes are ignored while a transfer runs; the command
            // register takes only a value with RUN set.
            if self.regs[3] & CMD_RUN != 0 || (offset == REG_DMA_CMD && value & CMD_RUN == 0) {
                return;
            }
            self.regs[((offset - 0x80) / 8) as usize] = value;
            if offset == REG_DMA_CMD {
                self.left = self.run_for;
            }
        }
    }

    #[test]
    fn a_write_to_memory_programs_source_destination_count_then_command() {
        let mut e = Edu::new(FakeEdu {
            run_for: 3,
            ..Default::default()
        })
        .unwrap();
        let mut pauses = 0;
        e.transfer(
            Direction::BufferToMemory,
            0x1_0000_2000,
            0x100,
            0x80,
            10,
            || pauses += 1,
        )
        .unwrap();
        assert_eq!(
            e.bar().writes,
            vec![
                (REG_DMA_SRC, 0x40100),
                (REG_DMA_DST, 0x1_0000_2000),
                (REG_DMA_COUNT, 0x80),
                (REG_DMA_CMD, 0b11),
            ]
        );
        assert_eq!(pauses, 3);
    }

    #[test]
    fn a_read_from_memory_has_direction_bit_clear() {
        let mut e = Edu::new(FakeEdu::default()).unwrap();
        e.transfer(Direction::MemoryToBuffer, 0x5000, 0, 4096, 1, || {})
            .unwrap();
        assert_eq!(e.bar().writes[0], (REG_DMA_SRC, 0x5000));
        assert_eq!(e.bar().writes[1], (REG_DMA_DST, BUFFER));
        assert_eq!(e.bar().writes[3], (REG_DMA_CMD, CMD_RUN));
    }

    #[test]
    fn busy_device_bad_ranges_and_timeouts_are_errors() {
        let mut e = Edu::new(FakeEdu {
            run_for: 100,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            e.start(Direction::BufferToMemory, 0, 4000, 100),
            Err(EduError::BadBufferRange {
                offset: 4000,
                len: 100
            })
        );
        assert!(e.start(Direction::BufferToMemory, 0, 0, 0).is_err());
        e.start(Direction::BufferToMemory, 0x1000, 0, 8).unwrap();
        assert_eq!(
            e.start(Direction::BufferToMemory, 0x2000, 0, 8),
            Err(EduError::Busy)
        );
        assert_eq!(e.wait(5, || {}), Err(EduError::Timeout { polls: 5 }));
    }

    #[test]
    fn a_device_that_is_not_edu_is_refused() {
        #[derive(Debug)]
        struct Other;
        impl RegisterAccess for Other {
            fn read32(&mut self, _: u64) -> u32 {
                0x1234_5678
            }
            fn write32(&mut self, _: u64, _: u32) {}
            fn read64(&mut self, _: u64) -> u64 {
                0
            }
            fn write64(&mut self, _: u64, _: u64) {}
        }
        assert_eq!(
            Edu::new(Other).unwrap_err(),
            EduError::NotEdu { id: 0x1234_5678 }
        );
    }
}
