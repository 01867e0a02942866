//! The kernel command line, as far as the agent reads it.

use aleph_protocol::agent::ROOT_CMDLINE_KEY;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct BootParams {
    /// Block device holding the runtime squashfs (`aleph.root=`).
    pub root: Option<String>,
}

pub fn parse(cmdline: &str) -> BootParams {
    let mut params = BootParams::default();
    for word in cmdline.split_whitespace() {
        if let Some((key, value)) = word.split_once('=')
            && key == ROOT_CMDLINE_KEY
            && !value.is_empty()
        {
            // Last one wins, as for the kernel's own parameters.
            params.root = Some(value.to_owned());
        }
    }
    params
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_root_among_other_words() {
        let p = parse("console=ttyS0 quiet aleph.root=/dev/vda panic=-1\n");
        assert_eq!(p.root.as_deref(), Some("/dev/vda"));
    }

    #[test]
    fn last_root_wins_and_empty_is_ignored() {
        assert_eq!(
            parse("aleph.root=/dev/vda aleph.root=/dev/vdc")
                .root
                .as_deref(),
            Some("/dev/vdc")
        );
        assert_eq!(parse("aleph.root= quiet").root, None);
        assert_eq!(parse("root=/dev/vda aleph.rootx=/dev/vdb").root, None);
    }
}
