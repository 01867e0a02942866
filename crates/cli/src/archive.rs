//! A program's code as the single file a STORE pins: a folder becomes a zip,
//! a `.zip` or squashfs image is taken as it is, any other single file is sent
//! `plain`. The entrypoint is checked against what is inside, so a typo is
//! caught here rather than as a 500 from the CRN after a VM boot.

use aleph_types::message::execution::base::Encoding;
use anyhow::{Context, Result, bail};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use tempfile::TempDir;
use zip::write::SimpleFileOptions;

/// Folders never worth shipping: bytecode for the host's Python (the guest's
/// may differ) and version-control state. Leaving them out also keeps the
/// archive's hash stable between runs.
const SKIPPED_DIRS: &[&str] = &["__pycache__", ".git", ".hg", ".svn"];

/// The code file to upload; a zip made from a folder lives as long as this.
pub struct CodeArchive {
    pub path: PathBuf,
    pub encoding: Encoding,
    _temp: Option<TempDir>,
}

/// Builds (or takes) the code file at `path` and checks `entrypoint` against it.
pub fn prepare(path: &Path, entrypoint: &str) -> Result<CodeArchive> {
    let metadata = std::fs::metadata(path)
        .with_context(|| format!("{} does not exist or cannot be read", path.display()))?;
    if metadata.is_dir() {
        let files = folder_files(path)?;
        if files.is_empty() {
            bail!("{} is an empty folder: nothing to upload", path.display());
        }
        let names: Vec<String> = files.iter().map(|(name, _)| name.clone()).collect();
        check_entrypoint(entrypoint, &names)
            .with_context(|| format!("in folder {}", path.display()))?;
        let temp = tempfile::tempdir()?;
        let zip_path = temp.path().join("code.zip");
        write_zip(&zip_path, &files)?;
        return Ok(CodeArchive {
            path: zip_path,
            encoding: Encoding::Zip,
            _temp: Some(temp),
        });
    }
    if !metadata.is_file() {
        bail!("{} is neither a folder nor a regular file", path.display());
    }
    let encoding = match sniff(path)? {
        Kind::Zip => {
            let names = zip_names(path)?;
            check_entrypoint(entrypoint, &names)
                .with_context(|| format!("in {}", path.display()))?;
            Encoding::Zip
        }
        // Reading a squashfs' listing needs its tools; the CRN reports a bad
        // entrypoint there.
        Kind::Squashfs => Encoding::Squashfs,
        Kind::Other => Encoding::Plain,
    };
    Ok(CodeArchive {
        path: path.to_owned(),
        encoding,
        _temp: None,
    })
}

enum Kind {
    Zip,
    Squashfs,
    Other,
}

/// By magic bytes, not by name: `app.zip` that is not a zip must not pass.
fn sniff(path: &Path) -> Result<Kind> {
    let mut head = [0u8; 4];
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let read = file.read(&mut head)?;
    Ok(match &head[..read] {
        b"PK\x03\x04" | b"PK\x05\x06" => Kind::Zip,
        b"hsqs" => Kind::Squashfs,
        _ => Kind::Other,
    })
}

