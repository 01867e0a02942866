//! Default prices (the code defaults of upstream's `pricing` aggregate) and the cost of a message.
//!
//! A compute unit (CU) is 1 vCPU + 2 GiB of memory (6 GiB for GPU VMs) and comes with
//! some disk; disk beyond that is charged per MiB. Figures not in the reference
//! (extra disk, file storage, GPU) are this node's own and documented here.

use serde_json::{Map, Value, json};

pub const MIB: u64 = 1;
pub const GIB: u64 = 1024 * MIB;
/// 1,000,000 credits are one USD.
pub const CREDITS_PER_USD: f64 = 1_000_000.0;
/// A credit-paid VM is accepted when the owner has credit for this many hours.
pub const CREDIT_HOURS_REQUIRED: f64 = 24.0;
/// Extra disk beyond what the compute units include, held (ALEPH per MiB).
pub const EXTRA_DISK_HOLD_PER_MIB: f64 = 0.05;
/// Extra disk, credit payment (credits per MiB-hour). Our own figure.
pub const EXTRA_DISK_CREDITS_PER_MIB_HOUR: f64 = 0.1;
/// Extra disk, pay-as-you-go (ALEPH per MiB-hour). Our own figure.
pub const EXTRA_DISK_PAYG_PER_MIB_HOUR: f64 = 0.000_003_5;
/// Stored files up to this size are free (the unauthenticated upload limit);
/// larger ones are charged for their whole size.
pub const FREE_FILE_BYTES: u64 = crate::files::MAX_UNAUTHENTICATED_FILE_SIZE;
/// Stored files beyond the free size, held (ALEPH per MiB).
pub const FILE_HOLD_PER_MIB: f64 = 1.0 / 3.0;
/// Stored files beyond the free size, credit payment (credits per MiB-hour). Our own figure.
pub const FILE_CREDITS_PER_MIB_HOUR: f64 = 0.1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Product {
    OnDemandProgram,
    PersistentProgram,
    Instance,
    Confidential,
    Gpu,
    Storage,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProductPrice {
    pub hold_per_cu: f64,
    pub payg_per_cu_hour: f64,
    pub credits_per_cu_hour: f64,
    pub memory_per_cu_mib: u64,
    pub disk_per_cu_mib: u64,
}

impl Product {
    pub fn name(self) -> &'static str {
        match self {
            Product::OnDemandProgram => "program",
            Product::PersistentProgram => "program_persistent",
            Product::Instance => "instance",
            Product::Confidential => "instance_confidential",
            Product::Gpu => "instance_gpu",
            Product::Storage => "storage",
        }
    }

    pub fn price(self) -> ProductPrice {
        let (hold, payg, credits, memory, disk) = match self {
            Product::OnDemandProgram => (200.0, 0.011, 11_000.0, 2 * GIB, 2 * GIB),
            Product::PersistentProgram => (1000.0, 0.055, 55_000.0, 2 * GIB, 20 * GIB),
            Product::Instance => (1000.0, 0.055, 14_250.0, 2 * GIB, 20 * GIB),
            Product::Confidential => (2000.0, 0.11, 28_500.0, 2 * GIB, 20 * GIB),
            // Not in the reference: priced like confidential VMs, with GPU-sized units.
            Product::Gpu => (2000.0, 0.11, 28_500.0, 6 * GIB, 60 * GIB),
            Product::Storage => (0.0, 0.0, 0.0, 0, 0),
        };
        ProductPrice {
            hold_per_cu: hold,
            payg_per_cu_hour: payg,
            credits_per_cu_hour: credits,
            memory_per_cu_mib: memory,
            disk_per_cu_mib: disk,
        }
    }
}

/// What a message costs under its payment type.
#[derive(Debug, Clone, PartialEq)]
pub struct Cost {
    pub product: Product,
    pub payment_type: String,
    pub compute_units: u64,
    /// ALEPH held while active (hold payment).
    pub hold: f64,
    /// Credits per hour (credit payment).
    pub credits_per_hour: f64,
    /// ALEPH per hour (pay-as-you-go stream).
    pub payg_per_hour: f64,
    pub extra_disk_mib: u64,
}

impl Cost {
    /// The amount that matters for the payment type, as `required_tokens`.
    pub fn required(&self) -> f64 {
        match self.payment_type.as_str() {
            "credit" => self.credits_per_hour,
            "superfluid" => self.payg_per_hour,
            _ => self.hold,
        }
    }

    /// The body of the price endpoints.
    pub fn to_json(&self) -> Value {
        json!({
            "required_tokens": self.required(),
            "payment_type": self.payment_type,
            "cost": format!("{}", self.required()),
            "product": self.product.name(),
            "compute_units": self.compute_units,
            "detail": [{
                "type": "EXECUTION",
                "compute_units": self.compute_units,
                "extra_disk_mib": self.extra_disk_mib,
                "cost_hold": self.hold,
                "cost_credit_per_hour": self.credits_per_hour,
                "cost_stream_per_hour": self.payg_per_hour,
            }],
        })
    }
}

fn u64_at(value: &Value, path: &[&str]) -> Option<u64> {
    path.iter().try_fold(value, |v, key| v.get(key))?.as_u64()
}

