//! Safe extraction of one layer archive into its own directory.
//!
//! Whiteouts are written the way overlayfs reads them: a `.wh.<name>` entry becomes a
//! character device 0:0 named `<name>`, created by us with `mknod`, and `.wh..wh..opq` sets
//! `trusted.overlay.opaque=y` on its directory. We keep layers separate instead of
//! flattening them so that one unpacked layer is shared by every image and machine that
//! uses it, and the agent can stack them as overlayfs lower dirs as they are. Device nodes
//! shipped *by a layer* (rootfs tarballs carry `/dev`) are left out, a raw 0:0 device
//! included, so the only device nodes in the store are whiteouts we made ourselves; the
//! sandbox brings its own `/dev`. FIFOs are harmless and are extracted.
//! Setuid/setgid bits and owners are kept: the sandbox, not the store, confines them.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use filetime::FileTime;
use nix::sys::stat::{Mode, SFlag};
use tar::EntryType;

use crate::digest::{Algorithm, Digest, HashingReader};
use crate::ImageError;

const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// How much one image may unpack to, over all its layers. A layer bomb is refused from the
/// sizes in its tar headers, before its data is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackLimits {
    /// Bytes of file content.
    pub max_bytes: u64,
    /// Entries (files, directories, links, whiteouts).
    pub max_files: u64,
}

impl Default for UnpackLimits {
    /// 10 GiB and 1,000,000 entries: above any ordinary image, far below a bomb.
    fn default() -> Self {
        UnpackLimits {
            max_bytes: 10 << 30,
            max_files: 1_000_000,
        }
    }
}

/// What an image has used of its [`UnpackLimits`] so far.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    pub limits: UnpackLimits,
    pub bytes: u64,
    pub files: u64,
}

impl Budget {
    pub(crate) fn new(limits: UnpackLimits) -> Budget {
        Budget {
            limits,
            bytes: 0,
            files: 0,
        }
    }

    /// Count `files` entries and `bytes` of content, refusing past a limit.
    pub(crate) fn spend(
        &mut self,
        digest: &Digest,
        files: u64,
        bytes: u64,
    ) -> Result<(), ImageError> {
        self.files = self.files.saturating_add(files);
        self.bytes = self.bytes.saturating_add(bytes);
        let over = |what: &str, limit: u64| ImageError::TooLarge {
            digest: digest.to_string(),
            what: what.to_owned(),
            limit,
        };
        if self.files > self.limits.max_files {
            return Err(over("entries", self.limits.max_files));
        }
        if self.bytes > self.limits.max_bytes {
            return Err(over("bytes", self.limits.max_bytes));
        }
        Ok(())
    }
}

/// What unpacking learned about a layer.
#[derive(Debug)]
pub(crate) struct Unpacked {
    /// Bytes of file content written.
    pub bytes: u64,
    /// Entries written.
    pub files: u64,
    /// Digest of the uncompressed tar stream.
    pub diff_id: Digest,
    /// Directories the layer needed but did not list; they must not be symlinks in any
    /// lower layer this layer is stacked on.
    pub implicit_dirs: Vec<String>,
}

