//! A program of its own that listens on [`BINARY_APP_PORT`].

use super::{Launch, Listen};
use crate::paths::CODE_DIR;
use aleph_protocol::agent::BINARY_APP_PORT;
use anyhow::{Result, bail};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

pub fn launch(entrypoint: &str, args: &[String]) -> Result<Launch> {
    if entrypoint.is_empty() {
        bail!("empty binary entrypoint");
    }
    // Relative to the code, unless the program names a tool of the runtime.
    let program = if entrypoint.starts_with('/') {
        entrypoint.to_owned()
    } else {
        Path::new(CODE_DIR)
            .join(entrypoint)
            .to_string_lossy()
            .into_owned()
    };
    Ok(Launch {
        program,
        args: args.to_vec(),
        listen: Listen::Tcp(SocketAddr::from((Ipv4Addr::LOCALHOST, BINARY_APP_PORT))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_entrypoints_live_in_the_code() {
        let l = launch("bin/server", &["--fast".into()]).unwrap();
        assert_eq!(l.program, "/opt/code/bin/server");
        assert_eq!(l.args, ["--fast"]);
        assert!(matches!(l.listen, Listen::Tcp(a) if a.port() == 8080));
        assert_eq!(
            launch("/usr/bin/python3", &[]).unwrap().program,
            "/usr/bin/python3"
        );
    }
}
