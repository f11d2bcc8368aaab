//! Tar headers: reading them exactly as Go's `archive/tar` (and so Docker)
//! reads them, refusing the corner cases where a reader could disagree, and
//! writing the few canonical headers the host emits itself.

use std::collections::HashMap;

/// Size of a tar block.
pub(super) const BLOCK: u64 = 512;
/// Largest PAX or GNU long-name extension header read (Go's
/// `maxSpecialFileSize`): more is refused by Docker as well.
pub(super) const MAX_EXT_HEADER: u64 = 1 << 20;

/// The fields of one header block that matter here.
#[derive(Debug)]
pub(super) struct RawHeader {
    pub typeflag: u8,
    pub name: Vec<u8>,
    pub linkname: Vec<u8>,
    pub size: u64,
}

/// The kind of an extension header (it changes the entry after it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ExtKind {
    Pax,
    GlobalPax,
    LongName,
    LongLink,
}

impl ExtKind {
    /// The extension a typeflag introduces, if it is one.
    pub fn of(typeflag: u8) -> Option<ExtKind> {
        match typeflag {
            b'x' => Some(ExtKind::Pax),
            b'g' => Some(ExtKind::GlobalPax),
            b'L' => Some(ExtKind::LongName),
            b'K' => Some(ExtKind::LongLink),
            _ => None,
        }
    }
}

/// Types whose header carries no data, whatever its size field says (Go's
/// `isHeaderOnlyType`).
pub(super) fn is_header_only(typeflag: u8) -> bool {
    matches!(typeflag, b'1' | b'2' | b'3' | b'4' | b'5' | b'6')
}

/// Parses and checks one non-zero header block.
pub(super) fn parse_header(b: &[u8; 512]) -> Result<RawHeader, String> {
    let checksum = parse_octal(&b[148..156]).map_err(|()| "bad header checksum".to_string())?;
    let (mut unsigned, mut signed) = (0i64, 0i64);
    for (i, &c) in b.iter().enumerate() {
        let c = if (148..156).contains(&i) { b' ' } else { c };
        unsigned += i64::from(c);
        signed += i64::from(c as i8);
    }
    let checksum = i64::try_from(checksum).map_err(|_| "bad header checksum".to_string())?;
    if checksum != unsigned && checksum != signed {
        return Err("bad header checksum".into());
    }

    let magic = &b[257..263];
    let version = &b[263..265];
    let trailer = &b[508..512];
    let (ustar, gnu) = match magic {
        b"ustar\0" if trailer == b"tar\0" => {
            return Err("unsupported tar variant (star header)".into());
        }
        b"ustar\0" => (true, false),
        b"ustar " if version == b" \0" => (false, true),
        _ => (false, false),
    };

    let bad_field = |field: &str| format!("bad {field} field in tar header");
    let size = parse_numeric(&b[124..136]).map_err(|()| bad_field("size"))?;
    let size = u64::try_from(size).map_err(|_| "negative size in tar header".to_string())?;
    for (range, field) in [(100..108, "mode"), (108..116, "uid"), (116..124, "gid"), (136..148, "mtime")] {
        parse_numeric(&b[range]).map_err(|()| bad_field(field))?;
    }
    if ustar || gnu {
        parse_numeric(&b[329..337]).map_err(|()| bad_field("devmajor"))?;
        parse_numeric(&b[337..345]).map_err(|()| bad_field("devminor"))?;
    }
    if gnu {
        // Go falls back to reading a USTAR prefix here when these do not
        // parse; refuse instead of guessing the same way.
        for range in [345..357, 357..369] {
            if b[range.start] != 0 && parse_numeric(&b[range]).is_err() {
                return Err("unsupported GNU header (unreadable atime/ctime)".into());
            }
        }
    }

    let mut name = parse_string(&b[0..100]).to_vec();
    if ustar {
        let prefix = parse_string(&b[345..500]);
        if !prefix.is_empty() {
            let mut full = prefix.to_vec();
            full.push(b'/');
            full.extend_from_slice(&name);
            name = full;
        }
    }
    Ok(RawHeader { typeflag: b[156], name, linkname: parse_string(&b[157..257]).to_vec(), size })
}

/// Bytes up to the first NUL.
pub(super) fn parse_string(b: &[u8]) -> &[u8] {
    b.iter().position(|&c| c == 0).map_or(b, |i| &b[..i])
}

