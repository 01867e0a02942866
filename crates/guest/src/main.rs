//! `aleph-guest`: the init (PID 1) of a program microVM.
//!
//! It boots the VM into its runtime (see [`boot`]), then serves the host channel (see
//! [`channel`] and [`api`]): the host configures it, it installs the code and starts
//! the app, then forwards the host's requests to the app until told to shut down.

mod api;
mod app;
mod boot;
mod channel;
mod code;
mod lease;
mod network;
mod paths;
mod power;
mod power_button;
mod proxy;
mod sched;
mod volumes;

use std::sync::Arc;
use tokio::sync::watch;

/// Logs one of the agent's own messages to the console and to the host.
#[macro_export]
macro_rules! syslog {
    ($($arg:tt)*) => { $crate::app::logs::system(format!($($arg)*)) };
}

/// Seconds since the guest kernel started.
pub fn uptime_seconds() -> f64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9)
        .unwrap_or_default()
}

fn fatal(error: anyhow::Error) -> ! {
    syslog!("fatal: {error:#}");
    power::off()
}

fn main() {
    if std::process::id() != 1 {
        eprintln!("aleph-guest is the init of a microVM and must run as PID 1");
        std::process::exit(2);
    }
    // A panic in PID 1 would panic the kernel; power off instead, so the host sees a
    // VM that ended rather than one that hangs.
    std::panic::set_hook(Box::new(|info| {
        syslog!("panic: {info}");
        power::off();
    }));
    let booted = boot::run().unwrap_or_else(|e| fatal(e));
    let [started, loaded, rooted] = booted.timings;
    syslog!(
        "runtime root ready (init at {started:.3} s, modules {:.0} ms, root {:.0} ms)",
        (loaded - started) * 1e3,
        (rooted - loaded) * 1e3
    );
    if let Err(e) = sched::batch_this_thread() {
        syslog!("cannot make the agent SCHED_BATCH (its wake-ups will preempt the app): {e}");
    }
    // One thread: the agent only relays bytes between the channel and the app, and under
    // emulation each wake-up handed from one thread to another costs guest CPU that the
    // app's own work then waits for (measured by `aleph-node bench program`).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| fatal(e.into()));
    runtime.block_on(serve(booted));
}

async fn serve(booted: boot::Booted) {
    let app = Arc::new(app::App::default());
    tokio::spawn(app::reaper(app.clone()));

    let (loaded, late_modules) = watch::channel(false);
    let (pressed, power_pressed) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        booted.late_modules.load_all();
        loaded.send_replace(true);
        // The button module just loaded; this thread has nothing else to do.
        if power_button::wait_for_press() {
            let _ = pressed.send(());
        }
    });
    tokio::spawn(async {
        if let Err(e) = network::loopback_up().await {
            syslog!("bringing lo up: {e:#}");
        }
    });

    let agent = Arc::new(api::Agent::new(app, late_modules));
    tokio::spawn(lease::watchdog(agent.lease.clone()));
    // What a host without the channel can still send: the ACPI power button, SIGTERM,
    // or SIGINT from Ctrl-Alt-Del (a signal to init once CAD is disabled).
    let _ = nix::sys::reboot::set_cad_enabled(false);
    let stopping = agent.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            Ok(()) = power_pressed => syslog!("power button pressed"),
        }
        api::power_off(&stopping).await
    });
    let port = channel::find_port().await;
    if let Err(e) = channel::serve(&port, agent).await {
        fatal(e);
    }
}
