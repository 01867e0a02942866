//! The placement benchmark: simulated nodes and VMs of mixed sizes, placed one by one in
//! arrival order by a [`Placer`] (timed), against first-fit-decreasing on the same
//! inputs.
//!
//! Quality is the share of total capacity in use when the first VM fails to place: the
//! placer takes VMs in arrival order until one does not fit, and the VMs it accepted
//! (a prefix of the arrivals) use some share of the memory and vCPUs there are.
//! First-fit-decreasing (FFD) is the offline baseline: it sees a whole list in advance,
//! sorts it largest first and puts each VM on the first node that fits. Its figure is
//! the longest prefix of the same arrivals that it packs entirely (found by binary
//! search), and the share of capacity that prefix uses. (FFD's own first failure in
//! sorted order says nothing comparable: it comes while only the largest VMs are placed
//! and the small nodes are still empty.)

use super::requirements::{assign_gpus, static_misfit};
use super::{
    CpuRequirement, GpuRequirement, Node, NodeRequirement, Placer, Policy, Requirements, VmDemand,
};
use aleph_protocol::scheduler::{CpuProperties, Gpu, NodeResources};
use regex::Regex;
use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Config {
    pub nodes: usize,
    pub vms: usize,
    pub seed: u64,
    pub policy: Policy,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            nodes: 10_000,
            vms: 100_000,
            seed: 1,
            policy: Policy::BinPack,
        }
    }
}

/// Capacity in use, as shares of the total.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Packing {
    /// VMs placed.
    pub vms: usize,
    pub memory_share: f64,
    pub vcpu_share: f64,
}

#[derive(Debug, Clone)]
pub struct Report {
    pub config: Config,
    pub capacity_vcpus: u64,
    pub capacity_memory_mib: u64,
    pub demand_vcpus: u64,
    pub demand_memory_mib: u64,
    /// How many arrivals ours took before the first failure (all: none failed).
    pub ours_offered: usize,
    /// Ours, when the first VM failed to place (all VMs placed: at the end).
    pub ours: Packing,
    /// `place` calls before the first failure, and their time.
    pub ours_calls: usize,
    pub ours_time: Duration,
    /// Failures before the first failure that do not end the measure (VMs naming nodes,
    /// or that no node could take).
    pub named_failures: usize,
    /// Why the first failing VM could not be placed.
    pub first_failure: Option<String>,
    /// After the first failure, every remaining VM offered as well: successes, failures
    /// (each with its reasons) and the time of those calls.
    pub rest_placed: usize,
    pub rest_failed: usize,
    pub rest_time: Duration,
    /// Ours at the very end, every VM offered.
    pub ours_end: Packing,
    /// The longest prefix of the arrivals FFD packs, and its packing.
    pub ffd_offered: usize,
    pub ffd: Packing,
    pub ffd_time: Duration,
}

impl Report {
    pub fn placements_per_second(&self) -> f64 {
        self.ours_calls as f64 / self.ours_time.as_secs_f64().max(1e-9)
    }

    pub fn rest_attempts_per_second(&self) -> f64 {
        (self.rest_placed + self.rest_failed) as f64 / self.rest_time.as_secs_f64().max(1e-9)
    }

    /// Ours / FFD, memory share.
    pub fn memory_ratio(&self) -> f64 {
        self.ours.memory_share / self.ffd.memory_share.max(1e-12)
    }

