//! `aleph instance ssh`: the system's `ssh` pointed at the port the CRN
//! forwards to the instance's port 22.

use super::crn::{SshEndpoint, crn_host, crn_http, crn_of, execution};
use super::{SSH_USER, SshArgs, parse_hash};
use crate::context::Context;
use crate::keystore;
use anyhow::{Context as _, Result, bail};
use serde_json::json;
use std::path::Path;

pub(super) async fn run(ctx: &Context, args: SshArgs) -> Result<()> {
    let hash = args.hash.trim().to_owned();
    parse_hash(&hash, "the instance")?;
    let crn = crn_of(ctx, &hash, args.crn).await?;
    let Some(entry) = execution(&crn_http()?, &crn, &hash).await? else {
        bail!("the CRN at {crn} does not run {hash} (see `aleph instance list`)");
    };
    let Some(port) = entry.ssh_port() else {
        bail!(
            "the CRN at {crn} has not forwarded port 22 of {hash} (yet): is it running? (`aleph instance list`)"
        );
    };
    let endpoint = SshEndpoint {
        host: crn_host(&crn)?,
        port,
    };
    let known_hosts = keystore::config_dir()?.join("known_hosts").join(&hash);
    let command = ssh_command(
        &endpoint,
        args.identity.as_deref(),
        &known_hosts,
        &args.command,
    );
    if args.print_command {
        let value = json!({"command": command, "ssh": endpoint.to_json(), "crn_url": crn});
        ctx.out.result(&value, || shell_words(&command));
        return Ok(());
    }
    if let Some(folder) = known_hosts.parent() {
        std::fs::create_dir_all(folder)
            .with_context(|| format!("creating {}", folder.display()))?;
    }
    use std::os::unix::process::CommandExt;
    let error = std::process::Command::new(&command[0])
        .args(&command[1..])
        .exec();
    Err(error).context("running ssh (is OpenSSH's client installed?)")
}

/// The `ssh` argument list for `endpoint`.
///
/// - `StrictHostKeyChecking=accept-new`: a new instance's host key cannot be
///   known beforehand, so it is trusted on first use and checked from then on
///   (a changed key is still refused).
/// - `UserKnownHostsFile` of its own per instance: CRNs hand the same host port
///   to one instance after another, so keys kept under `[host]:port` in
///   ~/.ssh/known_hosts would clash with the next instance's and make ssh refuse.
/// - `-i KEY` comes with `IdentitiesOnly=yes`, so an agent holding many keys
///   does not use up the server's tries before the right one.
/// - `LogLevel=ERROR`: no "Permanently added" notice mixed into the remote command's
///   output on the first login (a changed host key is an error, still shown).
fn ssh_command(
    endpoint: &SshEndpoint,
    identity: Option<&Path>,
    known_hosts: &Path,
    remote: &[String],
) -> Vec<String> {
    let mut command = vec![
        "ssh".to_owned(),
        "-p".to_owned(),
        endpoint.port.to_string(),
        "-o".to_owned(),
        "StrictHostKeyChecking=accept-new".to_owned(),
        "-o".to_owned(),
        format!("UserKnownHostsFile={}", known_hosts.display()),
        "-o".to_owned(),
        "LogLevel=ERROR".to_owned(),
    ];
    if let Some(identity) = identity {
        command.extend([
            "-i".to_owned(),
            identity.display().to_string(),
            "-o".to_owned(),
            "IdentitiesOnly=yes".to_owned(),
        ]);
    }
    command.push(format!("{SSH_USER}@{}", endpoint.host));
    // ssh stops reading options at the destination: what follows is the remote command.
    command.extend(remote.iter().cloned());
    command
}

/// The command as a shell line, quoting what needs it (for `--print-command`).
fn shell_words(command: &[String]) -> String {
    command
        .iter()
        .map(|word| {
            let plain = !word.is_empty()
                && word
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./=@:,+".contains(&b));
            if plain {
                word.clone()
            } else {
                format!("'{}'", word.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ssh_command_pins_port_key_and_known_hosts() {
        let endpoint = SshEndpoint {
            host: "127.0.0.1".into(),
            port: 24001,
        };
        let known = Path::new("/cfg/known_hosts/abc");
        let plain = ssh_command(&endpoint, None, known, &[]);
        assert_eq!(
            plain,
            [
                "ssh",
                "-p",
                "24001",
                "-o",
                "StrictHostKeyChecking=accept-new",
                "-o",
                "UserKnownHostsFile=/cfg/known_hosts/abc",
                "-o",
                "LogLevel=ERROR",
                "root@127.0.0.1"
            ]
        );
        let remote = vec!["uname".to_owned(), "-a".to_owned()];
        let full = ssh_command(&endpoint, Some(Path::new("/k/id")), known, &remote);
        assert_eq!(
            &full[9..],
            [
                "-i",
                "/k/id",
                "-o",
                "IdentitiesOnly=yes",
                "root@127.0.0.1",
                "uname",
                "-a"
            ]
        );
        assert_eq!(
            shell_words(&["echo".into(), "it's".into(), "a b".into(), "x=1".into()]),
            r"echo 'it'\''s' 'a b' x=1"
        );
    }
}