/// Octal field: surrounding spaces and NULs ignored, empty means 0.
pub(super) fn parse_octal(b: &[u8]) -> Result<u64, ()> {
    let is_pad = |c: &u8| *c == b' ' || *c == 0;
    let Some(first) = b.iter().position(|c| !is_pad(c)) else {
        return Ok(0);
    };
    let last = b.iter().rposition(|c| !is_pad(c)).unwrap_or(first);
    let digits = parse_string(&b[first..=last]);
    let mut x: u64 = 0;
    for &c in digits {
        if !(b'0'..=b'7').contains(&c) {
            return Err(());
        }
        x = x.checked_mul(8).and_then(|x| x.checked_add(u64::from(c - b'0'))).ok_or(())?;
    }
    Ok(x)
}

/// Numeric field: octal, or GNU base-256 when the top bit of the first byte is set.
pub(super) fn parse_numeric(b: &[u8]) -> Result<i64, ()> {
    if let Some(&first) = b.first()
        && first & 0x80 != 0
    {
        let inv: u8 = if first & 0x40 != 0 { 0xff } else { 0 };
        let mut x: u64 = 0;
        for (i, &c) in b.iter().enumerate() {
            let mut c = c ^ inv;
            if i == 0 {
                c &= 0x7f;
            }
            if x >> 56 > 0 {
                return Err(());
            }
            x = (x << 8) | u64::from(c);
        }
        if x >> 63 > 0 {
            return Err(());
        }
        let x = i64::try_from(x).map_err(|_| ())?;
        return Ok(if inv == 0xff { !x } else { x });
    }
    let x = parse_octal(b)?;
    i64::try_from(x).map_err(|_| ())
}

/// PAX records (`"%d %s=%s\n"`), last one wins per key, as Go reads them.
/// Sparse-file records are refused: Go expands them into runs of zeros that
/// the archive does not carry, so a small archive could fill a disk.
pub(super) fn parse_pax(data: &[u8]) -> Result<HashMap<Vec<u8>, Vec<u8>>, String> {
    let bad = || "malformed PAX extended header".to_string();
    let mut records = HashMap::new();
    let mut s = data;
    while !s.is_empty() {
        let space = s.iter().position(|&c| c == b' ').ok_or_else(bad)?;
        let len: i64 = std::str::from_utf8(&s[..space]).ok().and_then(|n| n.parse().ok()).ok_or_else(bad)?;
        let len = usize::try_from(len).map_err(|_| bad())?;
        if len < 5 || len > s.len() || len <= space + 1 {
            return Err(bad());
        }
        let rest = &s[space + 1..];
        let n = len - (space + 1);
        let record = &rest[..n - 1];
        if rest[n - 1] != b'\n' {
            return Err(bad());
        }
        s = &rest[n..];
        let eq = record.iter().position(|&c| c == b'=').ok_or_else(bad)?;
        let (key, value) = (&record[..eq], &record[eq + 1..]);
        if key.is_empty() {
            return Err(bad());
        }
        let nul_checked = if matches!(key, b"path" | b"linkpath" | b"uname" | b"gname") { value } else { key };
        if nul_checked.contains(&0) {
            return Err(bad());
        }
        if key.starts_with(b"GNU.sparse.") {
            return Err("sparse files are not supported".into());
        }
        records.insert(key.to_vec(), value.to_vec());
    }
    Ok(records)
}

/// The PAX records that change how an entry is read.
#[derive(Debug, Default)]
pub(super) struct PaxOverrides {
    pub path: Option<Vec<u8>>,
    pub linkpath: Option<Vec<u8>>,
    pub size: Option<u64>,
}

/// Applies Go's rules for the PAX records it interprets.
pub(super) fn pax_overrides(records: &HashMap<Vec<u8>, Vec<u8>>) -> Result<PaxOverrides, String> {
    let mut out = PaxOverrides::default();
    for (key, value) in records {
        if value.is_empty() {
            continue; // Go keeps the header's own value.
        }
        let text = std::str::from_utf8(value).ok();
        let bad = || {
            let shown: String = String::from_utf8_lossy(value).chars().take(64).collect();
            format!("bad PAX record {:?}={shown:?}", String::from_utf8_lossy(key))
        };
        match key.as_slice() {
            b"path" => out.path = Some(value.clone()),
            b"linkpath" => out.linkpath = Some(value.clone()),
            b"size" => {
                let size: i64 = text.and_then(|t| t.parse().ok()).ok_or_else(bad)?;
                out.size = Some(u64::try_from(size).map_err(|_| bad())?);
            }
            b"uid" | b"gid" => {
                text.and_then(|t| t.parse::<i64>().ok()).ok_or_else(bad)?;
            }
            b"mtime" | b"atime" | b"ctime" if !text.is_some_and(valid_pax_time) => {
                return Err(bad());
            }
            _ => {}
        }
    }
    Ok(out)
}

