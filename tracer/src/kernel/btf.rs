//! Kernel struct offsets from BTF (`/sys/kernel/btf/vmlinux`), resolved once at load time.
//!
//! Members are looked up by name through anonymous unions and structs (`skc_num` sits inside
//! an anonymous union in `sock_common`), so the same code is right across kernel versions.
use btf_rs::{Btf, Type};

use crate::error::{Error, Result};

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

pub struct KernelBtf {
    btf: Btf,
}

impl KernelBtf {
    pub fn load() -> Result<Self> {
        if !std::path::Path::new(VMLINUX).exists() {
            return Err(Error::NoBtf);
        }
        let btf = Btf::from_file(VMLINUX).map_err(|e| Error::Btf(e.to_string()))?;
        Ok(KernelBtf { btf })
    }

    /// Byte offset of `path` (`"skc_num"`, or nested: `"ns.inum"`) inside `struct name`.
    pub fn offset(&self, name: &str, path: &str) -> Result<u32> {
        let missing = || Error::BtfMissing(format!("struct {name}.{path}"));
        let mut ty = self.struct_named(name).ok_or_else(missing)?;
        let mut total = 0;
        let mut parts = path.split('.').peekable();
        while let Some(part) = parts.next() {
            let (bits, member_ty, bitfield) = self.find_member(&ty, part).ok_or_else(missing)?;
            if bitfield || bits % 8 != 0 {
                return Err(Error::BtfMissing(format!(
                    "byte-addressable struct {name}.{path} (it is a bitfield here)"
                )));
            }
            total += bits / 8;
            if parts.peek().is_some() {
                ty = self.strip(member_ty).ok_or_else(missing)?;
            }
        }
        Ok(total)
    }

    /// Size in bytes of member `path` of `struct name` (to check what the eBPF side reads).
    pub fn member_size(&self, name: &str, member: &str) -> Result<usize> {
        let missing = || Error::BtfMissing(format!("struct {name}.{member}"));
        let ty = self.struct_named(name).ok_or_else(missing)?;
        let (_, member_ty, _) = self.find_member(&ty, member).ok_or_else(missing)?;
        let ty = self.strip(member_ty).ok_or_else(missing)?;
        Ok(match ty {
            Type::Int(i) => i.size(),
            Type::Struct(s) | Type::Union(s) => s.size(),
            Type::Enum(e) => e.size(),
            Type::Ptr(_) => 8,
            _ => 0,
        })
    }

    /// Size in bytes of `struct name`.
    pub fn struct_size(&self, name: &str) -> Result<u32> {
        match self.struct_named(name) {
            Some(Type::Struct(s)) => Ok(s.size() as u32),
            _ => Err(Error::BtfMissing(format!("struct {name}"))),
        }
    }

    /// The members of `enum name` as (value, name without `prefix`), e.g. the kernel's drop
    /// reasons. Empty when this kernel has no such enum.
    pub fn enum_values(&self, name: &str, prefix: &str) -> Vec<(u32, String)> {
        let Ok(types) = self.btf.resolve_types_by_name(name) else {
            return Vec::new();
        };
        let Some(Type::Enum(e)) = types.into_iter().find(|t| matches!(t, Type::Enum(_))) else {
            return Vec::new();
        };
        e.members
            .iter()
            .filter_map(|m| {
                let full = self.btf.resolve_name(m).ok()?;
                let short = full.strip_prefix(prefix).unwrap_or(&full).to_string();
                Some((m.val(), short))
            })
            .collect()
    }

    /// How many arguments tracepoint `event` hands a raw tracepoint program (its
    /// `btf_trace_<event>` prototype, less the leading context pointer): tracepoints gain
    /// arguments across kernel versions, and a program may read only what this kernel passes.
    pub fn tracepoint_args(&self, event: &str) -> Option<usize> {
        let name = format!("btf_trace_{event}");
        let types = self.btf.resolve_types_by_name(&name).ok()?;
        let typedef = types.into_iter().find(|t| matches!(t, Type::Typedef(_)))?;
        let Type::Ptr(ptr) = self.strip(typedef)? else {
            return None;
        };
        let target = self.btf.resolve_chained_type(&ptr).ok()?;
        match self.strip(target)? {
            Type::FuncProto(proto) => Some(proto.parameters.len().saturating_sub(1)),
            _ => None,
        }
    }

    fn struct_named(&self, name: &str) -> Option<Type> {
        self.btf
            .resolve_types_by_name(name)
            .ok()?
            .into_iter()
            .find(|t| matches!(t, Type::Struct(s) if !s.members.is_empty()))
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn strip(&self, mut ty: Type) -> Option<Type> {
        for _ in 0..16 {
            match &ty {
                Type::Typedef(_)
                | Type::Volatile(_)
                | Type::Const(_)
                | Type::Restrict(_)
                | Type::TypeTag(_) => {
                    ty = self.btf.resolve_chained_type(ty.as_btf_type()?).ok()?;
                }
                _ => return Some(ty),
            }
        }
        None
    }

    /// (bit offset, member type, is bitfield) of `name`, searching anonymous members.
    fn find_member(&self, ty: &Type, name: &str) -> Option<(u32, Type, bool)> {
        let (Type::Struct(s) | Type::Union(s)) = ty else {
            return None;
        };
        for m in &s.members {
            let member_name = self.btf.resolve_name(m).unwrap_or_default();
            let member_ty = self.btf.resolve_chained_type(m).ok()?;
            if member_name == name {
                return Some((
                    m.bit_offset(),
                    member_ty,
                    m.bitfield_size().is_some_and(|bits| bits != 0),
                ));
            }
            if member_name.is_empty() {
                let inner = self.strip(member_ty)?;
                if let Some((bits, t, bf)) = self.find_member(&inner, name) {
                    return Some((m.bit_offset() + bits, t, bf));
                }
            }
        }
        None
    }
}
