//! What the node tells about itself: host usage in the reference's exact shape
//! (`/about/usage/system`, kB = 1000 bytes), its CPU's description, and its executions.

pub mod check;

use crate::execution::Execution;
use crate::instances::InstanceStatus;
use crate::network::VmNet;
use chrono::{DateTime, Timelike, Utc};
use serde_json::{Value, json};
use std::path::Path;

/// `/proc/cpuinfo` facts: vendor, flags, and the MHz of each core.
struct CpuInfo {
    vendor: String,
    flags: Vec<String>,
    mhz: Vec<f64>,
}

fn cpuinfo() -> CpuInfo {
    let text = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let value = |line: &str| line.split_once(':').map(|(_, v)| v.trim().to_string());
    let mut info = CpuInfo {
        vendor: String::new(),
        flags: Vec::new(),
        mhz: Vec::new(),
    };
    for line in text.lines() {
        if line.starts_with("vendor_id") && info.vendor.is_empty() {
            info.vendor = value(line).unwrap_or_default();
        } else if line.starts_with("flags") && info.flags.is_empty() {
            info.flags = value(line)
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_string)
                .collect();
        } else if line.starts_with("cpu MHz")
            && let Some(mhz) = value(line).and_then(|v| v.parse().ok())
        {
            info.mhz.push(mhz);
        }
    }
    info
}

/// The limits of the cores' frequency, MHz: cpufreq's when the kernel exposes it,
/// else the spread of what `/proc/cpuinfo` reports now.
fn core_frequencies(info: &CpuInfo) -> (f64, f64) {
    let read_khz = |file: &str| {
        std::fs::read_to_string(format!("/sys/devices/system/cpu/cpu0/cpufreq/{file}"))
            .ok()
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    if let (Some(min), Some(max)) = (read_khz("cpuinfo_min_freq"), read_khz("cpuinfo_max_freq")) {
        return (min / 1000.0, max / 1000.0);
    }
    let min = info.mhz.iter().copied().fold(f64::INFINITY, f64::min);
    let max = info.mhz.iter().copied().fold(0.0, f64::max);
    if min.is_finite() {
        (min, max)
    } else {
        (0.0, 0.0)
    }
}

fn meminfo_kib(name: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Host memory in MiB (what admission divides).
pub fn total_memory_mib() -> u64 {
    meminfo_kib("MemTotal:") / 1024
}

pub fn cpu_count() -> u64 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u64)
}

/// The CPU description shared by the usage and capability routes. `features` lists the
/// confidential-computing extensions the host has, as the reference does.
pub fn cpu_properties() -> Value {
    let info = cpuinfo();
    let features: Vec<&str> = ["sev", "sev_es", "sev_snp"]
        .into_iter()
        .filter(|f| info.flags.iter().any(|flag| flag == f))
        .collect();
    json!({
        "architecture": std::env::consts::ARCH,
        "vendor": info.vendor,
        "features": features,
    })
}

/// `/about/usage/system`.
pub fn system_usage(data_dir: &Path, now: DateTime<Utc>) -> Value {
    let info = cpuinfo();
    let (min, max) = core_frequencies(&info);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut loads = load
        .split_whitespace()
        .map(|v| v.parse::<f64>().unwrap_or(0.0));
    let (load1, load5, load15) = (
        loads.next().unwrap_or(0.0),
        loads.next().unwrap_or(0.0),
        loads.next().unwrap_or(0.0),
    );
    let (disk_total, disk_available) = nix::sys::statvfs::statvfs(data_dir)
        .map(|s| {
            let unit = s.fragment_size();
            (s.blocks() * unit, s.blocks_available() * unit)
        })
        .unwrap_or((0, 0));
    // The reference reports a one-minute period starting at the current minute.
    let period_start = now
        .with_second(0)
        .and_then(|t| t.with_nanosecond(0))
        .unwrap_or(now);
    json!({
        "cpu": {
            "count": cpu_count(),
            "load_average": {"load1": load1, "load5": load5, "load15": load15},
            "core_frequencies": {"min": min, "max": max},
        },
        "mem": {
            "total_kB": meminfo_kib("MemTotal:") * 1024 / 1000,
            "available_kB": meminfo_kib("MemAvailable:") * 1024 / 1000,
        },
        "disk": {
            "total_kB": disk_total / 1000,
            "available_kB": disk_available / 1000,
        },
        "period": {
            "start_timestamp": period_start.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            "duration_seconds": 60,
        },
        "properties": {"cpu": cpu_properties()},
        "gpu": {"devices": [], "available_devices": []},
        "active": true,
    })
}