    /// Ours / FFD, vCPU share.
    pub fn vcpu_ratio(&self) -> f64 {
        self.ours.vcpu_share / self.ffd.vcpu_share.max(1e-12)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        let gib = |mib: u64| mib as f64 / 1024.0;
        writeln!(
            f,
            "placement: {} nodes, {} VMs, seed {}, policy {:?}, one thread",
            c.nodes, c.vms, c.seed, c.policy
        )?;
        writeln!(
            f,
            "  capacity {:.0} GiB memory, {} vCPUs; demand of all VMs {:.2}x memory, {:.2}x vCPUs",
            gib(self.capacity_memory_mib),
            self.capacity_vcpus,
            self.demand_memory_mib as f64 / self.capacity_memory_mib.max(1) as f64,
            self.demand_vcpus as f64 / self.capacity_vcpus.max(1) as f64,
        )?;
        writeln!(
            f,
            "  ours: {} place calls before the first failure ({} of the first {} arrivals placed; {} not, that name full nodes or that no node has the hardware for) in {:.1} ms: {:.0} placements/s",
            self.ours_calls,
            self.ours.vms,
            self.ours_offered,
            self.named_failures,
            self.ours_time.as_secs_f64() * 1e3,
            self.placements_per_second()
        )?;
        if let Some(why) = &self.first_failure {
            writeln!(f, "    first failure: {why}")?;
        }
        writeln!(
            f,
            "    then the other {} VMs: {} placed, {} not (with reasons) in {:.1} ms: {:.0} attempts/s; at the end {:.2} % of memory, {:.2} % of vCPUs in use",
            self.rest_placed + self.rest_failed,
            self.rest_placed,
            self.rest_failed,
            self.rest_time.as_secs_f64() * 1e3,
            self.rest_attempts_per_second(),
            self.ours_end.memory_share * 100.0,
            self.ours_end.vcpu_share * 100.0,
        )?;
        writeln!(
            f,
            "  packing at the first failure: ours {:.2} % of memory, {:.2} % of vCPUs",
            self.ours.memory_share * 100.0,
            self.ours.vcpu_share * 100.0
        )?;
        writeln!(
            f,
            "  first-fit-decreasing (offline): packs the first {} arrivals ({} placed; {:.1} s of search): {:.2} % of memory, {:.2} % of vCPUs",
            self.ffd_offered,
            self.ffd.vms,
            self.ffd_time.as_secs_f64(),
            self.ffd.memory_share * 100.0,
            self.ffd.vcpu_share * 100.0
        )?;
        write!(
            f,
            "  ratio ours/FFD: memory {:.4}, vCPUs {:.4}, arrivals taken {:.4}",
            self.memory_ratio(),
            self.vcpu_ratio(),
            self.ours_offered as f64 / self.ffd_offered.max(1) as f64
        )
    }
}

/// Which VMs' failures end the measure: not those whose requirements name nodes (hash,
/// owner, address: their few nodes may be full while the rest are not) nor those no
/// node could take even empty (hardware absent). Such failures say nothing about
/// packing; they are counted apart, for FFD alike.
pub fn failure_ends_measure(nodes: &[Node], vms: &[VmDemand]) -> Vec<bool> {
    let mut empty = Placer::new(Policy::BinPack);
    for node in nodes {
        empty.upsert_node(node.clone());
    }
    vms.iter()
        .map(|vm| {
            let named = vm.requirements.node.as_ref().is_some_and(|n| {
                n.node_hash.is_some() || n.owner.is_some() || n.address_regex.is_some()
            });
            let possible = empty.place(vm).is_ok();
            empty.release(&vm.vm_hash);
            !named && possible
        })
        .collect()
}

