//! Puts the program's code at [`CODE_DIR`]: a zip extracted (refusing any entry that
//! would land outside), a single plain file, or a squashfs mounted read-only.

use crate::paths::CODE_DIR;
use aleph_protocol::agent::{CodeConfig, CodeEncoding, CodeInterface};
use anyhow::{Context, Result, bail};
use nix::mount::{MsFlags, mount};
use std::fs::{File, OpenOptions};
use std::io::{Cursor, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// Code larger than this is refused for `plain` and `zip` (it is read into memory).
const MAX_INLINE_CODE: u64 = 1 << 30;

pub fn install(config: &CodeConfig) -> Result<()> {
    let dest = Path::new(CODE_DIR);
    std::fs::create_dir_all(dest)?;
    match config.encoding {
        CodeEncoding::Squashfs => mount(
            Some(config.device.as_str()),
            dest,
            Some("squashfs"),
            MsFlags::MS_RDONLY | MsFlags::MS_NODEV,
            None::<&str>,
        )
        .with_context(|| format!("mounting code {} (squashfs)", config.device)),
        CodeEncoding::Zip => extract_zip(&read_prefix(&config.device, config.size)?, dest),
        CodeEncoding::Plain => {
            let bytes = read_prefix(&config.device, config.size)?;
            let (name, mode) = plain_file(&config.entrypoint, config.interface)?;
            write_new(&dest.join(name), &bytes, mode)
        }
    }
}

/// The drive is at least as large as the code (often padded to a sector multiple).
fn read_prefix(device: &str, size: u64) -> Result<Vec<u8>> {
    if size > MAX_INLINE_CODE {
        bail!("code of {size} bytes is too large to unpack");
    }
    let mut bytes = Vec::with_capacity(size as usize);
    File::open(device)
        .with_context(|| format!("opening code drive {device}"))?
        .take(size)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 != size {
        bail!(
            "code drive {device} holds {} bytes, expected {size}",
            bytes.len()
        );
    }
    Ok(bytes)
}

/// Where a `plain` program goes: `module.py` (dots as folders) for ASGI, the entrypoint
/// itself, executable, for a binary.
fn plain_file(entrypoint: &str, interface: CodeInterface) -> Result<(PathBuf, u32)> {
    let (name, mode) = match interface {
        CodeInterface::Asgi => {
            let module = entrypoint.split(':').next().unwrap_or_default();
            (format!("{}.py", module.replace('.', "/")), 0o644)
        }
        CodeInterface::Binary => (entrypoint.to_owned(), 0o755),
    };
    Ok((safe_relative(Path::new(&name))?, mode))
}

/// A relative path that cannot leave the folder it is joined to.
fn safe_relative(path: &Path) -> Result<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(c) => out.push(c),
            Component::CurDir => {}
            _ => bail!("path {} leaves the code folder", path.display()),
        }
    }
    if out.as_os_str().is_empty() {
        bail!("empty path");
    }
    Ok(out)
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    std::io::Write::write_all(&mut file, bytes)?;
    Ok(())
}

const S_IFMT: u32 = 0o170000;
const S_IFLNK: u32 = 0o120000;

/// Extracts a zip archive into `dest`. Entries whose name is absolute or climbs out with
/// `..` fail the whole extraction (a program that ships such an archive is broken or
/// hostile); symbolic links must point inside and are created last, so that no entry
/// is ever written through one.
pub fn extract_zip(bytes: &[u8], dest: &Path) -> Result<()> {
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).context("reading the code zip")?;
    let mut links = Vec::new();
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i)?;
        let absolute = entry.name().starts_with('/') || entry.name().starts_with('\\');
        let Some(relative) = entry.enclosed_name().filter(|_| !absolute) else {
            bail!("zip entry {:?} leaves the code folder", entry.name());
        };
        let relative =
            safe_relative(&relative).with_context(|| format!("zip entry {:?}", entry.name()))?;
        let path = dest.join(&relative);
        let mode = entry.unix_mode();
        if entry.is_dir() {
            std::fs::create_dir_all(&path)?;
        } else if mode.is_some_and(|m| m & S_IFMT == S_IFLNK) {
            let mut target = String::new();
            entry.read_to_string(&mut target)?;
            let resolved = relative.parent().unwrap_or(Path::new("")).join(&target);
            if Path::new(&target).is_absolute() || !stays_inside(&resolved) {
                bail!(
                    "zip entry {:?} links outside the code folder ({target})",
                    entry.name()
                );
            }
            links.push((path, target));
        } else {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let perm = mode.map(|m| m & 0o777).filter(|m| *m != 0).unwrap_or(0o644);
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                // A link planted by an earlier entry must not redirect this write.
                .custom_flags(libc::O_NOFOLLOW)
                .mode(perm)
                .open(&path)
                .with_context(|| format!("extracting {}", relative.display()))?;
            std::io::copy(&mut entry, &mut file)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(perm))?;
        }
    }
    for (path, target) in links {
        std::os::unix::fs::symlink(&target, &path)
            .with_context(|| format!("linking {}", path.display()))?;
    }
    Ok(())
}