/// `/about/capability`.
pub fn capability(memory_limit_mib: u64, vcpus_limit: u64) -> Value {
    json!({
        "cpu": cpu_properties(),
        "vcpus": vcpus_limit,
        "memory_mib": memory_limit_mib,
        "hypervisors": ["qemu"],
        "confidential_computing": false,
        "gpu": [],
    })
}

fn status(execution: &Execution) -> Value {
    let times = execution.times();
    json!({
        "defined_at": times.defined_at,
        "preparing_at": times.preparing_at,
        "prepared_at": times.prepared_at,
        "starting_at": times.starting_at,
        "started_at": times.started_at,
        "stopping_at": times.stopping_at,
        "stopped_at": times.stopped_at,
    })
}

/// A VM's network as clients read it (v2): its addresses, every field `null` for a
/// program without a network card and the IPv6 ones where the node has no IPv6 pool,
/// and the host ports forwarded to it by guest port (an instance's: 22 always, then
/// those of its owner's `port-forwarding` aggregate; a program has none):
/// `{"22": {"host": 24000, "tcp": true, "udp": false}}`.
fn networking(net: Option<&VmNet>, mapped_ports: Value) -> Value {
    let v6 = net.and_then(|net| net.ipv6);
    json!({
        "ipv4_network": net.map(VmNet::cidr),
        "host_ipv4": null,
        "ipv4_ip": net.map(|net| net.guest_ip.to_string()),
        "ipv6_network": v6.map(|v6| v6.cidr()),
        "ipv6_ip": v6.map(|v6| v6.guest_ip.to_string()),
        "mapped_ports": mapped_ports,
    })
}

/// An instance's network (v2).
fn instance_networking(status: &InstanceStatus) -> Value {
    networking(
        Some(&status.record.net),
        json!(status.record.port_mapping()),
    )
}

/// A VM's subnets as the v1 list gives them.
fn networking_v1(net: Option<&VmNet>) -> Value {
    json!({
        "ipv4": net.map(VmNet::cidr),
        "ipv6": net.and_then(|net| net.ipv6).map(|v6| v6.cidr()),
    })
}

/// An instance's times, in the shape of a program's (`defined_at` … `stopped_at`).
fn instance_status(status: &InstanceStatus) -> Value {
    let started = status.started_at.map(|t| t.to_rfc3339());
    json!({
        "defined_at": started, "preparing_at": started, "prepared_at": started,
        "starting_at": started, "started_at": started,
        "stopping_at": null, "stopped_at": null,
    })
}

/// `/about/executions/list`: by program hash.
pub fn executions_v1(
    executions: &[std::sync::Arc<Execution>],
    instances: &[InstanceStatus],
) -> Value {
    let mut map: serde_json::Map<String, Value> = executions
        .iter()
        .map(|e| {
            (
                e.program.item_hash.clone(),
                json!({
                    "networking": networking_v1(e.prepared.net.as_ref()),
                    "status": status(e),
                    "running": e.state() == crate::execution::state::State::Running,
                }),
            )
        })
        .collect();
    for instance in instances {
        map.insert(
            instance.item_hash.clone(),
            json!({
                "networking": networking_v1(Some(&instance.record.net)),
                "status": instance_status(instance),
                "running": instance.running,
            }),
        );
    }
    Value::Object(map)
}