/// Decompress (gzip, zstd or none, by magic bytes), verify `digest` over the raw stream and
/// extract into `dest` (an existing empty directory). `lowers` are the unpacked layers below
/// this one, bottom-most first. On error `dest` is left for the caller to delete.
pub(crate) fn unpack_layer(
    input: impl Read,
    digest: &Digest,
    media_type: &str,
    dest: &Path,
    lowers: &[PathBuf],
    budget: &mut Budget,
) -> Result<Unpacked, ImageError> {
    if media_type.contains("encrypted") || media_type.contains("nondistributable") {
        return Err(malformed(
            digest,
            format!("media type {media_type} is not supported"),
        ));
    }
    let raw = HashingReader::new(input, digest.algorithm());
    let mut raw = BufReader::new(raw);
    let magic = raw.fill_buf().map_err(|e| malformed(digest, e))?.to_vec();
    let mut stream = if magic.starts_with(&[0x1f, 0x8b]) {
        Decompressed::Gzip(flate2::bufread::MultiGzDecoder::new(raw))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let decoder =
            zstd::stream::read::Decoder::with_buffer(raw).map_err(|e| malformed(digest, e))?;
        Decompressed::Zstd(decoder)
    } else {
        Decompressed::Plain(raw)
    };
    if (media_type.ends_with("gzip") && !matches!(stream, Decompressed::Gzip(_)))
        || (media_type.ends_with("zstd") && !matches!(stream, Decompressed::Zstd(_)))
    {
        tracing::debug!(%digest, media_type, "layer compression differs from its media type, using magic bytes");
    }

    let tar_stream = PadToBlock::new(HashingReader::new(&mut stream, Algorithm::Sha256));
    let mut archive = tar::Archive::new(tar_stream);
    let mut extractor = Extractor {
        root: dest,
        digest,
        lowers,
        implicit: Vec::new(),
        implicit_set: HashSet::new(),
        dir_times: Vec::new(),
    };
    let before = *budget;
    for entry in archive.entries().map_err(|e| malformed(digest, e))? {
        let entry = entry.map_err(|e| malformed(digest, e))?;
        let content = match entry.header().entry_type() {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => entry.size(),
            _ => 0,
        };
        budget.spend(digest, 1, content)?;
        extractor.extract(entry)?;
    }
    extractor.finish()?;
    let (diff_id, _) = archive
        .into_inner()
        .inner
        .drain_and_finish()
        .map_err(|e| malformed(digest, e))?;
    let (actual, _) = stream
        .into_inner()
        .into_inner()
        .drain_and_finish()
        .map_err(|e| malformed(digest, e))?;
    digest.check(&actual)?;
    Ok(Unpacked {
        bytes: budget.bytes - before.bytes,
        files: budget.files - before.files,
        diff_id,
        implicit_dirs: extractor.implicit,
    })
}

/// Fail if stacking a layer whose implicit directories are `implicit_dirs` on `lowers`
/// would put one of them over a symlink.
pub(crate) fn check_implicit_dirs(
    digest: &Digest,
    implicit_dirs: &[String],
    lowers: &[PathBuf],
) -> Result<(), ImageError> {
    for dir in implicit_dirs {
        if lower_kind(lowers, Path::new(dir)) == Some(Kind::Symlink) {
            return Err(hostile(
                digest,
                dir,
                "parent directory is a symlink in a lower layer",
            ));
        }
    }
    Ok(())
}

/// Some writers (umoci among them) end a layer right after the last file's data, without
/// padding it to a 512-byte block or writing the end-of-archive blocks. The tar reader
/// would fail skipping the padding, so supply zeros up to the block boundary after EOF.
/// The diff id is computed below this reader, over the real bytes only.
struct PadToBlock<R> {
    inner: R,
    total: u64,
    at_eof: bool,
}

impl<R: Read> PadToBlock<R> {
    fn new(inner: R) -> Self {
        PadToBlock {
            inner,
            total: 0,
            at_eof: false,
        }
    }
}

impl<R: Read> Read for PadToBlock<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.at_eof {
            let n = self.inner.read(buf)?;
            if n > 0 || buf.is_empty() {
                self.total += n as u64;
                return Ok(n);
            }
            self.at_eof = true;
        }
        let missing = (512 - self.total % 512) % 512;
        let n = buf
            .len()
            .min(usize::try_from(missing).unwrap_or(usize::MAX));
        buf[..n].fill(0);
        self.total += n as u64;
        Ok(n)
    }
}

enum Decompressed<R: BufRead> {
    Plain(R),
    Gzip(flate2::bufread::MultiGzDecoder<R>),
    Zstd(zstd::stream::read::Decoder<'static, R>),
}

impl<R: BufRead> Decompressed<R> {
    fn into_inner(self) -> R {
        match self {
            Decompressed::Plain(r) => r,
            Decompressed::Gzip(d) => d.into_inner(),
            Decompressed::Zstd(d) => d.finish(),
        }
    }
}

impl<R: BufRead> Read for Decompressed<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decompressed::Plain(r) => r.read(buf),
            Decompressed::Gzip(d) => d.read(buf),
            Decompressed::Zstd(d) => d.read(buf),
        }
    }
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Kind {
    Dir,
    Symlink,
    Other,
}

fn kind_of(meta: &fs::Metadata) -> Kind {
    let ft = meta.file_type();
    if ft.is_dir() {
        Kind::Dir
    } else if ft.is_symlink() {
        Kind::Symlink
    } else {
        Kind::Other
    }
}