/// Runs the benchmark.
pub fn run(config: &Config) -> Report {
    let nodes = generate_nodes(config.nodes, config.seed);
    let vms = generate_vms(config.vms, &nodes, config.seed);
    let capacity_vcpus: u64 = nodes.iter().map(|n| n.capacity.vcpus).sum();
    let capacity_memory_mib: u64 = nodes.iter().map(|n| n.capacity.memory_mib).sum();
    let share = |placed: &[&VmDemand]| Packing {
        vms: placed.len(),
        memory_share: placed.iter().map(|v| v.memory_mib).sum::<u64>() as f64
            / capacity_memory_mib.max(1) as f64,
        vcpu_share: placed.iter().map(|v| v.vcpus).sum::<u64>() as f64
            / capacity_vcpus.max(1) as f64,
    };

    let ends_measure = failure_ends_measure(&nodes, &vms);
    let mut placer = Placer::new(config.policy);
    for node in &nodes {
        placer.upsert_node(node.clone());
    }
    let mut placed: Vec<&VmDemand> = Vec::with_capacity(vms.len());
    let mut named_failures = 0;
    let mut offered = vms.len();
    let mut first_failure = None;
    let started = Instant::now();
    for (i, vm) in vms.iter().enumerate() {
        match placer.place(vm) {
            Ok(_) => placed.push(vm),
            Err(_) if !ends_measure[i] => named_failures += 1,
            Err(why) => {
                offered = i;
                first_failure = Some(why.to_string());
                break;
            }
        }
    }
    let ours_time = started.elapsed();
    let ours = share(&placed);
    let ours_placed_calls = placed.len() + named_failures;

    let (mut rest_placed, mut rest_failed) = (0, 0);
    let started = Instant::now();
    for vm in vms.iter().skip(offered + 1) {
        match placer.place(vm) {
            Ok(_) => {
                rest_placed += 1;
                placed.push(vm);
            }
            Err(_) => rest_failed += 1,
        }
    }
    let rest_time = started.elapsed();
    let ours_end = share(&placed);

    let started = Instant::now();
    let (ffd_offered, ffd_placed) = longest_ffd_prefix(&nodes, &vms, &ends_measure);
    let ffd_time = started.elapsed();
    let ffd_placed: Vec<&VmDemand> = ffd_placed.iter().map(|&i| &vms[i]).collect();
    let ffd = share(&ffd_placed);

    Report {
        config: config.clone(),
        capacity_vcpus,
        capacity_memory_mib,
        demand_vcpus: vms.iter().map(|v| v.vcpus).sum(),
        demand_memory_mib: vms.iter().map(|v| v.memory_mib).sum(),
        ours_offered: offered,
        ours,
        ours_calls: ours_placed_calls,
        ours_time,
        named_failures,
        first_failure,
        rest_placed,
        rest_failed,
        rest_time,
        ours_end,
        ffd_offered,
        ffd,
        ffd_time,
    }
}

/// The longest prefix of `vms` that first-fit-decreasing packs (every VM whose failure
/// would end the measure placed), by binary search, and the indices of the VMs it placed. FFD is
/// not strictly monotone in its input, so this is the longest a bisection finds.
pub fn longest_ffd_prefix(
    nodes: &[Node],
    vms: &[VmDemand],
    ends_measure: &[bool],
) -> (usize, Vec<usize>) {
    if let Some(placed) = ffd_pack(nodes, vms, ends_measure) {
        return (vms.len(), placed);
    }
    let (mut good, mut bad) = (0, vms.len());
    let mut best = Vec::new();
    while bad - good > 1 {
        let mid = good + (bad - good) / 2;
        match ffd_pack(nodes, &vms[..mid], ends_measure) {
            Some(placed) => {
                good = mid;
                best = placed;
            }
            None => bad = mid,
        }
    }
    (good, best)
}

/// First-fit-decreasing over `vms`: the indices of the VMs placed, or None when a VM
/// whose failure ends the measure fails. VMs with requirements first, then "decreasing" by
/// size: memory and vCPUs each as a share of the average node's, summed; memory first
/// is tried when that fails, so the baseline is the stronger of the two.
pub fn ffd_pack(nodes: &[Node], vms: &[VmDemand], ends_measure: &[bool]) -> Option<Vec<usize>> {
    let n = nodes.len().max(1) as f64;
    let avg_vcpus = (nodes.iter().map(|n| n.capacity.vcpus).sum::<u64>() as f64 / n).max(1.0);
    let avg_memory = (nodes.iter().map(|n| n.capacity.memory_mib).sum::<u64>() as f64 / n).max(1.0);
    let size = |v: &VmDemand| v.vcpus as f64 / avg_vcpus + v.memory_mib as f64 / avg_memory;
    // VMs with requirements go first (they have the fewest nodes to choose from), which
    // makes the baseline stronger than plain FFD.
    let constrained = |v: &VmDemand| v.requirements != Requirements::default();
    let mut order: Vec<usize> = (0..vms.len()).collect();
    order.sort_by(|&a, &b| {
        constrained(&vms[b])
            .cmp(&constrained(&vms[a]))
            .then(size(&vms[b]).total_cmp(&size(&vms[a])))
            .then(a.cmp(&b))
    });
    if let Some(placed) = first_fit_all(nodes, vms, &order, ends_measure) {
        return Some(placed);
    }
    order.sort_by(|&a, &b| {
        (constrained(&vms[b]), vms[b].memory_mib, vms[b].vcpus)
            .cmp(&(constrained(&vms[a]), vms[a].memory_mib, vms[a].vcpus))
            .then(a.cmp(&b))
    });
    first_fit_all(nodes, vms, &order, ends_measure)
}

