//! Fixed places inside the guest. The image builder (`aleph_crn::images`) writes the
//! initramfs side of this layout; keep both in step.

/// Module load plan written by the image builder: one `<stage> <file>` per line, in
/// dependency order; `<file>` is relative to [`MODULES_DIR`].
pub const MODULES_ORDER: &str = "/lib/modules/order";
pub const MODULES_DIR: &str = "/lib/modules";

/// Where the runtime is assembled inside the initramfs before becoming `/`.
pub const LOWER_DIR: &str = "/mnt/lower";
pub const RW_DIR: &str = "/mnt/rw";
pub const NEW_ROOT: &str = "/mnt/root";

/// The program's code, once installed.
pub const CODE_DIR: &str = "/opt/code";
/// Unix socket uvicorn serves the ASGI app on.
pub const APP_SOCKET: &str = "/run/app.sock";