pub fn payment_type(content: &Map<String, Value>) -> String {
    content
        .get("payment")
        .and_then(|p| p.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("hold")
        .to_string()
}

/// Which product a PROGRAM or INSTANCE content is.
pub fn product(message_type: &str, content: &Map<String, Value>) -> Product {
    let wants_gpu = content
        .get("requirements")
        .and_then(|r| r.get("gpu"))
        .and_then(Value::as_array)
        .is_some_and(|g| !g.is_empty());
    if message_type == "PROGRAM" {
        let persistent = content
            .get("on")
            .and_then(|o| o.get("persistent"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if persistent {
            Product::PersistentProgram
        } else {
            Product::OnDemandProgram
        }
    } else if wants_gpu {
        Product::Gpu
    } else if content
        .get("environment")
        .and_then(|e| e.get("trusted_execution"))
        .is_some_and(|t| !t.is_null())
    {
        Product::Confidential
    } else {
        Product::Instance
    }
}

/// Disk a VM asks for: rootfs plus ephemeral and persistent volumes, in MiB.
fn requested_disk_mib(content: &Map<String, Value>) -> u64 {
    let content = Value::Object(content.clone());
    let rootfs = u64_at(&content, &["rootfs", "size_mib"]).unwrap_or(0);
    let volumes: u64 = content
        .get("volumes")
        .and_then(Value::as_array)
        .map(|volumes| {
            volumes
                .iter()
                .filter_map(|v| v.get("size_mib").and_then(Value::as_u64))
                .sum()
        })
        .unwrap_or(0);
    rootfs + volumes
}

/// The cost of a PROGRAM or INSTANCE.
pub fn vm_cost(message_type: &str, content: &Map<String, Value>) -> Cost {
    let product = product(message_type, content);
    let price = product.price();
    let value = Value::Object(content.clone());
    let vcpus = u64_at(&value, &["resources", "vcpus"]).unwrap_or(1).max(1);
    let memory = u64_at(&value, &["resources", "memory"]).unwrap_or(128);
    let mut compute_units = vcpus.max(memory.div_ceil(price.memory_per_cu_mib));
    let internet = value
        .get("environment")
        .and_then(|e| e.get("internet"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if product == Product::OnDemandProgram && internet {
        compute_units *= 2;
    }
    let extra_disk_mib =
        requested_disk_mib(content).saturating_sub(compute_units * price.disk_per_cu_mib);
    let cu = compute_units as f64;
    let extra = extra_disk_mib as f64;
    Cost {
        product,
        payment_type: payment_type(content),
        compute_units,
        hold: cu * price.hold_per_cu + extra * EXTRA_DISK_HOLD_PER_MIB,
        credits_per_hour: cu * price.credits_per_cu_hour + extra * EXTRA_DISK_CREDITS_PER_MIB_HOUR,
        payg_per_hour: cu * price.payg_per_cu_hour + extra * EXTRA_DISK_PAYG_PER_MIB_HOUR,
        extra_disk_mib,
    }
}

/// The cost of keeping a stored file: free up to the unauthenticated upload size.
pub fn file_cost(size_bytes: u64, content: &Map<String, Value>) -> Cost {
    let charged_mib = if size_bytes > FREE_FILE_BYTES {
        (size_bytes as f64) / (1024.0 * 1024.0)
    } else {
        0.0
    };
    Cost {
        product: Product::Storage,
        payment_type: payment_type(content),
        compute_units: 0,
        hold: charged_mib * FILE_HOLD_PER_MIB,
        credits_per_hour: charged_mib * FILE_CREDITS_PER_MIB_HOUR,
        payg_per_hour: 0.0,
        extra_disk_mib: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn compute_units_follow_vcpus_and_memory() {
        let c = vm_cost(
            "INSTANCE",
            &map(json!({"resources": {"vcpus": 1, "memory": 4096},
                        "rootfs": {"size_mib": 20480}, "payment": {"type": "credit"}})),
        );
        assert_eq!(c.product, Product::Instance);
        assert_eq!(c.compute_units, 2);
        assert_eq!(c.credits_per_hour, 28_500.0);
        assert_eq!(c.required(), 28_500.0);
        assert_eq!(c.extra_disk_mib, 0);
        assert_eq!(c.hold, 2000.0);
    }

    #[test]
    fn on_demand_internet_doubles_and_extra_disk_is_charged() {
        let c = vm_cost(
            "PROGRAM",
            &map(json!({"resources": {"vcpus": 1, "memory": 128},
                        "environment": {"internet": true},
                        "volumes": [{"ephemeral": true, "size_mib": 5096}]})),
        );
        assert_eq!(c.product, Product::OnDemandProgram);
        assert_eq!(c.compute_units, 2);
        assert_eq!(c.extra_disk_mib, 5096 - 4096);
        assert_eq!(c.hold, 400.0 + 1000.0 * EXTRA_DISK_HOLD_PER_MIB);
    }

    #[test]
    fn small_files_are_free() {
        let free = file_cost(1024, &Map::new());
        assert_eq!(free.hold, 0.0);
        let big = file_cost(30 * 1024 * 1024, &Map::new());
        assert!((big.hold - 10.0).abs() < 1e-9);
    }
}