/// First fit in node order, over a segment tree of the most free vCPUs, memory and disk
/// under each subtree (so a search skips full stretches), VMs taken in `order`.
fn first_fit_all(
    nodes: &[Node],
    vms: &[VmDemand],
    order: &[usize],
    ends_measure: &[bool],
) -> Option<Vec<usize>> {
    let mut tree = FreeTree::new(nodes);
    let mut regexes: HashMap<&str, Regex> = HashMap::new();
    let mut placed = Vec::with_capacity(order.len());
    for &v in order {
        let vm = &vms[v];
        let regex = vm
            .requirements
            .node
            .as_ref()
            .and_then(|n| n.address_regex.as_deref())
            .map(|p| {
                regexes
                    .entry(p)
                    .or_insert_with(|| Regex::new(p).expect("generated patterns are valid"))
                    .clone()
            });
        let fits = |i: usize, tree: &FreeTree| {
            static_misfit(&nodes[i], &vm.requirements, regex.as_ref()).is_none()
                && (vm.requirements.gpu.is_empty()
                    || assign_gpus(
                        &nodes[i].capacity.gpus,
                        &tree.gpu_taken[i],
                        &vm.requirements.gpu,
                    )
                    .is_some())
        };
        let Some(i) = tree.first_fit(vm, &fits) else {
            if !ends_measure[v] {
                continue;
            }
            if std::env::var("FFD_DEBUG").is_ok() {
                eprintln!(
                    "ffd fails {} of {}: {:?} after {} placed",
                    v,
                    vms.len(),
                    vm,
                    placed.len()
                );
            }
            return None;
        };
        let gpus = assign_gpus(
            &nodes[i].capacity.gpus,
            &tree.gpu_taken[i],
            &vm.requirements.gpu,
        )
        .expect("checked");
        for g in gpus {
            tree.gpu_taken[i][g] = true;
        }
        tree.take(i, vm);
        placed.push(v);
    }
    placed.sort_unstable();
    Some(placed)
}

struct FreeTree {
    leaves: usize,
    /// Per tree vertex (1-based heap layout): the most free (vCPUs, memory, disk) below.
    max: Vec<[u64; 3]>,
    gpu_taken: Vec<Vec<bool>>,
}

impl FreeTree {
    fn new(nodes: &[Node]) -> Self {
        let leaves = nodes.len().next_power_of_two().max(1);
        let mut max = vec![[0u64; 3]; 2 * leaves];
        for (i, n) in nodes.iter().enumerate() {
            max[leaves + i] = [n.capacity.vcpus, n.capacity.memory_mib, n.capacity.disk_mib];
        }
        for v in (1..leaves).rev() {
            max[v] = component_max(max[2 * v], max[2 * v + 1]);
        }
        Self {
            leaves,
            max,
            gpu_taken: nodes
                .iter()
                .map(|n| vec![false; n.capacity.gpus.len()])
                .collect(),
        }
    }

    fn first_fit(&self, vm: &VmDemand, fits: &dyn Fn(usize, &FreeTree) -> bool) -> Option<usize> {
        self.descend(1, vm, fits)
    }

    fn descend(
        &self,
        v: usize,
        vm: &VmDemand,
        fits: &dyn Fn(usize, &FreeTree) -> bool,
    ) -> Option<usize> {
        let [vcpus, memory, disk] = self.max[v];
        if vcpus < vm.vcpus || memory < vm.memory_mib || disk < vm.disk_mib {
            return None;
        }
        if v >= self.leaves {
            let i = v - self.leaves;
            return fits(i, self).then_some(i);
        }
        self.descend(2 * v, vm, fits)
            .or_else(|| self.descend(2 * v + 1, vm, fits))
    }

