//! The ACPI power button, as the kernel's input device: a hypervisor's "power down"
//! (QEMU's `system_powerdown`) becomes a clean shutdown instead of being ignored, as it
//! would be with no userspace listening.

use std::io::Read;
use std::path::{Path, PathBuf};

const EV_KEY: u16 = 1;
const KEY_POWER: u16 = 116;
/// `struct input_event` on 64-bit: a 16-byte timeval, then type, code and value.
const EVENT_SIZE: usize = 24;

/// The event device whose name says it is a power button.
pub fn find(class: &Path) -> Option<PathBuf> {
    for entry in std::fs::read_dir(class).ok()?.flatten() {
        let name = entry.file_name();
        let name = name.to_str()?;
        if !name.starts_with("event") {
            continue;
        }
        let device = std::fs::read_to_string(entry.path().join("device/name")).unwrap_or_default();
        if device.trim() == "Power Button" {
            return Some(Path::new("/dev/input").join(name));
        }
    }
    None
}

/// Whether one raw input event is the power key going down.
pub fn is_power_press(event: &[u8; EVENT_SIZE]) -> bool {
    let kind = u16::from_ne_bytes([event[16], event[17]]);
    let code = u16::from_ne_bytes([event[18], event[19]]);
    let value = i32::from_ne_bytes([event[20], event[21], event[22], event[23]]);
    kind == EV_KEY && code == KEY_POWER && value == 1
}

/// Blocks until the power button is pressed; `false` when there is no button to watch.
pub fn wait_for_press() -> bool {
    // The device registers a moment after its module loads.
    let mut path = None;
    for _ in 0..100 {
        path = find(Path::new("/sys/class/input"));
        if path.is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let Some(path) = path else {
        return false;
    };
    let Ok(mut device) = std::fs::File::open(&path) else {
        return false;
    };
    let mut event = [0u8; EVENT_SIZE];
    while device.read_exact(&mut event).is_ok() {
        if is_power_press(&event) {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: u16, code: u16, value: i32) -> [u8; EVENT_SIZE] {
        let mut e = [0u8; EVENT_SIZE];
        e[16..18].copy_from_slice(&kind.to_ne_bytes());
        e[18..20].copy_from_slice(&code.to_ne_bytes());
        e[20..24].copy_from_slice(&value.to_ne_bytes());
        e
    }

    #[test]
    fn only_the_power_key_going_down_counts() {
        assert!(is_power_press(&event(EV_KEY, KEY_POWER, 1)));
        assert!(!is_power_press(&event(EV_KEY, KEY_POWER, 0)));
        assert!(!is_power_press(&event(EV_KEY, 30, 1)));
        assert!(!is_power_press(&event(0, 0, 0)));
    }

    #[test]
    fn finds_the_button_by_name() {
        let class = tempfile::tempdir().unwrap();
        for (node, name) in [
            ("event0", "AT Keyboard"),
            ("event1", "Power Button"),
            ("mouse0", "x"),
        ] {
            std::fs::create_dir_all(class.path().join(node).join("device")).unwrap();
            std::fs::write(
                class.path().join(node).join("device/name"),
                format!("{name}\n"),
            )
            .unwrap();
        }
        assert_eq!(find(class.path()), Some(PathBuf::from("/dev/input/event1")));
    }
}