fn is_whiteout(meta: &fs::Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

/// What `rel` is in the overlay of `lowers` (bottom-most first), honouring whiteouts and
/// opaque directories; `None` when it does not exist there.
fn lower_kind(lowers: &[PathBuf], rel: &Path) -> Option<Kind> {
    let parts: Vec<Component<'_>> = rel.components().collect();
    for lower in lowers.iter().rev() {
        let mut path = lower.clone();
        let mut opaque = false;
        for (i, part) in parts.iter().enumerate() {
            path.push(part);
            let Ok(meta) = fs::symlink_metadata(&path) else {
                break;
            };
            if is_whiteout(&meta) {
                return None;
            }
            if i + 1 == parts.len() {
                return Some(kind_of(&meta));
            }
            if !meta.is_dir() {
                return None;
            }
            if matches!(xattr::get(&path, OPAQUE_XATTR), Ok(Some(v)) if v == b"y") {
                opaque = true;
            }
        }
        if opaque {
            return None;
        }
    }
    None
}

fn malformed(digest: &Digest, reason: impl ToString) -> ImageError {
    ImageError::MalformedLayer {
        digest: digest.to_string(),
        reason: reason.to_string(),
    }
}

fn hostile(digest: &Digest, path: impl AsRef<Path>, reason: &str) -> ImageError {
    ImageError::HostileLayer {
        digest: digest.to_string(),
        path: path.as_ref().display().to_string(),
        reason: reason.to_owned(),
    }
}

struct Extractor<'a> {
    root: &'a Path,
    digest: &'a Digest,
    lowers: &'a [PathBuf],
    implicit: Vec<String>,
    implicit_set: HashSet<PathBuf>,
    dir_times: Vec<(PathBuf, FileTime)>,
}

