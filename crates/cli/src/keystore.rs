//! The local key file: named accounts with their private keys.
//!
//! It lives at `<config dir>/aleph/accounts.json` (`ALEPH_CONFIG_DIR` replaces
//! `<config dir>/aleph`, which tests use). The file holds secrets, so it is
//! written with mode 0600 in a 0700 folder, through a temporary file renamed in
//! place so a crash never leaves half a key file.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

const FILE_NAME: &str = "accounts.json";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StoredAccount {
    pub name: String,
    /// Chain code as in messages (`ETH`): every key here is an EVM key.
    pub chain: String,
    pub address: String,
    /// 64 hex characters, no `0x`.
    pub private_key: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Keystore {
    /// Name of the account used when neither `--account` nor `--private-key` is given.
    #[serde(default)]
    pub default: Option<String>,
    #[serde(default)]
    pub accounts: Vec<StoredAccount>,
}

/// The folder holding the key file.
pub fn config_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("ALEPH_CONFIG_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let base = dirs::config_dir().context("no configuration folder for this user")?;
    Ok(base.join("aleph"))
}

impl Keystore {
    pub fn path() -> Result<PathBuf> {
        Ok(config_dir()?.join(FILE_NAME))
    }

    /// Loads the key file; a missing file is an empty keystore.
    pub fn load() -> Result<Self> {
        Self::load_from(&Self::path()?)
    }

    fn load_from(path: &Path) -> Result<Self> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not a valid key file", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn save(&self) -> Result<()> {
        self.save_to(&Self::path()?)
    }

    fn save_to(&self, path: &Path) -> Result<()> {
        let dir = path.parent().context("key file path has no folder")?;
        create_private_dir(dir)?;
        let tmp = dir.join(format!(".{FILE_NAME}.tmp"));
        write_private_file(&tmp, &serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
    }

    pub fn get(&self, name: &str) -> Option<&StoredAccount> {
        self.accounts.iter().find(|a| a.name == name)
    }

    /// The account used when the command line names none.
    pub fn default_account(&self) -> Option<&StoredAccount> {
        self.default.as_deref().and_then(|name| self.get(name))
    }

    /// Adds an account; the first one becomes the default.
    pub fn add(&mut self, account: StoredAccount) -> Result<()> {
        if self.get(&account.name).is_some() {
            bail!("an account named {:?} already exists", account.name);
        }
        if self.default.is_none() {
            self.default = Some(account.name.clone());
        }
        self.accounts.push(account);
        Ok(())
    }
}

fn create_private_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {}", dir.display()))?;
    }
    Ok(())
}

fn write_private_file(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    // An existing file keeps its old mode through `open`; set it explicitly.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(name: &str) -> StoredAccount {
        StoredAccount {
            name: name.into(),
            chain: "ETH".into(),
            address: format!("0x{name}"),
            private_key: "00".repeat(32),
        }
    }

    #[test]
    fn first_account_becomes_default_and_names_are_unique() {
        let mut store = Keystore::default();
        store.add(account("alice")).unwrap();
        store.add(account("bob")).unwrap();
        assert_eq!(store.default_account().unwrap().name, "alice");
        assert!(store.add(account("bob")).is_err());
    }

    #[test]
    fn saved_file_is_private_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("aleph").join(FILE_NAME);
        let mut store = Keystore::default();
        store.add(account("alice")).unwrap();
        store.save_to(&path).unwrap();

        let reloaded = Keystore::load_from(&path).unwrap();
        assert_eq!(reloaded.accounts, store.accounts);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn missing_file_is_an_empty_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Keystore::load_from(&dir.path().join(FILE_NAME)).unwrap();
        assert!(store.accounts.is_empty());
        assert!(store.default_account().is_none());
    }
}