/// `[-+]seconds[.fraction]`, as Go's `parsePAXTime` accepts it.
fn valid_pax_time(s: &str) -> bool {
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    secs.parse::<i64>().is_ok() && frac.bytes().all(|c| c.is_ascii_digit())
}

/// Zero bytes that pad `size` bytes of data to a whole block.
pub(super) fn padding(size: u64) -> u64 {
    (BLOCK - size % BLOCK) % BLOCK
}

// ---------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------

/// The header (one block, or two with a PAX `path` record for a long name)
/// of a regular file the host emits: mode 0644, owned by root, time 0.
pub(super) fn file_header(name: &str, size: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024);
    let short = name.len() <= 100 && name.is_ascii();
    if !short {
        let record = pax_record("path", name);
        out.extend_from_slice(&ustar_block(b"././@PaxHeader", b'x', record.len() as u64, 0o644));
        out.extend_from_slice(&record);
        out.resize(out.len() + padding(record.len() as u64) as usize, 0);
    }
    let shown = if short { name.as_bytes() } else { b"././@LongName" };
    out.extend_from_slice(&ustar_block(shown, b'0', size, 0o644));
    out
}

/// A tar of directories (root-owned, mode 0755, as Docker makes a volume's
/// mount point), parents listed before children by the caller. Paths are
/// relative and end without a slash.
pub(crate) fn directories(paths: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in paths {
        let name = format!("{p}/");
        if name.len() <= 100 && name.is_ascii() {
            out.extend_from_slice(&ustar_block(name.as_bytes(), b'5', 0, 0o755));
        } else {
            let record = pax_record("path", &name);
            out.extend_from_slice(&ustar_block(b"././@PaxHeader", b'x', record.len() as u64, 0o644));
            out.extend_from_slice(&record);
            out.resize(out.len() + padding(record.len() as u64) as usize, 0);
            out.extend_from_slice(&ustar_block(b"././@LongName/", b'5', 0, 0o755));
        }
    }
    out.extend_from_slice(&[0; 1024]);
    out
}

/// One entry of [`guest_entries`]: a relative path (no `..`, no empty
/// component, without a trailing slash), its mode, and the contents of a
/// regular file (`None`: a directory). Owned by root.
pub(crate) struct Entry<'a> {
    pub path: &'a str,
    pub mode: u32,
    pub contents: Option<&'a [u8]>,
}

/// A tar of root-owned directories and regular files (what the host writes
/// into a created container: key pairs, injected files), each with
/// modification time `mtime`, in the given order (parents first).
pub(crate) fn guest_entries(entries: &[Entry<'_>], mtime: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let (name, typeflag, size) = match e.contents {
            None => (format!("{}/", e.path), b'5', 0u64),
            Some(c) => (e.path.to_string(), b'0', c.len() as u64),
        };
        let mut header = if name.len() <= 100 && name.is_ascii() {
            ustar_block(name.as_bytes(), typeflag, size, e.mode)
        } else {
            let record = pax_record("path", &name);
            out.extend_from_slice(&ustar_block(b"././@PaxHeader", b'x', record.len() as u64, 0o644));
            out.extend_from_slice(&record);
            out.resize(out.len() + padding(record.len() as u64) as usize, 0);
            let placeholder: &[u8] = if typeflag == b'5' { b"././@LongName/" } else { b"././@LongName" };
            ustar_block(placeholder, typeflag, size, e.mode)
        };
        set_mtime(&mut header, mtime);
        out.extend_from_slice(&header);
        if let Some(c) = e.contents {
            out.extend_from_slice(c);
            out.resize(out.len() + padding(size) as usize, 0);
        }
    }
    out.extend_from_slice(&[0; 1024]);
    out
}

/// Sets a header's modification time and its checksum again.
fn set_mtime(b: &mut [u8; 512], mtime: u64) {
    octal(&mut b[136..148], mtime.min(0o77777777777));
    b[148..156].copy_from_slice(b"        ");
    let sum: u64 = b.iter().map(|&c| u64::from(c)).sum();
    octal(&mut b[148..155], sum);
    b[155] = b' ';
}