    fn take(&mut self, i: usize, vm: &VmDemand) {
        let mut v = self.leaves + i;
        let leaf = &mut self.max[v];
        leaf[0] -= vm.vcpus;
        leaf[1] -= vm.memory_mib;
        leaf[2] -= vm.disk_mib;
        while v > 1 {
            v /= 2;
            self.max[v] = component_max(self.max[2 * v], self.max[2 * v + 1]);
        }
    }
}

fn component_max(a: [u64; 3], b: [u64; 3]) -> [u64; 3] {
    [a[0].max(b[0]), a[1].max(b[1]), a[2].max(b[2])]
}

/// A small deterministic generator (SplitMix64): the same seed gives the same nodes and
/// VMs on every machine and every build.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    /// One of `items`, by weight.
    pub fn weighted<'a, T>(&mut self, items: &'a [(u64, T)]) -> &'a T {
        let total: u64 = items.iter().map(|(w, _)| w).sum();
        let mut pick = self.below(total);
        for (w, item) in items {
            if pick < *w {
                return item;
            }
            pick -= w;
        }
        unreachable!("pick < total")
    }

    fn hash(&mut self) -> String {
        (0..4)
            .map(|_| format!("{:016x}", self.next_u64()))
            .collect()
    }
}

const OPERATORS: u64 = 800;

fn gpu_model(kind: u64) -> Gpu {
    let (device_name, device_class, device_id, vram_mib) = match kind {
        0 => ("RTX 4000 Ada Generation", "0300", "10de:27b0", 20_480),
        1 => ("L40S", "0302", "10de:26b9", 49_152),
        _ => ("H100 80GB HBM3", "0302", "10de:2331", 81_920),
    };
    Gpu {
        vendor: "NVIDIA".into(),
        device_name: device_name.into(),
        device_class: device_class.into(),
        device_id: device_id.into(),
        vram_mib,
    }
}

/// Nodes of a few machine types: (vCPUs, memory GiB, disk GiB) by weight, a tenth of a
/// percent to a few percent with GPUs, AMD (some with SEV) and Intel x86-64 and a few
/// ARM, owned by 800 operators.
pub fn generate_nodes(count: usize, seed: u64) -> Vec<Node> {
    let mut rng = Rng::new(seed ^ 0x6e6f_6465);
    let types: [(u64, (u64, u64, u64, bool)); 5] = [
        (30, (10, 16, 400, false)),
        (35, (20, 32, 800, false)),
        (25, (40, 64, 1_600, false)),
        (7, (80, 128, 3_200, false)),
        (3, (40, 128, 3_200, true)),
    ];
    (0..count)
        .map(|i| {
            let &(vcpus, memory_gib, disk_gib, with_gpus) = rng.weighted(&types);
            let cpu = match rng.below(100) {
                0..25 => cpu("x86_64", "AuthenticAMD", &[]),
                25..45 => cpu("x86_64", "AuthenticAMD", &["sev", "sev_es"]),
                45..55 => cpu("x86_64", "AuthenticAMD", &["sev", "sev_es", "sev_snp"]),
                55..80 => cpu("x86_64", "GenuineIntel", &[]),
                80..95 => cpu("x86_64", "GenuineIntel", &["avx512f"]),
                _ => cpu("aarch64", "ARM", &[]),
            };
            let gpus = if with_gpus {
                let model = rng.below(3);
                let count = *rng.weighted(&[(50, 1), (30, 2), (20, 4)]);
                (0..count).map(|_| gpu_model(model)).collect()
            } else {
                Vec::new()
            };
            let operator = rng.below(OPERATORS);
            Node {
                hash: rng.hash(),
                owner: format!("0x{:040x}", operator + 1),
                address: format!("https://crn-{i}.op{operator}.example.net"),
                capacity: NodeResources {
                    vcpus,
                    memory_mib: memory_gib * 1024,
                    disk_mib: disk_gib * 1024,
                    cpu,
                    gpus,
                },
            }
        })
        .collect()
}

