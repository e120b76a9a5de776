//! Tracepoint `format` files: where each field of a tracepoint record lives.
//!
//! Field offsets differ across kernels (e.g. `sock:inet_sock_set_state`), so they are read
//! from tracefs at load time instead of being written down here.
use std::{collections::HashMap, fs, path::Path};

use crate::error::{Error, Result};

pub const TRACEFS: &str = "/sys/kernel/tracing";

/// Field name → (offset, size) for one tracepoint.
#[derive(Debug, Default)]
pub struct Format {
    fields: HashMap<String, (u32, u32)>,
}

impl Format {
    pub fn read(category: &str, event: &str) -> Result<Self> {
        let path = Path::new(TRACEFS)
            .join("events")
            .join(category)
            .join(event)
            .join("format");
        let text = fs::read_to_string(&path)
            .map_err(|e| Error::MissingTracepoint(format!("{category}:{event}"), e.to_string()))?;
        Self::parse(&text).map_err(|reason| Error::TracepointFormat { path, reason })
    }

    /// Parses lines like `\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;`.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let mut fields = HashMap::new();
        for line in text.lines() {
            let line = line.trim();
            let Some(rest) = line.strip_prefix("field:") else {
                continue;
            };
            let mut parts = rest.split(';').map(str::trim);
            let decl = parts.next().unwrap_or_default();
            let mut offset = None;
            let mut size = None;
            for part in parts {
                if let Some(v) = part.strip_prefix("offset:") {
                    offset = v.parse::<u32>().ok();
                } else if let Some(v) = part.strip_prefix("size:") {
                    size = v.parse::<u32>().ok();
                }
            }
            // The name is the last word of the declaration, without any array suffix.
            let name = decl
                .rsplit(|c: char| c.is_whitespace() || c == '*')
                .next()
                .unwrap_or_default();
            let name = name.split('[').next().unwrap_or_default();
            match (offset, size) {
                (Some(o), Some(s)) if !name.is_empty() => {
                    fields.insert(name.to_string(), (o, s));
                }
                _ => return Err(format!("unreadable field line {line:?}")),
            }
        }
        if fields.is_empty() {
            return Err("no fields".into());
        }
        Ok(Format { fields })
    }

    /// Offset of `name`, checking it has the size the eBPF side reads.
    pub fn offset(&self, name: &str, size: u32) -> std::result::Result<u32, String> {
        match self.fields.get(name) {
            Some(&(o, s)) if s == size => Ok(o),
            Some(&(_, s)) => Err(format!("field {name} has size {s}, expected {size}")),
            None => Err(format!("no field {name}")),
        }
    }
}

pub fn exists(category: &str, event: &str) -> bool {
    Path::new(TRACEFS)
        .join("events")
        .join(category)
        .join(event)
        .is_dir()
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATE: &str = "name: inet_sock_set_state\nID: 1446\nformat:\n\
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;\n\
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;\n\
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;\n\
\nprint fmt: \"family=%s\"\n";

    #[test]
    fn parses_fields_pointers_and_arrays() {
        let f = Format::parse(STATE).unwrap();
        assert_eq!(f.offset("skaddr", 8), Ok(8));
        assert_eq!(f.offset("oldstate", 4), Ok(16));
        assert_eq!(f.offset("saddr_v6", 16), Ok(40));
        assert!(f.offset("oldstate", 8).is_err());
        assert!(f.offset("nope", 4).is_err());
    }

    #[test]
    fn rejects_garbage() {
        assert!(Format::parse("hello").is_err());
        assert!(Format::parse("\tfield:int x;\toffset:zz;\tsize:4;").is_err());
    }
}