/// One PAX record, `"<len> <key>=<value>\n"`, its length counting itself.
fn pax_record(key: &str, value: &str) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len.to_string().len() + body != len {
        len = body + len.to_string().len();
    }
    format!("{len} {key}={value}\n").into_bytes()
}

/// A USTAR header block (octal fields, valid checksum).
fn ustar_block(name: &[u8], typeflag: u8, size: u64, mode: u32) -> [u8; 512] {
    let mut b = [0u8; 512];
    let n = name.len().min(100);
    b[..n].copy_from_slice(&name[..n]);
    octal(&mut b[100..108], u64::from(mode));
    octal(&mut b[108..116], 0);
    octal(&mut b[116..124], 0);
    if size < 0o77777777777 {
        octal(&mut b[124..136], size);
    } else {
        // GNU base-256, which Go reads for any size.
        b[124] = 0x80;
        b[128..136].copy_from_slice(&size.to_be_bytes());
    }
    octal(&mut b[136..148], 0);
    b[156] = typeflag;
    b[257..263].copy_from_slice(b"ustar\0");
    b[263..265].copy_from_slice(b"00");
    b[148..156].copy_from_slice(b"        ");
    let sum: u64 = b.iter().map(|&c| u64::from(c)).sum();
    octal(&mut b[148..155], sum);
    b[155] = b' ';
    b
}