/// Every regular file under `root` as (relative name with `/`, full path),
/// sorted so that the same folder always gives the same zip.
fn folder_files(root: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut files = Vec::new();
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        let entries =
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?;
        for entry in entries {
            let entry = entry?;
            let path = entry.path();
            // Follows symbolic links: the guest gets the files they point to.
            let metadata =
                std::fs::metadata(&path).with_context(|| format!("reading {}", path.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if metadata.is_dir() {
                if !SKIPPED_DIRS.contains(&name.as_str()) {
                    pending.push(path);
                }
            } else if metadata.is_file() {
                let relative = path
                    .strip_prefix(root)
                    .expect("walked paths are under the root")
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join("/");
                files.push((relative, path));
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Deflated entries with a fixed date and mode, so the archive (and so its
/// hash and STORE) depends on the files' names and bytes only.
fn write_zip(target: &Path, files: &[(String, PathBuf)]) -> Result<()> {
    let mut writer = zip::ZipWriter::new(File::create(target)?);
    let options = SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .last_modified_time(zip::DateTime::default())
        .unix_permissions(0o644);
    for (name, path) in files {
        let executable = is_executable(path);
        let options = if executable {
            options.unix_permissions(0o755)
        } else {
            options
        };
        writer.start_file(name.as_str(), options)?;
        let mut source = File::open(path).with_context(|| format!("reading {}", path.display()))?;
        std::io::copy(&mut source, &mut writer)?;
    }
    writer.finish()?.flush()?;
    Ok(())
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o111 != 0)
}

fn zip_names(path: &Path) -> Result<Vec<String>> {
    let archive = zip::ZipArchive::new(File::open(path)?)
        .with_context(|| format!("{} is not a readable zip", path.display()))?;
    Ok(archive.file_names().map(str::to_owned).collect())
}

/// `module:app` needs `module.py` or `module/__init__.py` (dots as folders);
/// a binary entrypoint needs that file.
fn check_entrypoint(entrypoint: &str, names: &[String]) -> Result<()> {
    if entrypoint.trim().is_empty() {
        bail!("the entrypoint is empty: give `module:app` for an ASGI app, or a file to run");
    }
    let has = |name: &str| names.iter().any(|n| n.trim_start_matches("./") == name);
    match entrypoint.split_once(':') {
        Some((module, app)) => {
            if module.is_empty() || app.is_empty() {
                bail!("entrypoint {entrypoint:?} is not `module:app`");
            }
            let base = module.replace('.', "/");
            let candidates = [format!("{base}.py"), format!("{base}/__init__.py")];
            if !candidates.iter().any(|c| has(c)) {
                bail!(
                    "entrypoint {entrypoint:?} names module {module:?}, but there is no {} or {}",
                    candidates[0],
                    candidates[1]
                );
            }
        }
        None => {
            if !has(entrypoint) {
                bail!("entrypoint {entrypoint:?} is not a file of the program");
            }
        }
    }
    Ok(())
}

/// The zip's entries, for tests.
#[cfg(test)]
fn read_zip(path: &Path) -> Vec<(String, Vec<u8>, Option<u32>)> {
    let mut archive = zip::ZipArchive::new(File::open(path).unwrap()).unwrap();
    (0..archive.len())
        .map(|i| {
            let mut entry = archive.by_index(i).unwrap();
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).unwrap();
            (entry.name().to_owned(), bytes, entry.unix_mode())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(files: &[(&str, &str)]) -> TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        dir
    }

    #[test]
    fn a_folder_is_zipped_with_relative_names_and_without_bytecode() {
        let dir = folder(&[
            ("main.py", "app = 1"),
            ("lib/util.py", "x = 2"),
            ("__pycache__/main.cpython-311.pyc", "junk"),
        ]);
        let archive = prepare(dir.path(), "main:app").unwrap();
        assert_eq!(archive.encoding, Encoding::Zip);
        let entries = read_zip(&archive.path);
        let names: Vec<&str> = entries.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(names, ["lib/util.py", "main.py"]);
        assert_eq!(entries[1].1, b"app = 1");
    }

    #[test]
    fn the_same_folder_gives_the_same_bytes() {
        let dir = folder(&[("main.py", "app = 1"), ("b.txt", "b")]);
        let first = std::fs::read(prepare(dir.path(), "main:app").unwrap().path).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        std::fs::write(dir.path().join("b.txt"), "b").unwrap();
        let second = std::fs::read(prepare(dir.path(), "main:app").unwrap().path).unwrap();
        assert_eq!(first, second);
    }

    #[test]
    fn missing_modules_and_files_are_named() {
        let dir = folder(&[("main.py", "app = 1")]);
        let error = format!("{:#}", prepare(dir.path(), "server:app").err().unwrap());
        assert!(error.contains("server.py"), "{error}");
        let error = format!("{:#}", prepare(dir.path(), "main:").err().unwrap());
        assert!(error.contains("module:app"), "{error}");
        let error = format!("{:#}", prepare(dir.path(), "run.sh").err().unwrap());
        assert!(error.contains("not a file"), "{error}");
        // Dotted modules and packages are found.
        let dir = folder(&[("pkg/api/__init__.py", ""), ("pkg/web.py", "")]);
        prepare(dir.path(), "pkg.api:app").unwrap();
        prepare(dir.path(), "pkg.web:app").unwrap();
    }

    #[test]
    fn empty_and_missing_folders_are_refused() {
        let empty = tempfile::tempdir().unwrap();
        let error = format!("{:#}", prepare(empty.path(), "main:app").err().unwrap());
        assert!(error.contains("empty folder"), "{error}");
        let error = format!(
            "{:#}",
            prepare(&empty.path().join("nope"), "main:app")
                .err()
                .unwrap()
        );
        assert!(error.contains("does not exist"), "{error}");
    }

    #[test]
    fn files_are_taken_as_they_are_by_their_magic() {
        let dir = folder(&[("main.py", "app = 1")]);
        let zipped = prepare(dir.path(), "main:app").unwrap();
        let copy = dir.path().join("code.bin");
        std::fs::copy(&zipped.path, &copy).unwrap();
        let taken = prepare(&copy, "main:app").unwrap();
        assert_eq!(taken.encoding, Encoding::Zip);
        assert_eq!(taken.path, copy);
        assert!(prepare(&copy, "other:app").is_err());

        let squashfs = dir.path().join("code.squashfs");
        std::fs::write(&squashfs, b"hsqs and the rest").unwrap();
        assert_eq!(
            prepare(&squashfs, "anything:app").unwrap().encoding,
            Encoding::Squashfs
        );
        assert_eq!(
            prepare(&dir.path().join("main.py"), "main:app")
                .unwrap()
                .encoding,
            Encoding::Plain
        );
    }

    #[test]
    fn executables_keep_their_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = folder(&[("server", "#!/bin/sh"), ("data.txt", "d")]);
        std::fs::set_permissions(
            dir.path().join("server"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let archive = prepare(dir.path(), "server").unwrap();
        let entries = read_zip(&archive.path);
        let mode = |name: &str| {
            entries
                .iter()
                .find(|(n, _, _)| n == name)
                .and_then(|(_, _, m)| *m)
                .unwrap()
                & 0o777
        };
        assert_eq!(mode("server"), 0o755);
        assert_eq!(mode("data.txt"), 0o644);
    }
}
