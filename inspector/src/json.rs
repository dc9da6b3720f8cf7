//! A small streaming JSON writer: values go straight to the output, so a dump of a
//! million mappings never holds them all.
//!
//! Objects and arrays opened with `inline = true` are written on one line (used for
//! mappings and entries); others are indented by two spaces per level.

use std::io::{self, Write};

struct Frame {
    first: bool,
    inline: bool,
}

/// The writer.
pub struct Json<W: Write> {
    w: W,
    stack: Vec<Frame>,
    after_key: bool,
}

impl<W: Write> Json<W> {
    /// A writer to `w`.
    pub fn new(w: W) -> Self {
        Self {
            w,
            stack: Vec::new(),
            after_key: false,
        }
    }

    /// The underlying writer.
    pub fn into_inner(self) -> W {
        self.w
    }

    fn inline(&self) -> bool {
        self.stack.last().is_some_and(|f| f.inline)
    }

    /// Separator and indentation before a value (or a key).
    fn sep(&mut self) -> io::Result<()> {
        if self.after_key {
            self.after_key = false;
            return Ok(());
        }
        let depth = self.stack.len();
        let inline = self.inline();
        if let Some(f) = self.stack.last_mut() {
            if !f.first {
                self.w.write_all(b",")?;
                if inline {
                    self.w.write_all(b" ")?;
                }
            }
            f.first = false;
            if !inline {
                self.w.write_all(b"\n")?;
                for _ in 0..depth {
                    self.w.write_all(b"  ")?;
                }
            }
        }
        Ok(())
    }

    fn open(&mut self, c: &[u8], inline: bool) -> io::Result<()> {
        self.sep()?;
        self.w.write_all(c)?;
        let inline = inline || self.inline();
        self.stack.push(Frame {
            first: true,
            inline,
        });
        Ok(())
    }

    fn close(&mut self, c: &[u8]) -> io::Result<()> {
        let f = self.stack.pop();
        if let Some(f) = f {
            if !f.inline && !f.first {
                self.w.write_all(b"\n")?;
                for _ in 0..self.stack.len() {
                    self.w.write_all(b"  ")?;
                }
            }
        }
        self.w.write_all(c)?;
        if self.stack.is_empty() {
            self.w.write_all(b"\n")?;
        }
        Ok(())
    }

    /// Opens an object.
    pub fn begin_object(&mut self, inline: bool) -> io::Result<()> {
        self.open(b"{", inline)
    }
    /// Closes an object.
    pub fn end_object(&mut self) -> io::Result<()> {
        self.close(b"}")
    }
    /// Opens an array.
    pub fn begin_array(&mut self, inline: bool) -> io::Result<()> {
        self.open(b"[", inline)
    }
    /// Closes an array.
    pub fn end_array(&mut self) -> io::Result<()> {
        self.close(b"]")
    }

    /// Writes a key; the next call writes its value.
    pub fn key(&mut self, k: &str) -> io::Result<()> {
        self.sep()?;
        write_str(&mut self.w, k)?;
        self.w.write_all(b": ")?;
        self.after_key = true;
        Ok(())
    }

    /// A string value.
    pub fn string(&mut self, s: &str) -> io::Result<()> {
        self.sep()?;
        write_str(&mut self.w, s)
    }
    /// An unsigned number.
    pub fn uint(&mut self, v: u64) -> io::Result<()> {
        self.sep()?;
        write!(self.w, "{v}")
    }
    /// A number as a `0x…` string (64-bit addresses do not fit a JSON number exactly).
    pub fn hex(&mut self, v: u64) -> io::Result<()> {
        self.sep()?;
        write!(self.w, "\"{v:#x}\"")
    }
    /// A boolean.
    pub fn bool(&mut self, v: bool) -> io::Result<()> {
        self.sep()?;
        self.w.write_all(if v { b"true" } else { b"false" })
    }
    /// `null`.
    pub fn null(&mut self) -> io::Result<()> {
        self.sep()?;
        self.w.write_all(b"null")
    }

    /// `"k": "s"`.
    pub fn kv_str(&mut self, k: &str, s: &str) -> io::Result<()> {
        self.key(k)?;
        self.string(s)
    }
    /// `"k": v`.
    pub fn kv_uint(&mut self, k: &str, v: u64) -> io::Result<()> {
        self.key(k)?;
        self.uint(v)
    }
    /// `"k": v`, or `"k": null` when absent.
    pub fn kv_opt_uint(&mut self, k: &str, v: Option<u64>) -> io::Result<()> {
        self.key(k)?;
        match v {
            Some(v) => self.uint(v),
            None => self.null(),
        }
    }
    /// `"k": "0x…"`.
    pub fn kv_hex(&mut self, k: &str, v: u64) -> io::Result<()> {
        self.key(k)?;
        self.hex(v)
    }
    /// `"k": true|false`.
    pub fn kv_bool(&mut self, k: &str, v: bool) -> io::Result<()> {
        self.key(k)?;
        self.bool(v)
    }
    /// `"k": ["0x…", …]` on one line.
    pub fn kv_hex_list(&mut self, k: &str, v: &[u64]) -> io::Result<()> {
        self.key(k)?;
        self.begin_array(true)?;
        for &x in v {
            self.hex(x)?;
        }
        self.end_array()
    }
}

fn write_str<W: Write>(w: &mut W, s: &str) -> io::Result<()> {
    w.write_all(b"\"")?;
    for c in s.chars() {
        match c {
            '"' => w.write_all(b"\\\"")?,
            '\\' => w.write_all(b"\\\\")?,
            '\n' => w.write_all(b"\\n")?,
            '\r' => w.write_all(b"\\r")?,
            '\t' => w.write_all(b"\\t")?,
            c if (c as u32) < 0x20 => write!(w, "\\u{:04x}", c as u32)?,
            c => {
                let mut b = [0u8; 4];
                w.write_all(c.encode_utf8(&mut b).as_bytes())?
            }
        }
    }
    w.write_all(b"\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_and_inline() {
        let mut j = Json::new(Vec::new());
        j.begin_object(false).unwrap();
        j.kv_str("a", "x\"y\n").unwrap();
        j.key("list").unwrap();
        j.begin_array(false).unwrap();
        j.begin_object(true).unwrap();
        j.kv_hex("iova", 0x1000).unwrap();
        j.kv_uint("n", 3).unwrap();
        j.end_object().unwrap();
        j.end_array().unwrap();
        j.key("empty").unwrap();
        j.begin_array(false).unwrap();
        j.end_array().unwrap();
        j.key("none").unwrap();
        j.null().unwrap();
        j.end_object().unwrap();
        let s = String::from_utf8(j.into_inner()).unwrap();
        assert_eq!(
            s,
            "{\n  \"a\": \"x\\\"y\\n\",\n  \"list\": [\n    {\"iova\": \"0x1000\", \"n\": 3}\n  ],\n  \
             \"empty\": [],\n  \"none\": null\n}\n"
        );
    }
}