/// Writes `value` as zero-padded octal filling `field` but its last byte (NUL).
fn octal(field: &mut [u8], value: u64) {
    let width = field.len() - 1;
    let text = format!("{value:0width$o}");
    let text = &text.as_bytes()[text.len().saturating_sub(width)..];
    field[..width].copy_from_slice(text);
    field[width] = 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_entries_read_back_with_their_modes_owners_and_times() {
        let long = format!("{}/f", "d".repeat(120));
        let entries = [
            Entry { path: "root/.ssh", mode: 0o700, contents: None },
            Entry { path: "root/.ssh/authorized_keys", mode: 0o600, contents: Some(b"ssh-ed25519 AAAA k\n") },
            Entry { path: &long, mode: 0o644, contents: Some(&[7u8; 700]) },
        ];
        let tar = guest_entries(&entries, 1_700_000_000);
        let mut a = ::tar::Archive::new(&tar[..]);
        let mut seen = Vec::new();
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let h = e.header().clone();
            let mut body = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut body).unwrap();
            let path = e.path().unwrap().display().to_string();
            assert_eq!((h.uid().unwrap(), h.gid().unwrap(), h.mtime().unwrap()), (0, 0, 1_700_000_000), "{path}");
            seen.push((path, h.entry_type().is_dir(), h.mode().unwrap(), body));
        }
        assert_eq!(
            seen,
            [
                ("root/.ssh/".to_string(), true, 0o700, vec![]),
                ("root/.ssh/authorized_keys".to_string(), false, 0o600, b"ssh-ed25519 AAAA k\n".to_vec()),
                (long.clone(), false, 0o644, vec![7u8; 700]),
            ]
        );
    }

    fn header(name: &[u8], typeflag: u8, size_field: &[u8]) -> [u8; 512] {
        let mut b = [0u8; 512];
        b[..name.len()].copy_from_slice(name);
        b[100..107].copy_from_slice(b"0000644");
        b[108..115].copy_from_slice(b"0000000");
        b[116..123].copy_from_slice(b"0000000");
        b[124..124 + size_field.len()].copy_from_slice(size_field);
        b[136..147].copy_from_slice(b"00000000000");
        b[156] = typeflag;
        b[257..263].copy_from_slice(b"ustar\0");
        b[263..265].copy_from_slice(b"00");
        set_checksum(&mut b);
        b
    }

    fn set_checksum(b: &mut [u8; 512]) {
        b[148..156].copy_from_slice(b"        ");
        let sum: u32 = b.iter().map(|&c| u32::from(c)).sum();
        let field = format!("{sum:06o}\0 ");
        b[148..156].copy_from_slice(field.as_bytes());
    }

    #[test]
    fn octal_and_base256_fields() {
        assert_eq!(parse_octal(b"0000644\0"), Ok(0o644));
        assert_eq!(parse_octal(b"  644 \0\0"), Ok(0o644));
        assert_eq!(parse_octal(b"\0\0\0\0"), Ok(0));
        assert_eq!(parse_octal(b"12\0garbage"), Ok(0o12));
        assert_eq!(parse_octal(b"64 4"), Err(()));
        assert_eq!(parse_octal(b"0009"), Err(()));
        let mut big = [0u8; 12];
        big[0] = 0x80;
        big[4..12].copy_from_slice(&(10u64 << 33).to_be_bytes());
        assert_eq!(parse_numeric(&big), Ok(10 << 33));
        let negative = [0xffu8; 12];
        assert_eq!(parse_numeric(&negative), Ok(-1));
        let mut overflow = [0xffu8; 12];
        overflow[0] = 0x80;
        assert_eq!(parse_numeric(&overflow), Err(()));
    }

    #[test]
    fn header_checks() {
        let ok = header(b"a/b", b'0', b"00000000005\0");
        let raw = parse_header(&ok).expect("valid header");
        assert_eq!((raw.name.as_slice(), raw.size, raw.typeflag), (&b"a/b"[..], 5, b'0'));

        let mut bad_sum = ok;
        bad_sum[0] = b'x';
        assert_eq!(parse_header(&bad_sum).unwrap_err(), "bad header checksum");

        let mut base256 = header(b"big", b'0', &[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0]);
        set_checksum(&mut base256);
        assert_eq!(parse_header(&base256).map(|h| h.size), Ok(0x1000));

        let mut negative = header(b"neg", b'0', &[0xff; 12]);
        set_checksum(&mut negative);
        assert!(parse_header(&negative).is_err());

        let mut star = ok;
        star[508..512].copy_from_slice(b"tar\0");
        set_checksum(&mut star);
        assert!(parse_header(&star).unwrap_err().contains("star"));

        let mut prefixed = header(b"layer.tar", b'0', b"00000000000\0");
        prefixed[345..349].copy_from_slice(b"abcd");
        set_checksum(&mut prefixed);
        assert_eq!(parse_header(&prefixed).map(|h| h.name), Ok(b"abcd/layer.tar".to_vec()));
    }

    #[test]
    fn pax_records() {
        let records = parse_pax(b"16 path=a/b/c/d\n11 size=42\n").expect("valid");
        let o = pax_overrides(&records).expect("valid");
        assert_eq!(o.path.as_deref(), Some(&b"a/b/c/d"[..]));
        assert_eq!(o.size, Some(42));
        assert!(parse_pax(b"15 path=a/b/c/d\n").is_err()); // wrong length
        assert!(parse_pax(b"12 path=a\0b\n").is_err()); // NUL in path
        assert!(parse_pax(b"x path=a\n").is_err());
        assert!(parse_pax(b"22 GNU.sparse.size=10\n").is_err());
        let bad_size = parse_pax(b"12 size=-42\n").expect("record parses");
        assert!(pax_overrides(&bad_size).is_err());
        let bad_time = parse_pax(b"14 mtime=1.5x\n").expect("record parses");
        assert!(pax_overrides(&bad_time).is_err());
        let empty_path = parse_pax(b"7 a=bc\n8 path=\n").expect("valid");
        assert!(pax_overrides(&empty_path).expect("valid").path.is_none());
    }

    /// What the writer emits reads back through the reader, short and long
    /// names alike, with lengths that cross the record's own digit count.
    #[test]
    fn written_headers_read_back() {
        for name in ["a/layer.tar".to_string(), "x".repeat(100), "y".repeat(101), "z/".repeat(600)] {
            let bytes = file_header(&name, 12345);
            let mut blocks = bytes.chunks_exact(512);
            let first: &[u8; 512] = blocks.next().unwrap().try_into().unwrap();
            let h = parse_header(first).expect("parses");
            if name.len() <= 100 {
                assert_eq!((h.name.as_slice(), h.size, h.typeflag), (name.as_bytes(), 12345, b'0'));
                continue;
            }
            assert_eq!(h.typeflag, b'x');
            let data = &bytes[512..512 + h.size as usize];
            let o = pax_overrides(&parse_pax(data).expect("records")).expect("overrides");
            assert_eq!(o.path.as_deref(), Some(name.as_bytes()));
            let last: &[u8; 512] = bytes[bytes.len() - 512..].try_into().unwrap();
            assert_eq!(parse_header(last).expect("entry").size, 12345);
        }
        for body in 1..200 {
            let value = "v".repeat(body);
            let r = pax_record("k", &value);
            let len: usize = std::str::from_utf8(&r).unwrap().split(' ').next().unwrap().parse().unwrap();
            assert_eq!(len, r.len(), "{body}");
        }
        let huge = ustar_block(b"big", b'0', 1 << 40, 0o644);
        assert_eq!(parse_header(&huge).expect("base-256").size, 1 << 40);
    }
}