fn cpu(architecture: &str, vendor: &str, features: &[&str]) -> CpuProperties {
    CpuProperties {
        architecture: architecture.into(),
        vendor: vendor.into(),
        features: features.iter().map(|f| f.to_string()).collect(),
    }
}

/// VMs in arrival order: half program-like (1–2 vCPUs, 128 MiB–2 GiB), half
/// instance-like (1–16 compute units of 1 vCPU and 2 GiB), about 2 % with requirements
/// (confidential AMD, ARM, GPUs, an operator, an address pattern, a given node). Disk:
/// volumes + 1 GiB, the scheduler's rule.
pub fn generate_vms(count: usize, nodes: &[Node], seed: u64) -> Vec<VmDemand> {
    let mut rng = Rng::new(seed ^ 0x0076_6d73);
    (0..count)
        .map(|_| {
            let vm_hash = rng.hash();
            let program = rng.chance(0.5);
            let (vcpus, memory_mib, volumes_mib) = if program {
                let vcpus = if rng.chance(0.85) { 1 } else { 2 };
                let memory =
                    *rng.weighted(&[(10, 128), (30, 256), (30, 512), (20, 1024), (10, 2048)]);
                (vcpus, memory, 256 + rng.below(16) * 256)
            } else {
                let units = *rng.weighted(&[
                    (20, 1),
                    (20, 2),
                    (10, 3),
                    (15, 4),
                    (12, 6),
                    (10, 8),
                    (7, 12),
                    (6, 16),
                ]);
                (units, units * 2048, units * 20_480)
            };
            let mut requirements = Requirements::default();
            match rng.below(10_000) {
                0..150 => {
                    requirements.cpu = Some(CpuRequirement {
                        architecture: Some("x86_64".into()),
                        vendor: Some("AuthenticAMD".into()),
                        features: vec!["sev".into(), "sev_es".into()],
                    })
                }
                150..200 => {
                    requirements.cpu = Some(CpuRequirement {
                        architecture: Some("aarch64".into()),
                        ..Default::default()
                    })
                }
                200..220 => {
                    let want = if rng.chance(0.5) {
                        GpuRequirement {
                            vendor: Some("NVIDIA".into()),
                            device_id: Some(gpu_model(rng.below(3)).device_id),
                            ..Default::default()
                        }
                    } else {
                        GpuRequirement {
                            vram_mib: Some(40_960),
                            ..Default::default()
                        }
                    };
                    let count = if rng.chance(0.8) { 1 } else { 2 };
                    requirements.gpu = vec![want; count];
                }
                220..250 => {
                    requirements.node = Some(NodeRequirement {
                        owner: Some(format!("0x{:040X}", rng.below(OPERATORS) + 1)),
                        ..Default::default()
                    })
                }
                250..270 => {
                    let pattern = if rng.chance(0.5) {
                        format!(r"\.op{}\.example\.net$", rng.below(OPERATORS))
                    } else {
                        r"^https://crn-\d+\.".to_string()
                    };
                    requirements.node = Some(NodeRequirement {
                        address_regex: Some(pattern),
                        ..Default::default()
                    })
                }
                270..272 if !nodes.is_empty() => {
                    requirements.node = Some(NodeRequirement {
                        node_hash: Some(nodes[rng.below(nodes.len() as u64) as usize].hash.clone()),
                        ..Default::default()
                    })
                }
                _ => {}
            }
            // Pinned and operator-bound VMs stay small: their failures would say
            // nothing about packing.
            let (vcpus, memory_mib, volumes_mib) = match &requirements.node {
                Some(_) => (1, memory_mib.min(1024), volumes_mib.min(4096)),
                None => (vcpus, memory_mib, volumes_mib),
            };
            VmDemand {
                vm_hash,
                vcpus,
                memory_mib,
                disk_mib: volumes_mib + 1024,
                requirements,
            }
        })
        .collect()
}