impl Extractor<'_> {
    /// Turn an archive path into a relative path of plain components; `None` for the root.
    fn normalise(&self, raw: &Path, what: &str) -> Result<Option<PathBuf>, ImageError> {
        let mut out = PathBuf::new();
        for part in raw.components() {
            match part {
                Component::Normal(p) => out.push(p),
                Component::CurDir | Component::RootDir => {}
                Component::ParentDir | Component::Prefix(_) => {
                    return Err(hostile(
                        self.digest,
                        raw,
                        &format!("{what} escapes the layer root"),
                    ));
                }
            }
        }
        Ok((!out.as_os_str().is_empty()).then_some(out))
    }

    /// Make sure every ancestor of `rel` is a real directory in this layer, creating missing
    /// ones, and never one that is a symlink here or in a lower layer.
    fn prepare_parents(&mut self, rel: &Path, raw: &Path) -> Result<(), ImageError> {
        let Some(parent) = rel.parent() else {
            return Ok(());
        };
        let mut prefix = PathBuf::new();
        for part in parent.components() {
            prefix.push(part);
            let path = self.root.join(&prefix);
            match fs::symlink_metadata(&path) {
                Ok(meta) if meta.is_dir() => {}
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(hostile(self.digest, raw, "parent directory is a symlink"));
                }
                Ok(_) => return Err(hostile(self.digest, raw, "parent is not a directory")),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if lower_kind(self.lowers, &prefix) == Some(Kind::Symlink) {
                        return Err(hostile(
                            self.digest,
                            raw,
                            "parent directory is a symlink in a lower layer",
                        ));
                    }
                    fs::create_dir(&path).map_err(ImageError::io(&path))?;
                    self.implicit.push(prefix.display().to_string());
                    self.implicit_set.insert(prefix.clone());
                }
                Err(e) => return Err(ImageError::io(&path)(e)),
            }
        }
        Ok(())
    }

    /// Remove whatever this layer already has at `path`, unless both are directories.
    fn clear(&self, path: &Path, keep_dir: bool) -> Result<(), ImageError> {
        match fs::symlink_metadata(path) {
            Ok(meta) if meta.is_dir() && keep_dir => Ok(()),
            Ok(meta) if meta.is_dir() => fs::remove_dir_all(path).map_err(ImageError::io(path)),
            Ok(_) => fs::remove_file(path).map_err(ImageError::io(path)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ImageError::io(path)(e)),
        }
    }

    fn extract<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), ImageError> {
        let raw = entry
            .path()
            .map_err(|e| malformed(self.digest, e))?
            .into_owned();
        let kind = entry.header().entry_type();
        let Some(rel) = self.normalise(&raw, "path")? else {
            return Ok(()); // the root directory entry: the store owns the root's metadata
        };
        self.prepare_parents(&rel, &raw)?;
        let path = self.root.join(&rel);
        let name = rel.file_name().map(OsStr::as_bytes).unwrap_or_default();

        if name == OPAQUE_MARKER.as_bytes() {
            let dir = path.parent().unwrap_or(self.root);
            return xattr::set(dir, OPAQUE_XATTR, b"y").map_err(ImageError::io(dir));
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            if hidden.starts_with(WHITEOUT_PREFIX.as_bytes()) || hidden.is_empty() {
                tracing::debug!(digest = %self.digest, path = %raw.display(), "skipping special whiteout");
                return Ok(());
            }
            if hidden == b"." || hidden == b".." {
                return Err(hostile(self.digest, &raw, "whiteout of . or .."));
            }
            let target = path.with_file_name(OsStr::from_bytes(hidden));
            self.clear(&target, false)?;
            return nix::sys::stat::mknod(&target, SFlag::S_IFCHR, Mode::empty(), 0)
                .map_err(|e| ImageError::io(&target)(e.into()));
        }

        match kind {
            EntryType::Directory => {
                self.clear(&path, true)?;
                if !path.is_dir() {
                    fs::create_dir(&path).map_err(ImageError::io(&path))?;
                }
                if self.implicit_set.remove(&rel) {
                    let listed = rel.display().to_string();
                    self.implicit.retain(|d| *d != listed);
                }
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.clear(&path, false)?;
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)
                    .map_err(ImageError::io(&path))?;
                let copied =
                    io::copy(&mut entry, &mut file).map_err(|e| malformed(self.digest, e))?;
                if copied != entry.size() {
                    return Err(malformed(
                        self.digest,
                        format!("{} is truncated", raw.display()),
                    ));
                }
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| {
                        malformed(
                            self.digest,
                            format!("symlink {} has no target", raw.display()),
                        )
                    })?;
                self.clear(&path, false)?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path)
                    .map_err(ImageError::io(&path))?;
            }
            EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(|e| malformed(self.digest, e))?
                    .ok_or_else(|| {
                        malformed(
                            self.digest,
                            format!("hard link {} has no target", raw.display()),
                        )
                    })?
                    .into_owned();
                let target = self
                    .normalise(&target, "hard link target")?
                    .ok_or_else(|| hostile(self.digest, &raw, "hard link to the layer root"))?;
                self.check_link_target(&target, &raw)?;
                self.clear(&path, false)?;
                fs::hard_link(self.root.join(&target), &path).map_err(ImageError::io(&path))?;
                return Ok(()); // the target's metadata is the link's metadata
            }
            EntryType::Fifo => {
                self.clear(&path, false)?;
                nix::unistd::mkfifo(&path, Mode::from_bits_truncate(0o600))
                    .map_err(|e| ImageError::io(&path)(e.into()))?;
            }
            EntryType::Char | EntryType::Block => {
                tracing::debug!(digest = %self.digest, path = %raw.display(), "leaving out a device node");
                return Ok(());
            }
            other => {
                tracing::debug!(digest = %self.digest, path = %raw.display(), ?other, "skipping tar entry");
                return Ok(());
            }
        }
        self.apply_metadata(&mut entry, &path, kind)
    }

    /// A hard link target must already exist in this layer, reached without symlinks.
    fn check_link_target(&self, target: &Path, raw: &Path) -> Result<(), ImageError> {
        let mut prefix = self.root.to_path_buf();
        let parts: Vec<_> = target.components().collect();
        for (i, part) in parts.iter().enumerate() {
            prefix.push(part);
            match fs::symlink_metadata(&prefix) {
                Ok(meta) if i + 1 == parts.len() => {
                    if meta.is_dir() {
                        return Err(hostile(self.digest, raw, "hard link to a directory"));
                    }
                    if meta.file_type().is_char_device() || meta.file_type().is_block_device() {
                        return Err(hostile(self.digest, raw, "hard link to a whiteout device"));
                    }
                }
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => {
                    return Err(hostile(
                        self.digest,
                        raw,
                        "hard link target goes through a symlink",
                    ))
                }
                Err(_) => {
                    return Err(hostile(
                        self.digest,
                        raw,
                        "hard link target is not in this layer",
                    ))
                }
            }
        }
        Ok(())
    }

    fn apply_metadata<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        path: &Path,
        kind: EntryType,
    ) -> Result<(), ImageError> {
        let header = entry.header();
        let bad = |e: io::Error| malformed(self.digest, e);
        let old = header.as_old();
        let uid = numeric(&old.uid, header.uid()).map_err(bad)?;
        let uid = u32::try_from(uid).map_err(|e| malformed(self.digest, e))?;
        let gid = numeric(&old.gid, header.gid()).map_err(bad)?;
        let gid = u32::try_from(gid).map_err(|e| malformed(self.digest, e))?;
        let mode = numeric(&old.mode, header.mode().map(u64::from)).map_err(bad)? as u32 & 0o7777;
        let mtime = numeric(&old.mtime, header.mtime()).map_err(bad)?;
        let mtime = FileTime::from_unix_time(i64::try_from(mtime).unwrap_or(i64::MAX), 0);
        std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(ImageError::io(path))?;
        let xattrs = pax_xattrs(entry).map_err(bad)?;
        for (name, value) in xattrs {
            // trusted.* would let a layer forge overlay metadata; everything else is kept.
            if name.starts_with("trusted.") {
                continue;
            }
            if let Err(e) = xattr::set(path, &name, &value) {
                tracing::debug!(path = %path.display(), name, error = %e, "could not set xattr");
            }
        }
        if kind != EntryType::Symlink {
            // After chown: chown clears setuid bits.
            fs::set_permissions(path, fs::Permissions::from_mode(mode))
                .map_err(ImageError::io(path))?;
        }
        if kind == EntryType::Directory {
            self.dir_times.push((path.to_path_buf(), mtime));
        } else {
            // utimensat without following: never opens the entry (a FIFO would block).
            filetime::set_symlink_file_times(path, mtime, mtime).map_err(ImageError::io(path))?;
        }
        Ok(())
    }

    /// Directory mtimes last, deepest first, since creating children touches them.
    fn finish(&mut self) -> Result<(), ImageError> {
        for (path, mtime) in self.dir_times.drain(..).rev() {
            if fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
                filetime::set_symlink_file_times(&path, mtime, mtime)
                    .map_err(ImageError::io(&path))?;
            }
        }
        Ok(())
    }
}