/// Whether a relative path, `..` applied lexically, stays at or below its start.
fn stays_inside(path: &Path) -> bool {
    let mut depth: i64 = 0;
    for component in path.components() {
        match component {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            _ => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use zip::write::SimpleFileOptions;

    fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for (name, data) in entries {
            w.start_file(*name, SimpleFileOptions::default().unix_permissions(0o755))
                .unwrap();
            w.write_all(data).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    #[test]
    fn extracts_files_and_folders() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = zip_of(&[("main.py", b"app = 1\n"), ("pkg/mod.py", b"x = 2\n")]);
        extract_zip(&bytes, dir.path()).unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("main.py")).unwrap(),
            b"app = 1\n"
        );
        assert_eq!(
            std::fs::read(dir.path().join("pkg/mod.py")).unwrap(),
            b"x = 2\n"
        );
        let mode = std::fs::metadata(dir.path().join("main.py"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
    }

    #[test]
    fn refuses_path_traversal() {
        for name in ["../evil.py", "a/../../evil.py", "/etc/evil"] {
            let root = tempfile::tempdir().unwrap();
            let dest = root.path().join("code");
            std::fs::create_dir(&dest).unwrap();
            let bytes = zip_of(&[("ok.py", b""), (name, b"boom")]);
            let err = extract_zip(&bytes, &dest).unwrap_err();
            assert!(
                format!("{err:#}").contains("leaves the code folder"),
                "{name}: {err:#}"
            );
            assert!(!root.path().join("evil.py").exists());
        }
    }

    #[test]
    fn refuses_links_out_but_keeps_links_in() {
        let dest = tempfile::tempdir().unwrap();
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        w.start_file("real.py", SimpleFileOptions::default())
            .unwrap();
        w.write_all(b"x").unwrap();
        w.add_symlink("alias.py", "real.py", SimpleFileOptions::default())
            .unwrap();
        extract_zip(&w.finish().unwrap().into_inner(), dest.path()).unwrap();
        assert_eq!(std::fs::read(dest.path().join("alias.py")).unwrap(), b"x");

        let dest = tempfile::tempdir().unwrap();
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        w.add_symlink("etc", "../../etc", SimpleFileOptions::default())
            .unwrap();
        let err = extract_zip(&w.finish().unwrap().into_inner(), dest.path()).unwrap_err();
        assert!(format!("{err:#}").contains("links outside"), "{err:#}");
    }

    #[test]
    fn plain_code_lands_where_the_entrypoint_says() {
        assert_eq!(
            plain_file("main:app", CodeInterface::Asgi).unwrap(),
            (PathBuf::from("main.py"), 0o644)
        );
        assert_eq!(
            plain_file("pkg.web:app", CodeInterface::Asgi).unwrap().0,
            PathBuf::from("pkg/web.py")
        );
        assert_eq!(
            plain_file("server", CodeInterface::Binary).unwrap(),
            (PathBuf::from("server"), 0o755)
        );
        assert!(plain_file("../x", CodeInterface::Binary).is_err());
    }

    #[test]
    fn reads_only_the_code_prefix_of_a_drive() {
        let mut drive = tempfile::NamedTempFile::new().unwrap();
        drive.write_all(b"hello\0\0\0\0\0\0").unwrap();
        let path = drive.path().to_str().unwrap();
        assert_eq!(read_prefix(path, 5).unwrap(), b"hello");
        assert!(read_prefix(path, 100).is_err());
    }
}
