//! The SSH public keys an instance is created with: the default key file, and
//! each `authorized_keys` line checked to be a whole public key of its type, so
//! a private key or a pasted-wrong key is refused before anything is posted.

use anyhow::{Context as _, Result, bail};
use std::path::{Path, PathBuf};

/// Key types `authorized_keys` lines may start with (OpenSSH's `sshd -T` list).
const SSH_KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ssh-dss",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// `~/.ssh/id_ed25519.pub`, else `~/.ssh/id_rsa.pub`, whichever exists.
pub(super) fn default_public_key_file() -> Result<PathBuf> {
    let home =
        dirs::home_dir().context("no home folder to find ~/.ssh in: pass --ssh-pubkey-file")?;
    let candidates = [
        home.join(".ssh/id_ed25519.pub"),
        home.join(".ssh/id_rsa.pub"),
    ];
    match candidates.iter().find(|p| p.is_file()) {
        Some(path) => Ok(path.clone()),
        None => bail!(
            "no SSH public key found ({} nor {}): pass --ssh-pubkey-file FILE, or make one with `ssh-keygen -t ed25519`",
            candidates[0].display(),
            candidates[1].display()
        ),
    }
}

/// The key lines of a public key file (blank lines and `#` comments skipped);
/// a private key or a line that is not a public key is refused.
pub(super) fn read_public_keys(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the SSH public key {}", path.display()))?;
    if text.contains("PRIVATE KEY-----") {
        let public = PathBuf::from(format!("{}.pub", path.display()));
        let hint = if public.is_file() {
            format!(" (its public key is probably {})", public.display())
        } else {
            String::new()
        };
        bail!(
            "{} is a private key: give the public one (the .pub file){hint}; private keys never leave this machine",
            path.display()
        );
    }
    let mut keys = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        check_public_key_line(line)
            .with_context(|| format!("{} line {}", path.display(), number + 1))?;
        keys.push(line.to_owned());
    }
    if keys.is_empty() {
        bail!("{} holds no SSH public key", path.display());
    }
    Ok(keys)
}

/// `TYPE BASE64 [COMMENT]`, where the base64 is a key blob that names TYPE
/// itself (as every OpenSSH public key does), so a truncated or pasted-wrong
/// key is caught here rather than as a failed login later.
fn check_public_key_line(line: &str) -> Result<()> {
    let mut fields = line.split_whitespace();
    let key_type = fields.next().unwrap_or_default();
    if !SSH_KEY_TYPES.contains(&key_type) {
        bail!(
            "not an SSH public key: it starts with {:?}, not a key type ({})",
            truncate(key_type, 40),
            SSH_KEY_TYPES.join(", ")
        );
    }
    let Some(encoded) = fields.next() else {
        bail!("the {key_type} key has no key data after its type");
    };
    let Some(blob) = decode_base64(encoded) else {
        bail!("the {key_type} key's data is not valid base64");
    };
    // The blob is length-prefixed fields (u32 big-endian + bytes), the type
    // first, then the key's numbers; a cut-short key breaks the framing.
    let fields = ssh_fields(&blob);
    match fields.as_deref() {
        Some([named, _, ..]) if *named == key_type.as_bytes() => {}
        _ => bail!("the key data is not a {key_type} key (truncated or damaged?)"),
    }
    Ok(())
}

/// The length-prefixed fields of an SSH key blob, if they fill it exactly.
fn ssh_fields(mut blob: &[u8]) -> Option<Vec<&[u8]>> {
    let mut fields = Vec::new();
    while !blob.is_empty() {
        let (length, rest) = blob.split_first_chunk::<4>()?;
        let length = u32::from_be_bytes(*length) as usize;
        if rest.len() < length {
            return None;
        }
        let (field, rest) = rest.split_at(length);
        fields.push(field);
        blob = rest;
    }
    Some(fields)
}

/// Standard base64 with padding, as in public key files; `None` if it is not.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let bytes = text.as_bytes();
    if bytes.is_empty() || !bytes.len().is_multiple_of(4) {
        return None;
    }
    let body = text.trim_end_matches('=').as_bytes();
    if bytes.len() - body.len() > 2 {
        return None;
    }
    let mut out = Vec::with_capacity(body.len() * 3 / 4);
    let mut buffer = 0u32;
    let mut bits = 0;
    for &c in body {
        buffer = (buffer << 6) | value(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    Some(out)
}

fn truncate(text: &str, chars: usize) -> String {
    text.chars().take(chars).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFxPG4xo1hM3lIwcbRA+1Oppc69wW5V3q2MKcoL92jPH test@aleph";

    #[test]
    fn base64_decodes_with_and_without_padding_and_refuses_junk() {
        assert_eq!(decode_base64("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(decode_base64("aGVsbG8h").unwrap(), b"hello!");
        assert_eq!(decode_base64("aGk=").unwrap(), b"hi");
        assert_eq!(decode_base64("aA==").unwrap(), b"h");
        assert!(
            decode_base64("aGVsbG8").is_none(),
            "length not a multiple of 4"
        );
        assert!(decode_base64("aGV*bG8=").is_none());
        assert!(decode_base64("a===").is_none());
        assert!(decode_base64("").is_none());
    }

    #[test]
    fn public_key_lines_must_carry_the_key_of_their_type() {
        check_public_key_line(ED25519).unwrap();
        // No comment is fine.
        check_public_key_line(ED25519.rsplit_once(' ').unwrap().0).unwrap();
        let error = |line: &str| format!("{:#}", check_public_key_line(line).unwrap_err());
        assert!(error("hello world").contains("not an SSH public key"));
        assert!(error("ssh-ed25519").contains("no key data"));
        assert!(error("ssh-ed25519 AAAA$$$$").contains("not valid base64"));
        // An ed25519 blob announced as RSA, and a truncated blob.
        let blob = ED25519.split(' ').nth(1).unwrap();
        assert!(error(&format!("ssh-rsa {blob}")).contains("not a ssh-rsa key"));
        assert!(error("ssh-ed25519 AAAAC3Nz").contains("not a ssh-ed25519 key"));
        // Only the type, no key after it.
        assert!(error("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5").contains("not a ssh-ed25519 key"));
    }

    #[test]
    fn key_files_give_their_lines_and_private_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let public = dir.path().join("id.pub");
        std::fs::write(&public, format!("# mine\n\n{ED25519}\n")).unwrap();
        assert_eq!(read_public_keys(&public).unwrap(), [ED25519]);

        let private = dir.path().join("id");
        std::fs::write(
            &private,
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn\n-----END OPENSSH PRIVATE KEY-----\n",
        )
        .unwrap();
        let refused = format!("{:#}", read_public_keys(&private).unwrap_err());
        assert!(refused.contains("is a private key"), "{refused}");
        assert!(refused.contains("id.pub"), "{refused}");

        let empty = dir.path().join("empty.pub");
        std::fs::write(&empty, "\n# nothing\n").unwrap();
        assert!(
            format!("{:#}", read_public_keys(&empty).unwrap_err()).contains("no SSH public key")
        );

        let bad = dir.path().join("bad.pub");
        std::fs::write(&bad, format!("{ED25519}\nnot a key\n")).unwrap();
        let refused = format!("{:#}", read_public_keys(&bad).unwrap_err());
        assert!(refused.contains("line 2"), "{refused}");
    }
}