/// A numeric header field; an empty one (all NULs or spaces) reads as 0, as Go's
/// archive/tar (which wrote most layers) reads it.
fn numeric(raw: &[u8], parsed: io::Result<u64>) -> io::Result<u64> {
    match parsed {
        Err(_) if raw.iter().all(|b| *b == 0 || *b == b' ') => Ok(0),
        other => other,
    }
}

fn pax_xattrs<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    if let Some(exts) = entry.pax_extensions()? {
        for ext in exts {
            let ext = ext?;
            if let Ok(key) = ext.key() {
                if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                    out.push((name.to_owned(), ext.value_bytes().to_vec()));
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pad_to_block_completes_the_last_block_only() {
        let mut padded = Vec::new();
        PadToBlock::new(&[1u8; 700][..])
            .read_to_end(&mut padded)
            .unwrap();
        assert_eq!(padded.len(), 1024);
        assert!(padded[700..].iter().all(|b| *b == 0));
        let mut exact = Vec::new();
        PadToBlock::new(&[1u8; 512][..])
            .read_to_end(&mut exact)
            .unwrap();
        assert_eq!(exact.len(), 512);
    }

    #[test]
    fn lower_kind_honours_whiteouts_and_opaque_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let (bottom, middle, top) = (
            tmp.path().join("0"),
            tmp.path().join("1"),
            tmp.path().join("2"),
        );
        fs::create_dir_all(bottom.join("d")).unwrap();
        std::os::unix::fs::symlink("/", bottom.join("d/link")).unwrap();
        std::os::unix::fs::symlink("/", bottom.join("gone")).unwrap();
        fs::create_dir_all(middle.join("d")).unwrap();
        nix::sys::stat::mknod(&middle.join("gone"), SFlag::S_IFCHR, Mode::empty(), 0).unwrap();
        fs::create_dir_all(&top).unwrap();
        let lowers = [bottom.clone(), middle.clone()];
        assert_eq!(
            lower_kind(&lowers, Path::new("d/link")),
            Some(Kind::Symlink)
        );
        assert_eq!(lower_kind(&lowers, Path::new("gone")), None, "whited out");
        assert_eq!(lower_kind(&lowers, Path::new("d")), Some(Kind::Dir));
        xattr::set(middle.join("d"), OPAQUE_XATTR, b"y").unwrap();
        assert_eq!(
            lower_kind(&lowers, Path::new("d/link")),
            None,
            "hidden by an opaque dir"
        );
        let with_top = [bottom, middle, top];
        assert_eq!(lower_kind(&with_top, Path::new("d")), Some(Kind::Dir));
    }
}
