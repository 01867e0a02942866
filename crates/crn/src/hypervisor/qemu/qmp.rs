//! QEMU's control socket (QMP), one short session per command.
//!
//! A QMP chardev serves one client at a time; holding a session open would lock out
//! another supervisor that adopts the VM (or a person debugging it with `socat`).
//! Commands are rare (status, stop), so a session per command costs nothing that matters.

use crate::hypervisor::{VmError, VmStatus};
use qapi::futures::QmpStreamTokio;
use qapi::qmp;
use std::path::Path;
use std::time::Duration;

/// How long one QMP command may take, greeting included. QEMU answers from its main
/// loop, which a busy TCG guest can delay, but never for long.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

async fn execute<C>(socket: &Path, command: C) -> Result<C::Ok, VmError>
where
    C: qmp::QmpCommand + qapi::Command + 'static,
{
    let run = async {
        let stream = QmpStreamTokio::open_uds(socket).await?.negotiate().await?;
        let mut stream = stream;
        stream.execute(command).await.map_err(std::io::Error::from)
    };
    match tokio::time::timeout(COMMAND_TIMEOUT, run).await {
        Ok(Ok(ok)) => Ok(ok),
        Ok(Err(e)) => Err(VmError::Control(format!("{}: {e}", C::NAME))),
        Err(_) => Err(VmError::Control(format!(
            "{}: no answer in {COMMAND_TIMEOUT:?}",
            C::NAME
        ))),
    }
}

pub async fn status(socket: &Path) -> Result<VmStatus, VmError> {
    let info = execute(socket, qmp::query_status {}).await?;
    Ok(match info.status {
        qmp::RunState::running => VmStatus::Running,
        qmp::RunState::shutdown => VmStatus::ShuttingDown,
        _ => VmStatus::Stopped,
    })
}

pub async fn system_powerdown(socket: &Path) -> Result<(), VmError> {
    execute(socket, qmp::system_powerdown {}).await.map(drop)
}

pub async fn quit(socket: &Path) -> Result<(), VmError> {
    match execute(socket, qmp::quit {}).await {
        Ok(_) => Ok(()),
        // QEMU may close the socket before its answer gets out: it is ending, as asked.
        Err(VmError::Control(e))
            if e.contains("EOF") || e.contains("reset") || e.contains("Broken pipe") =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}
