//! An ASGI `module:app` under uvicorn, on a Unix socket (no TCP port to collide with, and
//! the socket appearing means the lifespan startup finished).

use super::{Launch, Listen};
use crate::paths::{APP_SOCKET, CODE_DIR};
use anyhow::{Result, bail};

pub fn launch(entrypoint: &str) -> Result<Launch> {
    let Some((module, attribute)) = entrypoint.split_once(':') else {
        bail!("ASGI entrypoint {entrypoint:?} is not of the form module:app");
    };
    if module.is_empty() || attribute.is_empty() || entrypoint.starts_with('-') {
        bail!("ASGI entrypoint {entrypoint:?} is not of the form module:app");
    }
    Ok(Launch {
        program: "python3".into(),
        args: [
            "-m",
            "uvicorn",
            "--uds",
            APP_SOCKET,
            "--app-dir",
            CODE_DIR,
            // A failing lifespan startup must fail the start, not be skipped.
            "--lifespan",
            "on",
            entrypoint,
        ]
        .map(String::from)
        .to_vec(),
        listen: Listen::Unix(APP_SOCKET.into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_uvicorn_command() {
        let l = launch("main:app").unwrap();
        assert_eq!(l.program, "python3");
        assert_eq!(l.args.last().unwrap(), "main:app");
        assert!(l.args.windows(2).any(|w| w == ["--lifespan", "on"]));
        assert_eq!(l.listen, Listen::Unix(APP_SOCKET.into()));
    }

    #[test]
    fn rejects_non_asgi_entrypoints() {
        for bad in ["main", ":app", "main:", "--reload:x"] {
            assert!(launch(bad).is_err(), "{bad}");
        }
    }
}