/// `/v2/about/executions/list`.
pub fn executions_v2(
    executions: &[std::sync::Arc<Execution>],
    instances: &[InstanceStatus],
) -> Value {
    let mut map: serde_json::Map<String, Value> = executions
        .iter()
        .map(|e| {
            (
                e.program.item_hash.clone(),
                json!({
                    "networking": networking(e.prepared.net.as_ref(), json!({})),
                    "status": status(e),
                    "running": e.state() == crate::execution::state::State::Running,
                    "vm_type": "microvm",
                    "execution_id": e.id,
                    "code_ref": e.prepared.code_ref,
                    "adopted": e.adopted,
                }),
            )
        })
        .collect();
    for instance in instances {
        map.insert(
            instance.item_hash.clone(),
            json!({
                "networking": instance_networking(instance),
                "status": instance_status(instance),
                "running": instance.running,
                "vm_type": "instance",
                "held": instance.record.held,
                "error": instance.error,
            }),
        );
    }
    Value::Object(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_has_the_reference_shape_in_kilobytes() {
        let now = DateTime::parse_from_rfc3339("2026-01-02T03:04:05.6Z")
            .unwrap()
            .with_timezone(&Utc);
        let usage = system_usage(Path::new("/"), now);
        assert!(usage["cpu"]["count"].as_u64().unwrap() >= 1);
        for key in ["load1", "load5", "load15"] {
            assert!(usage["cpu"]["load_average"][key].is_f64(), "{key}");
        }
        let total = usage["mem"]["total_kB"].as_u64().unwrap();
        assert_eq!(total, meminfo_kib("MemTotal:") * 1024 / 1000);
        assert!(usage["mem"]["available_kB"].as_u64().unwrap() <= total);
        assert!(
            usage["disk"]["available_kB"].as_u64().unwrap()
                <= usage["disk"]["total_kB"].as_u64().unwrap()
        );
        assert_eq!(usage["period"]["start_timestamp"], "2026-01-02T03:04:00Z");
        assert_eq!(usage["period"]["duration_seconds"], 60);
        assert_eq!(usage["properties"]["cpu"]["architecture"], "x86_64");
        assert!(usage["gpu"]["devices"].is_array());
        assert_eq!(usage["active"], true);
    }

    #[test]
    fn an_instance_lists_every_forwarded_port_with_its_host_port() {
        let record = serde_json::from_value(json!({
            "message": {"item_hash": "ab".repeat(32), "content": {
                "address": "0xabc",
                "rootfs": {"parent": {"ref": "cd".repeat(32)}, "size_mib": 4096},
            }},
            "parent": {"store_hash": "cd".repeat(32), "file_hash": "ef".repeat(32),
                       "path": "/data/files/x", "size": 1},
            "net": {"vm_id": "ab".repeat(32), "index": 3, "tap": "vmtap3",
                    "host_ip": "172.16.3.1", "guest_ip": "172.16.3.2", "prefix": 24,
                    "mac": "02:00:ac:10:03:02"},
            "ssh_port": 24000,
            "forwarded_ports": {"80": {"host": 24001, "tcp": true, "udp": false},
                                "53": {"host": 24002, "tcp": false, "udp": true}},
        }))
        .unwrap();
        let status = InstanceStatus {
            item_hash: "ab".repeat(32),
            record,
            running: true,
            started_at: None,
            error: None,
        };
        let networking = instance_networking(&status);
        assert_eq!(networking["ipv4_ip"], "172.16.3.2");
        assert_eq!(networking["ipv6_network"], Value::Null);
        assert_eq!(networking["ipv6_ip"], Value::Null);
        // Where the node has an IPv6 pool.
        let mut with_v6 = status.clone();
        with_v6.record.net.ipv6 = Some(crate::network::VmNetV6 {
            host_ip: "fd00:a1e::31".parse().unwrap(),
            guest_ip: "fd00:a1e::32".parse().unwrap(),
            prefix: 124,
        });
        let networking_v6 = instance_networking(&with_v6);
        assert_eq!(networking_v6["ipv6_network"], "fd00:a1e::30/124");
        assert_eq!(networking_v6["ipv6_ip"], "fd00:a1e::32");
        assert_eq!(
            networking["mapped_ports"],
            json!({
                "22": {"host": 24000, "tcp": true, "udp": false},
                "53": {"host": 24002, "tcp": false, "udp": true},
                "80": {"host": 24001, "tcp": true, "udp": false},
            })
        );
    }
}
